"""VGG-11 (d2l; seeds 001, 004): five VGG blocks of 3x3 convs, each closed by a 2x2
max-pool, then three fc layers."""

from torch import nn

VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))  # (convs, channels) per block


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1)]
        layers += [nn.ReLU()]
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))  # halves height and width
    return nn.Sequential(*layers)


class VGG(nn.Sequential):
    """`width_divisor` divides every conv's channels, as d2l (4) and seed 004 (8) do to fit
    Fashion-MNIST on a small GPU; 1 is the VGG-11 of the paper. `fc_width` is the two hidden
    fc layers' width: d2l keeps the paper's 4096, seed 004 divides it too (512)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        conv_arch: tuple = VGG11,
        width_divisor: int = 1,
        fc_width: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        if not isinstance(width_divisor, int) or not 1 <= width_divisor <= 64:
            raise ValueError(f"width_divisor={width_divisor}; give an integer in [1, 64], e.g. 8")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout}; give a probability in [0, 1), e.g. 0.5")
        blocks, channels = [], in_channels
        for num_convs, out_channels in conv_arch:
            blocks.append(vgg_block(num_convs, channels, out_channels // width_divisor))
            channels = out_channels // width_divisor
        hidden = fc_width
        super().__init__(
            *blocks,
            nn.Sequential(
                nn.Flatten(),
                nn.LazyLinear(hidden),  # channels x 7 x 7 at 224x224
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            ),
        )
