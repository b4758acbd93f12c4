"""Run directories: what a run leaves behind and how runs are told apart. No torch here, so
that the report reads runs quickly.

A run directory holds results.json (written whole, strict JSON), metrics.csv (a row per
epoch), TensorBoard events, last.pt / best.pt and, for a command-line run, Hydra's .hydra/.
"""

from __future__ import annotations

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
ADDED_SETTINGS = {"trainer.deterministic": False, "trainer.matmul_precision": "highest",
                  "trainer.threads": None, "trainer.tta": "none"}  # fmt: skip


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
    return results["val_acc"] if results.get("val_acc") is not None else results.get("test_acc")
