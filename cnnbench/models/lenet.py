"""LeNet and its relatives: d2l's LeNet and its batch-norm version, the classic
LeNet-5 of seed 000, and the two-layer CNN of seed 003."""

from torch import nn

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _norm2d(channels: int, batch_norm: bool) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels)] if batch_norm else []


def _norm1d(features: int, batch_norm: bool) -> list[nn.Module]:
    return [nn.BatchNorm1d(features)] if batch_norm else []


class LeNet(nn.Sequential):
    """conv 6@5x5, sigmoid, pool; conv 16@5x5, sigmoid, pool; fc 120-84-classes.

    The defaults are the lecture notes' variant (seeds 001, 004): max-pooling and no padding,
    so at 28x28 the first fc layer reads 16 x 4 x 4 = 256 features. d2l's chapter LeNet pads
    the first conv by 2 and average-pools (`padding=2, pool="avg"`: 16 x 5 x 5 = 400).
    With `batch_norm`, every conv and fc layer but the last is followed by batch norm before
    its sigmoid, as in d2l's batch-norm chapter. The first fc layer sizes itself to the input.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        batch_norm: bool = False,
        padding: int = 0,
        pool: str = "max",
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r}; give one of {', '.join(POOLS)}")
        bn, pool_layer = batch_norm, POOLS[pool]
        super().__init__(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),
            *_norm2d(6, bn),
            nn.Sigmoid(),
            pool_layer(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            *_norm2d(16, bn),
            nn.Sigmoid(),
            pool_layer(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.LazyLinear(120),
            *_norm1d(120, bn),
            nn.Sigmoid(),
            nn.Linear(120, 84),
            *_norm1d(84, bn),
            nn.Sigmoid(),
            nn.Linear(84, num_classes),
        )


class LeNet5(nn.Sequential):
    """LeNet-5 (seed 000, table 2-1): conv 6@5x5 pad 2, tanh, avg-pool; conv 16@5x5, tanh,
    avg-pool; conv 120@5x5, tanh; fc 120-84-classes. At 28x28 the third conv leaves 1x1."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 120, kernel_size=5),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(84),  # 120 x 1 x 1 at 28x28
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )


class SimpleCNN(nn.Sequential):
    """Seed 003's first CNN: conv 10@5x5, max-pool, ReLU; conv 20@5x5, max-pool, ReLU;
    fc 320-classes (20 x 4 x 4 at 28x28)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 10, kernel_size=5),
            nn.MaxPool2d(kernel_size=2),
            nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=5),
            nn.MaxPool2d(kernel_size=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.LazyLinear(num_classes),
        )
