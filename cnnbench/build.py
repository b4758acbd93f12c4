"""Config in, objects out: the model, the device-resident loaders, the optimizer and its
schedule, and the engine's switches. train.py, eval.py, summary.py and the bench all build
through here, so that each builds exactly what a run trains.
"""

from __future__ import annotations

import ctypes
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from cnnbench import cores, data, distributed
from cnnbench.config import MODEL_BUILD_KEYS, image_size, model_name
from cnnbench.errors import ConfigError
from cnnbench.tta import with_tta

# trainer.precision -> the dtype autocast computes in (None: no autocast); auto is resolved
# by the device (precision_for)
# trainer.precision (schema.PRECISIONS names them, with auto), by autocast's dtype
PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}


def has_bf16_units(device: torch.device) -> bool:
    """Whether the device computes bfloat16 in hardware: a CUDA GPU that supports it (Ampere
    and later), a CPU with AVX-512 BF16 or AMX. Elsewhere bfloat16 is emulated, and slow."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def precision_for(precision: str, device: torch.device) -> str:
    """trainer.precision as run: auto is bf16 on a device with bfloat16 units, else 32."""
    if str(precision) != "auto":
        return str(precision)
    return "bf16" if has_bf16_units(device) else "32"


@contextmanager
def blame(group: str, node: DictConfig) -> Iterator[None]:
    """Turn a constructor's complaint about its arguments into one ConfigError naming the
    group: torch's optimizers and schedulers, and our models, check their own arguments."""
    try:
        yield
    except (InstantiationException, ValueError, TypeError, ZeroDivisionError) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        raise ConfigError(
            f"{group} ({node._target_}): {cause or err}\nFix the {group}.* values; "
            "python -m cnnbench --cfg job shows them."
        ) from None


# ---------------------------------------------------------------------------- the model


def construct_model(cfg: DictConfig) -> nn.Module:
    """The model's class called with its YAML file's arguments; lazy layers unsized."""
    spec = data.SPECS[cfg.dataset.name]
    node = OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k not in MODEL_BUILD_KEYS])
    with blame("model", cfg.model):
        return instantiate(node, in_channels=spec.channels, num_classes=len(spec.classes))


def build_model(cfg: DictConfig, device: torch.device) -> nn.Module:
    """Construct the model, run one image through it, which sizes its lazy layers, and
    initialise its weights by `model.init`."""
    spec, size = data.SPECS[cfg.dataset.name], image_size(cfg)
    model = construct_model(cfg).to(device).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, spec.channels, size, size, device=device))
    if out.shape != (1, len(spec.classes)):
        raise ConfigError(
            f"{cfg.model._target_} returned shape {tuple(out.shape)} for one image; "
            f"expected (1, {len(spec.classes)})"
        )
    init_weights(model, cfg.model.get("init", "default"))
    return model


# model.init's schemes (schema.INITS names them), by the draw each makes
INIT_SCHEMES = {
    "xavier": nn.init.xavier_uniform_,
    "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
}


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-draw the weights of every conv and fc layer; biases and batch norm keep PyTorch's
    values. xavier is d2l's `train_ch6` (Xavier-uniform); kaiming is He-normal for ReLU
    networks (fan-in). default keeps PyTorch's own initialisation and draws nothing."""
    if scheme == "default":
        return
    draw = INIT_SCHEMES[scheme]
    for module in model.modules():
        # lazy layers are materialised by now and have become nn.Linear / nn.Conv2d
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            draw(module.weight)


def forward_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one image's forward pass as torch's FlopCounterMode counts them (convolutions
    and matrix products, a multiply-add counting 2), the counter summary.py and the bench use
    too. Its first use imports torch._dynamo, which torch.optim's first step would import
    anyway: the run's start-up pays it once, here instead of at the first step."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def describe(
    cfg: DictConfig, model: nn.Module, loaders: Loaders, device: torch.device, threads: tuple
) -> str:
    """The run's start line; `threads`: (count, why) from tune_backend."""
    spec, size = data.SPECS[cfg.dataset.name], image_size(cfg)
    params = sum(p.numel() for p in model.parameters())
    return (
        f"{model_name(cfg)} on {spec.title} ({loaders.train.num_samples} train / "
        f"{loaders.test.num_samples} test images at {size}x{size}), {params:,} parameters, "
        f"device {device}, {precision_for(cfg.trainer.precision, device)} precision, "
        f"{threads[0]} thread{'s' * (threads[0] != 1)} ({threads[1]})"
    )


