"""The composed config: where the YAML files are, the one compose helper (for the tools and the
tests), and the checks every config passes before a run. No torch here, so that a bad value is
reported at once.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import fields, is_dataclass
from datetime import datetime
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from cnnbench import rundir, schema
from cnnbench.datasets import SPECS
from cnnbench.errors import ConfigError
from cnnbench.runs import flatten

_HERE = Path(__file__).resolve().parent
# installed: the configs ship inside the package; source tree or editable: the top-level conf/
CONFIG_DIR = next(
    p for p in (_HERE / "conf", _HERE.parent / "conf") if (p / "config.yaml").is_file()
)

GROUPS = tuple(schema.SCHEMAS)
# the model keys that are not arguments of the network's class
MODEL_BUILD_KEYS = tuple(f.name for f in fields(schema.ModelConfig) if f.name != "_target_")


def setup(started: datetime | None = None) -> None:
    """What composing conf/config.yaml needs besides the YAML files: the schemas its groups
    extend and the resolvers it calls, which name the run by `started` (default: now).
    compose() and the command line call it."""
    schema.register(ConfigStore.instance())
    rundir.register_resolvers(started)


# ---------------------------------------------------------------------------- composing


def compose(overrides: list[str], hydra_config: bool = False) -> DictConfig:
    """conf/config.yaml with `overrides`, as `python -m cnnbench` composes it. Hydra's errors
    (an unknown option, a misspelt key, a value of the wrong type) become one ConfigError that
    says what to write instead."""
    setup()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return hydra_compose("config", overrides=overrides, return_hydra_config=hydra_config)
    except (HydraException, OmegaConfBaseException) as err:
        raise explain(err, overrides) from None


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files, sub-folders included (experiment=d2l/vgg)."""
    folder = CONFIG_DIR / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def explain(err: Exception, overrides: list[str]) -> ConfigError:
    """One message for a Hydra or OmegaConf error, with the options or the closest name."""
    cause = err.__cause__ or err
    key = getattr(cause, "full_key", None)
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, name = _missing_option(err.missing_cfg_file, overrides)
        options = set(group_options(group))
        if err.missing_cfg_file.rpartition("/")[0] == group:  # err.options are this group's:
            options |= set(err.options or ())  # those a plugin adds (hydra/launcher=joblib)
        return ConfigError(
            f"{group}={name}: no such option.{_suggest(name, sorted(options), group)}"
        )
    if key in schema.ALLOWED and isinstance(cause, ValidationError):  # a value of the wrong type
        return ConfigError(schema.ALLOWED[key].message(key, _given(overrides, key)))
    if key and isinstance(cause, ConfigAttributeError | ConfigKeyError):
        group = key.rpartition(".")[0]
        known = [k for k in _keys_without(overrides, key) if k.startswith(f"{group}.")]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        hint = f". Did you mean {close[0]}?" if close else ""
        return ConfigError(f"{key}: cnnbench has no such setting{hint} {SHOWS_EVERY_SETTING}")
    lines = [str(err).splitlines()[0] if str(err) else type(err).__name__]
    if cause is not err:
        lines.append(str(cause).splitlines()[0])
    return ConfigError(" ".join(lines))


SHOWS_EVERY_SETTING = "(python -m cnnbench --cfg job shows every setting)"


def _missing_option(path: str, overrides: list[str]) -> tuple[str, str]:
    """'experiment/d2l/vgg1' -> ('experiment', 'd2l/vgg1'), by the override that asked for it."""
    for override in overrides:
        group, _, name = override.lstrip("+~").partition("=")
        if f"{group}/{name}" == path:
            return group, name
    group, _, name = path.rpartition("/")
    return group, name


def _given(overrides: list[str], key: str) -> object:
    """The value an override gives `key`, as Hydra's parser reads it (2.5 a float, fast a
    string); the last one counts."""
    for override in reversed(OverridesParser.create().parse_overrides(overrides)):
        if override.key_or_group == key:
            return override.value()
    return None


def _keys_without(overrides: list[str], key: str) -> list[str]:
    try:
        cfg = compose([o for o in overrides if not o.lstrip("+~").startswith(f"{key}=")])
    except ConfigError:
        return []
    return list(flatten(OmegaConf.to_container(cfg, resolve=False)))


def _suggest(name: str, options: list[str], group: str) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    hint = f" Did you mean {group}={close[0]}?" if close else ""
    return hint + (f" Options: {', '.join(options)}." if options else "")


# ---------------------------------------------------------------------------- checking


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every value that cannot work, before any data is read:
    a key its group's schema does not have, a value outside what the schema allows."""
    problems = [
        f"{key}: cnnbench has no such setting; remove it {SHOWS_EVERY_SETTING}"
        for key in _unknown_keys(cfg)
    ]
    for key, value in flatten(OmegaConf.to_container(cfg, resolve=True)).items():
        allowed = schema.ALLOWED.get(key)
        if allowed and not _passes(allowed, value):
            problems.append(allowed.message(key, value))
    root = Path(str(cfg.dataset.root)).expanduser()
    if root.exists() and not (root.is_dir() and os.access(root, os.R_OK | os.X_OK)):
        problems.append(
            f"dataset.root={cfg.dataset.root!r} is not a readable folder: point it at the "
            "folder that holds the dataset, e.g. dataset.root=data"
        )
    missing = [k for k in ("min_size", "input_size") if k not in cfg.model]
    if missing:
        problems.append(
            f"model: the config has no {' or '.join(missing)}; every conf/model/*.yaml declares "
            "the smallest image side it takes (min_size) and the side it trains at (input_size, "
            "null for the dataset's own), as conf/model/lenet.yaml does"
        )
    if problems:
        raise ConfigError("\n".join(problems))
    _check_image_size(cfg)


def _unknown_keys(cfg: DictConfig) -> list[str]:
    """Top-level keys that are no group, and keys a typed group's schema lacks (added with +)."""
    unknown = [key for key in cfg if key not in GROUPS]
    for group in GROUPS:
        node = cfg.get(group)
        typed = node is not None and is_dataclass(OmegaConf.get_type(node))
        if typed:
            names = {f.name for f in fields(OmegaConf.get_type(node))}
            unknown += [f"{group}.{key}" for key in node if key not in names]
    return unknown


def _passes(allowed: schema.Allowed, value: object) -> bool:
    try:
        return bool(allowed.test(value))
    except TypeError:  # e.g. len() of a number given for betas
        return False


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
