"""The command line: `python -m cnnbench [overrides]` (and `cnnbench`, the console script).

Before Hydra starts, the overrides are checked: an unknown option, a misspelt key or a bad
value stops with one line and exit code 2, before Hydra creates a run directory, and before
torch is imported (it is imported where training starts). Then Hydra composes the run and
`run()` trains it, turning every way a run can end into its message and exit code:
0 ok, 1 diverged, 2 a bad input, 128 + N stopped by signal N.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from cnnbench import cores
from cnnbench.atomic import write_text
from cnnbench.config import (
    CONFIG_DIR,
    class_name,
    compose,
    resolved,
    validate,
)
from cnnbench.errors import USER_ERRORS, ConfigError, WriteError, fail
from cnnbench.report import ReportError, find_runs
from cnnbench.rundir import check_writable, claim, launched
from cnnbench.runs import objective, read_results
from cnnbench.startup import Phases

log = logging.getLogger("cnnbench.train")
# this process's start-up, phase by phase: marked here, then handed to train() (startup.py)
STARTUP = Phases()


def tell(*args, **kwargs) -> None:
    """print() on rank 0 only: the other processes of a distributed run would say the same."""
    if os.environ.get("RANK", "0") == "0":
        print(*args, **kwargs)


# ---------------------------------------------------------------------------- before Hydra


def parse(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        fail("cnnbench", f"{err}".splitlines()[0] + " (overrides are key=value, e.g. model=mlp)")


def checked_before_hydra(flags: argparse.Namespace) -> bool:
    """A run of the shipped configs; not --help, --cfg and the like, which train nothing, and
    not another primary config (--config-dir ...), which train() checks instead."""
    queries = flags.help or flags.hydra_help or flags.cfg or flags.info or flags.shell_completion
    other_config = flags.config_path or flags.config_name or flags.config_dir
    return not (queries or other_config or flags.experimental_rerun)


def check_overrides(args: list[str], multirun: bool) -> None:
    """Refuse what Hydra would refuse (an unknown option, a misspelt key, a value of the wrong
    type) and what the run would refuse (a value out of range), with one line each, before
    Hydra creates a run directory."""
    overrides = parse(args)
    try:
        first, *others = job_variants(overrides)
        cfg = compose(first, hydra_config=True)
        params = sweeper_params(cfg, overrides)
        if params:  # a named sweep (conf/sweep/): its lists are tried as the command line's
            first, *others = job_variants(params + overrides)
            cfg = compose(first, hydra_config=True)
        for variant in others:
            compose(variant)
        sweep = multirun or cfg.hydra.mode == RunMode.MULTIRUN
        if not sweep:  # a sweep's jobs are checked one by one (README: sweeps)
            del cfg.hydra
            validate(cfg, given={o.key_or_group: o.value() for o in overrides})
    except ConfigError as err:
        fail("cnnbench", err)


def sweeper_params(cfg: DictConfig, overrides: list[Override]) -> list[Override]:
    """The lists of a config's hydra.sweeper.params (a conf/sweep/ file) that the command
    line does not replace, for Hydra's basic sweeper; Optuna's search spaces are its own."""
    sweeper = cfg.hydra.sweeper
    if "BasicSweeper" not in str(sweeper.get("_target_", "")) or not sweeper.get("params"):
        return []
    given = {o.key_or_group for o in overrides}
    params = parse([f"{k}={v}" for k, v in sweeper.params.items()])
    return [p for p in params if p.key_or_group not in given]


def job_variants(overrides: list[Override]) -> list[list[str]]:
    """The overrides of a sweep's first job, then of one job for every other value of each
    swept key (model=lenet,resnt tries resnt): every option and key any job uses is tried,
    at a few compositions rather than one per job."""

    def one(o: Override, value: str) -> str:
        return f"{o.get_key_element()}={value}"

    first = [
        one(o, next(o.sweep_string_iterator())) if o.is_sweep_override() else o.input_line
        for o in overrides
    ]
    variants = [first]
    for i, o in enumerate(overrides):
        if o.is_sweep_override():
            variants += [
                [*first[:i], one(o, v), *first[i + 1 :]]
                for v in list(o.sweep_string_iterator())[1:]
            ]
    return variants


def check_run_dir(overrides: list[Override]) -> None:
    """Hydra creates the run directory before any of cnnbench's code runs: one that cannot be
    written, or that holds a run already, is refused first."""
    resuming = any(o.key_or_group == "trainer.resume" for o in overrides)
    for o in overrides:
        value = o.value()
        # an interpolated directory is checked by conf/config.yaml's resolver instead
        given = isinstance(value, str) and "${" not in value
        if o.key_or_group in ("hydra.run.dir", "hydra.sweep.dir") and given:
            check_writable(value)
        if o.key_or_group == "hydra.run.dir" and given and not resuming:
            folder = Path(value).expanduser()
            if (folder / "metrics.csv").exists():
                try:  # refused before Hydra writes its .hydra/ files into the run there
                    claim(folder, restart=False)
                except ConfigError as err:
                    fail("cnnbench", err)


def main() -> None:
    """The console entry point. Under torchrun, the processes then join up (so that they
    agree on the run directory), and only rank 0 writes Hydra's files and logs."""
    STARTUP.mark("python_and_cli_imports")  # from the process's start
    cores.quiet_openmp()  # before torch (and its OpenMP) is imported
    cores.register()  # other runs started now share the cores with this one
    flags = get_args_parser().parse_args()  # Hydra's own, as hydra_main() will parse them
    if checked_before_hydra(flags):
        check_overrides(flags.overrides, flags.multirun)
    check_run_dir(parse(flags.overrides))
    STARTUP.mark("checks")
    if not launched():
        hydra_main()
        return
    from cnnbench import distributed

    distributed.init()
    if not distributed.is_main():
        quiet = ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
        sys.argv += ["hydra.output_subdir=null", *quiet]
    try:
        hydra_main()
    except BaseException:  # an error or a signal: the processes need not meet again
        distributed.close()
        raise
    distributed.close(together=True)


