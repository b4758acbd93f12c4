"""Compare runs: every results.json below the given directories, as one table and figures.

    python -m cnnbench.report outputs/multirun/model=softmax,mlp,lenet,resnet_mini
    python -m cnnbench.report outputs/2026-11-22 outputs/multirun --out comparison

Writes report.md, report.csv, curves.png (test accuracy and training loss per epoch, every run
on shared axes) and tradeoffs.png (best test accuracy against wall time and against
parameters, the Pareto front marked) into the first directory, or --out. It reads files only.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cnnbench.atomic import write_text
from cnnbench.config import class_name
from cnnbench.errors import fail
from cnnbench.runs import NOT_IDENTITY, flatten


class ReportError(Exception):
    pass


@dataclass
class Run:
    path: Path
    results: dict
    config: dict  # flattened
    curves: list[dict] = field(default_factory=list)  # metrics.csv rows

    def get(self, key: str) -> float | None:
        value = self.results.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def find_runs(dirs: list[Path]) -> list[Run]:
    runs = []
    for d in dirs:
        if not d.is_dir():
            raise ReportError(
                f"{d}: no such directory; give run or sweep directories (outputs/...)"
            )
        for path in sorted(d.rglob("results.json")):
            try:
                results = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                print(f"cnnbench.report: skipping {path}: unreadable ({err})", file=sys.stderr)
                continue
            run = Run(path.parent, results, flatten(results.get("config") or {}))
            try:
                with open(path.parent / "metrics.csv", newline="") as f:
                    run.curves = list(csv.DictReader(f))
            except OSError:
                pass
            runs.append(run)
    if not runs:
        raise ReportError(
            f"no results.json below {', '.join(map(str, dirs))}: point at the directories of "
            "runs or sweeps (python -m cnnbench writes them under outputs/)"
        )
    return runs


def differing_keys(runs: list[Run]) -> list[str]:
    """The config keys a comparison is about: the ones whose values differ between runs.

    A model's (or optimizer's, scheduler's) own arguments count only among the runs of the
    same class: that AlexNet has no `hidden` while the MLP does is what the model column says.
    Paths, devices and values the table shows anyway are left out.
    """
    shown_elsewhere = {"model._target_", "dataset.name", "model.min_size", "model.input_size"}
    keys = sorted({k for r in runs for k in r.config} - set(NOT_IDENTITY) - shown_elsewhere)

    def varies(key: str) -> bool:
        group = key.split(".", 1)[0]
        target = f"{group}._target_"
        by_class: dict[str, set[str]] = {}
        for r in runs:
            cls = str(r.config.get(target)) if group in ("model", "optimizer", "scheduler") else ""
            by_class.setdefault(cls, set()).add(json.dumps(r.config.get(key)))
        if key == target:
            return len(by_class) > 1
        return any(len(values) > 1 for values in by_class.values())

    return [k for k in keys if varies(k)]


def short(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(("torch.", "cnnbench.")):
        return class_name(value)  # torch.optim.SGD -> SGD
    return str(value)


COLUMNS = [  # (header, results.json key, format)
    ("model", "model", "{}"),
    ("dataset", "dataset", "{}"),
    ("params", "params", "{:,}"),
    ("FLOPs/image", "flops_per_image", "{:,.0f}"),
    ("best test acc", "best_test_acc", "{:.4f}"),
    ("final test acc", "test_acc", "{:.4f}"),
    ("val acc", "val_acc", "{:.4f}"),
    ("epochs", "epochs_done", "{}"),
    ("wall s", "wall_s", "{:.1f}"),
    ("train img/s", "train_images_per_s", "{:,.0f}"),
    ("status", "status", "{}"),
]


def by_accuracy(runs: list[Run]) -> list[Run]:
    """Best test accuracy first, unfinished runs last; the figures name runs by this order."""
    return sorted(
        runs, key=lambda r: (r.get("best_test_acc") is None, -(r.get("best_test_acc") or 0))
    )


def table(runs: list[Run], keys: list[str]) -> tuple[list[str], list[list[str]], list[list]]:
    """Headers, formatted rows and raw rows of `runs` (in the order given)."""
    columns = [c for c in COLUMNS if c[1] != "val_acc" or any(r.get("val_acc") for r in runs)]
    headers = ["#", *keys, *(c[0] for c in columns)]
    raw, shown = [], []
    for n, r in enumerate(runs, 1):
        values = [n, *(r.config.get(k) for k in keys)]
        values += [r.results.get(key) for _, key, _ in columns]
        raw.append(values)
        cells = [short(v) for v in values[: len(keys) + 1]]
        for (_, _, fmt), v in zip(columns, values[len(keys) + 1 :], strict=True):
            cells.append("" if v is None else fmt.format(v))
        if r.results.get("status") not in ("ok", None) and r.results.get("error"):
            cells[-1] += f": {r.results['error'].splitlines()[0][:80]}"
        shown.append(cells)
    return headers, shown, raw


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def label(n: int, run: Run) -> str:
    """#n (the table's row) and the model."""
    return f"#{n} {run.results.get('model') or run.path.name}"


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (x, lower is better) and accuracy (y)."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def figures(runs: list[Run], out: Path) -> list[Path]:
    """`runs` in the table's order."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    for n, run in enumerate(runs, 1):
        epochs = [int(r["epoch"]) for r in run.curves]
        if not epochs:
            continue
        name = label(n, run)
        acc_ax.plot(epochs, [float(r["test_acc"]) for r in run.curves], marker=".", label=name)
        loss_ax.plot(epochs, [float(r["train_loss"]) for r in run.curves], marker=".", label=name)
    acc_ax.set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="Training loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=7)
    fig.savefig(out / "curves.png", dpi=110)

    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    done = [(n, r) for n, r in enumerate(runs, 1) if r.get("best_test_acc") is not None]
    for ax, key, xlabel in zip(
        axes, ("wall_s", "params"), ("wall time (s)", "parameters"), strict=True
    ):
        points = [(r.get(key), r.get("best_test_acc"), label(n, r)) for n, r in done if r.get(key)]
        for x, y, name in points:
            ax.scatter(x, y)
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto([(x, y) for x, y, _ in points])
        if front:
            ax.step(*zip(*front, strict=True), where="post", color="gray", ls="--",
                    label="Pareto front")  # fmt: skip
            ax.legend(fontsize=7)
        ax.set(xscale="log", xlabel=xlabel, ylabel="best test accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_title("Accuracy against wall time")
    axes[1].set_title("Accuracy against size")
    fig.savefig(out / "tradeoffs.png", dpi=110, bbox_inches="tight")
    return [out / "curves.png", out / "tradeoffs.png"]


def report(dirs: list[Path], out: Path | None = None) -> str:
    runs = by_accuracy(find_runs(dirs))
    keys = differing_keys(runs)
    headers, shown, raw = table(runs, keys)
    out = out or dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(headers, shown)
    write_text(
        out / "report.md",
        f"# Comparison of {len(runs)} runs\n\n{text}\n![curves](curves.png)\n\n"
        "![tradeoffs](tradeoffs.png)\n",
    )
    table_csv = io.StringIO(newline="")
    writer = csv.writer(table_csv)
    writer.writerow(headers)
    writer.writerows(raw)
    write_text(out / "report.csv", table_csv.getvalue())
    figures(runs, out)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cnnbench.report",
        description="Compare runs: one row per results.json below the directories, plus figures.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, help="where to write (default: the first directory)")
    args = parser.parse_args(argv)
    try:
        text = report(args.dirs, args.out)
    except (ReportError, OSError) as err:
        fail("cnnbench.report", err)
    print(text)
    print(f"report.md, report.csv, curves.png, tradeoffs.png: {args.out or args.dirs[0]}")


if __name__ == "__main__":
    main()
