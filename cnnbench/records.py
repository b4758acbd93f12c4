"""What a run records, as types: the figures of an evaluation, an epoch's row of metrics.csv,
and what results.json says of how the run ran. They are written with the columns and keys
metrics.csv and results.json always had (dataclasses.asdict); checkpoints keep the rows as
plain dicts, which `torch.load(weights_only=True)` reads."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class Figures:
    """One evaluation: test (and validation) loss and accuracy, and the test confusion matrix
    (a classes x classes tensor; None where this process computed none)."""

    test_loss: float
    test_acc: float
    val_loss: float | None = None
    val_acc: float | None = None
    test_confusion: Any = None

    @property
    def tracked(self) -> float:
        """The accuracy best.pt follows: the validation split's where there is one, else the
        test set's."""
        return self.test_acc if self.val_acc is None else self.val_acc


@dataclass
class EpochRow:
    """One row of metrics.csv, in its column order."""

    epoch: int
    step: int
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    best_test_acc: float
    val_loss: float | None
    val_acc: float | None
    epoch_s: float
    images_per_s: float


METRICS_COLUMNS = [f.name for f in fields(EpochRow)]


@dataclass
class RunFacts:
    """How the run ran, as results.json reports it beside its figures."""

    params: int
    flops_per_image: int
    device: str
    resumed: bool
    threads: int
    precision: str
    step: str  # the training step: plain, static or captured (cuda_graph.py)
