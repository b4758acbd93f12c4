"""Network in Network (d2l; seeds 001, 004): NiN blocks instead of fc layers, and a
global average pool over the last block's one channel per class."""

from torch import nn


def nin_block(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
) -> nn.Sequential:
    """One spatial conv, then two 1x1 convs acting as a per-pixel MLP; ReLU after each."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.ReLU(),
    )


class NiN(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout}; give a probability in [0, 1), e.g. 0.5")
        super().__init__(
            nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nin_block(96, 256, kernel_size=5, stride=1, padding=2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nin_block(256, 384, kernel_size=3, stride=1, padding=1),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Dropout(dropout),
            nin_block(384, num_classes, kernel_size=3, stride=1, padding=1),
            nn.AdaptiveAvgPool2d(1),  # global average pool: one score per class
            nn.Flatten(),
        )
