"""Softmax regression and the multilayer perceptron (d2l)."""

from collections.abc import Sequence

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


class Softmax(nn.Sequential):
    """Flatten the image and apply one linear layer; the softmax is in the loss."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        # in_channels is implied by the first batch: LazyLinear reads C x H x W from it
        super().__init__(nn.Flatten(), nn.LazyLinear(num_classes))


class MLP(nn.Sequential):
    """Flatten, then `hidden` fully connected layers with an activation (and dropout)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if not all(isinstance(w, int) and w >= 1 for w in hidden):
            raise ValueError(f"hidden={list(hidden)}; give layer widths >= 1, e.g. [256]")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout}; give a probability in [0, 1), e.g. 0.5")
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.LazyLinear(width), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.LazyLinear(num_classes))
        super().__init__(*layers)