# ---------------------------------------------------------------------------- the run


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """One run (or one job of a sweep). Returns what a sweeper maximises."""
    STARTUP.mark("hydra")  # Hydra's compose, its run directory and logging
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if "joblib" in str(hydra_cfg.launcher.get("_target_", "")).lower():
        os.environ["CNNBENCH_JOBS"] = str(joblib_jobs(hydra_cfg.launcher.n_jobs))
    searching = "optuna" in str(hydra_cfg.sweeper.get("_target_", "")).lower()
    if searching and not cfg.dataset.val_size:  # the same for every trial: the search stops
        fail(
            "cnnbench",
            "a hyperparameter search needs a validation split, so that it never tunes on the "
            "test set: set dataset.val_size, e.g. dataset.val_size=10000",
        )
    try:
        results = run(cfg, out_dir, sweep)
    except BaseException as err:
        return ending(err, cfg, out_dir, sweep, searching)
    finally:
        STARTUP.restart()  # a sweep's next job in this process counts from here
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


def run(cfg: DictConfig, out_dir: Path, sweep: bool) -> dict:
    """Train, resume or, for a run that has finished, report it."""
    from cnnbench import checkpoint
    from cnnbench.train import train  # torch is imported here, where training starts

    STARTUP.mark("import_torch")
    resume = to_resume(cfg.trainer.resume, out_dir)
    if sweep and cfg.trainer.resume is None and (out_dir / "last.pt").is_file():
        resume = out_dir / "last.pt"  # the same sweep run again: this job goes on
    results = read_results(out_dir) if resume else None
    if results and finished(results, cfg):
        checkpoint.check_same_run(results["config"], out_dir, resolved(cfg))
        tell(f"already finished: test accuracy {results['test_acc']:.4f} - {out_dir}")
        return results
    return train(cfg, out_dir, resume, restart=sweep, startup=STARTUP)


def joblib_jobs(n_jobs: int | None) -> int:
    """The jobs joblib runs at once: n_jobs, where -1 is every core, -2 all but one, ..."""
    cores_ = cores.usable_cores()
    if n_jobs is None or n_jobs == 0:
        return 1
    return n_jobs if n_jobs > 0 else max(1, cores_ + 1 + n_jobs)


def to_resume(setting: str | None, out_dir: Path) -> Path | None:
    """trainer.resume: null starts afresh; a path names a checkpoint or run directory;
    auto takes this directory's last.pt, which conf/config.yaml's run-directory resolver
    chose as the newest run with the same config (none: a fresh run)."""
    from cnnbench import checkpoint

    if setting is None:
        return None
    if setting == "auto":
        return out_dir / "last.pt" if (out_dir / "last.pt").is_file() else None
    return checkpoint.find(setting)


def finished(results: dict, cfg: DictConfig) -> bool:
    """results.json of a run that trained all of cfg's epochs."""
    return results.get("status") == "ok" and results.get("epochs_done") == cfg.trainer.epochs


def score(results: dict) -> float:
    """The value a sweeper (Optuna) maximises. A failed or diverged run scores 0, the worst
    accuracy, so that a search goes on: hydra-optuna-sweeper stops at a NaN."""
    value = objective(results)
    return 0.0 if value is None else value


# ---------------------------------------------------------------------------- how a run ends


