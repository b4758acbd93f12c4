"""What cnnbench knows of each dataset: its classes, image shape, statistics and where its files
may lie. A table, without torch, so that configs are checked before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    title: str
    classes: tuple[str, ...]
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # sub-folders of a root that may hold the files; the root itself counts when its path
    # ends with one of them (MNIST and Fashion-MNIST files have the same names)
    folders: tuple[str, ...]
    system_folders: tuple[str, ...] = ()  # where an OS package installs the files
    system_package: str = ""  # that Debian/Ubuntu package
    torchvision_name: str = ""
    # light objects on a dark ground (MNIST, Fashion-MNIST): a photo or scan, dark on light,
    # is inverted before the network sees it (cnnbench.predict invert=auto)
    dark_ground: bool = False


FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

SPECS = {
    "mnist": Spec(
        title="MNIST",
        classes=tuple(str(d) for d in range(10)),
        channels=1,
        size=28,
        mean=(0.1307,),
        std=(0.3081,),
        folders=("mnist", "MNIST/raw"),
        torchvision_name="MNIST",
        dark_ground=True,
    ),
    "fashion_mnist": Spec(
        title="Fashion-MNIST",
        classes=FASHION_CLASSES,
        channels=1,
        size=28,
        mean=(0.2860,),
        std=(0.3530,),
        folders=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
        system_folders=("/usr/share/datasets/fashion-mnist",),
        system_package="dataset-fashion-mnist",
        torchvision_name="FashionMNIST",
        dark_ground=True,
    ),
    "cifar10": Spec(
        title="CIFAR-10",
        classes=CIFAR10_CLASSES,
        channels=3,
        size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        folders=("cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
        torchvision_name="CIFAR10",
    ),
}
