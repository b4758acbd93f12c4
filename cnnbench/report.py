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

from cnnbench import recipes, stats
from cnnbench.atomic import write_text
from cnnbench.config import class_name
from cnnbench.errors import ConfigError, fail
from cnnbench.runs import (
    CONFUSION_FILE,
    NOT_IDENTITY,
    confused_pairs,
    flatten,
    read_confusion,
    run_identity,
)


class ReportError(Exception):
    pass


@dataclass
class Run:
    path: Path
    results: dict
    config: dict  # flattened
    curves: list[dict] = field(default_factory=list)  # metrics.csv rows
    rel: str = "."  # the run directory, relative to the directory it was found under
    confusion: tuple[list[str], list[list[int]]] | None = None  # confusion_matrix.csv

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
            run.rel = str(path.parent.relative_to(d))
            run.confusion = read_confusion(path.parent / CONFUSION_FILE)
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
    headers = ["#", *keys, *(c[0] for c in columns), "run"]
    raw, shown = [], []
    for n, r in enumerate(runs, 1):
        values = [n, *(r.config.get(k) for k in keys)]
        values += [r.results.get(key) for _, key, _ in columns]
        raw.append([*values, str(r.path)])  # the CSV: the whole path
        cells = [short(v) for v in values[: len(keys) + 1]]
        for (_, _, fmt), v in zip(columns, values[len(keys) + 1 :], strict=True):
            cells.append("" if v is None else fmt.format(v))
        if r.results.get("status") not in ("ok", None) and r.results.get("error"):
            cells[-1] += f": {r.results['error'].splitlines()[0][:80]}"
        shown.append([*cells, r.rel])  # report.md: below the directory given
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


# ---------------------------------------------------------------------------- seeds

SEED = "trainer.seed"
# the noise threshold of the groups' comparison: a two-sided Welch's t-test at this level
ALPHA = 0.05


@dataclass
class Group:
    """Runs that differ only in trainer.seed, in the order of their seeds."""

    runs: list[Run]
    rows: list[int]  # their numbers in the runs' table

    def values(self, key: str) -> list[float]:
        return [v for r in self.runs if (v := r.get(key)) is not None]


def seed_groups(runs: list[Run]) -> list[Group]:
    """The sets of two or more runs whose configs are the same but for trainer.seed (and the
    settings NOT_IDENTITY names, such as paths), best mean final test accuracy first. `runs`
    in the table's order."""
    found: dict[str, Group] = {}
    for n, r in enumerate(runs, 1):
        config = r.results.get("config")
        if not config:
            continue
        identity = {k: v for k, v in run_identity(config).items() if k != SEED}
        key = json.dumps(identity, sort_keys=True, default=str)
        found.setdefault(key, Group([], [])).runs.append(r)
        found[key].rows.append(n)
    groups = [g for g in found.values() if len(g.runs) > 1]
    for g in groups:
        order = sorted(range(len(g.runs)), key=lambda i: seed_order(g.runs[i].config.get(SEED)))
        g.runs, g.rows = [g.runs[i] for i in order], [g.rows[i] for i in order]

    def accuracy(g: Group) -> float:
        values = g.values("test_acc")
        return -stats.mean(values) if values else math.inf

    return sorted(groups, key=accuracy)


def seed_order(seed: object) -> tuple[int, float, str]:
    """Numbers by their value (2 before 10), then anything else by its text."""
    try:
        return (0, float(seed), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(seed))


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return ""
    return f"{fmt.format(stats.mean(values))} ± {fmt.format(stats.std(values))}"


# the columns of the seed groups' table after the group's name and the keys that differ
GROUP_COLUMNS = [
    "model",
    "dataset",
    "runs",
    "n",
    "seeds",
    "best test acc",
    "final test acc",
    "final: 95% interval",
    "wall s",
    "vs G1: Welch p",
    "difference from G1",
]


