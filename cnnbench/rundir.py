"""Run directories: how conf/config.yaml names them (its `cnnbench.*` resolvers), whether one
can be written, and how a run claims one. No torch here: Hydra resolves these names before any
training code is imported.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from datetime import datetime
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from cnnbench.errors import ConfigError
from cnnbench.runs import NOT_IDENTITY, newest_matching_run


def launched() -> bool:
    """Started by torchrun (its agent sets TORCHELASTIC_RUN_ID), with any number of processes,
    or by another launcher with WORLD_SIZE > 1. From the environment: no torch import."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def sweep_name(argv: list[str] | None = None) -> str:
    """A sweep directory's name: the sweep's command line (without paths and devices), so that
    running the same sweep again finds its directory (and each job its own). Hydra resolves it
    once, at the start of the sweep, and hands the value to every job (the resolver caches)."""
    args = sys.argv[1:] if argv is None else argv
    # in the order given: Hydra numbers the jobs in that order
    kept = [
        a.replace("/", "_")
        for a in args
        if a not in ("-m", "--multirun")
        and not a.lstrip("+~").startswith("hydra")
        and a.split("=", 1)[0].lstrip("+~") not in NOT_IDENTITY
    ]
    name = "__".join(kept) or "defaults"
    if len(name) > 150:
        name = f"{name[:130]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def command_line() -> str:
    """The sweep's arguments, resolved once in the process that starts the sweep (the resolver
    caches, and Hydra copies the cache into every job's config, also to a submitit job that runs
    in another process)."""
    return shlex.join(sys.argv[1:])


def _key(override: str) -> str | None:
    try:
        return OverridesParser.create().parse_override(override).key_or_group
    except HydraException:
        return None


def job_name(num: int, args: str, task: list[str]) -> str:
    """A sweep job's directory, and so its TensorBoard run name: its number, then only what
    varies between the jobs: `3_model=lenet,trainer.seed=1`. A setting given one value on the
    command line (dataset=fashion_mnist, sweep=seeds) is the same in every job and left out,
    as are paths and devices (NOT_IDENTITY). One path component, short enough for any file
    system."""
    fixed = set(NOT_IDENTITY)
    for arg in shlex.split(args):
        if arg.startswith("-") or arg.lstrip("+~").startswith("hydra"):
            continue
        try:
            override = OverridesParser.create().parse_override(arg)
        except HydraException:
            continue
        if not override.is_sweep_override():
            fixed.add(override.key_or_group)
    varying = sorted(str(o) for o in task if _key(str(o)) not in fixed)
    name = ",".join(varying).replace("/", "_")[:150]
    return f"{num}_{name}" if name else str(num)


def make(folder: str) -> None:
    """Make the run's (or the sweep's) directory as the run starts, before Hydra writes into
    it, so that one that cannot be made is refused with one line and exit code 2."""
    try:
        path = Path(folder).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError("permission denied")
    except OSError as err:
        raise ConfigError(
            f"cannot write the run directory {folder} ({err.strerror or err}). Choose another, "
            "e.g. hydra.run.dir=outputs/my-run (hydra.sweep.dir for -m)"
        ) from None


def claim(out_dir: Path, restart: bool) -> bool:
    """Creating metrics.csv claims the directory, so two runs never share one. With `restart`
    (a sweep job run again before it saved a checkpoint), a claimed directory is taken over;
    the return value says whether it was."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        (out_dir / "metrics.csv").open("x").close()
    except FileExistsError:  # e.g. two runs started within the same second
        if restart:
            return True
        raise ConfigError(
            f"{out_dir} already holds a run; its metrics, events and results are left as they "
            "are. Give this run its own directory, e.g. hydra.run.dir=outputs/my-run, or "
            f"continue it with trainer.resume={out_dir}"
        ) from None
    return False


def unclaimed(folder: str) -> str:
    """The default run directory, or when a run started within the same second has claimed it
    already, the same name with -2, -3, ... (a run's directory is named by the second it
    started). Not under torchrun, where every process must name the same directory."""
    if launched():
        return folder
    path, n = Path(folder), 1
    while (path / "metrics.csv").exists():
        n += 1
        path = Path(f"{folder}-{n}")
    return str(path)


def resumed_dir(resume: str | None, cfg: dict) -> Path | None:
    """The directory of the run that trainer.resume continues: auto finds the newest run
    under outputs/ with this config (none: None, a new run)."""
    if resume is None:
        return None
    if resume == "auto":
        found = newest_matching_run(cfg)
        return found.absolute() if found else None
    path = Path(str(resume)).expanduser().absolute()
    if path.is_file():
        return path.parent
    return path if path.is_dir() else None  # no such path: checkpoint.find names the problem


def register_resolvers(started: datetime | None = None) -> None:
    """The `cnnbench.*` resolvers conf/config.yaml names its directories with. Each computes
    a name from its arguments, the command line and `started` (the run's start: under
    torchrun rank 0's, so that every process names the same directory); none touches a file."""
    started = started or datetime.now()

    def resolver(name: str, fn, **kwargs) -> None:
        OmegaConf.register_new_resolver(f"cnnbench.{name}", fn, replace=True, **kwargs)

    resolver("now", started.strftime, use_cache=True)
    resolver("unclaimed", unclaimed, use_cache=True)  # resolved once: claiming it changes it
    resolver("command_line", command_line, use_cache=True)
    resolver("sweep_name", lambda args: sweep_name(shlex.split(args)), use_cache=True)
    resolver("job_name", lambda num, args, task: job_name(num, args, list(task)))
    resolver("not_identity", lambda: list(NOT_IDENTITY))
    resolver("on_rank_zero", lambda value, other: value if rank_zero() else other)


def rank_zero() -> bool:
    """This process is torchrun's rank 0, or the only one (RANK: no torch import)."""
    return os.environ.get("RANK", "0") == "0"
