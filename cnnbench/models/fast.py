"""cnnbench's own small network for the time-to-accuracy recipes (experiment=fast_mnist,
fast_fashion). Not from the sources: the layout of their small residual network (a 5x5 conv,
max-pool and residual block per stage) with batch norm, which trains in a few epochs."""

from collections.abc import Sequence

from torch import nn

from cnnbench.models.resnet import Residual


def fast_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv 5x5 (no padding), 2x2 max-pool, batch norm, ReLU, then a residual block. Pooling
    before the norm and the activation, as airbench does, runs them on a quarter of the pixels:
    the step took half the time of conv, norm, ReLU, pool on the 2-core CPU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=5, bias=False),
        nn.MaxPool2d(kernel_size=2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        Residual(out_channels, out_channels),
    )


class FastNet(nn.Sequential):
    """Two stages (28 -> 12 -> 4 pixels at 28x28), then global max-pool and fc
    `widths[-1]`-classes. With widths (32, 64): 145,578 parameters for 1 channel and 10 classes."""

    def __init__(
        self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64)
    ) -> None:
        if not widths or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(f"widths={list(widths)}; give channel counts >= 1, e.g. [32, 64]")
        super().__init__()
        channels = [in_channels, *widths]
        for i in range(len(widths)):
            self.add_module(f"stage{i + 1}", fast_stage(channels[i], channels[i + 1]))
        self.head = nn.Sequential(
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes)
        )
