"""d2l's own chapter code against cnnbench's d2l/* recipe, on the same data and seeds.

For each network and seed it trains twice on the real Fashion-MNIST:
- d2l: the chapter's network (written out below as the chapter writes it), given to `train_ch6`
  from the `d2l` package (1.0.3) with `load_data_fashion_mnist`, d2l's own loop and data;
- cnnbench: `python -m cnnbench experiment=d2l/<net> trainer.seed=<seed>`.
It prints a table of the final test accuracies, their medians and the gap, and writes it with
every figure under --out; each cnnbench run's metrics.csv and results.json go where
tools/run_recipes.py keeps them, docs/results/d2l/<net>/seed<N>/.

d2l 1.0.3 pins old versions of numpy, scipy and others, so give it a virtual environment of
its own that sees the installed torch and cnnbench:

    python -m venv --system-site-packages ../d2l-venv
    ../d2l-venv/bin/pip install --no-deps d2l==1.0.3
    ../d2l-venv/bin/pip install pandas ipython matplotlib-inline requests
    ../d2l-venv/bin/python tools/d2l_side_by_side.py --root ../shared/data

`train_ch6` draws its curves with d2l's Animator (for notebooks); this script puts a recorder
in its place, which keeps each epoch's test accuracy and changes nothing in the training.
"""

import argparse
import csv
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from cnnbench import stats
from cnnbench.config import compose


def d2l_lenet() -> nn.Module:
    """d2l 7.6 (6.6 in d2l 0.17, where train_ch6 was written)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    )


def d2l_lenet_bn() -> nn.Module:
    """d2l 8.5, the concise implementation (7.5 in d2l 0.17)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5),
        nn.BatchNorm2d(6),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.BatchNorm2d(16),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(256, 120),
        nn.BatchNorm1d(120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.BatchNorm1d(84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    )


NETS: dict[str, Callable[[], nn.Module]] = {"lenet": d2l_lenet, "lenet_bn": d2l_lenet_bn}


class Recorder:
    """Stands in for d2l.Animator: keeps the points train_ch6 would draw."""

    def __init__(self, **_) -> None:
        self.points: list[tuple[float, tuple]] = []

    def add(self, x: float, y: tuple) -> None:
        self.points.append((x, tuple(y)))


@contextmanager
def chapter_data(root: Path) -> Iterator[None]:
    """d2l reads torchvision's FashionMNIST from "../data" with download=True; give it the
    IDX files, decompressed where torchvision looks, so that nothing is downloaded."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp, "data", "FashionMNIST", "raw")
        raw.mkdir(parents=True)
        for gz in (root / "fashion-mnist").glob("*-ubyte.gz"):
            with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        work, cwd = Path(tmp, "work"), os.getcwd()
        work.mkdir()
        os.chdir(work)
        try:
            yield
        finally:
            os.chdir(cwd)


def recipe(net: str) -> tuple[float, int, int]:
    """lr, batch size and epochs of experiment=d2l/<net>: d2l gets what the recipe says."""
    cfg = compose([f"experiment=d2l/{net}"])
    return cfg.optimizer.lr, cfg.dataset.batch_size, cfg.trainer.epochs


def run_d2l(net: str, seed: int, root: Path) -> dict:
    from d2l import torch as d2l

    lr, batch, epochs = recipe(net)
    recorders: list[Recorder] = []
    d2l.Animator = lambda **kw: recorders.append(Recorder(**kw)) or recorders[-1]
    torch.manual_seed(seed)
    model = NETS[net]()
    with chapter_data(root):
        train_iter, test_iter = d2l.load_data_fashion_mnist(batch)
        d2l.train_ch6(model, train_iter, test_iter, epochs, lr, torch.device("cpu"))
    curve = [y[2] for _, y in recorders[0].points if y[2] is not None]
    return {"test_acc": curve[-1], "test_acc_per_epoch": curve}


def run_cnnbench(net: str, seed: int, root: Path, runs: Path, results: Path) -> dict:
    run_dir = runs / net / f"seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "cnnbench",
        f"experiment=d2l/{net}",
        f"dataset.root={root}",
        f"trainer.seed={seed}",
        "trainer.device=cpu",
        f"hydra.run.dir={run_dir}",
    ]
    subprocess.run(command, check=True)
    kept = results / "d2l" / net / f"seed{seed}"
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "results.json"):
        shutil.copy(run_dir / name, kept / name)
    results = json.loads((run_dir / "results.json").read_text())
    return {"test_acc": results["test_acc"], "best_test_acc": results["best_test_acc"]}


def late_mean(curve: list[float], last: int = 5) -> float:
    """The mean test accuracy of the last epochs: plain SGD at these learning rates moves the
    final epoch's figure by points from one epoch to the next."""
    return statistics.mean(curve[-last:])


def cnnbench_curve(results: Path, net: str, seed: int) -> list[float]:
    rows = (results / "d2l" / net / f"seed{seed}" / "metrics.csv").read_text().splitlines()
    reader = csv.DictReader(rows)
    return [float(r["test_acc"]) for r in reader]


def table(figures: dict, seeds: list[int], results: Path) -> str:
    lines = [
        "| network | seeds | d2l's train_ch6: final, per seed | median | cnnbench: final, per "
        "seed | median | gap | Welch p (finals) | mean of the last 5 epochs: d2l, cnnbench |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for net, by in figures.items():
        theirs = [by["d2l"][str(s)]["test_acc"] for s in seeds]
        ours = [by["cnnbench"][str(s)]["test_acc"] for s in seeds]
        gap = statistics.median(ours) - statistics.median(theirs)
        test = stats.welch(ours, theirs)
        late_theirs = statistics.mean(
            late_mean(by["d2l"][str(s)]["test_acc_per_epoch"]) for s in seeds
        )
        late_ours = statistics.mean(late_mean(cnnbench_curve(results, net, s)) for s in seeds)
        lines.append(
            f"| {net} | {len(seeds)} | {', '.join(f'{a:.2%}' for a in theirs)} | "
            f"{statistics.median(theirs):.2%} | {', '.join(f'{a:.2%}' for a in ours)} | "
            f"{statistics.median(ours):.2%} | {100 * gap:+.2f} points | "
            f"{'' if test is None else f'{test.p:.2f}'} | {late_theirs:.2%}, {late_ours:.2%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("../shared/data"))
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("docs/results/d2l_side_by_side"))
    p.add_argument("--results", type=Path, default=Path("docs/results"))
    p.add_argument("--runs", type=Path, default=Path("outputs/d2l_side_by_side"))
    args = p.parse_args()
    root, out, args.runs = args.root.resolve(), args.out.resolve(), args.runs.resolve()
    args.results = args.results.resolve()
    path = out / "figures.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    for net in args.nets:
        for seed in args.seeds:
            by = figures.setdefault(net, {"d2l": {}, "cnnbench": {}})
            if str(seed) not in by["d2l"]:  # a figure already measured is kept
                by["d2l"][str(seed)] = run_d2l(net, seed, root)
            if str(seed) not in by["cnnbench"]:
                by["cnnbench"][str(seed)] = run_cnnbench(net, seed, root, args.runs, args.results)
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(figures, indent=2) + "\n")
    text = table({n: figures[n] for n in args.nets}, args.seeds, args.results)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
