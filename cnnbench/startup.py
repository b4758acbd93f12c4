"""Where the time goes between the start of the process and the first training step, phase by
phase (results.json's `startup`). No torch here: the command line marks its phases before
torch is imported.

A phase is the time since the previous mark. The command line's `Phases` counts from the
process's start, as the kernel recorded it (/proc), so that the interpreter's own start and
the first imports are in it, and hands itself to train(); a sweep's next job in the same
process counts from where the previous one ended (restart). train() called from Python (the
bench, the tests) counts from its call.
"""

from __future__ import annotations

import os
import time


def process_start() -> float:
    """time.time() when this process started: its age from /proc/self/stat and /proc/uptime
    (to the clock tick, 10 ms); elsewhere, when this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


class Phases:
    """Named spans of wall time, in the order they were marked."""

    def __init__(self, since: float | None = None) -> None:
        """Counting from `since` (time.time()); None: from the process's start."""
        self.seconds: dict[str, float] = {}
        self.last = process_start() if since is None else since

    def restart(self) -> None:
        """A new run in this process: its phases count from now."""
        self.seconds, self.last = {}, time.time()

    def mark(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now

    def total(self) -> float:
        return sum(self.seconds.values())

    def summary(self) -> dict[str, float]:
        """{phase: seconds, ..., "total_s": their sum}, rounded to the millisecond."""
        out = {f"{name}_s": round(s, 3) for name, s in self.seconds.items()}
        return out | {"total_s": round(self.total(), 3)}
