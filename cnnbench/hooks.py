"""Hydra callbacks (conf/config.yaml's hydra.callbacks): what happens as a run or a sweep
starts, before Hydra makes its directory, and as a sweep ends.

A run is checked here, once its config is composed and before anything is written: a bad
value, a device this machine lacks, a checkpoint that does not fit, data that cannot be read,
arguments the model's, optimizer's or schedule's class refuses, and a directory that holds a
run already are refused with one line and exit code 2, and leave nothing behind.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cnnbench import rundir
from cnnbench.atomic import write_text
from cnnbench.config import class_name, validate
from cnnbench.errors import USER_ERRORS, ConfigError, fail
from cnnbench.report import ReportError, find_runs
from cnnbench.runs import objective, objective_name


class StartRun(Callback):
    """Check a run, choose the directory it continues in (trainer.resume) and make it."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            validate(task)
            resume = continued(config, task)
            from cnnbench import distributed
            from cnnbench.train import preflight  # torch, once the values are known good

            checkpoint = preflight(task, resume)
            run_dir = Path(config.hydra.run.dir)
            own = checkpoint is not None and checkpoint.parent.resolve() == run_dir.resolve()
            # every torchrun process agrees, before rank 0 claims the directory
            if distributed.anyone((run_dir / "metrics.csv").exists() and not own):
                rundir.claim(run_dir, restart=False)  # refuses: another run's directory
            rundir.make(str(run_dir))
        except USER_ERRORS as err:
            fail("cnnbench", err)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        plugins = [str(config.hydra[k].get("_target_", "")) for k in ("sweeper", "launcher")]
        if rundir.launched() and (parting := [class_name(p) for p in plugins if ".Basic" not in p]):
            # each process would draw or start jobs alone
            fail(
                "cnnbench",
                "under torchrun a sweep runs its jobs one after another on all processes, with "
                f"Hydra's basic sweeper and launcher; with {' and '.join(parting)} the processes "
                "would each go their own way. Run it without torchrun.",
            )
        if "optuna" in plugins[0].lower() and not config.dataset.val_size:
            fail(
                "cnnbench",
                "a hyperparameter search needs a validation split, so that it never tunes on the "
                "test set: set dataset.val_size, e.g. dataset.val_size=10000",
            )
        try:
            rundir.make(config.hydra.sweep.dir)
        except ConfigError as err:
            fail("cnnbench", err)


def continued(config: DictConfig, task: DictConfig) -> str | Path | None:
    """What trainer.resume continues, as cli.run will: a checkpoint or run directory, or None
    for a new run. Without a hydra.run.dir on the command line, the run goes on in the resumed
    run's directory (auto: the newest run under outputs/ with this config)."""
    resume = task.trainer.resume
    if resume is None:
        return None
    given = any(o.startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra)
    if resume == "auto" and given:  # the given directory's own run, if it holds one
        last = Path(config.hydra.run.dir) / "last.pt"
        return last if last.is_file() else None
    found = rundir.resumed_dir(resume, OmegaConf.to_container(task))
    if found and not given:
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(found)
    return found if resume == "auto" else resume


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
        metric = objective_name(best.results)
        command = (
            f"python -m cnnbench --config-dir {shlex.quote(str(sweep_dir.absolute()))} "
            "--config-name best_config"
        )
        write_text(
            sweep_dir / "best_trial.yaml",
            f"run_dir: {best.path}\nobjective: {metric}\nvalue: {value}\nrerun: {command}\n",
        )
        print(f"best run: {best.path} ({metric} {value:.4f}); rerun it with:\n  {command}")
