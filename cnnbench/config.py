"""Where the YAML configs are, and the checks every composed config passes before a run."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

_HERE = Path(__file__).resolve().parent
# installed: the configs ship inside the package; source tree or editable: the top-level conf/
CONFIG_DIR = next(
    p for p in (_HERE / "conf", _HERE.parent / "conf") if (p / "config.yaml").is_file()
)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and a fix."""


def _number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _integer(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


# key, test, what is allowed, an example override. A key absent from the config is skipped
# (sgd has no betas, adam no momentum).
Rule = tuple[str, Callable[[object], bool], str, str]
RULES: list[Rule] = [
    ("optimizer.lr", lambda v: _number(v) and v > 0, "a number > 0", "optimizer.lr=0.01"),
    (
        "optimizer.momentum",
        lambda v: _number(v) and 0 <= v < 1,
        "a number in [0, 1)",
        "optimizer.momentum=0.9",
    ),
    (
        "optimizer.weight_decay",
        lambda v: _number(v) and v >= 0,
        "a number >= 0",
        "optimizer.weight_decay=0.0005",
    ),
    (
        "optimizer.betas",
        lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1)",
        "optimizer.betas=[0.9,0.999]",
    ),
    (
        "dataset.batch_size",
        lambda v: _integer(v) and v >= 1,
        "an integer >= 1",
        "dataset.batch_size=256",
    ),
    (
        "dataset.resize",
        lambda v: v is None or (_integer(v) and v >= 1),
        "null or an integer >= 1 (pixels per side)",
        "dataset.resize=224",
    ),
    ("trainer.epochs", lambda v: _integer(v) and v >= 0, "an integer >= 0", "trainer.epochs=10"),
    ("trainer.seed", _integer, "an integer", "trainer.seed=1"),
    (
        "trainer.log_every_n_steps",
        lambda v: _integer(v) and v >= 1,
        "an integer >= 1",
        "trainer.log_every_n_steps=50",
    ),
    (
        "trainer.eval_batch_size",
        lambda v: _integer(v) and v >= 1,
        "an integer >= 1",
        "trainer.eval_batch_size=1000",
    ),
    (
        "trainer.label_smoothing",
        lambda v: _number(v) and 0 <= v < 1,
        "a number in [0, 1)",
        "trainer.label_smoothing=0.1",
    ),
    (
        "trainer.limit_train_batches",
        lambda v: v is None or (_integer(v) and v >= 1),
        "null or an integer >= 1",
        "trainer.limit_train_batches=10",
    ),
]


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device must be present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            f"trainer.device={name}: not a device name ({err}). "
            "Allowed: auto, cpu, cuda, cuda:N, mps. Example: trainer.device=cpu"
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available()
        and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": torch.backends.mps.is_available(),
    }.get(device.type, False)
    if not available:
        raise ConfigError(
            f"trainer.device={name}: this machine has no such device. "
            "Use trainer.device=auto (or cpu)."
        )
    return device


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every value that cannot work, before any data is read."""
    problems = []
    for key, ok, allowed, example in RULES:
        node = OmegaConf.select(cfg, key, default="<absent>")
        if isinstance(node, str) and node == "<absent>":
            continue
        value = OmegaConf.to_object(node) if OmegaConf.is_config(node) else node
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            problems.append(f"{key}={value!r} is not allowed: use {allowed}, e.g. {example}")
    if problems:
        raise ConfigError("\n".join(problems))
