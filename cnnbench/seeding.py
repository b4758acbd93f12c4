"""Every seed a run derives from trainer.seed, in one place: the mixing constants decide which
epoch order, augmentation draw and dropout stream a run gets, so changing one changes results."""

from __future__ import annotations

import random

import numpy as np
import torch

EPOCH_MIX = 1_000_003  # seed -> the seed of one epoch's order
BATCH_MIX = 100_003  # epoch seed -> the seed of one batch's augmentation; rank -> its stream


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The training order of `epoch`: the same on every device and rank."""
    return seed * EPOCH_MIX + epoch


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The augmentation draws of one batch, for the whole global batch."""
    return (epoch_seed(seed, epoch) * BATCH_MIX + batch) % 2**63


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A rank other than 0 draws its own dropout masks (its weights come from rank 0)."""
    return seed * EPOCH_MIX + rank * BATCH_MIX + step