def ending(err: BaseException, cfg: DictConfig, out_dir: Path, sweep: bool, searching: bool):
    """The message and exit code of a run that did not finish; in a sweep, a job that failed
    is recorded and the sweep goes on (returns its score)."""
    from cnnbench.signals import Interrupted

    if isinstance(err, Interrupted):
        if searching:  # a new search draws new trials: this one is not picked up again
            tell(
                f"cnnbench: {err}; trial {HydraConfig.get().job.num} is abandoned (its "
                f"checkpoint is {err.checkpoint}). Running the same command again adds new "
                "trials to the study.",
                file=sys.stderr,
            )
        else:
            tell(
                f"cnnbench: {err}; checkpoint saved to {err.checkpoint}. Resume with:\n"
                f"  {resume_command(out_dir, sweep)}",
                file=sys.stderr,
            )
        sys.exit(128 + err.signum)
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
        discard_unclaimed(out_dir)
        fail("cnnbench", f"{err}{resume_hint(err, out_dir)}")
    tell(f"cnnbench: error: {err}", file=sys.stderr)
    if not known:
        log.exception(f"job {HydraConfig.get().job.num} failed")
    recorded = (read_results(out_dir) or {}).get("status") == "error"
    if os.environ.get("RANK", "0") == "0" and not recorded:  # an error before train() got far
        from cnnbench.runlog import record_failure

        record_failure(out_dir, err, resolved(cfg))
    return score({})


def resume_hint(err: Exception, out_dir: Path) -> str:
    """A full disk stops a run that can go on once there is room."""
    if isinstance(err, WriteError) and (out_dir / "last.pt").is_file():
        return f". Make room, then resume with:\n  {resume_command(out_dir, sweep=False)}"
    return ""


def discard_unclaimed(out_dir: Path) -> None:
    """A run refused before it claimed its directory leaves none behind: Hydra made it, with
    nothing in it but its own .hydra/ and train.log."""
    if os.environ.get("RANK", "0") != "0" or not out_dir.is_dir():
        return
    if set(os.listdir(out_dir)) <= {".hydra", "train.log"} and out_dir.resolve() != Path.cwd():
        for handler in logging.getLogger().handlers[:]:  # Hydra's holds train.log open
            if (
                isinstance(handler, logging.FileHandler)
                and Path(handler.baseFilename).parent == out_dir.resolve()
            ):
                handler.close()
                logging.getLogger().removeHandler(handler)
        shutil.rmtree(out_dir, ignore_errors=True)
        if out_dir.resolve().parent.parent == Path("outputs").resolve():  # the default layout
            with contextlib.suppress(OSError):  # outputs/<date>/ and outputs/, left empty
                out_dir.parent.rmdir()
                out_dir.parent.parent.rmdir()


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


class CheckRunDir(Callback):
    """Hydra makes the run's (or the sweep's) directory right after these hooks: one that
    cannot be written is refused first, with one line and exit code 2."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(config.hydra.sweep.dir)


class TorchrunSweeps(Callback):
    """Under torchrun, a sweep runs its jobs one after another, each on all processes. A
    sweeper or launcher of its own (Optuna, joblib, submitit) would have each process draw
    or start jobs alone: refused before the first job, once, on rank 0."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        plugins = [str(config.hydra[k].get("_target_", "")) for k in ("sweeper", "launcher")]
        parting = [class_name(p) for p in plugins if ".Basic" not in p]
        if launched() and parting:
            fail(
                "cnnbench",
                "under torchrun a sweep runs its jobs one after another on all processes, with "
                f"Hydra's basic sweeper and launcher; with {' and '.join(parting)} the processes "
                "would each go their own way. Run it without torchrun.",
            )


class WriteBestRun(Callback):
    """At the end of a sweep, copy its best run's composed config to best_config.yaml in the
    sweep directory, and write best_trial.yaml: the run, its objective and the command that
    reruns it."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        # a sweep under torchrun: rank 0 writes (RANK, as this module does not import torch)
        if os.environ.get("RANK", "0") != "0":
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            runs = find_runs([sweep_dir])
        except ReportError:
            return
        counts: dict[str, int] = {}
        for r in runs:
            status = r.results.get("status", "?")
            counts[status] = counts.get(status, 0) + 1
        scored = [(objective(r.results), r) for r in runs if objective(r.results) is not None]
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        print(f"sweep {sweep_dir}: {len(runs)} runs ({summary})")
        if not scored:
            return
        value, best = max(scored, key=lambda pair: pair[0])
        saved = best.path / ".hydra" / "config.yaml"
        if not saved.is_file():
            return
        shutil.copyfile(saved, sweep_dir / "best_config.yaml")
        metric = "val_acc" if best.results.get("val_acc") is not None else "test_acc"
        command = (
            f"python -m cnnbench --config-dir {shlex.quote(str(sweep_dir.absolute()))} "
            "--config-name best_config"
        )
        write_text(
            sweep_dir / "best_trial.yaml",
            f"run_dir: {best.path}\nobjective: {metric}\nvalue: {value}\nrerun: {command}\n",
        )
        print(f"best run: {best.path} ({metric} {value:.4f}); rerun it with:\n  {command}")
