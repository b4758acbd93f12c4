"""The bench's whole-process section: what bench/process.py measures, printed as one line per
figure and returned for the JSON. `quick` shrinks every measurement to a few batches (tests)."""

from __future__ import annotations

import importlib.util
import time

from omegaconf import DictConfig

from cnnbench.bench.process import concurrency, recipe, startup, sweep, textbook_ratio
from cnnbench.cores import load_average as load
from cnnbench.cores import usable_cores


def say(line: str) -> None:
    print(line, flush=True)


def settle(cores: int, limit_s: float = 120.0) -> float:
    """Wait, up to `limit_s`, for the 1-minute load average to fall below the cores less a
    half: the table's in-process runs before this section raise it, and a run that starts
    while it is above the cores takes the machine for busy and lets its threads sleep."""
    start = time.monotonic()
    while (now := load()) is not None and now > cores - 0.5:
        if time.monotonic() - start > limit_s:
            break
        time.sleep(5)
    return time.monotonic() - start


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # not even its package: no Hydra plugin is installed
        return False


def whole_process(cfg: DictConfig, overrides: list[str], quick: bool) -> dict:
    """Start-up, runs at once, the joblib sweep, the textbook program and the fast recipes."""
    common = [o for o in overrides if not o.startswith("trainer.device=")]
    waited = 0.0 if quick else settle(usable_cores())
    out: dict = {"load_average_1min_at_start": load(), "waited_for_load_s": waited}
    say(f"\nwhole processes (1-minute load average {out['load_average_1min_at_start']:.2f})")
    out["startup"] = startup(common, repeats=1 if quick else 3)
    say(startup_line(out["startup"]))
    out["concurrency"] = concurrency(common, batches=4 if quick else 120)
    say(concurrency_line(out["concurrency"]))
    out["sweep"] = joblib_sweep(common, quick)
    out["textbook"] = textbook_ratio(
        str(cfg.dataset.root),
        common,
        epochs=1 if quick else 3,
        pairs=1 if quick else 2,
        batches=4 if quick else None,
    )
    say(textbook_line(out["textbook"]))
    out["recipes"] = fast_recipes(common, quick)
    out["load_average_1min_at_end"] = load()
    return out


def startup_line(s: dict) -> str:
    phases = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in s["phases_s"].items())
    return (
        f"start-up: first step at {s['cnnbench_first_step_s']:.2f} s; python -c 'import torch' "
        f"{s['import_torch_s']:.2f} s (gap {s['gap_s']:.2f} s); import torch + one optimizer "
        f"step {s['torch_first_step_s']:.2f} s\n  phases (s): {phases}"
    )


def concurrency_line(c: dict) -> str:
    return (
        f"two LeNet-5 runs at once: {sum(c['two_images_per_s']):,.0f} img/s in all against "
        f"{c['alone_images_per_s']:,.0f} alone: {c['two_total_over_alone']:.2f}x (before: "
        f"{sum(c['before_two_images_per_s']):,.0f} against {c['before_alone_images_per_s']:,.0f}"
        f", {c['before_two_total_over_alone']:.2f}x); alone now / before "
        f"{c['alone_over_before']:.2f}x; one thread alone {c['alone_one_thread_images_per_s']:,.0f}"
        f", twice that {c['two_one_thread_over_alone']:.2f}x one run alone"
    )


def joblib_sweep(common: list[str], quick: bool) -> dict | None:
    """The 2-job sweep, serially and through joblib; None without the joblib launcher."""
    if not installed("hydra_plugins.hydra_joblib_launcher"):
        say(
            "2-job sweep: skipped, hydra/launcher=joblib is not installed (the optional extra: "
            "pip install -e '.[parallel]')"
        )
        return None
    w = sweep(common, batches=4 if quick else 120)
    say(
        f"2-job sweep: serially {w['serial_s']:.1f} s, joblib n_jobs=2 "
        f"{w['joblib_2_jobs_s']:.1f} s: {w['serial_over_joblib']:.2f}x"
    )
    return w


def textbook_line(t: dict) -> str:
    pairs = "; ".join(
        f"{p['textbook_s']:.1f} s against {p['cnnbench_s']:.1f} s" for p in t["pairs"]
    )
    return (
        f"seed 000's recipe, {t['epochs']} epochs, whole process, textbook against cnnbench: "
        f"{pairs}; median {t['median_ratio']:.2f}x; the textbook's first epoch "
        f"{t['textbook_epoch1_s']:.1f} s"
    )


def fast_recipes(common: list[str], quick: bool) -> list[dict]:
    """fast_mnist (and fast_fashion unless quick) over their seeds, whole processes."""
    quick_limit = ["trainer.limit_train_batches=4", "trainer.limit_test_batches=1"]
    recipes = [("fast_mnist", [0] if quick else [0, 1, 2])]
    recipes += [] if quick else [("fast_fashion", [0, 1, 2])]
    measured = []
    for name, seeds in recipes:
        r = recipe(name, common, seeds, quick_limit if quick else [])
        measured.append(r)
        runs = "; ".join(
            f"seed {x['seed']}: {x['test_acc']:.4f} in {x['wall_s']:.1f} s" for x in r["runs"]
        )
        say(f"{name}: {runs}; median {r['median_test_acc']:.4f} in {r['median_wall_s']:.1f} s")
    return measured
