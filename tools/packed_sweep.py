"""The same sweep with Hydra's basic launcher and with hydra/launcher=packed (pack=true), side
by side, and with the packed launcher's default (pack=auto: one after another on a CPU): wall
time of each whole command and the speed-up over the basic launcher (issue 30's benchmark).

    python tools/packed_sweep.py --data ../shared/data                  # both sweeps
    python tools/packed_sweep.py --data ../shared/data --device cuda
    python tools/packed_sweep.py --data ../shared/data --limit-batches 5 --epochs 1   # a check

`--json PATH` also writes the seconds of each (tools/gpu_summary.py reads them).

The sweeps: LeNet-5 on MNIST, 4 learning rates x 4 seeds, 3 epochs (16 points); ResNet-mini,
2 learning rates x 4 seeds (8 points). Each command runs in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEPS = {
    "lenet5 x16": [
        "experiment=tutorial/lenet5_mnist",
        "optimizer.lr=0.003,0.01,0.03,0.1",
        "trainer.seed=0,1,2,3",
    ],
    "resnet_mini x8": [
        "model=resnet_mini",
        "dataset=mnist",
        "optimizer.lr=0.001,0.003",
        "trainer.seed=0,1,2,3",
    ],
}
LAUNCHERS = {
    "basic": [],
    "packed": ["hydra/launcher=packed", "hydra.launcher.pack=true"],
    "auto": ["hydra/launcher=packed"],  # on a CPU: one after another, in one process
}


def timed(args: list[str], folder: Path) -> float:
    command = [sys.executable, "-m", "cnnbench", "-m", *args, f"hydra.sweep.dir={folder}"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset.root")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-batches", type=int, help="trainer.limit_train_batches")
    parser.add_argument("--threads", type=int, help="trainer.threads")
    parser.add_argument("--sweeps", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    parser.add_argument("--json", type=Path, help="also write the seconds here")
    args = parser.parse_args()
    common = [f"dataset.root={args.data}", f"trainer.device={args.device}"]
    if args.threads:
        common.append(f"trainer.threads={args.threads}")
    common.append(f"trainer.epochs={args.epochs}")
    if args.limit_batches:
        common.append(f"trainer.limit_train_batches={args.limit_batches}")
    print(f"{'sweep':<16} {'basic':>9} {'packed':>9} {'speed-up':>9} {'auto':>9} {'speed-up':>9}")
    measured = {"device": args.device, "epochs": args.epochs, "sweeps": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sweeps:
            seconds = {
                launcher: timed([*SWEEPS[name], *common, *extra], Path(tmp) / f"{name}-{launcher}")
                for launcher, extra in LAUNCHERS.items()
            }
            measured["sweeps"][name] = seconds
            if args.json:  # after each sweep: a later one that fails keeps the earlier
                args.json.write_text(json.dumps(measured, indent=1))
            basic, packed, auto = seconds["basic"], seconds["packed"], seconds["auto"]
            print(
                f"{name:<16} {basic:>8.1f}s {packed:>8.1f}s {basic / packed:>8.2f}x "
                f"{auto:>8.1f}s {basic / auto:>8.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
