"""`hydra/launcher=packed`: a sweep whose compatible points train together (issue 30).

Hydra's basic launcher trains a sweep's points one after another. This one groups the jobs
that differ only in what a member of a pack may (cnnbench.group.groups: the optimizer's and
the schedule's settings, the seed, model.init, label smoothing, the augmentation) and trains
each group as one pack (cnnbench.group.train_group): one vmapped step for all its members,
each member a full run in its own job directory. Where packing is slower, on this kind of
2-core CPU (docs/performance.md), `pack=auto` trains the points one after another, as the
basic launcher does; `hydra.launcher.pack=true|false` decides instead.

No `from __future__ import annotations` here: Hydra imports its plugins' modules in a way that
leaves them out of sys.modules while their dataclasses are made.
"""

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

# members per pack by device type: on a GPU, 16 small nets fill the kernels (issue 30's
# measurement) and a pack that does not fit is halved; on a CPU a pack is for equal curves,
# not speed (docs/performance.md)
MEMBERS = {"cuda": 16, "cpu": 8}


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.cnnbench_launcher.packed_launcher.PackedLauncher"
    # auto: packed on CUDA, one after another elsewhere; true; false
    pack: str = "auto"
    # the most points in one pack (null: the device's default, MEMBERS)
    max_members: int | None = None


ConfigStore.instance().store(
    group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="cnnbench"
)


@dataclass
class Job:
    num: int
    overrides: list[str]
    config: DictConfig  # with its hydra node, as run_job takes it