# ---------------------------------------------------------------------------- the data


def device_loader(
    cfg: DictConfig, split: data.Split, device: torch.device, train: bool = False
) -> data.DeviceLoader:
    """The batches of a split on the device: shuffled and augmented for training; in large
    batches, in order, for evaluation."""
    spec, size, ds = data.SPECS[cfg.dataset.name], image_size(cfg), cfg.dataset
    common = dict(
        device=device,
        mean=spec.mean,
        std=spec.std,
        normalize=ds.normalize,
        resize=size if size != spec.size else None,
        channels_last=cfg.trainer.channels_last,
        rank=distributed.rank(),
        world_size=distributed.world_size(),
    )
    if train:
        return data.DeviceLoader(
            *split,
            ds.batch_size,
            shuffle=True,
            seed=cfg.trainer.seed,
            limit_batches=cfg.trainer.limit_train_batches,
            translate=ds.translate,
            flip=ds.flip,
            **common,
        )
    return data.DeviceLoader(
        *split, cfg.trainer.eval_batch_size, limit_batches=cfg.trainer.limit_test_batches, **common
    )


def load_splits(cfg: DictConfig) -> tuple[data.Split, data.Split | None, data.Split]:
    """(train, validation or None, test), decoded once and cached on disk; under torchrun,
    rank 0 reads (or downloads) first."""
    ds = cfg.dataset

    def load(split: str) -> data.Split:
        return distributed.main_first(
            lambda: data.load(ds.name, split, ds.root, ds.download, ds.cache_dir)
        )

    train_set, test_set = load("train"), load("test")
    train_set, val_set = data.hold_out(*train_set, ds.val_size, seed=cfg.trainer.seed)
    return train_set, val_set, test_set


@dataclass
class Loaders:
    train: data.DeviceLoader
    test: data.DeviceLoader
    val: data.DeviceLoader | None  # dataset.val_size > 0


def build_loaders(cfg: DictConfig, device: torch.device) -> Loaders:
    train_set, val_set, test_set = load_splits(cfg)
    loaders = Loaders(
        train=device_loader(cfg, train_set, device, train=True),
        test=device_loader(cfg, test_set, device),
        val=device_loader(cfg, val_set, device) if val_set is not None else None,
    )
    check_batches(cfg, loaders.train)
    return loaders


def check_batches(cfg: DictConfig, train: data.DeviceLoader) -> None:
    """Under torchrun, every batch of the epoch must leave each process an image."""
    distributed.check_global_batch(
        cfg.dataset.batch_size, train.num_samples, train.batch_len(len(train) - 1)
    )


# ---------------------------------------------------------------------------- optimization


def build_optimizer(
    cfg: DictConfig, model: nn.Module, device: torch.device | None = None, static: bool = False
) -> torch.optim.Optimizer:
    """With float16 on a GPU the update is fused unless optimizer.fused says otherwise: the
    gradient scaler's step then skips its host sync (it reads found_inf on the device). The
    `static` step (trainer.cuda_graph) takes torch's fused update, which reads a tensor
    learning rate on the device, and capturable where the optimizer has that switch."""
    options = {}
    float16_on_gpu = device is not None and precision_for(cfg.trainer.precision, device) == (
        "16-mixed"
    )
    if float16_on_gpu and device.type == "cuda" and cfg.optimizer.get("fused", False) is None:
        options = {"fused": True}
    if static:
        cls = hydra.utils.get_class(cfg.optimizer._target_)
        capturable = "capturable" in inspect.signature(cls).parameters
        options = {"fused": True, **({"capturable": True} if capturable else {})}
    with blame("optimizer", cfg.optimizer):
        return instantiate(cfg.optimizer, _convert_="all", **options)(model.parameters())


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    with blame("scheduler", cfg.scheduler):
        return instantiate(cfg.scheduler, _convert_="all")(
            optimizer, **run_length_args(cfg.scheduler, total_steps)
        )


