"""How a run ends: every way a run can stop becomes its message and exit code: 0 ok,
1 diverged, 2 a bad input, 128 + N stopped by signal N. In a sweep, a job that failed is
recorded in its results.json and the sweep goes on.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cnnbench.config import resolved
from cnnbench.errors import USER_ERRORS, WriteError, fail
from cnnbench.rundir import launched
from cnnbench.runs import objective, read_results

log = logging.getLogger("cnnbench.train")


def tell(*args, **kwargs) -> None:
    """print() on rank 0 only: the other processes of a distributed run would say the same."""
    if os.environ.get("RANK", "0") == "0":
        print(*args, **kwargs)


def score(results: dict) -> float:
    """The value a sweeper (Optuna) maximises. A failed or diverged run scores 0, the worst
    accuracy, so that a search goes on: hydra-optuna-sweeper stops at a NaN."""
    value = objective(results)
    return 0.0 if value is None else value


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

        record_failure(out_dir, err, resolved(cfg))
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
