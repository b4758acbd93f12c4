"""GoogLeNet (d2l; seeds 001, 004) and the small Inception network of seeds 000 and 003."""

import torch
import torch.nn.functional as F
from torch import nn


class Inception(nn.Module):
    """d2l's Inception block: four parallel paths, concatenated on channels.

    p1: 1x1 conv (c1); p2: 1x1 conv then 3x3 (c2 = (reduce, out)); p3: 1x1 then 5x5
    (c3 = (reduce, out)); p4: 3x3 max-pool then 1x1 (c4). ReLU after every conv.
    """

    def __init__(self, in_channels: int, c1: int, c2: tuple, c3: tuple, c4: int) -> None:
        super().__init__()
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


class GoogLeNet(nn.Sequential):
    """Five stages b1..b5, each but the last closed by a 3x3/2 max-pool; a global average
    pool and fc 1024-classes. b2's two convs have no ReLU as the seeds write them;
    `b2_relu=True` adds one after each, as d2l's chapter does."""

    def __init__(self, in_channels: int, num_classes: int, b2_relu: bool = False) -> None:
        super().__init__()
        self.b1 = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.b2 = nn.Sequential(
            nn.Conv2d(64, 64, kernel_size=1),
            *([nn.ReLU()] if b2_relu else []),
            nn.Conv2d(64, 192, kernel_size=3, padding=1),
            *([nn.ReLU()] if b2_relu else []),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.b3 = nn.Sequential(
            Inception(192, 64, (96, 128), (16, 32), 32),
            Inception(256, 128, (128, 192), (32, 96), 64),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.b4 = nn.Sequential(
            Inception(480, 192, (96, 208), (16, 48), 64),
            Inception(512, 160, (112, 224), (24, 64), 64),
            Inception(512, 128, (128, 256), (24, 64), 64),
            Inception(512, 112, (144, 288), (32, 64), 64),
            Inception(528, 256, (160, 320), (32, 128), 128),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.b5 = nn.Sequential(
            Inception(832, 256, (160, 320), (32, 128), 128),
            Inception(832, 384, (192, 384), (48, 128), 128),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(1024, num_classes))


class InceptionA(nn.Module):
    """The small Inception block of seeds 000 and 003: 16 + 24 + 24 + 24 = 88 channels out.

    branch1x1: 1x1 (16); branch5x5: 1x1 (16), 5x5 (24); branch3x3: 1x1 (16), 3x3 (24),
    3x3 (24); branch_pool: 3x3 average pool (seed 003; seed 000 leaves it out), 1x1 (24).
    No activations inside, as in both seeds.
    """

    def __init__(self, in_channels: int, pool: bool = True) -> None:
        super().__init__()
        self.branch1x1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch5x5 = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=1),
            nn.Conv2d(16, 24, kernel_size=5, padding=2),
        )
        self.branch3x3 = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=1),
            nn.Conv2d(16, 24, kernel_size=3, padding=1),
            nn.Conv2d(24, 24, kernel_size=3, padding=1),
        )
        self.branch_pool = nn.Sequential(
            *([nn.AvgPool2d(kernel_size=3, stride=1, padding=1)] if pool else []),
            nn.Conv2d(in_channels, 24, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1x1, self.branch5x5, self.branch3x3, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)


class GoogLeNetMini(nn.Sequential):
    """conv 10@5x5, ReLU, max-pool, InceptionA; conv 20@5x5, ReLU, max-pool, InceptionA;
    fc 1408-classes (88 x 4 x 4 at 28x28)."""

    def __init__(self, in_channels: int, num_classes: int, pool_branch: bool = True) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 10, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            InceptionA(10, pool_branch),
            nn.Conv2d(88, 20, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            InceptionA(20, pool_branch),
            nn.Flatten(),
            nn.LazyLinear(num_classes),
        )
