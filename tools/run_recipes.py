"""Run textbook recipes one after another and keep their small outputs under docs/results/.

    OMP_NUM_THREADS=1 nohup python tools/run_recipes.py fashion/alexnet fashion/nin \\
        --seeds 0 --root ../shared/data > recipes.log 2>&1 &

Each (recipe, seed) trains in `<runs>/<recipe>/seed<N>` (checkpoints and event files stay
there) and its `metrics.csv`, `results.json` and last test confusion matrix are copied to
`docs/results/<recipe>/seed<N>/`. Run again, it skips what has finished and resumes a run
that was cut off from its checkpoint (`trainer.resume`). Overrides after `--` are added to
every run and kept in results.json's config, e.g.
`-- trainer.precision=bf16 trainer.channels_last=true`.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from cnnbench.runs import CONFUSION_FILE


def finished(results: Path) -> bool:
    return results.exists() and json.loads(results.read_text()).get("status") == "ok"


def run(recipe: str, seed: int, args: argparse.Namespace) -> int:
    kept = args.results / recipe / f"seed{seed}"
    if finished(kept / "results.json"):
        print(f"{recipe} seed {seed}: done already ({kept})", flush=True)
        return 0
    run_dir = args.runs / recipe / f"seed{seed}"
    command = [
        sys.executable,
        "-m",
        "cnnbench",
        f"experiment={recipe}",
        f"dataset.root={args.root}",
        f"trainer.seed={seed}",
        f"trainer.device={args.device}",
        f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]
    if (run_dir / "last.pt").exists():
        command.append(f"trainer.resume={run_dir}")
    print(" ".join(command), flush=True)
    code = subprocess.run(command).returncode
    if finished(run_dir / "results.json"):
        kept.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.csv", "results.json", CONFUSION_FILE):
            if (run_dir / name).exists():  # the confusion matrix of the last epoch
                shutil.copy(run_dir / name, kept / name)
    return code


def main() -> int:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="+", help="e.g. fashion/alexnet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--device", default="cpu", help="trainer.device of every run (the README's cell says cuda)"
    )
    p.add_argument("--root", type=Path, default=Path("../shared/data"))
    p.add_argument("--runs", type=Path, default=Path("outputs/recipes"))
    p.add_argument("--results", type=Path, default=Path("docs/results"))
    args = p.parse_args(argv)
    args.overrides = overrides
    args.root, args.runs = args.root.resolve(), args.runs.resolve()
    failed = [(r, s) for r in args.recipes for s in args.seeds if run(r, s, args) != 0]
    for recipe, seed in failed:
        print(f"failed: {recipe} seed {seed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
