"""AlexNet as d2l sizes it for 224x224 Fashion-MNIST (seeds 000, 001, 002, 004), and the
batch-norm variant of seed 002 (`AlexNetImproved` there)."""

from torch import nn


class AlexNet(nn.Sequential):
    """Five conv layers (96@11x11/4, 256@5x5, 384@3x3, 384@3x3, 256@3x3) with three 3x3/2
    max-pools, then fc 6400-4096-4096-classes with dropout.

    `first_padding=1` pads the first conv as seed 000 does (the output is 54x54 either way).
    `batch_norm` adds seed 002's four BatchNorm layers, each right after a ReLU: conv 1,
    conv 3, conv 5 and the first fc layer.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        first_padding: int = 0,
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout}; give a probability in [0, 1), e.g. 0.5")

        def bn(layer: type[nn.Module], channels: int) -> list[nn.Module]:
            return [layer(channels)] if batch_norm else []

        super().__init__(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=first_padding),
            nn.ReLU(),
            *bn(nn.BatchNorm2d, 96),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            *bn(nn.BatchNorm2d, 384),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            *bn(nn.BatchNorm2d, 256),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Flatten(),
            nn.LazyLinear(4096),  # 256 x 5 x 5 = 6400 at 224x224
            nn.ReLU(),
            *bn(nn.BatchNorm1d, 4096),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
