"""Ctrl-C and SIGTERM (a cluster's time limit) stop a run after its current step, with a
checkpoint; a second Ctrl-C stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from cnnbench import distributed

log = logging.getLogger("cnnbench.train")


class Interrupted(Exception):
    """A SIGINT or SIGTERM stopped the run after a step; a checkpoint holds its state."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.checkpoint = signum, checkpoint


class StopSignals:
    """The first SIGINT or SIGTERM asks the loop to stop after its current step (it then
    saves a checkpoint); a second one stops at once."""

    def __init__(self, every: int = 1) -> None:
        self.every = every  # under torchrun, the processes agree every this many steps
        self.received: int | None = None
        self._previous: dict = {}
        self._alone = distributed.world_size() == 1

    def _handle(self, signum: int, frame) -> None:
        # torchrun passes a signal on to its processes, which the terminal has sent them too:
        # there the second one is ignored, and torchrun kills them 30 s after the first
        if self.received is not None and self._alone:
            raise KeyboardInterrupt
        self.received = signum
        at_once = (
            "press Ctrl-C again to stop at once"
            if self._alone
            else "torchrun kills the processes 30 s after the signal"
        )
        log.warning(
            f"{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
            f"({at_once})"
        )

    def requested(self, step: int | None = None) -> bool:
        """Whether any process received a signal. Under torchrun every process asks, so that
        all stop together, at step multiples of `every` (each asking is an all-reduce) and
        whenever `step` is None."""
        if self._alone:
            return self.received is not None
        if step is not None and step % self.every:
            return False
        return distributed.anyone(self.received is not None)

    def stop(self, checkpoint: Path) -> Interrupted:
        return Interrupted(self.received or signal.SIGTERM, checkpoint)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
