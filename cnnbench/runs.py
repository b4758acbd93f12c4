"""Run directories: what a run leaves behind and how runs are told apart. No torch here, so
that the report reads runs quickly.

A run directory holds results.json (written whole, strict JSON), metrics.csv (a row per
epoch), TensorBoard events, last.pt / best.pt and, for a command-line run, Hydra's .hydra/.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

# settings that do not change what a run computes: they are left out of the names of sweep
# directories, and trainer.resume=auto ignores them when it looks for the same config
NOT_IDENTITY = (
    "trainer.resume",
    "trainer.device",
    "trainer.threads",
    "trainer.log_every_n_steps",
    "dataset.root",
    "dataset.cache_dir",
    "dataset.download",
)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# settings added since the first release, and what a run saved before them had
ADDED_SETTINGS = {
    "trainer.deterministic": False,
    "trainer.matmul_precision": "highest",
    "trainer.threads": None,
    "trainer.tta": "none",
    "trainer.cuda_graph": "auto",
}


def run_identity(cfg: dict) -> dict:
    flat = ADDED_SETTINGS | flatten({k: v for k, v in cfg.items() if k != "hydra"})
    if "trainer.precision" in flat:  # a number in runs saved before the typed schema
        flat["trainer.precision"] = str(flat["trainer.precision"])
    return {k: v for k, v in flat.items() if k not in NOT_IDENTITY}


def newest_matching_run(cfg: dict, base: Path = Path("outputs")) -> Path | None:
    """The run directory under `base` with the newest last.pt whose saved config
    (.hydra/config.yaml) equals `cfg`, apart from NOT_IDENTITY."""
    mine = run_identity(cfg)
    for last in sorted(base.glob("**/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            theirs = OmegaConf.to_container(OmegaConf.load(last.parent / ".hydra" / "config.yaml"))
        except (OSError, ValueError, OmegaConfBaseException):
            continue
        if run_identity(theirs) == mine:
            return last.parent
    return None


def read_results(run_dir: Path) -> dict | None:
    """A run directory's results.json; None when there is none or it cannot be read."""
    try:
        results = json.loads((Path(run_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def objective(results: dict) -> float | None:
    """What a sweep optimises: validation accuracy when the run held out a validation split,
    else test accuracy; None for a run that did not finish."""
    if results.get("status") != "ok":
        return None
    return results.get(objective_name(results))


def objective_name(results: dict) -> str:
    """val_acc where the run held out a validation split, else test_acc."""
    return "val_acc" if results.get("val_acc") is not None else "test_acc"


# ---------------------------------------------------------------------------- confusions

# the test confusion matrix at the end of a run (train.py), beside results.json
CONFUSION_FILE = "confusion_matrix.csv"


def confusion_csv(matrix: list[list[int]], classes: tuple[str, ...] | list[str]) -> str:
    """Row = true class, column = predicted, as counts; the classes head rows and columns."""
    text = io.StringIO(newline="")
    out = csv.writer(text)
    out.writerow(["true \\ predicted", *classes])
    for cls, row in zip(classes, matrix, strict=True):
        out.writerow([cls, *row])
    return text.getvalue()


def read_confusion(path: Path) -> tuple[list[str], list[list[int]]] | None:
    """(classes, matrix) of a confusion_matrix.csv; None when there is none or it is not one."""
    try:
        with open(path, newline="") as f:
            header, *rows = list(csv.reader(f))
        classes = header[1:]
        matrix = [[int(n) for n in row[1:]] for row in rows]
    except (OSError, ValueError, IndexError):
        return None
    square = len(matrix) == len(classes) and all(len(r) == len(classes) for r in matrix)
    return (classes, matrix) if square and classes else None


def confused_pairs(
    classes: list[str], matrix: list[list[int]], k: int = 3
) -> list[tuple[str, str, int]]:
    """The `k` pairs of classes mistaken for each other most often, both ways counted:
    (a, b, errors), a the class more often taken for b than b for a; ties in class order."""
    pairs = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            a, b = (i, j) if matrix[i][j] >= matrix[j][i] else (j, i)
            pairs.append((classes[a], classes[b], matrix[i][j] + matrix[j][i]))
    pairs.sort(key=lambda p: -p[2])  # stable: ties stay in class order
    return [p for p in pairs[:k] if p[2] > 0]
