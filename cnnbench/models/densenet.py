"""DenseNet as d2l builds it (seed 001): ResNet's stem, four dense blocks joined by
transition layers, batch norm and ReLU, global average pool, fc."""

from collections.abc import Sequence

import torch
from torch import nn

from cnnbench.models.resnet import stem


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """The pre-activation unit of a dense block: BN, ReLU, 3x3 conv."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
    )


class DenseBlock(nn.Module):
    """`num_convs` conv blocks; each sees the concatenation of the input and every earlier
    block's output, and adds `growth_rate` channels."""

    def __init__(self, num_convs: int, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        self.net = nn.ModuleList(
            conv_block(in_channels + i * growth_rate, growth_rate) for i in range(num_convs)
        )
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.net:
            x = torch.cat((x, block(x)), dim=1)
        return x


def transition_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """BN, ReLU, a 1x1 conv to `out_channels`, a 2x2 average pool halving the size."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


class DenseNet(nn.Sequential):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        growth_rate: int = 32,
        num_convs: Sequence[int] = (4, 4, 4, 4),
    ) -> None:
        if not isinstance(growth_rate, int) or growth_rate < 1:
            raise ValueError(f"growth_rate={growth_rate}; give an integer >= 1, e.g. 32")
        if not num_convs or not all(isinstance(n, int) and n >= 1 for n in num_convs):
            raise ValueError(f"num_convs={list(num_convs)}; give counts >= 1, e.g. [4, 4, 4, 4]")
        super().__init__()
        self.stem = stem(in_channels)  # ResNet's
        channels = 64
        for i, n in enumerate(num_convs):
            block = DenseBlock(n, channels, growth_rate)
            self.add_module(f"dense{i + 1}", block)
            channels = block.out_channels
            if i != len(num_convs) - 1:  # halve the channels between blocks
                self.add_module(f"transition{i + 1}", transition_block(channels, channels // 2))
                channels //= 2
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )
