"""Time the textbook training loop against cnnbench's engine, in one process, for the same
model, batch size, optimizer and data:

    python -m cnnbench.bench dataset.root=../shared/data             # the default list, minutes
    python -m cnnbench.bench --quick dataset.root=../shared/data     # lenet5 and lenet, seconds
    python -m cnnbench.bench --models lenet,resnet@96 --device cuda  # name@size resizes

Each model is trained by three loops over the same images:

- textbook: the loop of the course sources. A torchvision-style Dataset returning PIL images,
  ToTensor and Normalize per image, a DataLoader (shuffled, no workers), and `.item()` of the
  loss and of the correct count after every step;
- cnnbench: the engine itself, `cnnbench.train.train`, for two epochs: the first is the
  warm-up, the second is timed (its row of metrics.csv);
- bare: forward, loss, backward and step over batches already prepared on the device, and
  nothing else: the most a loop can reach. cnnbench / bare is the engine's efficiency.

Evaluation is timed too: the textbook's DataLoader under no_grad, and `cnnbench.eval.evaluate`
on the engine's DeviceLoader. One table row per model is printed; every figure, the machine
and its matmul peak (measured here) go to JSON (outputs/bench/<time>.json, or --json).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import NoReturn

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from cnnbench import __version__, data
from cnnbench.config import (
    CONFIG_DIR,
    ConfigError,
    image_size,
    resolve_device,
    validate,
)
from cnnbench.eval import evaluate
from cnnbench.runs import write_json
from cnnbench.train import (
    blame,
    build_model,
    device_loader,
    how_to_run,
    seed_everything,
    train,
)


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


def compose_config(case: Case, overrides: list[str]) -> DictConfig:
    """The config train.py would run: the case's overrides, then the user's, then the two
    epochs the engine's timing needs (the first is its warm-up)."""
    limits = [
        f"trainer.limit_{split}_batches={'null' if n is None else n}"
        for split, n in (("train", case.train_batches), ("test", case.test_batches))
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(
            "config", overrides=[*case.overrides, *limits, *overrides, "trainer.epochs=2"]
        )
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: GPU kernels run asynchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class PeakMemory:
    """The peak memory in MiB (`.mib`) while the `with` block runs: CUDA's allocator peak on a
    GPU; else the process's resident set, read from /proc/self/statm every 10 ms by a
    background thread; without /proc, getrusage's peak over the process's whole life."""

    STATM = Path("/proc/self/statm")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "rss /proc/self/statm" if self.STATM.exists() else "getrusage maxrss (lifetime)"

    def _rss_mib(self) -> float:
        resident_pages = int(self.STATM.read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.mib = max(self.mib, self._rss_mib())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.STATM.exists():
            self.mib = self._rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.mib = max(self.mib, self._rss_mib())
        else:
            import resource  # Unix only; kilobytes on Linux, bytes on macOS

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.mib = peak / (2**20 if sys.platform == "darwin" else 2**10)


def matmul_peak_flops(device: torch.device, n: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of float32 n x n matrix products on `device`, after two warm-up products: the
    yardstick for how much of the device a training loop uses."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        torch.mm(a, b)
    sync(device)
    flops, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        for _ in range(5):
            torch.mm(a, b)
        sync(device)
        flops += 5 * 2 * n**3
    return flops / (time.perf_counter() - tic)


def train_flops_per_image(
    model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> float:
    """FLOPs of one image's forward and backward pass, counted by torch on one batch
    (convolutions and matrix products; a multiply-add counts 2)."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(y)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cnnbench_version": __version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        # other processes' load: on a shared CPU the timings are low and noisy
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


# ---------------------------------------------------------------------------- the three loops


def make_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    with blame("optimizer", cfg.optimizer):
        return instantiate(cfg.optimizer, _convert_="all")(model.parameters())


def load_splits(cfg: DictConfig) -> tuple[data.Split, data.Split]:
    """The training split train.py trains on (without any validation split), and the test split."""
    ds = cfg.dataset
    train_set, test_set = (
        data.load(ds.name, split, ds.root, ds.download, ds.cache_dir) for split in ("train", "test")
    )
    train_set, _ = data.hold_out(*train_set, ds.val_size, seed=cfg.trainer.seed)
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
    spec, size = data.SPECS[cfg.dataset.name], image_size(cfg)
    torch.backends.cudnn.benchmark = False  # the sources leave it off; train() turns it on
    seed_everything(cfg.trainer.seed)
    transform = textbook_transform(cfg)
    train_loader = DataLoader(
        TextbookDataset(*train_set, transform), batch_size=cfg.dataset.batch_size, shuffle=True
    )
    test_loader = DataLoader(
        TextbookDataset(*test_set, transform), batch_size=cfg.trainer.eval_batch_size
    )
    model = build_model(cfg, spec, size, device)
    optimizer = make_optimizer(cfg, model)
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
    model = build_model(cfg, spec, image_size(cfg), device)
    forward, autocast, _ = how_to_run(cfg, model, device)
    loader = device_loader(cfg, test_set, device)
    with autocast:
        evaluate(forward, loader, len(spec.classes))  # warm-up; evaluate() ends synchronised
        tic = time.perf_counter()
        result = evaluate(forward, loader, len(spec.classes))
        eval_s = time.perf_counter() - tic
    return {
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
    spec = data.SPECS[cfg.dataset.name]
    loader = device_loader(cfg, train_set, device, train=True)
    loader.set_epoch(1)
    batches = list(loader)
    seed_everything(cfg.trainer.seed)
    model = build_model(cfg, spec, image_size(cfg), device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    flops = train_flops_per_image(model, loss_fn, *batches[0])  # eager, as the model is written
    forward, autocast, _ = how_to_run(cfg, model, device)
    optimizer = make_optimizer(cfg, model)
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


# ---------------------------------------------------------------------------- what each choice buys

# the allocator is measured with the defaults and with bfloat16 (which allocates more)
ALLOCATOR_SWITCHES = ["", "trainer.precision=bf16"]
SWITCHES = [
    "trainer.channels_last=true",
    "trainer.precision=bf16",
    "trainer.channels_last=true trainer.precision=bf16",
    "trainer.compile=true",
    "optimizer.fused=true",
]


def ablation(cases: list[Case], overrides: list[str]) -> list[dict]:
    """One row per engine choice and model: images/s without it and with it, side by side.
    The per-step sync is measured on the bare loop, the rest on the engine itself. The
    allocator setting (train.keep_freed_memory) lasts for the process: the runs without it
    come first."""
    rows = []

    def row(case: Case, choice: str, without: float, with_: float) -> None:
        rows.append({"model": case.name, "choice": choice, "without_images_per_s": without,
                     "with_images_per_s": with_, "ratio": with_ / without})  # fmt: skip
        print(f"{case.name:<14}  {choice:<50}  {without:>10,.0f}  {with_:>10,.0f}  "
              f"{with_ / without:>5.2f}x", flush=True)  # fmt: skip

    print(f"{'model':<14}  {'choice':<50}  {'without':>10}  {'with':>10}  ratio")
    configs = [compose_config(case, overrides) for case in cases]
    untuned = {}
    os.environ["CNNBENCH_TUNE_MALLOC"] = "0"
    for case, cfg in zip(cases, configs, strict=True):
        device, (_, test_set) = resolve_device(cfg.trainer.device), load_splits(cfg)
        for switch in ALLOCATOR_SWITCHES:
            switched = compose_config(case, [*overrides, *switch.split()])
            untuned[case, switch] = run_engine(switched, device, test_set)
    del os.environ["CNNBENCH_TUNE_MALLOC"]
    for case, cfg in zip(cases, configs, strict=True):
        device, (train_set, test_set) = resolve_device(cfg.trainer.device), load_splits(cfg)
        for switch in ALLOCATOR_SWITCHES:
            switched = compose_config(case, [*overrides, *switch.split()])
            rate = run_engine(switched, device, test_set)["cnnbench_train_images_per_s"]
            without = untuned[case, switch]["cnnbench_train_images_per_s"]
            row(case, f"glibc keeps freed memory ({switch or 'defaults'})", without, rate)
        synced = run_bare(cfg, device, train_set, item_every_step=True)
        free = run_bare(cfg, device, train_set)
        row(case, "no .item() per step (bare loop)", synced["bare_train_images_per_s"],
            free["bare_train_images_per_s"])  # fmt: skip
        base = run_engine(cfg, device, test_set)["cnnbench_train_images_per_s"]
        for switch in SWITCHES:
            switched = compose_config(case, [*overrides, *switch.split()])
            rate = run_engine(switched, device, test_set)["cnnbench_train_images_per_s"]
            row(case, switch, base, rate)
    return rows


def bench_model(case: Case, cfg: DictConfig, peak_flops: float, textbook: dict) -> dict:
    """One record: the three loops on the same model, batch size, optimizer and data (the
    textbook loop's figures measured beforehand)."""
    device = resolve_device(cfg.trainer.device)
    train_set, test_set = load_splits(cfg)
    record = {
        "case": case.name,
        "model": case.name.partition("@")[0],
        "dataset": cfg.dataset.name,
        "image_size": image_size(cfg),
        "batch_size": cfg.dataset.batch_size,
        "eval_batch_size": cfg.trainer.eval_batch_size,
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "lr": cfg.optimizer.lr,
        "train_batches": cfg.trainer.limit_train_batches,
        "test_batches": cfg.trainer.limit_test_batches,
        "overrides": list(case.overrides),
        "device": str(device),
        "memory_source": PeakMemory(device).source,
    }
    record |= textbook
    record |= run_engine(cfg, device, test_set)
    record |= run_bare(cfg, device, train_set)

    # a limited run's epoch time is extrapolated to the whole training split
    full = len(train_set[1])
    extrapolated = record["epoch_images"] < full
    engine_rate = record["cnnbench_train_images_per_s"]
    flops_per_s = engine_rate * record["train_flops_per_image"]
    return record | {
        "full_epoch_images": full,
        "epoch_s_extrapolated": extrapolated,
        "speedup": engine_rate / record["textbook_train_images_per_s"],
        "textbook_epoch_s": full / record["textbook_train_images_per_s"],
        "cnnbench_epoch_s": full / engine_rate
        if extrapolated
        else record["cnnbench_measured_epoch_s"],
        "engine_efficiency": engine_rate / record["bare_train_images_per_s"],
        "cnnbench_train_flops_per_s": flops_per_s,
        "cnnbench_peak_fraction": flops_per_s / peak_flops,
    }


# ---------------------------------------------------------------------------- the table

# header, width, and how a record fills the cell ("~": extrapolated to the whole split)
COLUMNS = [
    ("model", 14, lambda r: r["model"]),
    ("size", 4, lambda r: r["image_size"]),
    ("batch", 5, lambda r: r["batch_size"]),
    ("tb img/s", 9, lambda r: f"{r['textbook_train_images_per_s']:,.0f}"),
    ("cb img/s", 9, lambda r: f"{r['cnnbench_train_images_per_s']:,.0f}"),
    ("speedup", 7, lambda r: f"{r['speedup']:.2f}x"),
    ("tb epoch s", 10, lambda r: f"{'~' * r['epoch_s_extrapolated']}{r['textbook_epoch_s']:.1f}"),
    ("cb epoch s", 10, lambda r: f"{'~' * r['epoch_s_extrapolated']}{r['cnnbench_epoch_s']:.1f}"),
    ("bare img/s", 10, lambda r: f"{r['bare_train_images_per_s']:,.0f}"),
    ("eff", 4, lambda r: f"{r['engine_efficiency']:.2f}"),
    ("tb eval/s", 9, lambda r: f"{r['textbook_eval_images_per_s']:,.0f}"),
    ("cb eval/s", 9, lambda r: f"{r['cnnbench_eval_images_per_s']:,.0f}"),
    ("tb MiB", 6, lambda r: f"{r['textbook_peak_mib']:.0f}"),
    ("cb MiB", 6, lambda r: f"{r['cnnbench_peak_mib']:.0f}"),
    ("warm-up s", 9, lambda r: f"{r['cnnbench_warmup_s']:.1f}"),
    ("% peak", 6, lambda r: f"{100 * r['cnnbench_peak_fraction']:.1f}"),
]
LEGEND = """\
tb: the textbook loop (PIL Dataset, DataLoader, .item() every step); cb: cnnbench's engine;
bare: forward/backward/step on ready batches; eff = cb / bare; ~: extrapolated to the whole
training split; MiB: peak memory while training; warm-up s: the engine's first epoch;
% peak: the engine's training FLOP/s over the measured matmul peak."""


def table_line(cells: list) -> str:
    first, *rest = (str(c) for c in cells)
    widths = [w for _, w, _ in COLUMNS]
    return f"{first:<{widths[0]}}" + "".join(
        f"  {c:>{w}}" for c, w in zip(rest, widths[1:], strict=True)
    )


def table_row(record: dict) -> str:
    if "error" in record:
        return f"{record['model']:<{COLUMNS[0][1]}}  error: {record['error']}"
    return table_line([cell(record) for _, _, cell in COLUMNS])


# ---------------------------------------------------------------------------- main


def fail(err: Exception) -> NoReturn:
    """One line and exit code 2, as the rest of cnnbench reports a bad input."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"cnnbench.bench: error: {err}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m cnnbench.bench",
        description="Time the textbook training loop, cnnbench's engine and a bare compute "
        "loop on the same model, batch size, optimizer and data; print a table and write JSON.",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for every model, e.g. dataset.root=data"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_MODELS} on a few batches (under a minute)"
    )
    parser.add_argument(
        "--models",
        help="comma-separated model names, name@size to resize (default: "
        f"{','.join(c.name for c in DEFAULT_CASES)}; with --quick: {QUICK_MODELS})",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="instead of the table, what each engine choice buys (per-step sync, "
        f"channels-last, bf16, compile, fused optimizer) on {ABLATION_MODELS}",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: trainer.device)")
    parser.add_argument(
        "--json", type=Path, help="results file (default: outputs/bench/<date>_<time>.json)"
    )
    args = parser.parse_intermixed_args(argv)
    default = ",".join(c.name for c in DEFAULT_CASES)
    names = args.models or (QUICK_MODELS if args.quick else default)
    if args.ablation and not args.models:
        names = QUICK_MODELS if args.quick else ABLATION_MODELS
    cases = [case_for(name) for name in names.split(",") if name]
    if not cases:
        parser.error(f"--models {args.models!r}: name at least one model, e.g. --models lenet")
    if args.quick:
        cases = [
            dataclasses.replace(c, train_batches=QUICK_BATCHES[0], test_batches=QUICK_BATCHES[1])
            for c in cases
        ]
    overrides = [*args.overrides, *([f"trainer.device={args.device}"] if args.device else [])]
    out = args.json or Path("outputs/bench") / f"{datetime.now():%Y-%m-%d_%H-%M-%S}.json"

    try:
        # every config is composed and checked, and every split found, before minutes of timing
        configs = [compose_config(case, overrides) for case in cases]
        for cfg in configs:
            resolve_device(cfg.trainer.device)
            for split in ("train", "test"):
                ds = cfg.dataset
                data.find(ds.name, split, Path(ds.root).expanduser(), ds.download)
        device = resolve_device(configs[0].trainer.device)
        about = machine(device)  # first: the load average is the other processes'
        peak = matmul_peak_flops(device)
        print(
            f"{about['device_name']} ({device}), {about['torch_threads']} threads, torch "
            f"{about['torch_version']}; float32 matmul peak {peak / 1e9:,.1f} GFLOP/s"
        )
        if (about["load_average_1min"] or 0) > 0.5:
            print(
                f"note: the 1-minute load average is {about['load_average_1min']:.1f}: while "
                "other processes use this machine, the timings are low and noisy"
            )
        print()
        if args.ablation:
            rows = ablation(cases, overrides)
            out.parent.mkdir(parents=True, exist_ok=True)
            write_json(out, {"machine": about, "ablation": rows})
            print(f"results: {out}")
            return {"ablation": rows}
        print(table_line([name for name, _, _ in COLUMNS]), flush=True)
        # every textbook loop first: on the CPU the engine tunes the process's allocator
        # (train.keep_freed_memory), which a textbook loop, as users run it, goes without
        textbook = {}
        for case, cfg in zip(cases, configs, strict=True):
            try:
                textbook[case] = run_textbook(cfg)
            except torch.OutOfMemoryError as err:
                textbook[case] = err
        records = []
        for case, cfg in zip(cases, configs, strict=True):
            try:
                if isinstance(textbook[case], Exception):
                    raise textbook[case]
                record = bench_model(case, cfg, peak, textbook[case])
            except (ModelFailed, torch.OutOfMemoryError) as err:
                record = {"model": case.name, "error": f"{type(err).__name__}: {err}"}
            records.append(record)
            print(table_row(record), flush=True)
    except (ConfigError, data.DataError, HydraException, OmegaConfBaseException) as err:
        fail(err)
    print(f"\n{LEGEND}")

    results = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "command": ["python", "-m", "cnnbench.bench", *(sys.argv[1:] if argv is None else argv)],
        "machine": about,
        "matmul_peak_flops_per_s": peak,
        "records": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, results)
    print(f"results: {out}")
    return results


if __name__ == "__main__":
    main()
