"""How the training loop calls the step (train.Step: forward, loss, backward, the update, and
the epoch's sums on the device), and the fixed-buffer form of it that a CUDA graph records.

`PlainStep` gathers each batch and calls the step. `StaticStep` calls the very same step on
fixed buffers: a batch's indices and augmentation draws are copied into
buffers, the gather reads the split through them, and the learning rate reaches the optimizer
as a device tensor refreshed from the schedule before each step. Nothing in its body reads a
Python number that changes between steps, so `cuda_graph.CapturedStep` can record it once and
replay it; uncaptured (on the CPU) it gives the plain step's numbers bit for bit
(tests/test_step.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from cnnbench.data import Batch, DeviceLoader, Draws


class TrainingStep(Protocol):
    """What this module needs of train.Step (it does not import train, which imports it)."""

    optimizer: torch.optim.Optimizer

    def __call__(self, x: torch.Tensor, y: torch.Tensor, fraction: float) -> None: ...


@dataclass
class PlainStep:
    """Gather the batch, then step: every batch of every run that captures nothing."""

    step: TrainingStep
    loader: DeviceLoader
    why: str | None = None  # why the run asked for a captured step and takes this one
    name = "plain"

    def __call__(self, batch: Batch) -> None:
        x, y = self.loader.gather(batch)
        self.step(x, y, len(y) / self.loader.batch_len(batch.number))


class StaticStep:
    """The step on fixed buffers, for the full batches; a partial last batch takes the plain
    step. The optimizer must read a tensor learning rate without a host sync: torch's fused
    optimizers do (build.build_optimizer makes them so for this step)."""

    name = "static"

    def __init__(self, step: TrainingStep, loader: DeviceLoader, why: str | None = None) -> None:
        self.step, self.loader, self.plain = step, loader, PlainStep(step, loader)
        self.why = why
        device, n = loader.device, loader.batch_size
        self.index = torch.zeros(n, dtype=torch.long, device=device)
        self.draws = None
        if loader.translate or loader.flip:
            shift = torch.zeros(2, n, 1, dtype=torch.long, device=device)
            self.draws = Draws(shift, torch.zeros(n, 1, 1, 1, dtype=torch.bool, device=device))
        # float64 on the CPU, where torch's fused update reads the tensor as the Python float
        # it holds (so the bits match the plain step's); a CUDA kernel reads float32
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        groups = step.optimizer.param_groups
        self.lrs = [torch.tensor(g["lr"], dtype=dtype, device=device) for g in groups]

    def __call__(self, batch: Batch) -> None:
        if len(batch.index) != len(self.index):
            self.plain(batch)
            return
        self.load(batch)
        self.run()

    def load(self, batch: Batch) -> None:
        """Copy the batch, its draws and the schedule's learning rates into the buffers."""
        self.index.copy_(batch.index)
        if self.draws is not None:
            self.draws.shift.copy_(batch.draws.shift)
            self.draws.flip.copy_(batch.draws.flip)
        for lr, group in zip(self.lrs, self.step.optimizer.param_groups, strict=True):
            lr.fill_(group["lr"])

    def run(self) -> None:
        """The step on what the buffers hold: what a CUDA graph records."""
        x, y = self.loader.gather(Batch(-1, self.index, self.draws))
        with tensor_lrs(self.step.optimizer, self.lrs):
            self.step(x, y, 1.0)


@contextmanager
def tensor_lrs(optimizer: torch.optim.Optimizer, lrs: list[torch.Tensor]) -> Iterator[None]:
    """The optimizer reads these tensors as its learning rates; the schedule, the checkpoint
    and the logs keep the plain floats."""
    floats = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, floats, strict=True):
            group["lr"] = lr


Runner = PlainStep | StaticStep  # what the training loop calls on each batch
