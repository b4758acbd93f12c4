"""The composed config: where the YAML files are, the one compose helper (for the tools and the
tests), and the checks every config passes before a run. No torch here, so that a bad value is
reported at once.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from cnnbench import rundir  # noqa: F401  (registers conf/config.yaml's resolvers)
from cnnbench.datasets import SPECS
from cnnbench.errors import ConfigError
from cnnbench.runs import flatten
from cnnbench.schema import DatasetConfig, TrainerConfig

_HERE = Path(__file__).resolve().parent
# installed: the configs ship inside the package; source tree or editable: the top-level conf/
CONFIG_DIR = next(
    p for p in (_HERE / "conf", _HERE.parent / "conf") if (p / "config.yaml").is_file()
)

GROUPS = ("model", "dataset", "optimizer", "scheduler", "trainer")
# trainer.precision: autocast's dtype is chosen where training starts (build.PRECISIONS)
PRECISION_NAMES = ("32", "bf16", "16-mixed", "auto")
# trainer.cuda_graph: whether the training step is captured (cuda_graph.choose)
CUDA_GRAPH_NAMES = ("auto", "true", "false")
# model keys read by cnnbench, not passed to the model's constructor
MODEL_INPUT_KEYS = ("min_size", "input_size")
# how the weights start (build.init_weights): PyTorch's own, or a scheme applied over it
INITS = ("default", "xavier", "kaiming")
# the model keys that are not arguments of the network's class
MODEL_BUILD_KEYS = (*MODEL_INPUT_KEYS, "init")
SCHEMA_KEYS = {
    f"{group}.{f.name}"
    for group, schema in (("dataset", DatasetConfig), ("trainer", TrainerConfig))
    for f in fields(schema)
}


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
# checked wherever it appears in the composed config (sgd has momentum, adam has betas). The
# schemas (schema.py) already fix the types of dataset.* and trainer.*; a value of the wrong
# type gets the same message from compose().
RULES: dict[str, tuple[Callable[[object], bool], str, str]] = {
    "model.min_size": (_int_at_least(1), "an integer >= 1 (pixels per side)", "model.min_size=28"),
    "model.input_size": (
        _or_none(_int_at_least(1)),
        "null (the dataset's size) or an integer >= 1",
        "model.input_size=96",
    ),
    "model.init": (
        lambda v: v in INITS,
        f"one of {', '.join(INITS)} (xavier: d2l's train_ch6)",
        "model.init=xavier",
    ),
    "dataset.root": (_text, "a folder", "dataset.root=data"),
    "dataset.cache_dir": (_text, "a folder", "dataset.cache_dir=~/.cache/cnnbench"),
    "trainer.device": (_text, "auto, cpu, cuda, cuda:N or mps", "trainer.device=cpu"),
    "trainer.resume": (
        _or_none(_text),
        "null, auto, a run directory or a checkpoint file",
        "trainer.resume=outputs/2026-01-01/12-00-00",
    ),
    "dataset.name": (lambda v: v in SPECS, f"one of {', '.join(SPECS)}", "dataset=mnist"),
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
        lambda v: str(v) in PRECISION_NAMES,
        f"one of {', '.join(PRECISION_NAMES)}",
        "trainer.precision=bf16",
    ),
    "trainer.compile": (_bool, "true or false", "trainer.compile=true"),
    "trainer.cuda_graph": (
        lambda v: str(v).lower() in CUDA_GRAPH_NAMES,
        f"one of {', '.join(CUDA_GRAPH_NAMES)}",
        "trainer.cuda_graph=false",
    ),
    "trainer.deterministic": (_bool, "true or false", "trainer.deterministic=true"),
    "trainer.matmul_precision": (
        lambda v: v in ("highest", "high", "medium"),
        "one of highest, high, medium",
        "trainer.matmul_precision=high",
    ),
    "trainer.channels_last": (_bool, "true or false", "trainer.channels_last=true"),
    "trainer.tta": (
        lambda v: v in ("none", "flip", "translate", "flip_translate"),
        "one of none, flip, translate, flip_translate",
        "trainer.tta=flip_translate",
    ),
    "trainer.threads": (
        _or_none(_int_at_least(1)),
        "null (the cores, shared with the runs beside it) or an integer >= 1",
        "trainer.threads=1",
    ),
    "trainer.limit_test_batches": (
        _or_none(_int_at_least(1)),
        "null or an integer >= 1",
        "trainer.limit_test_batches=10",
    ),
}


def not_allowed(key: str, value: object) -> str:
    _, allowed, example = RULES[key]
    return f"{key}={value!r} is not allowed: use {allowed}, e.g. {example}"


# ---------------------------------------------------------------------------- composing


def compose(overrides: list[str], hydra_config: bool = False) -> DictConfig:
    """conf/config.yaml with `overrides`, as `python -m cnnbench` composes it. Hydra's errors
    (an unknown option, a misspelt key, a value of the wrong type) become one ConfigError that
    says what to write instead."""
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return hydra_compose("config", overrides=overrides, return_hydra_config=hydra_config)
    except (HydraException, OmegaConfBaseException) as err:
        raise explain(err, overrides) from None


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files, sub-folders included (experiment=d2l/vgg)."""
    folder = CONFIG_DIR / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def _missing_option(path: str, overrides: list[str]) -> tuple[str, str]:
    """'experiment/d2l/vgg1' -> ('experiment', 'd2l/vgg1'), by the override that asked for it."""
    for o in overrides:
        group, _, name = o.lstrip("+~").partition("=")
        if f"{group}/{name}" == path:
            return group, name
    group, _, name = path.rpartition("/")
    return group, name


