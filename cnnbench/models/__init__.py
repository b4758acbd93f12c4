"""The networks. Each takes `in_channels` and `num_classes` first; the YAML in conf/model/ names
the class with `_target_` and holds its remaining keyword arguments."""

from cnnbench.models.alexnet import AlexNet
from cnnbench.models.densenet import DenseNet
from cnnbench.models.fast import FastNet
from cnnbench.models.googlenet import GoogLeNet, GoogLeNetMini
from cnnbench.models.lenet import LeNet, LeNet5, SimpleCNN
from cnnbench.models.linear import MLP, Softmax
from cnnbench.models.nin import NiN
from cnnbench.models.resnet import ResNet, ResNetMini
from cnnbench.models.vgg import VGG

__all__ = [
    "MLP",
    "VGG",
    "AlexNet",
    "DenseNet",
    "FastNet",
    "GoogLeNet",
    "GoogLeNetMini",
    "LeNet",
    "LeNet5",
    "NiN",
    "ResNet",
    "ResNetMini",
    "SimpleCNN",
    "Softmax",
]
