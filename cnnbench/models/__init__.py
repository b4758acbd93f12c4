"""The networks. Each takes `in_channels` and `num_classes` first; the YAML in conf/model/ names
the class with `_target_` and holds its remaining keyword arguments."""

from cnnbench.models.lenet import LeNet
from cnnbench.models.linear import MLP, Softmax

__all__ = ["MLP", "LeNet", "Softmax"]