def _given(overrides: list[str], key: str) -> str | None:
    for o in reversed(overrides):  # the last one counts
        name, _, value = o.lstrip("+~").partition("=")
        if name == key:
            return value
    return None


def explain(err: Exception, overrides: list[str]) -> ConfigError:
    """One message for a Hydra or OmegaConf error, with the options or the closest name."""
    cause = err.__cause__ or err
    text = str(err)
    if isinstance(err, MissingConfigException) and (found := re.search(r"find '(.+?)'", text)):
        group, name = _missing_option(found.group(1), overrides)
        # options Hydra or a plugin provides (hydra/launcher=joblib) are listed in its message
        listed = re.findall(r"^\t(\S+)$", text, flags=re.M)
        options = sorted(set(group_options(group)) | set(listed))
        return ConfigError(f"{group}={name}: no such option.{_suggest(name, options, group)}")
    key = getattr(cause, "full_key", None)
    if key in RULES and isinstance(cause, OmegaConfBaseException) and "convert" in str(cause):
        raw = _given(overrides, key)
        return ConfigError(not_allowed(key, _parsed(raw) if raw is not None else raw))
    if key and isinstance(cause, ConfigAttributeError | ConfigKeyError):
        group = key.rpartition(".")[0]
        known = [k for k in _keys_without(overrides, key) if k.startswith(f"{group}.")]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        hint = f". Did you mean {close[0]}?" if close else ""
        return ConfigError(
            f"{key}: cnnbench has no such setting{hint} "
            "(python -m cnnbench --cfg job shows every setting)"
        )
    first = text.splitlines()[0] if text else type(err).__name__
    detail = str(cause).splitlines()[0] if cause is not err else ""
    return ConfigError(" ".join(p for p in (first, detail) if p))


def _parsed(raw: str) -> object:
    """A value as Hydra's parser reads it: 2.5 a float, true a bool, fast a string."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(f"k={raw}").value()
    except Exception:  # not Hydra syntax: shown as given
        return raw


def _keys_without(overrides: list[str], key: str) -> list[str]:
    try:
        cfg = compose([o for o in overrides if _given([o], key) is None])
    except ConfigError:
        return []
    return list(flatten(OmegaConf.to_container(cfg, resolve=False)))


def _suggest(name: str, options: list[str], group: str) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    hint = f" Did you mean {group}={close[0]}?" if close else ""
    return hint + (f" Options: {', '.join(options)}." if options else "")


# ---------------------------------------------------------------------------- checking


def validate(cfg: DictConfig, given: dict[str, object] | None = None) -> None:
    """Raise one ConfigError listing every value that cannot work, before any data is read.
    `given` holds values as typed on the command line, which the messages quote."""
    given = given or {}
    present = [*cfg] + [f"{group}.{key}" for group in ("dataset", "trainer") for key in cfg[group]]
    problems = [
        f"{key}: cnnbench has no such setting; remove it (python -m cnnbench --cfg job shows "
        "every setting)"
        for key in present
        if key not in (*GROUPS, *SCHEMA_KEYS)
    ]
    for key, value in flatten(OmegaConf.to_container(cfg, resolve=True)).items():
        if key not in RULES:
            continue
        try:
            good = RULES[key][0](value)
        except TypeError:  # e.g. len() of a number given for betas
            good = False
        if not good:
            problems.append(not_allowed(key, given.get(key, value)))
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
    _check_image_size(cfg)


def _check_image_size(cfg: DictConfig) -> None:
    size, min_size = image_size(cfg), cfg.model.min_size
    if size >= min_size:
        return
    if cfg.dataset.resize:
        given = f"dataset.resize={size}"
    elif cfg.model.input_size:
        given = f"model.input_size={size}"
    else:
        given = f"{SPECS[cfg.dataset.name].title} images are {size}x{size}"
    fix = cfg.model.input_size if (cfg.model.input_size or 0) >= min_size else min_size
    raise ConfigError(
        f"{model_name(cfg)} takes images of at least {min_size}x{min_size}, but {given}. "
        f"Resize them, e.g. dataset.resize={fix} (any size >= {min_size} works)"
    )


def image_size(cfg: DictConfig) -> int:
    """The side the model sees: dataset.resize, else the model's input_size, else the
    dataset's own."""
    native = SPECS[cfg.dataset.name].size
    return cfg.dataset.resize or cfg.model.input_size or native


def model_name(cfg: DictConfig | dict) -> str:
    """The model's class name: cnnbench.models.LeNet -> LeNet."""
    return class_name(cfg["model"]["_target_"])


def class_name(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def resolved(cfg: DictConfig) -> dict:
    """The config as plain values, as results.json and checkpoints record it."""
    return OmegaConf.to_container(cfg, resolve=True)
