"""LeNet (d2l 6.6): two convolution blocks and three fully connected layers."""

from torch import nn


class LeNet(nn.Sequential):
    """conv 6@5x5, sigmoid, max-pool; conv 16@5x5, sigmoid, max-pool; fc 120-84-classes.

    At 28x28 the feature map entering the first fc layer is 16 x 4 x 4 = 256.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 6, kernel_size=5),
            nn.Sigmoid(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.Sigmoid(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.LazyLinear(120),
            nn.Sigmoid(),  # 16 * 4 * 4 = 256 inputs at 28x28
            nn.Linear(120, 84),
            nn.Sigmoid(),
            nn.Linear(84, num_classes),
        )
