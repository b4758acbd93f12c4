"""The typed schemas of the config groups: every key a group may hold, its type, its default
and the values it allows, in one place. Registered in Hydra's ConfigStore as `schema/<group>`
(`schema/optimizer/sgd`, ...), which the YAML files extend through their defaults list
(Hydra's structured-config schema pattern): a misspelt key or a value of the wrong type is
refused while the config is composed, a value out of range by config.validate, with the
message each field's `Allowed` gives.

A model's YAML file holds its class's own arguments besides the keys every model has, so the
model group is not typed: ModelConfig states only those common keys and their ranges.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore

from cnnbench.datasets import SPECS

# trainer.precision (build.PRECISIONS maps them to autocast's dtype)
PRECISIONS = ("32", "bf16", "16-mixed", "auto")
# trainer.cuda_graph: whether the training step is captured (cuda_graph.choose)
CUDA_GRAPH = ("auto", "true", "false")
# model.init: PyTorch's own weights, or a scheme drawn over them (build.init_weights)
INITS = ("default", "xavier", "kaiming")
TTA = ("none", "flip", "translate", "flip_translate")
MATMUL_PRECISIONS = ("highest", "high", "medium")
DEVICES = "auto, cpu, cuda, cuda:N or mps"  # distributed.resolve_device reads the names


@dataclass(frozen=True)
class Allowed:
    """What a setting allows: a test, the words for it, and an override that passes."""

    test: Callable[[Any], bool]
    says: str
    example: str

    def message(self, key: str, value: object) -> str:
        return f"{key}={value!r} is not allowed: use {self.says}, e.g. {key}={self.example}"


def _number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _integer(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def integer(low: int, example: object, why: str = "") -> Allowed:
    says = f"an integer >= {low}" + (f" ({why})" if why else "")
    return Allowed(lambda v: _integer(v) and v >= low, says, str(example))


def number(low: float, high: float, says: str, example: object) -> Allowed:
    """low <= v < high"""
    return Allowed(lambda v: _number(v) and low <= v < high, says, str(example))


def positive(example: object) -> Allowed:
    return Allowed(lambda v: _number(v) and v > 0, "a number > 0", str(example))


def one_of(names: tuple[str, ...], example: str, why: str = "") -> Allowed:
    says = f"one of {', '.join(names)}" + (f" ({why})" if why else "")
    return Allowed(lambda v: str(v) in names, says, example)


def or_none(allowed: Allowed, says: str) -> Allowed:
    return Allowed(lambda v: v is None or allowed.test(v), says, allowed.example)


def text(says: str, example: str) -> Allowed:
    return Allowed(lambda v: isinstance(v, str) and v != "", says, example)


FLAG = Allowed(lambda v: isinstance(v, bool), "true or false", "true")


def setting(default: Any, allowed: Allowed) -> Any:
    """A field with the values it allows."""
    return field(default=default, metadata={"allowed": allowed})


# ---------------------------------------------------------------------------- the groups


@dataclass
class ModelConfig:
    """The keys every conf/model/*.yaml has, read by cnnbench rather than passed to the class."""

    _target_: str = "???"
    min_size: int = setting(1, integer(1, 28, "pixels per side"))  # the smallest side it takes
    # the side it trains at; null: the dataset's own
    input_size: int | None = setting(
        None, or_none(integer(1, 96), "null (the dataset's size) or an integer >= 1")
    )
    init: str = setting("default", one_of(INITS, "xavier", "xavier: d2l's train_ch6"))


@dataclass
class DatasetConfig:
    """The data and its loader (data.load, data.DeviceLoader)."""

    name: str = setting("???", one_of(tuple(SPECS), "mnist"))
    # searched first; then the system folders; then a torchvision download into this folder
    root: str = setting("data", text("a folder", "data"))
    download: bool = setting(True, FLAG)
    cache_dir: str = setting(
        "${oc.env:CNNBENCH_CACHE,'~/.cache/cnnbench'}", text("a folder", "~/.cache/cnnbench")
    )
    batch_size: int = setting(256, integer(1, 256))
    # the side the images are resized to on the device
    resize: int | None = setting(
        None, or_none(integer(1, 224), "null or an integer >= 1 (pixels per side)")
    )
    normalize: bool = setting(True, FLAG)  # false: plain ToTensor scaling to [0, 1]
    # training images held out for validation (chosen by trainer.seed); 0 as in the textbooks
    val_size: int = setting(0, integer(0, 10000, "training images held out for validation"))
    # on-device augmentation of the training batches (off in the textbooks): a random shift by
    # up to this many pixels (zero fill, as a padded random crop), and random horizontal flips
    translate: int = setting(0, integer(0, 2, "pixels; 0 turns it off"))
    flip: bool = setting(False, FLAG)


@dataclass
class TrainerConfig:
    """The loop (train.train) and the engine's switches."""

    epochs: int = setting(10, integer(0, 10))
    device: str = setting("auto", text(DEVICES, "cpu"))  # auto: cuda, then mps, else cpu
    seed: int = setting(
        0, Allowed(lambda v: _integer(v) and 0 <= v < 2**32, "an integer in [0, 2**32)", "1")
    )
    # train/loss is logged every this many optimizer steps
    log_every_n_steps: int = setting(50, integer(1, 50))
    eval_batch_size: int = setting(1000, integer(1, 1000))
    label_smoothing: float = setting(0.0, number(0, 1, "a number in [0, 1)", 0.1))
    # stop each epoch after this many batches (quick smoke runs); null trains on every batch
    limit_train_batches: int | None = setting(
        None, or_none(integer(1, 10), "null or an integer >= 1")
    )
    # evaluate on only this many test batches (smoke runs; the accuracy is then a subset's)
    limit_test_batches: int | None = setting(
        None, or_none(integer(1, 10), "null or an integer >= 1")
    )
    # continue a stopped run in its own directory: a run directory, a checkpoint (.pt), or auto
    # (the newest run under outputs/ with the same config; none: a new run)
    resume: str | None = setting(
        None,
        or_none(
            text("", "outputs/2026-01-01/12-00-00"),
            "null, auto, a run directory or a checkpoint file",
        ),
    )
    # autocast to bfloat16 or float16 (float16 with a gradient scaler); auto is bf16 on CUDA
    # GPUs and CPUs with bfloat16 units, else 32 (docs/performance.md says what each buys)
    precision: str = setting("32", one_of(PRECISIONS, "bf16"))
    # torch.compile the model; the first steps pay for compiling
    compile: bool = setting(False, FLAG)
    # record the training step once as a CUDA graph and replay it for every full batch: auto
    # (on CUDA where it is safe), true (the same, and on other devices the step's uncaptured
    # static form) or false (the plain step); cnnbench/cuda_graph.py
    cuda_graph: str = setting(
        "auto",  # true and false arrive as the strings True and False
        Allowed(lambda v: str(v).lower() in CUDA_GRAPH, f"one of {', '.join(CUDA_GRAPH)}", "false"),
    )
    # the same bits on every run and resume on a GPU too: deterministic kernels (slower), no
    # cuDNN autotuning; on the CPU runs are deterministic already
    deterministic: bool = setting(False, FLAG)
    # float32 matrix products: highest (full float32, PyTorch's default), high (TF32 on
    # Ampere and later GPUs, as convolutions already use) or medium (bfloat16 passes)
    matmul_precision: str = setting("highest", one_of(MATMUL_PRECISIONS, "high"))
    # channels-last (NHWC) layout for the model and its batches
    channels_last: bool = setting(False, FLAG)
    # intra-op CPU threads; null: the usable cores, shared with the processes that run
    # together (joblib's n_jobs, torchrun's processes, other cnnbench runs; cnnbench/cores.py)
    threads: int | None = setting(
        None,
        or_none(
            integer(1, 1),
            "null (the cores, shared with the runs beside it) or an integer >= 1",
        ),
    )
    # test-time augmentation of the evaluation after the last epoch (the run's test_acc): the
    # logits of each image are averaged over its mirror and its one-pixel shifts
    # (tta.TestTimeAugmentation). Earlier epochs evaluate plainly.
    tta: str = setting("none", one_of(TTA, "flip_translate"))


LR = positive(0.01)
WEIGHT_DECAY = number(0, math.inf, "a number >= 0", 0.0005)
FUSED = or_none(FLAG, "null or true or false")  # null: torch's choice
BETAS = Allowed(
    lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
    "two numbers in [0, 1)",
    "[0.9,0.999]",
)


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = setting(0.1, LR)
    momentum: float = setting(0.0, number(0, 1, "a number in [0, 1)", 0.9))
    nesterov: bool = setting(False, FLAG)
    weight_decay: float = setting(0.0, WEIGHT_DECAY)
    fused: bool | None = setting(None, FUSED)


@dataclass
class AdamConfig:
    """Adam and AdamW (conf/optimizer/adamw.yaml names the class)."""

    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = setting(0.001, LR)
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999],
        metadata={"allowed": BETAS},
    )
    weight_decay: float = setting(0.0, WEIGHT_DECAY)
    fused: bool | None = setting(None, FUSED)


@dataclass
class ConstantConfig:
    """scheduler=none: a constant learning rate."""

    _target_: str = "torch.optim.lr_scheduler.ConstantLR"
    _partial_: bool = True
    factor: float = setting(
        1.0, Allowed(lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]", "1.0")
    )
    total_iters: int = setting(0, integer(0, 0))


@dataclass
class StepConfig:
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    _partial_: bool = True
    step_size: int = setting(1000, integer(1, 1000, "optimizer steps"))
    gamma: float = setting(0.1, positive(0.1))


@dataclass
class CosineConfig:
    """Cosine annealing over the whole run (train.run_length_args sets T_max)."""

    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    eta_min: float = setting(0.0, number(0, math.inf, "a number >= 0", 0))


@dataclass
class OneCycleConfig:
    """One cycle over the whole run (train.run_length_args sets total_steps)."""

    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    _partial_: bool = True
    max_lr: float = setting("${optimizer.lr}", positive(0.1))
    pct_start: float = setting(
        0.3, Allowed(lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)", "0.3")
    )
    cycle_momentum: bool = setting(False, FLAG)


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"model": ModelConfig},
    "dataset": {"dataset": DatasetConfig},
    "trainer": {"trainer": TrainerConfig},
    "optimizer": {"optimizer/sgd": SGDConfig, "optimizer/adam": AdamConfig},
    "scheduler": {
        "scheduler/constant": ConstantConfig,
        "scheduler/step": StepConfig,
        "scheduler/cosine": CosineConfig,
        "scheduler/onecycle": OneCycleConfig,
    },
}

# every checked key, e.g. "optimizer.lr", with what it allows
ALLOWED: dict[str, Allowed] = {
    f"{group}.{f.name}": f.metadata["allowed"]
    for group, schemas in SCHEMAS.items()
    for schema in schemas.values()
    for f in fields(schema)
    if "allowed" in f.metadata
}


def register(store: ConfigStore) -> None:
    """Store the schemas the YAML files extend: schema/dataset, schema/optimizer/sgd, ... (not
    the model's: see the module's docstring)."""
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            if group != "model":
                folder, _, leaf = f"schema/{name}".rpartition("/")
                store.store(group=folder, name=leaf, node=schema)