def run_length_args(node: DictConfig, total_steps: int) -> dict:
    """Schedulers step after every optimizer step. One whose horizon is the whole run (T_max
    of cosine, total_steps of one-cycle) is given the run's length here, unless its YAML
    sets it."""
    params = inspect.signature(hydra.utils.get_class(node._target_)).parameters
    return {k: total_steps for k in ("T_max", "total_steps") if k in params and k not in node}


# ---------------------------------------------------------------------------- the engine


@dataclass
class Engine:
    """How the model runs: `forward` is the model, or its DDP wrapper, compiled or not (the
    weights that are saved stay in the model); autocast and the gradient scaler follow
    trainer.precision."""

    forward: nn.Module
    autocast: torch.autocast
    scaler: torch.amp.GradScaler
    evaluate: nn.Module  # forward, or its test-time augmentation (trainer.tta)


def build_engine(
    cfg: DictConfig, model: nn.Module, device: torch.device, captured: bool = False
) -> Engine:
    """The trainer's switches: channels-last weights (in place), DistributedDataParallel under
    torchrun, torch.compile, autocast, and the gradient scaler float16 needs (its gradients
    underflow; bfloat16 has float32's range). A `captured` step needs autocast without its
    cache of cast weights, which a CUDA graph cannot hold across replays."""
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.trainer.deterministic and device.type == "cuda":
        deterministic_pools(model)
    forward = model
    if distributed.world_size() > 1:  # all-reduces the gradients during backward
        forward = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    # static shapes: a run has few (the last, smaller batch; evaluation), each compiled once
    forward = torch.compile(forward, dynamic=False) if cfg.trainer.compile else forward
    dtype = PRECISIONS[precision_for(cfg.trainer.precision, device)]
    autocast = torch.autocast(
        device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=not captured
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return Engine(forward, autocast, scaler, with_tta(forward, cfg.trainer.tta))


def tune_backend(
    device: torch.device,
    deterministic: bool = False,
    matmul_precision: str = "highest",
    threads: int | None = None,
    jobs: int = 1,
) -> tuple[int, str]:
    """trainer.deterministic: kernels that give the same bits on every run, so that a run
    resumed on its GPU ends as it would have (on the CPU they do already). cuBLAS needs a
    fixed workspace for that, set before its first call. `threads`: trainer.threads (None:
    the cores shared with the processes that run together, cores.plan; `jobs` of them started
    by a launcher with this one). Returns the thread
    count and why."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # only when it changes: the call imports torch._inductor (1.4 s of start-up here)
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)
    count, why = cores.plan(threads, jobs)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    torch.set_float32_matmul_precision(matmul_precision)
    # else the fastest convolution algorithms for these fixed shapes, measured once
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    return count, why


class GlobalAvgPool(nn.Module):
    """The mean over each feature map: what AdaptiveAvgPool2d(1) computes, with a backward
    pass that CUDA runs deterministically (the adaptive pool's has no such kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


def deterministic_pools(model: nn.Module) -> nn.Module:
    """Swap the model's global adaptive average pools for GlobalAvgPool (same weights, same
    outputs up to rounding), in place."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, GlobalAvgPool())
    return model


def keep_freed_memory() -> None:
    """CPU training frees and reallocates megabytes of activations every step. glibc hands
    such blocks back to the kernel and maps them again, paying a page fault per 4 KiB page;
    keeping them in the heap made bfloat16 runs 1.2x faster here (docs/performance.md), as
    torch's `torch.backends.xeon.run_cpu --enable-jemalloc` launcher does with another
    allocator. glibc only (elsewhere nothing changes); CNNBENCH_TUNE_MALLOC=0 turns it off."""
    if os.environ.get("CNNBENCH_TUNE_MALLOC", "1") == "0":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: macOS, Windows, musl
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    libc.mallopt(m_trim_threshold, 2**30)
    libc.mallopt(m_mmap_threshold, 2**25)  # the largest value glibc allows, 32 MiB
