"""What the bench measures in whole processes, as users start them: start-up against
`import torch`, two runs at once against one, a 2-job joblib sweep against the same sweep
run serially, the textbook program against `python -m cnnbench` on seed 000's recipe, and the
time-to-accuracy recipes. Every figure comes from child processes run here, one after the
other (or together, where that is what is measured)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnbench.cores import usable_cores

TEXTBOOK = Path(__file__).with_name("textbook.py")
LENET5 = ["experiment=tutorial/lenet5_mnist", "trainer.device=cpu"]
FIRST_STEP = (
    "import torch; m = torch.nn.Linear(2, 2); o = torch.optim.SGD(m.parameters(), lr=0.1); "
    "m(torch.zeros(1, 2)).sum().backward(); o.step()"
)


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    """Wall seconds of one child process, and its output; a failure stops the bench."""
    tic = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return wall, done.stdout


def cnnbench_cmd(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "cnnbench", f"hydra.run.dir={run_dir}", *overrides]


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def startup(common: list[str], repeats: int) -> dict:
    """From process start to the first training step (results.json's startup) of a one-batch
    run, against `python -c "import torch"` and against a script that imports torch and takes
    one optimizer step (torch.optim's first use imports torch._dynamo), run in turn."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnnbench-startup-") as tmp:
        for i in range(repeats):
            bare, _ = timed([sys.executable, "-c", "import torch"])
            step, _ = timed([sys.executable, "-c", FIRST_STEP])
            run_dir = Path(tmp) / str(i)
            limits = [
                "trainer.epochs=1",
                "trainer.limit_train_batches=1",
                "trainer.limit_test_batches=1",
            ]
            timed(cnnbench_cmd(run_dir, [*LENET5, *common, *limits]))
            rows.append(
                {
                    "import_torch_s": bare,
                    "torch_first_step_s": step,
                    "phases": results_of(run_dir)["startup"],
                }
            )
    median = {
        k: statistics.median(r[k] for r in rows) for k in ("import_torch_s", "torch_first_step_s")
    }
    first = statistics.median(r["phases"]["total_s"] for r in rows)
    phases = {k: statistics.median(r["phases"][k] for r in rows) for k in rows[0]["phases"]}
    return median | {
        "cnnbench_first_step_s": first,
        "gap_s": first - median["import_torch_s"],
        "phases_s": phases,
        "runs": rows,
    }


def rate_of(run_dir: Path) -> float:
    return results_of(run_dir)["train_images_per_s"]


def together(overrides: list[str], n: int, env: dict) -> list[float]:
    """Start `n` runs at once; their training images/s (the second epoch's)."""
    with tempfile.TemporaryDirectory(prefix="cnnbench-together-") as tmp:
        dirs = [Path(tmp) / str(i) for i in range(n)]
        procs = [
            subprocess.Popen(
                cnnbench_cmd(d, overrides),
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for d in dirs
        ]
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"a concurrent run exited {p.returncode}: {err[-2000:]!r}")
        return [rate_of(d) for d in dirs]


def concurrency(common: list[str], batches: int) -> dict:
    """One LeNet-5 run alone and two started together, each for two epochs of `batches`
    batches: now, and as before this engine shared the cores (every core per run, OpenMP's
    own waiting policy: OMP_WAIT_POLICY set empty, which libgomp ignores)."""
    overrides = [
        *LENET5,
        *common,
        "trainer.epochs=2",
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_test_batches=1",
    ]
    before = {"OMP_WAIT_POLICY": ""}
    every_core = [f"trainer.threads={usable_cores()}"]
    out = {
        "alone_images_per_s": together(overrides, 1, {})[0],
        # what each of two runs gets if each has a core to itself and they do not slow each other
        "alone_one_thread_images_per_s": together([*overrides, "trainer.threads=1"], 1, {})[0],
        "two_images_per_s": together(overrides, 2, {}),
        "before_alone_images_per_s": together([*overrides, *every_core], 1, before)[0],
        "before_two_images_per_s": together([*overrides, *every_core], 2, before),
    }
    out["two_total_over_alone"] = sum(out["two_images_per_s"]) / out["alone_images_per_s"]
    out["before_two_total_over_alone"] = (
        sum(out["before_two_images_per_s"]) / out["before_alone_images_per_s"]
    )
    out["two_one_thread_over_alone"] = (
        2 * out["alone_one_thread_images_per_s"] / out["alone_images_per_s"]
    )
    out["alone_over_before"] = out["alone_images_per_s"] / out["before_alone_images_per_s"]
    return out


def sweep(common: list[str], batches: int) -> dict:
    """The same 2-job sweep (trainer.seed=0,1) run serially and through joblib's 2 jobs."""
    overrides = [
        *LENET5,
        *common,
        "trainer.epochs=1",
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_test_batches=2",
        "trainer.seed=0,1",
    ]
    walls = {}
    with tempfile.TemporaryDirectory(prefix="cnnbench-sweep-") as tmp:
        for name, launcher in (
            ("serial", []),
            ("joblib", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
        ):
            cmd = [
                sys.executable,
                "-m",
                "cnnbench",
                "-m",
                *overrides,
                *launcher,
                f"hydra.sweep.dir={tmp}/{name}",
            ]
            walls[name], _ = timed(cmd)
    return {
        "serial_s": walls["serial"],
        "joblib_2_jobs_s": walls["joblib"],
        "serial_over_joblib": walls["serial"] / walls["joblib"],
    }


def textbook_ratio(root: str, common: list[str], epochs: int, pairs: int, batches: int | None):
    """Whole process, seed 000's recipe: the textbook program against `python -m cnnbench`,
    in pairs, one after the other."""
    rows = []
    limit_tb = [] if batches is None else ["--limit-batches", str(batches)]
    limit_cb = [] if batches is None else [f"trainer.limit_train_batches={batches}"]
    with tempfile.TemporaryDirectory(prefix="cnnbench-textbook-") as tmp:
        for i in range(pairs):
            tb, out = timed(
                [sys.executable, str(TEXTBOOK), "--root", root, "--epochs", str(epochs), *limit_tb]
            )
            textbook = json.loads(out.strip().splitlines()[-1])
            run_dir = Path(tmp) / str(i)
            cb, _ = timed(
                cnnbench_cmd(run_dir, [*LENET5, *common, f"trainer.epochs={epochs}", *limit_cb])
            )
            rows.append(
                {
                    "textbook_s": tb,
                    "cnnbench_s": cb,
                    "ratio": tb / cb,
                    "textbook_epoch1_s": textbook["epochs"][0]["epoch_s"],
                    "textbook_test_acc": textbook["test_acc"],
                    "cnnbench_test_acc": results_of(run_dir)["test_acc"],
                }
            )
    epoch1 = statistics.median(r["textbook_epoch1_s"] for r in rows)
    return {
        "epochs": epochs,
        "pairs": rows,
        "textbook_epoch1_s": epoch1,
        "median_ratio": statistics.median(r["ratio"] for r in rows),
    }


def recipe(name: str, common: list[str], seeds: list[int], extra: list[str]) -> dict:
    """An experiment=<name> run per seed, whole process: accuracy and wall seconds."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnnbench-recipe-") as tmp:
        for seed in seeds:
            run_dir = Path(tmp) / str(seed)
            wall, _ = timed(
                cnnbench_cmd(
                    run_dir, [f"experiment={name}", *common, f"trainer.seed={seed}", *extra]
                )
            )
            r = results_of(run_dir)
            rows.append(
                {
                    "seed": seed,
                    "test_acc": r["test_acc"],
                    "wall_s": wall,
                    "train_s": r["train_s"],
                    "startup_s": r["startup"]["total_s"],
                }
            )
    return {
        "recipe": name,
        "runs": rows,
        "median_test_acc": statistics.median(r["test_acc"] for r in rows),
        "median_wall_s": statistics.median(r["wall_s"] for r in rows),
        "worst_wall_s": max(r["wall_s"] for r in rows),
    }
