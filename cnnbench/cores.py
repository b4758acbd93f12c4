"""How many threads a run takes: the cores this process may use (`os.sched_getaffinity`),
shared among the processes that run together on them. No torch here: the OpenMP settings
must be in the environment before torch loads OpenMP, and the command line sets them first.

Who shares the cores, in the order asked:

1. `trainer.threads`, set by hand;
2. the processes a launcher started together: joblib's `n_jobs` (the command line hands it
   to `plan` as `jobs`) and torchrun's processes on this machine (LOCAL_WORLD_SIZE);
3. OMP_NUM_THREADS, when the user set it;
4. the other cnnbench runs live on this machine: each `python -m cnnbench` puts its process
   id in a folder of the temporary directory when it starts (before torch is imported), so
   that two runs started together find each other and take half the cores each. A paused
   run (Ctrl-Z; Linux) holds no core and does not count here.

Two processes that each take every core run slower together than one alone: an OpenMP
parallel region waits at its barrier for a thread that the other process holds. When a run
starts beside others (a launcher's jobs, other cnnbench runs, or a load above the cores), its
waiting threads sleep rather than spin (OMP_WAIT_POLICY=PASSIVE), so that an idle thread gives
its core to the other process. A run alone keeps OpenMP's default: sleeping at every barrier
made LeNet-5 train 1.3x slower on the 2-core machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
import time
from pathlib import Path

from cnnbench.startup import process_start

REGISTRY = (
    Path(tempfile.gettempdir()) / f"cnnbench-runs-{os.getuid() if hasattr(os, 'getuid') else 0}"
)


def usable_cores() -> int:
    """The cores this process may run on (a cgroup's or taskset's affinity mask counts)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning when other processes share the cores.
    Must run before torch is imported; a value the user set is kept (active spins)."""
    if local_processes() > 1 or others_running(paused=True) > 0 or busy():
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_average() -> float | None:
    """The machine's 1-minute load average; None where the OS has none (Windows)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def others_load() -> float:
    """The 1-minute load average less this process's own part of it: a sweep's second job,
    run in the same process as its first, must not count the first job's threads as others'.
    Its part is its mean CPU use since it started, over at least the average's minute."""
    if (load := load_average()) is None:
        return 0.0
    t = os.times()
    cpu = t.user + t.system
    alive = max(60.0, time.time() - process_start())
    return max(0.0, load - cpu / alive)


def busy() -> bool:
    """Other processes' load is above the cores this process may use."""
    return others_load() > usable_cores()


def register() -> None:
    """Mark this process as a running cnnbench run until it exits (idempotent)."""
    mine = REGISTRY / str(os.getpid())
    if mine.exists():
        return
    with contextlib.suppress(OSError):  # a read-only /tmp: runs just do not see each other
        REGISTRY.mkdir(parents=True, exist_ok=True)
        mine.write_text("")
        atexit.register(lambda: mine.unlink(missing_ok=True))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process of that id
        return True
    return True


def _stopped(pid: int) -> bool:
    """Paused (Ctrl-Z, SIGSTOP) or a zombie: alive, but holding no core. Linux only."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] in (["T"], ["t"], ["Z"])


def others_running(paused: bool = False) -> int:
    """Other cnnbench runs using the cores now, and with `paused` those paused too. The files
    of runs that died are removed; a paused run keeps its file. A paused run takes no core, so
    it does not halve the threads of a run started beside it; but it may resume, so that run's
    idle threads still sleep rather than spin against it."""
    count = 0
    with contextlib.suppress(OSError):
        for entry in REGISTRY.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            if not _alive(int(entry.name)):
                entry.unlink(missing_ok=True)
            elif paused or not _stopped(int(entry.name)):
                count += 1
    return count


def local_processes() -> int:
    """torchrun's processes on this machine, else 1."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def plan(threads: int | None, jobs: int = 1) -> tuple[int, str]:
    """(the intra-op thread count, why): see the module's docstring for the order. `jobs`:
    the processes a launcher (joblib) started together with this one."""
    cores = usable_cores()
    if threads is not None:
        return threads, "trainer.threads"
    jobs = max(jobs, local_processes())
    if jobs > 1:
        return max(1, cores // jobs), f"{cores} cores shared by {jobs} processes"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
    runs = others_running() + 1
    if runs > 1:
        return max(1, cores // runs), f"{cores} cores shared by {runs} cnnbench runs"
    return cores, f"{cores} cores"


def busy_note(threads: int) -> str | None:
    """A warning when the machine is busy as this run starts: other processes' 1-minute load
    average (`others_load`) above the cores, with what to do about it."""
    if not busy():
        return None
    load, cores = others_load(), usable_cores()
    fix = (
        "trainer.threads=1 takes one core and loses least to them"
        if threads > 1
        else "run it when they are done for full speed"
    )
    return (
        f"this machine is busy: other processes' 1-minute load average is {load:.1f} on {cores} "
        f"cores, so they share the cores with this run's {threads} thread"
        f"{'s' * (threads != 1)}, and it will be slower and its timings noisy; {fix}"
    )
