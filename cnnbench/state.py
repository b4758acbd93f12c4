"""Where a run stands, and its checkpoint: `TrainState` holds the objects being trained and the
position in the run (epoch, batch, step, the best accuracy, the epoch's sums so far), saves all
of it atomically and restores it, so that a run stopped at any step resumes exactly.

The checkpoint is a plain dict (checkpoint.FORMAT) that `torch.load(weights_only=True)` reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnbench import __version__, checkpoint, distributed
from cnnbench.atomic import copy_atomic


@dataclass
class Trainables:
    """What a checkpoint saves the state_dict of, and what a resumed run is checked against."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: dict  # resolved
    in_channels: int
    num_classes: int
    image_size: int


@dataclass
class EpochTotals:
    """The epoch's sums over all processes."""

    loss: torch.Tensor
    correct: torch.Tensor
    window: torch.Tensor
    seen: int

    @property
    def train_loss(self) -> float:
        return self.loss.item() / max(self.seen, 1)

    @property
    def train_acc(self) -> float:
        return self.correct.item() / max(self.seen, 1)


@dataclass
class TrainState:
    parts: Trainables
    device: torch.device
    epochs_done: int = 0
    batches_done: int = 0  # of the epoch in progress
    step: int = 0
    best_acc: float = 0.0  # validation accuracy with a validation split, else test accuracy
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)  # the rows of metrics.csv
    seen: int = 0  # images of the epoch in progress (this process)
    window_steps: int = 0  # steps since the last train/loss point
    elapsed_s: float = 0.0  # time spent in the epoch in progress before this process
    wall_s: float = 0.0  # the run's time before this process
    # the sums of the epoch in progress stay on the device: reading one forces a host sync, so
    # that happens only at the log cadence and at the end of an epoch
    loss_sum: torch.Tensor = None
    correct: torch.Tensor = None
    window: torch.Tensor = None  # the training loss since the last train/loss point
    started: float = field(default_factory=time.perf_counter)  # this process's start
    _epoch_tic: float = 0.0

    def __post_init__(self) -> None:
        zeros = self._zeros()
        self.loss_sum, self.correct, self.window = zeros["loss"], zeros["correct"], zeros["window"]

    def _zeros(self) -> dict[str, torch.Tensor]:
        return dict(
            loss=torch.zeros((), device=self.device),
            correct=torch.zeros((), device=self.device, dtype=torch.long),
            window=torch.zeros((), device=self.device),
        )

    # ---- the loop's bookkeeping

    def begin_epoch(self) -> None:
        self._epoch_tic = time.perf_counter()

    def add(self, loss: torch.Tensor, share: torch.Tensor, logits: torch.Tensor, y) -> None:
        """Add one step to the sums on the device: the batch's mean `loss`, this process's
        `share` of the global batch's mean loss, and its predictions. A captured step records
        this too, so it touches no Python number (`advance` counts the step)."""
        self.loss_sum += loss.detach() * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.window += share.detach()

    def advance(self, images: int) -> None:
        """Count one optimizer step of `images` images (this process's)."""
        self.step += 1
        self.batches_done += 1
        self.seen += images
        self.window_steps += 1

    def window_loss(self) -> float:
        """The mean training loss since the last point, over all processes; starts a new window."""
        mean = distributed.total(self.window).item() / self.window_steps
        self.window.zero_()
        self.window_steps = 0
        return mean

    def epoch_s(self) -> float:
        return self.elapsed_s + time.perf_counter() - self._epoch_tic

    def run_s(self) -> float:
        return self.wall_s + time.perf_counter() - self.started

    def totals(self) -> EpochTotals:
        """The epoch's sums over all processes (every process must ask)."""
        return EpochTotals(
            loss=distributed.total(self.loss_sum),
            correct=distributed.total(self.correct),
            window=distributed.total(self.window),
            seen=int(distributed.total(torch.tensor(self.seen))),
        )

    def end_epoch(self, row: dict, tracked_acc: float) -> bool:
        """Record the epoch's row; the next epoch's sums start at zero (the window goes on).
        Returns whether the tracked accuracy improved on the best so far."""
        self.history.append(row)
        self.epochs_done += 1
        self.batches_done, self.seen, self.elapsed_s = 0, 0, 0.0
        self.loss_sum.zero_()
        self.correct.zero_()
        improved = tracked_acc > self.best_acc
        if improved:
            self.best_acc, self.best_epoch = tracked_acc, self.epochs_done
        return improved

    # ---- the checkpoint

    def save(self, path: Path) -> None:
        """Write the checkpoint (rank 0; every process must call it). It holds each process's
        sums of the epoch so far (at an epoch's end, only the loss window is not zero): a run
        resumed on as many processes adds on in the same order, and on another number rank 0
        carries on their total."""
        mine = [self.loss_sum, self.correct, self.window, torch.tensor(self.seen)]
        every = [distributed.gather(t) for t in mine]
        if not distributed.is_main():
            return
        loss, correct, window, seen = (torch.stack(ts).sum(0) for ts in every)
        p = self.parts
        checkpoint.save(
            {
                "format": checkpoint.FORMAT,
                "cnnbench_version": __version__,
                "config": p.config,
                "in_channels": p.in_channels,
                "num_classes": p.num_classes,
                "image_size": p.image_size,
                "model": own_storage(p.model.state_dict()),
                "optimizer": p.optimizer.state_dict(),
                "scheduler": p.scheduler.state_dict(),
                "scaler": p.scaler.state_dict(),
                "rng": checkpoint.rng_states(self.device),
                "epochs_done": self.epochs_done,
                "batches_done": self.batches_done,
                "step": self.step,
                "best_acc": self.best_acc,
                "best_epoch": self.best_epoch,
                "history": self.history,
                "wall_s": self.run_s(),
                "seen": int(seen),
                "window_steps": self.window_steps,
                "elapsed_s": self.epoch_s() if self.batches_done else 0.0,
                "sums": {"loss": loss, "correct": correct, "window": window},
                "rank_sums": [
                    {"loss": lo, "correct": co, "window": wi, "seen": int(se)}
                    for lo, co, wi, se in zip(*every, strict=True)
                ],
            },
            path,
        )

    def copy(self, saved: Path, path: Path) -> None:
        """`path` holds the checkpoint just saved to `saved` (rank 0)."""
        if distributed.is_main():
            copy_atomic(saved, path)

    def restore(self, ckpt: dict, path: Path) -> None:
        """Continue where `ckpt` stopped: weights, optimizer, schedule, scaler, RNG states and
        the position. On as many processes as saved it, each takes its own sums of the epoch so
        far; on another number, rank 0 carries on the sums over all of them."""
        p = self.parts
        checkpoint.load_weights(p.model, ckpt, path)
        p.optimizer.load_state_dict(ckpt["optimizer"])  # moves its state to the parameters' device
        p.scheduler.load_state_dict(ckpt["scheduler"])
        p.scaler.load_state_dict(ckpt["scaler"])
        checkpoint.set_rng_states(ckpt["rng"], self.device, ckpt["config"]["trainer"]["device"])
        for key in ("epochs_done", "batches_done", "step", "best_acc", "best_epoch", "history"):
            setattr(self, key, ckpt[key])
        self.window_steps, self.elapsed_s, self.wall_s = (
            ckpt["window_steps"],
            ckpt["elapsed_s"],
            ckpt["wall_s"],
        )
        own = ckpt.get("rank_sums", [])  # none in checkpoints before 0.1's redesign
        if len(own) == distributed.world_size():  # as many processes: each takes its own
            sums = own[distributed.rank()]
        elif distributed.is_main():  # another number: rank 0 carries the sums over all
            sums = {**ckpt["sums"], "seen": ckpt["seen"]}
        else:
            return
        # in place: a captured step adds to these very tensors
        for mine, k in (
            (self.loss_sum, "loss"),
            (self.correct, "correct"),
            (self.window, "window"),
        ):
            mine.copy_(sums[k])
        self.seen = sums["seen"]


def own_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, each on a storage of its own: a packed member's are views of a stack of
    every member's (packed.Pack), whose whole storage torch.save would write."""
    return {
        k: v.clone() if v.untyped_storage().nbytes() != v.numel() * v.element_size() else v
        for k, v in tensors.items()
    }
