"""Where the YAML configs are, and the checks every composed config passes before a run."""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cnnbench import data, distributed
from cnnbench.runs import NOT_IDENTITY, flatten, newest_matching_run

_HERE = Path(__file__).resolve().parent
# installed: the configs ship inside the package; source tree or editable: the top-level conf/
CONFIG_DIR = next(
    p for p in (_HERE / "conf", _HERE.parent / "conf") if (p / "config.yaml").is_file()
)


# conf/config.yaml names each sweep job's directory by its overrides; this keeps that name one
# path component, short enough for any file system
OmegaConf.register_new_resolver(
    "cnnbench.dirname", lambda name: name.replace("/", "_")[:150], replace=True
)


def sweep_name(argv: list[str] | None = None) -> str:
    """A sweep directory's name: the sweep's command line (without paths and devices), so that
    running the same sweep again finds its directory (and each job its own). Hydra resolves it
    once, at the start of the sweep, and hands the value to every job (the resolver caches)."""
    args = sys.argv[1:] if argv is None else argv
    # in the order given: Hydra numbers the jobs in that order
    kept = [
        a.replace("/", "_")
        for a in args
        if a not in ("-m", "--multirun")
        and not a.lstrip("+~").startswith("hydra")
        and a.split("=", 1)[0].lstrip("+~") not in NOT_IDENTITY
    ]
    name = "__".join(kept) or "defaults"
    if len(name) > 150:
        name = f"{name[:130]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


OmegaConf.register_new_resolver(
    "cnnbench.now", lambda pattern: distributed.started().strftime(pattern), use_cache=True
)
OmegaConf.register_new_resolver("cnnbench.sweep_name", lambda: sweep_name(), use_cache=True)
OmegaConf.register_new_resolver("cnnbench.not_identity", lambda: list(NOT_IDENTITY), replace=True)


def _resumed_dir(resume: str | None, root: DictConfig) -> str | None:
    if resume is None:
        return None
    # absolute: in a sweep, Hydra joins this onto the sweep directory
    if resume == "auto":
        found = newest_matching_run(OmegaConf.to_container(root, resolve=False))
        return str(found.absolute()) if found else None
    path = Path(str(resume)).expanduser().absolute()
    if path.is_file():
        return str(path.parent)
    return str(path) if path.is_dir() else None  # no such path: train() names the problem


def check_writable(folder: str) -> None:
    """Hydra creates the run directory before any cnnbench code runs, so an unusable one is
    reported before Hydra starts: one message and exit code 2."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError("permission denied")
    except OSError as err:
        print(
            f"cnnbench: error: cannot write the run directory {folder} "
            f"({err.strerror or err}). Choose another, e.g. hydra.run.dir=outputs/my-run "
            "(hydra.sweep.dir for -m)",
            file=sys.stderr,
        )
        sys.exit(2)


def _writable_run_dir(resume: str | None, default: str, _root_: DictConfig) -> str:
    """hydra.run.dir and hydra.sweep.dir: the resumed run's directory, else `default`."""
    chosen = _resumed_dir(resume, _root_) or default
    check_writable(chosen)
    return chosen


