"""The three loops the bench compares on one model: the textbook's, cnnbench's engine, and a
bare compute loop (see cnnbench/bench/__init__.py)."""

from __future__ import annotations

import csv
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cnnbench import build, data
from cnnbench.bench.measure import PeakMemory, sync, train_flops_per_image
from cnnbench.build import build_engine, build_model, build_optimizer
from cnnbench.config import compose, image_size, validate
from cnnbench.distributed import resolve_device
from cnnbench.eval import evaluate
from cnnbench.seeding import seed_everything
from cnnbench.train import train


@dataclass(frozen=True)
class Case:
    """One row: a model (name@size resizes its images), the overrides that set it up, and how
    many batches of each split every loop sees (None: the whole split)."""

    name: str
    overrides: tuple[str, ...]
    train_batches: int | None
    test_batches: int | None


# Sized so that the whole list takes a few minutes on a 2-core CPU: the small models train on
# the whole training split (or most of it), the large ones on a few hundred images.
SMALL_BATCHES = ("dataset.batch_size=64", "trainer.eval_batch_size=64")
DEFAULT_CASES = [
    # seed 000's recipe (MNIST, SGD lr 0.9, batch 256), which the textbook loop copies
    Case("lenet5", ("experiment=tutorial/lenet5_mnist",), None, None),
    Case("lenet", ("model=lenet",), None, None),
    Case("resnet_mini", ("model=resnet_mini",), 100, 4),
    Case("googlenet_mini", ("model=googlenet_mini",), 40, 2),
    Case("resnet", ("model=resnet",), 4, 1),
    Case("resnet@96", ("model=resnet", "dataset.resize=96", *SMALL_BATCHES), 8, 2),
    Case("alexnet", ("model=alexnet", *SMALL_BATCHES), 8, 2),
]
QUICK_MODELS = "lenet5,lenet"
ABLATION_MODELS = "lenet5,resnet_mini,resnet@96"
QUICK_BATCHES = (8, 1)  # train, test
OTHER_BATCHES = (4, 1)  # a model missing from DEFAULT_CASES, whatever its cost


def case_for(name: str) -> Case:
    """The default case of that name, else `model=<name>` (and `dataset.resize=<size>` for
    name@size) on a few batches."""
    known = {c.name: c for c in DEFAULT_CASES}
    if name in known:
        return known[name]
    model, _, size = name.partition("@")
    resize = (f"dataset.resize={size}",) if size else ()
    return Case(name, (f"model={model}", *resize), *OTHER_BATCHES)


GPU_BATCHES = 8  # a GPU trains a large model's limited epoch on this many times the batches


def for_gpu(case: Case, scale: int = GPU_BATCHES) -> Case:
    """The case as a GPU trains it: the batch size of its recipe (batch 64 only spares a
    2-core CPU's memory and time), and `scale` times the batches where its epoch is limited."""
    overrides = tuple(o for o in case.overrides if o not in SMALL_BATCHES)
    more = None if case.train_batches is None else case.train_batches * scale
    return dataclasses.replace(case, overrides=overrides, train_batches=more)


def compose_config(case: Case, overrides: list[str]) -> DictConfig:
    """The config train.py would run: the case's overrides, then the user's, then the two
    epochs the engine's timing needs (the first is its warm-up)."""
    limits = [
        f"trainer.limit_{split}_batches={'null' if n is None else n}"
        for split, n in (("train", case.train_batches), ("test", case.test_batches))
    ]
    cfg = compose([*case.overrides, *limits, *overrides, "trainer.epochs=2"])
    validate(cfg)
    return cfg


def load_splits(cfg: DictConfig) -> tuple[data.Split, data.Split]:
    """The training split train.py trains on (without any validation split), and the test split."""
    train_set, _, test_set = build.load_splits(cfg)
    return train_set, test_set


# (a) the textbook loop