def group_table(groups: list[Group]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Headers and formatted rows of the seed groups, and groups.csv's rows by column name;
    each group is compared with the first (the best mean final test accuracy) by Welch's
    t-test."""
    keys = [k for k in differing_keys([g.runs[0] for g in groups]) if k != SEED]
    headers = ["group", *keys, *GROUP_COLUMNS]
    first = groups[0].values("test_acc")
    shown, saved = [], []
    for i, g in enumerate(groups, 1):
        cells, row = group_row(g, i, keys, first)
        shown.append([str(cells[h]) for h in headers])
        saved.append(row)
    return headers, shown, saved


def group_row(g: Group, i: int, keys: list[str], first: list[float]) -> tuple[dict, dict]:
    """Group `i`'s cells as the table shows them, and its row of groups.csv; `first`: the
    final test accuracies of group 1, which the others are tested against."""
    head, final = g.runs[0], g.values("test_acc")
    named = {
        "group": f"G{i}",
        **{k: short(head.config.get(k)) for k in keys},
        "model": short(head.results.get("model")),
        "dataset": short(head.results.get("dataset")),
        "runs": " ".join(f"#{n}" for n in g.rows),
        "n": len(final),
        "seeds": " ".join(short(r.config.get(SEED)) for r in g.runs),
    }
    test = stats.welch(final, first) if i > 1 else None
    low, high = stats.interval95(final) or (None, None)
    cells = {
        **named,
        "best test acc": spread(g.values("best_test_acc"), "{:.4f}"),
        "final test acc": spread(final, "{:.4f}"),
        "final: 95% interval": "" if low is None else f"{low:.4f} to {high:.4f}",
        "wall s": spread(g.values("wall_s"), "{:.1f}"),
        "vs G1: Welch p": "" if test is None else f"{test.p:.3g}",
        "difference from G1": verdict(i, test),
    }
    row = {
        **named,
        **moments(g),
        "test_acc_ci95_low": low,
        "test_acc_ci95_high": high,
        "welch_t_vs_g1": test.t if test else None,
        "welch_df_vs_g1": test.df if test else None,
        "welch_p_vs_g1": test.p if test else None,
    }
    return cells, row


def verdict(i: int, test: stats.Welch | None) -> str:
    """What Welch's test says of group `i` against group 1."""
    if i == 1:
        return ""
    if test is None:
        return "n < 2"
    return "within the noise" if test.p >= ALPHA else f"real (p < {ALPHA})"


def moments(g: Group) -> dict[str, float | None]:
    """best_test_acc_mean, best_test_acc_std, test_acc_mean, ..., wall_s_std (groups.csv)"""
    return {
        f"{key}_{name}": f(g.values(key)) if g.values(key) else None
        for key in ("best_test_acc", "test_acc", "wall_s")
        for name, f in (("mean", stats.mean), ("std", stats.std))
    }


SEEDS_NOTE = (
    "Runs whose configs differ only in `trainer.seed` form a group: n runs, the mean ± sample "
    "standard deviation of each figure, and the 95% interval of the mean final test accuracy "
    "(Student's t). Each group's final test accuracies are compared with those of G1 (the best "
    f"mean) by Welch's two-sided t-test: p >= {ALPHA} means the difference is within the seed "
    "noise (it may still be real; more seeds tell)."
)


# ---------------------------------------------------------------------------- confusions


def confusion_table(runs: list[Run], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """Each run's three most confused class pairs (both directions counted), side by side."""
    headers = ["#", *keys, "model", "1st", "2nd", "3rd"]
    rows = []
    for n, r in enumerate(runs, 1):
        if r.confusion is None:
            continue
        pairs = [f"{a} ↔ {b}: {count}" for a, b, count in confused_pairs(*r.confusion, k=3)]
        cells = [str(n), *(short(r.config.get(k)) for k in keys), short(r.results.get("model"))]
        rows.append([*cells, *pairs, *[""] * (3 - len(pairs))])
    return headers, rows


def pair_errors(confusion: tuple[list[str], list[list[int]]], a: str, b: str) -> int | None:
    classes, matrix = confusion
    if a not in classes or b not in classes:
        return None
    i, j = classes.index(a), classes.index(b)
    return matrix[i][j] + matrix[j][i]


def confusion_figure(runs: list[Run], out: Path) -> Path | None:
    """The pairs that are among the three most confused of any run, against every run: how
    many test images of the one class each run took for the other, both ways."""
    from matplotlib.figure import Figure

    shown = [(n, r) for n, r in enumerate(runs, 1) if r.confusion is not None]
    pairs: dict[frozenset, tuple[str, str]] = {}
    for _, r in shown:
        for a, b, _count in confused_pairs(*r.confusion, k=3):
            pairs.setdefault(frozenset((a, b)), (a, b))
    if not pairs:
        return None
    names = list(pairs.values())
    counts = [[pair_errors(r.confusion, a, b) for _, r in shown] for a, b in names]
    fig = Figure(figsize=(1.6 + 0.75 * len(shown), 1.2 + 0.35 * len(names)), layout="constrained")
    ax = fig.subplots()
    grid = [[math.nan if c is None else c for c in row] for row in counts]
    image = ax.imshow(grid, cmap="Reds", aspect="auto")
    fig.colorbar(image, ax=ax, label="test images confused")
    ax.set_xticks(
        range(len(shown)), [label(n, r) for n, r in shown], rotation=45, ha="right", fontsize=7
    )
    ax.set_yticks(range(len(names)), [f"{a} ↔ {b}" for a, b in names], fontsize=7)
    for i, row in enumerate(counts):
        for j, c in enumerate(row):
            if c is not None:
                ax.text(j, i, c, ha="center", va="center", fontsize=6)
    ax.set_title("The most confused class pairs, across the runs", fontsize=9)
    fig.savefig(out / "confusions.png", dpi=110)
    return out / "confusions.png"


# ---------------------------------------------------------------------------- figures


def curve(run: Run, key: str) -> dict[int, float]:
    return {int(r["epoch"]): float(r[key]) for r in run.curves if r.get(key) not in (None, "")}


def band(ax, group: Group, key: str, name: str) -> None:
    """The group's mean per epoch, with a band of one standard deviation across its seeds."""
    curves = [curve(r, key) for r in group.runs]
    epochs = sorted({e for c in curves for e in c})
    values = [[c[e] for c in curves if e in c] for e in epochs]
    mean = [stats.mean(v) for v in values]
    std = [stats.std(v) for v in values]
    (line,) = ax.plot(epochs, mean, marker=".", label=name)
    low = [max(m - s, 1e-12) for m, s in zip(mean, std, strict=True)]
    high = [m + s for m, s in zip(mean, std, strict=True)]
    ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)


def curves_figure(runs: list[Run], groups: list[Group], out: Path) -> None:
    """Every run's test accuracy and training loss per epoch; a seed group as its mean and a
    band of one standard deviation."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    grouped = {id(r) for g in groups for r in g.runs}
    for n, run in enumerate(runs, 1):
        if id(run) in grouped or not run.curves:
            continue
        name = label(n, run)
        for ax, key in ((acc_ax, "test_acc"), (loss_ax, "train_loss")):
            points = curve(run, key)
            ax.plot(list(points), list(points.values()), marker=".", label=name)
    for i, g in enumerate(groups, 1):
        name = f"G{i} {g.runs[0].results.get('model')} (n={len(g.runs)}, mean ± std)"
        band(acc_ax, g, "test_acc", name)
        band(loss_ax, g, "train_loss", name)
    acc_ax.set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="Training loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend(fontsize=7)
    fig.savefig(out / "curves.png", dpi=110)


def figures(runs: list[Run], out: Path, groups: list[Group] | None = None) -> list[Path]:
    """`runs` in the table's order."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    curves_figure(runs, groups or [], out)
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
            ax.step(
                *zip(*front, strict=True), where="post", color="gray", ls="--", label="Pareto front"
            )
            ax.legend(fontsize=7)
        ax.set(xscale="log", xlabel=xlabel, ylabel="best test accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_title("Accuracy against wall time")
    axes[1].set_title("Accuracy against size")
    fig.savefig(out / "tradeoffs.png", dpi=110, bbox_inches="tight")
    made = [out / "curves.png", out / "tradeoffs.png"]
    confusions = confusion_figure(runs, out)
    return made + ([confusions] if confusions else [])


def write_csv(path: Path, headers: list[str], rows: list[list]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(headers)
    writer.writerows(rows)
    write_text(path, text.getvalue())


def report(dirs: list[Path], out: Path | None = None) -> str:
    runs = by_accuracy(find_runs(dirs))
    keys = differing_keys(runs)
    headers, shown, raw = table(runs, keys)
    groups = seed_groups(runs)
    out = out or dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(headers, shown)
    sections = []
    if groups:
        g_headers, g_shown, g_saved = group_table(groups)
        sections.append(f"## Seeds\n\n{SEEDS_NOTE}\n\n{markdown(g_headers, g_shown)}")
        write_csv(out / "groups.csv", list(g_saved[0]), [list(r.values()) for r in g_saved])
    c_headers, c_rows = confusion_table(runs, keys)
    if c_rows:
        sections.append(
            "## Most confused classes\n\nThe class pairs each run's final test confusion matrix "
            "mixes up most (the images of either class taken for the other, both ways), from "
            f"its {CONFUSION_FILE}.\n\n{markdown(c_headers, c_rows)}\n"
            "![confusions](confusions.png)\n"
        )
    body = "\n".join([text, *sections])
    write_text(
        out / "report.md",
        f"# Comparison of {len(runs)} runs\n\n{body}\n![curves](curves.png)\n\n"
        "![tradeoffs](tradeoffs.png)\n",
    )
    write_csv(out / "report.csv", [*headers[:-1], "run_dir"], raw)
    figures(runs, out, groups)
    return body


def recipe_report(root: Path, out: Path | None) -> None:
    """docs/results/README.md: the measured recipes against their sources."""
    try:
        found = recipes.collect(root)
        if not found:
            raise ReportError(f"no finished runs under {root} (<recipe>/seed<N>/results.json)")
        text = recipes.table(found, link=root.as_posix())  # links for the top README
        page = recipes.table(found, link=".")
        write_text((out or root) / "README.md", f"# The textbook recipes, measured\n\n{page}")
    except (ReportError, ConfigError, OSError) as err:
        fail("cnnbench.report", err)
    print(text, end="")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cnnbench.report",
        description="Compare runs: one row per results.json below the directories, plus figures.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, help="where to write (default: the first directory)")
    parser.add_argument(
        "--recipes",
        action="store_true",
        help="the textbook recipes' table: <dir>/<recipe>/seed<N>/ against their sources",
    )
    args = parser.parse_args(argv)
    if args.recipes:
        return recipe_report(args.dirs[0], args.out)
    try:
        text = report(args.dirs, args.out)
    except (ReportError, OSError) as err:
        fail("cnnbench.report", err)
    print(text)
    print(f"report.md, report.csv, curves.png, tradeoffs.png: {args.out or args.dirs[0]}")
    if "## Seeds" in text:
        print("groups.csv: the seed groups' means, standard deviations and t-tests")


if __name__ == "__main__":
    main()
