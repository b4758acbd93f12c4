"""trainer.cuda_graph: record the whole training step once as a CUDA graph and replay it for
every full batch, one launch where the plain step makes hundreds (PyTorch's "whole network
capture"). The step recorded is `step.StaticStep`'s, which the CPU tests run uncaptured.

`choose` decides per run: auto captures on CUDA where it is safe; where it cannot work the run
says why in one line and takes the plain step.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import hydra
import torch
from omegaconf import DictConfig

from cnnbench.build import precision_for
from cnnbench.packed import StaticPackedStep
from cnnbench.step import StaticStep


def choose(cfg: DictConfig, device: torch.device, world: int) -> tuple[str, str | None]:
    """The step a run takes, "plain", "static" (uncaptured) or "captured", and the line that
    says why it is not the one asked for (None: nothing to say)."""
    setting = str(cfg.trainer.cuda_graph).lower()
    if setting == "false":
        return "plain", None
    if device.type != "cuda":
        if setting == "auto":
            return "plain", None
        return "static", (
            f"trainer.cuda_graph=true on {device.type}: CUDA graphs need a CUDA device, so the "
            "step runs in its static form, uncaptured (the same numbers, no speed-up)"
        )
    reason = obstacle(cfg, device, world)
    if reason:
        return "plain", f"trainer.cuda_graph={setting}: not captured, {reason}; the plain step"
    return "captured", None


def obstacle(cfg: DictConfig, device: torch.device, world: int) -> str | None:
    """Why this run's step cannot be captured, or None."""
    t, optimizer = cfg.trainer, hydra.utils.get_class(cfg.optimizer._target_)
    if precision_for(t.precision, device) == "16-mixed":
        return "16-mixed's gradient scaler reads its loss scale on the host"
    if world > 1:
        return "under torchrun (DDP's all-reduce hooks)"
    if t.compile:
        return "trainer.compile (torch.compile(mode='reduce-overhead') is its own capture)"
    if cfg.optimizer.get("fused") is False:
        return "optimizer.fused=false (the captured update is torch's fused one)"
    if "fused" not in inspect.signature(optimizer).parameters:
        return f"{optimizer.__name__} has no fused form that reads a tensor learning rate"
    if cfg.scheduler.get("cycle_momentum", False):
        return "scheduler.cycle_momentum=true (the momentum would be fixed at capture)"
    return None


def record(body: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """`body` recorded as a CUDA graph (not run: replay() runs it)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph


@contextmanager
def side_stream() -> Iterator[None]:
    """Work on a stream of its own, joined after: warm-up before a capture must not run on
    the stream the capture will use (PyTorch's CUDA-graphs notes)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)


class Capture:
    """`body` run eagerly for a few warm-up calls (on a side stream, as capture requires: lazy
    initialisation and cuDNN's autotuning happen there), then recorded once and replayed on
    every call after. `zero_grads` sets the gradients to None before the recording, so that
    they are allocated in the graph's memory, which each replay rewrites. A capture that fails
    (a model that syncs with the host or branches on its data) is reported in one line through
    `warn`, and `body` runs eagerly from then on."""

    WARMUP_STEPS = 3

    def __init__(
        self,
        body: Callable[[], None],
        zero_grads: Callable[[], None],
        warn: Callable[[str], None] = print,
    ) -> None:
        self.body, self.zero_grads, self.warn = body, zero_grads, warn
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm, self.failed = 0, False

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        elif self.failed:
            self.body()
        elif self.warm < self.WARMUP_STEPS:
            with side_stream(), warnings.catch_warnings():
                # torch warns, once, that a capturable optimizer stepping uncaptured may be
                # slower: these steps are the warm-up before the capture
                warnings.filterwarnings("ignore", "This instance was constructed with capturable")
                self.body()
            self.warm += 1
        else:
            self.record()
            self()

    def record(self) -> None:
        self.zero_grads()
        try:
            self.graph = record(self.body)
        except RuntimeError as err:
            self.failed = True
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self.warn(
                f"trainer.cuda_graph: the step could not be captured ({first}); the plain step"
            )


class CapturedStep(StaticStep):
    """StaticStep, recorded after a few warm-up steps and replayed for every full batch."""

    def __init__(self, *args, warn: Callable[[str], None] = print, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        zero_grads = functools.partial(self.step.optimizer.zero_grad, set_to_none=True)
        self.capture = Capture(super().run, zero_grads, warn)

    @property
    def name(self) -> str:
        """What results.json says ran: the static form, uncaptured, once a capture failed."""
        return "static" if self.capture.failed else "captured"

    def run(self) -> None:
        self.capture()


class CapturedPackedStep(StaticPackedStep):
    """StaticPackedStep, recorded after a few warm-up steps and replayed for every full batch:
    one launch for the whole pack's step."""

    def __init__(self, *args, warn: Callable[[str], None] = print, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.capture = Capture(super().run, self.zero_grads, warn)

    @property
    def name(self) -> str:
        return "packed-static" if self.capture.failed else "packed-captured"

    def zero_grads(self) -> None:
        self.step.pack.zero_grad()
        for optimizer in self.step.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def run(self) -> None:
        self.capture()
