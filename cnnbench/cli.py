"""The command line: `python -m cnnbench [overrides]` (and `cnnbench`, the console script).

Hydra composes the run and calls the task function below; conf/config.yaml's callbacks
(hooks.py) check the run before Hydra makes its directory. Hydra reports what it cannot
compose in its own words and exit code 1, so the overrides of a run are composed once with
Hydra's Compose API first, which turns such an error into one line and exit code 2.
The task function trains; ending.py turns every way a run can end into its message and exit
code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from cnnbench import config, cores
from cnnbench.ending import ending, score, tell
from cnnbench.errors import ConfigError, fail
from cnnbench.rundir import launched
from cnnbench.runs import read_results
from cnnbench.startup import Phases


def main() -> None:
    """The console entry point. Under torchrun, the processes join up first (so that they
    agree on the run directory); conf/config.yaml has only rank 0 write Hydra's files."""
    startup = Phases()  # this process's start-up, phase by phase, from its start
    startup.mark("python_and_cli_imports")
    cores.quiet_openmp()  # before torch (and its OpenMP) is imported
    cores.register()  # other runs started now share the cores with this one
    config.setup()
    check_overrides(sys.argv[1:])
    startup.mark("checks")

    @hydra.main(version_base="1.3", config_path=str(config.CONFIG_DIR), config_name="config")
    def task(cfg: DictConfig) -> float:
        return run_task(cfg, startup)

    if not launched():
        task()
        return
    from cnnbench import distributed

    config.setup(started=distributed.init())
    try:
        task()
    except BaseException:  # an error or a signal: the processes need not meet again
        distributed.close()
        raise
    distributed.close(together=True)


def check_overrides(args: list[str]) -> None:
    """Compose the overrides of a run or a sweep (one job for every value each swept key
    takes: model=lenet,resnt tries resnt). Not for --help, --cfg, another config and the
    like, which Hydra answers itself."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return
    overrides = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        fail("cnnbench", f"{err}".splitlines()[0] + " (overrides are key=value, e.g. model=mlp)")
    # an interval or glob() is the sweeper's to draw or expand: left to it
    parsed = [o for o in parsed if not o.is_sweep_override() or _listed(o)]
    first = [
        f"{o.get_key_element()}={_listed(o)[0]}" if o.is_sweep_override() else o.input_line
        for o in parsed
    ]
    others = [
        [*first[:i], f"{o.get_key_element()}={value}", *first[i + 1 :]]
        for i, o in enumerate(parsed)
        if o.is_sweep_override()
        for value in _listed(o)[1:]
    ]
    try:
        for overrides in [first, *others]:
            config.compose(overrides)
    except ConfigError as err:
        fail("cnnbench", err)


def _listed(override: Override) -> list[str]:
    """The values of a choice or range sweep; none for an interval or glob()."""
    try:
        return list(override.sweep_string_iterator())
    except HydraException:
        return []


# ---------------------------------------------------------------------------- the run


def run_task(cfg: DictConfig, startup: Phases) -> float:
    """One run (or one job of a sweep). Returns what a sweeper maximises."""
    # Hydra's compose, hooks.StartRun's checks (they import torch and read the data), the run
    # directory and logging
    startup.mark("hydra")
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    jobs = 1
    if "joblib" in str(hydra_cfg.launcher.get("_target_", "")).lower():
        jobs = joblib_jobs(hydra_cfg.launcher.n_jobs)
    try:
        results = run(cfg, out_dir, sweep, startup, jobs)
    except BaseException as err:
        return ending(err, cfg, out_dir, sweep)
    finally:
        startup.restart()  # a sweep's next job in this process counts from here
    if results["status"] != "ok":
        tell(f"cnnbench: run {results['status']} - {out_dir}", file=sys.stderr)
        if not sweep:
            sys.exit(1)
        return score(results)
    tell(
        f"test accuracy {results['test_acc']:.4f} (best {results['best_test_acc']:.4f}, "
        f"epoch {results['best_epoch']}) - {out_dir}"
    )
    return score(results)


def run(cfg: DictConfig, out_dir: Path, sweep: bool, startup: Phases, jobs: int) -> dict:
    """Train, resume or, for a run that has finished, report it."""
    from cnnbench import checkpoint
    from cnnbench.train import train

    startup.mark("import_train")
    resume = None
    if cfg.trainer.resume not in (None, "auto"):
        resume = checkpoint.find(cfg.trainer.resume)
    elif (out_dir / "last.pt").is_file() and (sweep or cfg.trainer.resume == "auto"):
        resume = out_dir / "last.pt"  # the run that hooks.StartRun found, or the sweep's job
    results = read_results(out_dir) if resume else None
    if results and finished(results, cfg):
        checkpoint.check_same_run(results["config"], out_dir, config.resolved(cfg))
        tell(f"already finished: test accuracy {results['test_acc']:.4f} - {out_dir}")
        return results
    return train(cfg, out_dir, resume, restart=sweep, startup=startup, jobs=jobs)


def joblib_jobs(n_jobs: int | None) -> int:
    """The jobs joblib runs at once: n_jobs, where -1 is every core, -2 all but one, ..."""
    cores_ = cores.usable_cores()
    if n_jobs is None or n_jobs == 0:
        return 1
    return n_jobs if n_jobs > 0 else max(1, cores_ + 1 + n_jobs)


def finished(results: dict, cfg: DictConfig) -> bool:
    """results.json of a run that trained all of cfg's epochs."""
    return results.get("status") == "ok" and results.get("epochs_done") == cfg.trainer.epochs