OmegaConf.register_new_resolver("cnnbench.run_dir", _writable_run_dir, replace=True)
OmegaConf.register_new_resolver(
    "cnnbench.job_dir",
    lambda resume, default, _root_: _resumed_dir(resume, _root_) or default,
    replace=True,
)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and a fix."""


def _number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _integer(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _int_at_least(low: int) -> Callable[[object], bool]:
    return lambda v: _integer(v) and v >= low


def _in_range(low: float, high: float) -> Callable[[object], bool]:
    """low <= v < high"""
    return lambda v: _number(v) and low <= v < high


def _bool(v: object) -> bool:
    return isinstance(v, bool)


def _or_none(ok: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or ok(v)


def _text(v: object) -> bool:
    return isinstance(v, str) and v != ""


def _positive(v: object) -> bool:
    return _number(v) and v > 0


# The value checks, by config key: (test, what is allowed, an example override). A key is
# checked wherever it appears in the composed config (sgd has momentum, adam has betas).
# The dataset and trainer groups are read by train.py itself, so their keys are exactly
# the ones listed here; the other groups' keys go to a constructor, which refuses strangers.
# trainer.precision -> the dtype autocast computes in (None: no autocast)
PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}

GROUPS = ("model", "dataset", "optimizer", "scheduler", "trainer")
RULES: dict[str, tuple[Callable[[object], bool], str, str]] = {
    "model.min_size": (_int_at_least(1), "an integer >= 1 (pixels per side)", "model.min_size=28"),
    "model.input_size": (
        _or_none(_int_at_least(1)),
        "null (the dataset's size) or an integer >= 1",
        "model.input_size=96",
    ),
    "dataset.root": (_text, "a folder", "dataset.root=data"),
    "dataset.cache_dir": (_text, "a folder", "dataset.cache_dir=~/.cache/cnnbench"),
    "trainer.device": (_text, "auto, cpu, cuda, cuda:N or mps", "trainer.device=cpu"),
    "trainer.resume": (
        _or_none(_text),
        "null, auto, a run directory or a checkpoint file",
        "trainer.resume=outputs/2026-01-01/12-00-00",
    ),
    "dataset.name": (lambda v: v in data.SPECS, f"one of {', '.join(data.SPECS)}", "dataset=mnist"),
    "dataset.download": (_bool, "true or false", "dataset.download=false"),
    "dataset.normalize": (_bool, "true or false", "dataset.normalize=false"),
    "dataset.batch_size": (_int_at_least(1), "an integer >= 1", "dataset.batch_size=256"),
    "dataset.val_size": (
        _int_at_least(0),
        "an integer >= 0 (training images held out for validation)",
        "dataset.val_size=10000",
    ),
    "dataset.resize": (
        _or_none(_int_at_least(1)),
        "null or an integer >= 1 (pixels per side)",
        "dataset.resize=224",
    ),
    "dataset.translate": (
        _int_at_least(0),
        "an integer >= 0 (pixels; 0 turns it off)",
        "dataset.translate=2",
    ),
    "dataset.flip": (_bool, "true or false", "dataset.flip=true"),
    "optimizer.lr": (_positive, "a number > 0", "optimizer.lr=0.01"),
    "optimizer.momentum": (_in_range(0, 1), "a number in [0, 1)", "optimizer.momentum=0.9"),
    "optimizer.weight_decay": (
        _in_range(0, math.inf),
        "a number >= 0",
        "optimizer.weight_decay=0.0005",
    ),
    "optimizer.fused": (_or_none(_bool), "null or true or false", "optimizer.fused=true"),
    "optimizer.nesterov": (_bool, "true or false", "optimizer.nesterov=true"),
    "optimizer.betas": (
        lambda v: len(v) == 2 and all(_in_range(0, 1)(b) for b in v),
        "two numbers in [0, 1)",
        "optimizer.betas=[0.9,0.999]",
    ),
    "scheduler.step_size": (
        _int_at_least(1),
        "an integer >= 1 (optimizer steps)",
        "scheduler.step_size=1000",
    ),
    "scheduler.gamma": (_positive, "a number > 0", "scheduler.gamma=0.1"),
    "scheduler.eta_min": (_in_range(0, math.inf), "a number >= 0", "scheduler.eta_min=0"),
    "scheduler.max_lr": (_positive, "a number > 0", "scheduler.max_lr=0.1"),
    "scheduler.pct_start": (
        lambda v: _number(v) and 0 < v < 1,
        "a number in (0, 1)",
        "scheduler.pct_start=0.3",
    ),
    "scheduler.factor": (
        lambda v: _number(v) and 0 < v <= 1,
        "a number in (0, 1]",
        "scheduler.factor=1.0",
    ),
    "scheduler.total_iters": (_int_at_least(0), "an integer >= 0", "scheduler.total_iters=0"),
    "trainer.epochs": (_int_at_least(0), "an integer >= 0", "trainer.epochs=10"),
    "trainer.seed": (
        lambda v: _integer(v) and 0 <= v < 2**32,
        "an integer in [0, 2**32)",
        "trainer.seed=1",
    ),
    "trainer.log_every_n_steps": (
        _int_at_least(1),
        "an integer >= 1",
        "trainer.log_every_n_steps=50",
    ),
    "trainer.eval_batch_size": (
        _int_at_least(1),
        "an integer >= 1",
        "trainer.eval_batch_size=1000",
    ),
    "trainer.label_smoothing": (
        _in_range(0, 1),
        "a number in [0, 1)",
        "trainer.label_smoothing=0.1",
    ),
    "trainer.limit_train_batches": (
        _or_none(_int_at_least(1)),
        "null or an integer >= 1",
        "trainer.limit_train_batches=10",
    ),
    "trainer.precision": (
        lambda v: str(v) in PRECISIONS,
        f"one of {', '.join(PRECISIONS)}",
        "trainer.precision=bf16",
    ),
    "trainer.compile": (_bool, "true or false", "trainer.compile=true"),
    "trainer.channels_last": (_bool, "true or false", "trainer.channels_last=true"),
    "trainer.limit_test_batches": (
        _or_none(_int_at_least(1)),
        "null or an integer >= 1",
        "trainer.limit_test_batches=10",
    ),
}


# model keys read by cnnbench, not passed to the model's constructor
MODEL_INPUT_KEYS = ("min_size", "input_size")


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
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"trainer.device={name}: not a device name. Allowed: auto, cpu, cuda, cuda:N, mps. "
            "Example: trainer.device=cpu"
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
    known = set(GROUPS) | {k for k in RULES if k.startswith(("dataset.", "trainer."))}
    present = [*cfg] + [f"{group}.{key}" for group in ("dataset", "trainer") for key in cfg[group]]
    problems = [
        f"{key}: cnnbench has no such setting; remove it (python -m cnnbench --cfg job shows "
        "every setting)"
        for key in present
        if key not in known
    ]
    for key, value in flatten(OmegaConf.to_container(cfg, resolve=True)).items():
        if key not in RULES:
            continue
        ok, allowed, example = RULES[key]
        try:
            good = ok(value)
        except TypeError:  # e.g. len() of a number given for betas
            good = False
        if not good:
            problems.append(f"{key}={value!r} is not allowed: use {allowed}, e.g. {example}")
    root = Path(str(cfg.dataset.root)).expanduser()
    if root.exists() and not (root.is_dir() and os.access(root, os.R_OK | os.X_OK)):
        problems.append(
            f"dataset.root={cfg.dataset.root!r} is not a readable folder: point it at the "
            "folder that holds the dataset, e.g. dataset.root=data"
        )
    missing = [k for k in MODEL_INPUT_KEYS if k not in cfg.model]
    if missing:
        problems.append(
            f"model: the config has no {' or '.join(missing)}; every conf/model/*.yaml declares "
            "the smallest image side it takes (min_size) and the side it trains at (input_size, "
            "null for the dataset's own), as conf/model/lenet.yaml does"
        )
    if problems:
        raise ConfigError("\n".join(problems))
    size, min_size = image_size(cfg), cfg.model.min_size
    if size < min_size:
        if cfg.dataset.resize:
            given = f"dataset.resize={size}"
        elif cfg.model.input_size:
            given = f"model.input_size={size}"
        else:
            given = f"{data.SPECS[cfg.dataset.name].title} images are {size}x{size}"
        fix = cfg.model.input_size if (cfg.model.input_size or 0) >= min_size else min_size
        raise ConfigError(
            f"{cfg.model._target_.rsplit('.', 1)[-1]} takes images of at least "
            f"{min_size}x{min_size}, but {given}. Resize them, e.g. dataset.resize={fix} "
            f"(any size >= {min_size} works)"
        )


def image_size(cfg: DictConfig) -> int:
    """The side the model sees: dataset.resize, else the model's input_size, else the
    dataset's own."""
    native = data.SPECS[cfg.dataset.name].size
    return cfg.dataset.resize or cfg.model.input_size or native