class PackedLauncher(Launcher):
    def __init__(self, pack: str = "auto", max_members: int | None = None) -> None:
        self.pack = str(pack).lower()
        self.max_members = max_members
        self.device_type = "cpu"
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self.job(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        packing, why = self.packing(self.task(jobs[0]))
        found = self.groups(jobs) if packing else [[i] for i in range(len(jobs))]
        how = "one after another"
        if packing:
            how = f"each group trained as one pack of at most {self.size()} members"
        log.info(f"packed launcher: {len(jobs)} jobs in {len(found)} groups; {how} ({why})")
        returns: dict[int, JobReturn] = {}
        for group in found:
            returns.update(self.run_group(jobs, group) if packing else self.run_each(jobs, group))
        return [returns[i] for i in range(len(jobs))]

    def run_each(self, jobs: list[Job], group: list[int]) -> dict[int, JobReturn]:
        return {i: self.run_alone(jobs[i]) for i in group}

    def run_group(self, jobs: list[Job], group: list[int]) -> dict[int, JobReturn]:
        """One pack, or, when it does not fit in the device's memory, two of half the size."""
        import torch

        if len(group) == 1:
            return self.run_each(jobs, group)
        try:
            return dict(zip(group, self.run_together([jobs[i] for i in group]), strict=True))
        except torch.OutOfMemoryError:
            half = len(group) // 2
            log.info(
                f"packed launcher: {len(group)} members do not fit in the device's memory; "
                f"packing {half} and {len(group) - half} (hydra.launcher.max_members caps a pack)"
            )
            torch.cuda.empty_cache()
            return self.run_group(jobs, group[:half]) | self.run_group(jobs, group[half:])

    def groups(self, jobs: list[Job]) -> list[list[int]]:
        """The jobs' indices in packs of at most max_members. A job that cannot start trains
        alone, where it fails and is recorded as in any sweep."""
        from cnnbench.config import resolved
        from cnnbench.group import groups

        startable = [i for i, job in enumerate(jobs) if self.can_start(job)]
        tasks = [resolved(self.task(jobs[i])) for i in startable]
        found = [[startable[i] for i in group] for group in groups(tasks)]
        found += [[i] for i in range(len(jobs)) if i not in startable]
        return [g[k : k + self.size()] for g in found for k in range(0, len(g), self.size())]

    def job(self, num: int, overrides: list[str]) -> Job:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = num
            config.hydra.job.num = num
        return Job(num, overrides, config)

    def size(self) -> int:
        """hydra.launcher.max_members, or the device's default."""
        return self.max_members or MEMBERS.get(self.device_type, MEMBERS["cpu"])

    def can_start(self, job: Job) -> bool:
        from cnnbench.errors import USER_ERRORS
        from cnnbench.train import preflight

        task = self.task(job)
        last = Path(job.config.hydra.sweep.dir) / str(job.config.hydra.sweep.subdir) / "last.pt"
        try:
            preflight(task, last if last.is_file() else None)
        except USER_ERRORS:
            return False
        return True

    @staticmethod
    def task(job: Job) -> DictConfig:
        return OmegaConf.masked_copy(job.config, [k for k in job.config if k != "hydra"])

    def packing(self, task: DictConfig) -> tuple[bool, str]:
        from cnnbench.distributed import resolve_device
        from cnnbench.errors import ConfigError

        try:
            device = resolve_device(task.trainer.device)
        except ConfigError:  # the job says so when it runs
            return False, f"trainer.device={task.trainer.device} is not a device here"
        self.device_type = device.type
        if self.pack in ("true", "false"):
            return self.pack == "true", f"hydra.launcher.pack={self.pack}"
        if device.type == "cuda":
            return True, "CUDA: a pack's step is one set of larger kernels"
        return False, f"{device.type}: packing is slower here, docs/performance.md"

    def run_alone(self, job: Job) -> JobReturn:
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=job.config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def run_together(self, jobs: list[Job]) -> list[JobReturn]:
        """Hydra makes each member's job directory (its .hydra/ files and train.log) as for a
        job of its own; then the members train as one pack, each logging to its train.log.
        A member that finished (the same sweep run again) is reported, not trained."""
        from cnnbench.ending import ending, score, tell
        from cnnbench.group import train_group
        from cnnbench.runs import read_results

        prepared = [self.prepare(job) for job in jobs]
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        dirs = [Path(ret.hydra_cfg.hydra.runtime.output_dir) for ret in prepared]
        done = [read_results(d) or {} for d in dirs]
        todo = [
            i
            for i, (ret, result) in enumerate(zip(prepared, done, strict=True))
            if not (
                result.get("status") == "ok" and result.get("epochs_done") == ret.cfg.trainer.epochs
            )
        ]
        resumes = {i: dirs[i] / "last.pt" for i in todo if (dirs[i] / "last.pt").is_file()}
        # lockstep needs one position: members resumed at different steps pack apart
        at: dict[int, list[int]] = {}
        for i in todo:
            at.setdefault(checkpoint_step(resumes.get(i)), []).append(i)
        for members in at.values():
            loggers = [member_logger(jobs[i], dirs[i]) for i in members]
            cfgs = [prepared[i].cfg for i in members]
            try:
                trained = train_group(
                    cfgs, [dirs[i] for i in members], [resumes.get(i) for i in members], loggers
                )
            except BaseException as err:
                if type(err).__name__ == "OutOfMemoryError":  # run_group tries smaller packs
                    raise
                HydraConfig.instance().set_config(jobs[members[0]].config)
                ending(err, cfgs[0], dirs[members[0]], sweep=True)
                raise
            finally:
                for logger in loggers:
                    for handler in logger.handlers:
                        handler.close()
                    logger.handlers.clear()
            for i, result in zip(members, trained, strict=True):
                done[i] = result
        for ret, result, d in zip(prepared, done, dirs, strict=True):
            ret.return_value = score(result)
            ret.status = JobStatus.COMPLETED
            if result["status"] == "ok":
                tell(
                    f"test accuracy {result['test_acc']:.4f} (best {result['best_test_acc']:.4f}, "
                    f"epoch {result['best_epoch']}) - {d}"
                )
            else:
                tell(f"cnnbench: run {result['status']} - {d}", file=sys.stderr)
        return prepared

    def prepare(self, job: Job) -> JobReturn:
        return run_job(
            hydra_context=self.hydra_context,
            task_function=lambda cfg: None,  # the directory only: the pack trains below
            config=job.config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


def checkpoint_step(path: Path | None) -> int:
    """The optimizer step a member resumes at (0: a new run)."""
    if path is None:
        return 0
    from cnnbench import checkpoint

    return int(checkpoint.load(path)["step"])


def member_logger(job: Job, run_dir: Path) -> logging.Logger:
    """A member's lines: to the console, as a job's are, and to its own train.log; not to the
    launcher's handlers, which would print them as Hydra's own."""
    logger = logging.getLogger(f"cnnbench.train.job{job.num}")
    logger.propagate = False
    formatter = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / "train.log")):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger
