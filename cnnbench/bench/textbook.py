"""Seed 000's recipe as the course sources write it, as a whole program: the bench times this
process against `python -m cnnbench experiment=tutorial/lenet5_mnist` (start-up included).

    python cnnbench/bench/textbook.py --root ../shared/data --epochs 3

It is run as a file, not with -m, which would import the bench's package first, so that its
start-up is a textbook script's: torch and torchvision, and of cnnbench only the one IDX
reader (`cnnbench.data.read_idx`, gzipped or not). The MNIST files are read from
<root>/mnist, each image is a PIL image through ToTensor and Normalize, a shuffled DataLoader
without workers feeds an eager step, and `.item()` is called after every step. LeNet-5:
tanh, average pooling, conv 120, fc 84; SGD lr 0.9, batch 256; the test accuracy after every
epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cnnbench.data import read_idx


def find(folder: Path, name: str) -> Path:
    return next(p for p in (folder / name, folder / f"{name}.gz") if p.exists())


class MNIST(Dataset):
    def __init__(self, folder: Path, train: bool, transform) -> None:
        prefix = "train" if train else "t10k"
        self.data = read_idx(find(folder, f"{prefix}-images-idx3-ubyte"), 3)
        self.targets = read_idx(find(folder, f"{prefix}-labels-idx1-ubyte"), 1).astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index], mode="L")
        return self.transform(img), int(self.targets[index])


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2),
        nn.Tanh(),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.Tanh(),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(16, 120, kernel_size=5),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(120, 84),
        nn.Tanh(),
        nn.Linear(84, 10),
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="textbook.py")
    p.add_argument("--root", type=Path, default=Path("data"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-batches", type=int, default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    folder = args.root / "mnist"
    train_loader = DataLoader(MNIST(folder, True, tf), batch_size=256, shuffle=True)
    test_loader = DataLoader(MNIST(folder, False, tf), batch_size=1000)
    model, loss_fn = lenet5(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.9)
    epochs = []
    for _ in range(args.epochs):
        tic = time.perf_counter()
        model.train()
        for i, (x, y) in enumerate(train_loader):
            if args.limit_batches is not None and i >= args.limit_batches:
                break
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            loss.item()
        train_s = time.perf_counter() - tic
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        epochs.append({"epoch_s": train_s, "test_acc": correct / len(test_loader.dataset)})
        print(f"epoch {len(epochs)}: {train_s:.1f} s, test accuracy {epochs[-1]['test_acc']:.4f}")
    result = {"epochs": epochs, "test_acc": epochs[-1]["test_acc"] if epochs else None}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