class TextbookDataset(Dataset):
    """torchvision's MNIST (or CIFAR10) as the course sources use it: the uint8 images in
    memory, each returned as a PIL image through `transform` (its __getitem__, line for line)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        # torchvision keeps grey images as (N, H, W) and colour ones as (N, H, W, C)
        grey = images.shape[1] == 1
        self.data = images[:, 0] if grey else images.permute(0, 2, 3, 1).contiguous()
        self.targets = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[index].numpy(), int(self.targets[index])
        img = Image.fromarray(img, mode="L") if img.ndim == 2 else Image.fromarray(img)
        return self.transform(img), target


def textbook_transform(cfg: DictConfig) -> transforms.Compose:
    spec, size = data.SPECS[cfg.dataset.name], image_size(cfg)
    resize = [transforms.Resize(size)] if size != spec.size else []
    normalize = [transforms.Normalize(spec.mean, spec.std)] if cfg.dataset.normalize else []
    return transforms.Compose([*resize, transforms.ToTensor(), *normalize])


def textbook_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    batches: int | None,
) -> float:
    """Train on `batches` batches (None: all) as the course sources do; returns images/s."""
    model.train()
    loss_sum, correct, n = 0.0, 0, 0
    tic = time.perf_counter()
    for x, y in islice(loader, batches):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)  # each .item() waits for the device
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return n / (time.perf_counter() - tic)


@torch.no_grad()
def textbook_eval(
    model: nn.Module, loader: DataLoader, device: torch.device, batches: int | None
) -> float:
    """Test accuracy as the course sources compute it; returns images/s."""
    model.eval()
    correct, n = 0, 0
    tic = time.perf_counter()
    for x, y in islice(loader, batches):
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(1) == y).sum().item()
        n += len(y)
    return n / (time.perf_counter() - tic)


def run_textbook(cfg: DictConfig) -> dict:
    """Its switches (precision, compile, channels-last) are the engine's: the textbook loop
    runs plain float32, as the sources do."""
    device = resolve_device(cfg.trainer.device)
    train_set, test_set = load_splits(cfg)
    torch.backends.cudnn.benchmark = False  # the sources leave it off; train() turns it on
    seed_everything(cfg.trainer.seed)
    transform = textbook_transform(cfg)
    train_loader = DataLoader(
        TextbookDataset(*train_set, transform), batch_size=cfg.dataset.batch_size, shuffle=True
    )
    test_loader = DataLoader(
        TextbookDataset(*test_set, transform), batch_size=cfg.trainer.eval_batch_size
    )
    model = build_model(cfg, device)
    optimizer = build_optimizer(cfg, model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    textbook_epoch(model, train_loader, optimizer, loss_fn, device, batches=1)  # warm-up
    with PeakMemory(device) as memory:
        train_rate = textbook_epoch(
            model, train_loader, optimizer, loss_fn, device, cfg.trainer.limit_train_batches
        )
    textbook_eval(model, test_loader, device, batches=1)  # warm-up
    return {
        "textbook_train_images_per_s": train_rate,
        "textbook_eval_images_per_s": textbook_eval(
            model, test_loader, device, cfg.trainer.limit_test_batches
        ),
        "textbook_peak_mib": memory.mib,
    }


# (b) cnnbench's engine


class ModelFailed(RuntimeError):
    """A model that cannot be measured: it is recorded with the reason, the others go on."""


def run_engine(cfg: DictConfig, device: torch.device, test_set: data.Split) -> dict:
    """train() for two epochs in a temporary directory; epoch 1 (warm-up, any compiling) and
    epoch 2 (timed) come from its metrics.csv. Then evaluate() on the test DeviceLoader."""
    with tempfile.TemporaryDirectory(prefix="cnnbench-bench-") as tmp:
        with PeakMemory(device) as memory:
            results = train(cfg, Path(tmp))
        if results["status"] != "ok":
            raise ModelFailed(f"the engine's run ended {results['status']}")
        with open(Path(tmp) / "metrics.csv", newline="") as f:
            warmup, timed = csv.DictReader(f)

    spec = data.SPECS[cfg.dataset.name]
    model = build_model(cfg, device)
    engine = build_engine(cfg, model, device)
    forward, autocast = engine.forward, engine.autocast
    loader = build.device_loader(cfg, test_set, device)
    with autocast:
        evaluate(forward, loader, len(spec.classes))  # warm-up; evaluate() ends synchronised
        tic = time.perf_counter()
        result = evaluate(forward, loader, len(spec.classes))
        eval_s = time.perf_counter() - tic
    return {
        "cnnbench_step": results["step"],
        "cnnbench_train_images_per_s": float(timed["images_per_s"]),
        "cnnbench_measured_epoch_s": float(timed["epoch_s"]),
        "cnnbench_eval_images_per_s": int(result.confusion.sum()) / eval_s,
        "cnnbench_peak_mib": memory.mib,
        "cnnbench_warmup_s": float(warmup["epoch_s"]),
    }


# (c) the bare compute loop


def run_bare(
    cfg: DictConfig, device: torch.device, train_set: data.Split, item_every_step: bool = False
) -> dict:
    """The engine's first epoch of batches, prepared beforehand on the device, then only
    forward, loss, backward and step (no bookkeeping; the float16 gradient scaler is left
    out), timed between two synchronisations after warm-up steps. `item_every_step` reads
    the loss on the host after every step, as the textbook loop does."""
    loader = build.device_loader(cfg, train_set, device, train=True)
    loader.set_epoch(1)
    batches = list(loader)
    seed_everything(cfg.trainer.seed)
    model = build_model(cfg, device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    flops = train_flops_per_image(model, loss_fn, *batches[0])  # eager, as the model is written
    engine = build_engine(cfg, model, device)
    forward, autocast = engine.forward, engine.autocast
    optimizer = build_optimizer(cfg, model)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast:
            loss = loss_fn(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if item_every_step:
            loss.item()

    # warm-up; a smaller last batch has kernels (and, compiled, a graph) of its own
    smaller_last = len(batches[-1][1]) < len(batches[0][1])
    for x, y in batches[:1] + (batches[-1:] if smaller_last else []):
        step(x, y)
    sync(device)
    with PeakMemory(device) as memory:
        tic = time.perf_counter()
        for x, y in batches:
            step(x, y)
        sync(device)
        elapsed = time.perf_counter() - tic
    images = sum(len(y) for _, y in batches)
    return {
        "epoch_images": images,
        "bare_train_images_per_s": images / elapsed,
        "bare_peak_mib": memory.mib,
        "train_flops_per_image": flops,
    }
