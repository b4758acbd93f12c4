"""ResNet-18 as d2l builds it (seeds 001, 002, 004) and the small residual network of
seeds 000 and 003."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """Two 3x3 convs with batch norm; a 1x1 conv projects the shortcut when the block
    changes the channel count or (stride 2) the size."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        projection = stride != 1 or in_channels != out_channels
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = self.conv3(x) if self.conv3 is not None else x
        return F.relu(y + shortcut)


def stem(in_channels: int) -> nn.Sequential:
    """7x7/2 conv to 64 channels, batch norm, ReLU, 3x3/2 max-pool: a quarter of the size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


def resnet_stage(in_channels: int, out_channels: int, blocks: int, first: bool) -> nn.Sequential:
    """`blocks` residual blocks; every stage but the first halves the size in its first."""
    stride = 1 if first else 2
    return nn.Sequential(
        Residual(in_channels, out_channels, stride),
        *(Residual(out_channels, out_channels) for _ in range(blocks - 1)),
    )


class ResNet(nn.Sequential):
    """7x7/2 stem with batch norm and a 3x3/2 max-pool; four stages of 64, 128, 256 and 512
    channels; global average pool; fc 512-classes. `blocks` per stage: (2, 2, 2, 2) is
    ResNet-18, (3, 4, 6, 3) ResNet-34."""

    def __init__(
        self, in_channels: int, num_classes: int, blocks: Sequence[int] = (2, 2, 2, 2)
    ) -> None:
        if len(blocks) != 4 or not all(isinstance(b, int) and b >= 1 for b in blocks):
            raise ValueError(f"blocks={list(blocks)}; give four counts >= 1, e.g. [2, 2, 2, 2]")
        super().__init__()
        self.stem = stem(in_channels)
        widths = (64, 64, 128, 256, 512)
        for i, count in enumerate(blocks):
            stage = resnet_stage(widths[i], widths[i + 1], count, first=i == 0)
            self.add_module(f"stage{i + 1}", stage)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)
        )


class ResidualBlock(nn.Module):
    """Seeds 000 and 003: relu(x + conv(relu(conv(x)))), both convs 3x3 with `channels`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class ResNetMini(nn.Sequential):
    """conv 16@5x5, ReLU, max-pool, residual block; conv 32@5x5, ReLU, max-pool, residual
    block; fc 512-classes (32 x 4 x 4 at 28x28)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            ResidualBlock(16),
            nn.Conv2d(16, 32, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            ResidualBlock(32),
            nn.Flatten(),
            nn.LazyLinear(num_classes),
        )
