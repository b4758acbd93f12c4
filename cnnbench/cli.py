"""The command line: `python -m cnnbench [overrides]` (and `cnnbench`, the console script).

Hydra composes the run and calls the task function below; conf/config.yaml's callbacks
(hooks.py) check the run before Hydra makes its directory. Hydra reports what it cannot
compose in its own words and exit code 1, so the overrides of a run are composed once with
Hydra's Compose API first, which turns such an error into one line and exit code 2.
The task function turns every way a run can end into its message and exit code: 0 ok,
1 diverged, 2 a bad input, 128 + N stopped by signal N.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from cnnbench import config, cores
from cnnbench.errors import USER_ERRORS, ConfigError, WriteError, fail
from cnnbench.rundir import launched
from cnnbench.runs import objective, read_results
from cnnbench.startup import Phases

log = logging.getLogger("cnnbench.train")


def tell(*args, **kwargs) -> None:
    """print() on rank 0 only: the other processes of a distributed run would say the same."""
    if os.environ.get("RANK", "0") == "0":
        print(*args, **kwargs)


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

    distributed.init()
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
    first = [
        f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
        if o.is_sweep_override()
        else o.input_line
        for o in parsed
    ]
    others = [
        [*first[:i], f"{o.get_key_element()}={value}", *first[i + 1 :]]
        for i, o in enumerate(parsed)
        if o.is_sweep_override()
        for value in list(o.sweep_string_iterator())[1:]
    ]
    try:
        for overrides in [first, *others]:
            config.compose(overrides)
    except ConfigError as err:
        fail("cnnbench", err)


# ---------------------------------------------------------------------------- the run


def run_task(cfg: DictConfig, startup: Phases) -> float:
    """One run (or one job of a sweep). Returns what a sweeper maximises."""
    startup.mark("hydra")  # Hydra's compose, its run directory and logging
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
    from cnnbench.train import train  # torch is imported here, where training starts

    startup.mark("import_torch")
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


def score(results: dict) -> float:
    """The value a sweeper (Optuna) maximises. A failed or diverged run scores 0, the worst
    accuracy, so that a search goes on: hydra-optuna-sweeper stops at a NaN."""
    value = objective(results)
    return 0.0 if value is None else value


# ---------------------------------------------------------------------------- how a run ends


def ending(err: BaseException, cfg: DictConfig, out_dir: Path, sweep: bool) -> float:
    """The message and exit code of a run that did not finish; in a sweep, a job that failed
    is recorded and the sweep goes on (returns its score)."""
    from cnnbench.signals import Interrupted

    if isinstance(err, Interrupted):
        stopped(err, out_dir, sweep)
    if isinstance(err, KeyboardInterrupt):
        last = out_dir / "last.pt"
        kept = f"the last checkpoint is {last}" if last.exists() else "no checkpoint was saved yet"
        tell(f"cnnbench: stopped at once; {kept}", file=sys.stderr)
        sys.exit(130)
    if not isinstance(err, Exception):
        raise err
    known = isinstance(err, USER_ERRORS)
    # under torchrun, a job that failed on one process cannot go on without it: all stop
    together = launched()
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if full or not (known or sweep) or (together and not known):
        raise err
    if not sweep or together:
        fail("cnnbench", f"{err}{resume_hint(err, out_dir)}")
    tell(f"cnnbench: error: {err}", file=sys.stderr)
    if not known:
        log.exception(f"job {HydraConfig.get().job.num} failed")
    recorded = (read_results(out_dir) or {}).get("status") == "error"
    if os.environ.get("RANK", "0") == "0" and not recorded:  # an error before train() got far
        from cnnbench.runlog import record_failure

        record_failure(out_dir, err, config.resolved(cfg))
    return score({})


def stopped(err, out_dir: Path, sweep: bool) -> None:
    """A run stopped by a signal, its checkpoint saved: how to go on."""
    if "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower():
        # a new search draws new trials: this one is not picked up again
        tell(
            f"cnnbench: {err}; trial {HydraConfig.get().job.num} is abandoned (its checkpoint "
            f"is {err.checkpoint}). Running the same command again adds new trials to the "
            "study.",
            file=sys.stderr,
        )
    else:
        tell(
            f"cnnbench: {err}; checkpoint saved to {err.checkpoint}. Resume with:\n"
            f"  {resume_command(out_dir, sweep)}",
            file=sys.stderr,
        )
    sys.exit(128 + err.signum)


def resume_hint(err: Exception, out_dir: Path) -> str:
    """A full disk stops a run that can go on once there is room."""
    if isinstance(err, WriteError) and (out_dir / "last.pt").is_file():
        return f". Make room, then resume with:\n  {resume_command(out_dir, sweep=False)}"
    return ""


def launcher() -> list[str]:
    """How this process was started: python -m, or torchrun with as many processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return ["python", "-m"]
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = world // per_node
    if nodes == 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={per_node}", "-m"]
    # several hosts: the rendezvous options of the first start are needed again
    return ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={per_node}", "<rdzv options>", "-m"]


def resume_command(out_dir: Path, sweep: bool) -> str:
    """The command that continues this run: the same sweep again, or this run's command line
    with trainer.resume pointing at its directory."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("trainer.resume=")]
    flags = [a for a in sys.argv[1:] if a.startswith(("--config", "-cp", "-cn", "-cd"))]
    if sweep:  # the sweep's own command line: every job of it goes on where it stopped
        return shlex.join([*launcher(), "cnnbench", *sys.argv[1:]])
    return shlex.join([*launcher(), "cnnbench", *flags, *overrides, f"trainer.resume={out_dir}"])
