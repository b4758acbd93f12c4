"""The `key=value` command lines of the tools that read a checkpoint (eval, predict,
explain): `ckpt=...` and the tool's own options, plus the `dataset.*` and `trainer.*`
overrides of the checkpoint's config. No torch here: a bad argument is reported at once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from cnnbench.errors import ConfigError

OVERRIDABLE = ("dataset.", "trainer.")  # the model and its settings come from the checkpoint
# the example in "<key> needs a value: <key>=<example>"
EXAMPLES = {
    "ckpt": "outputs/<run dir>",
    "images": "digit.png",
    "out": "<dir>",
    "invert": "auto",
    "topk": "3",
    "n": "4",
    "classes": "Shirt,T-shirt/top",
    "index": "0,17",
}


@dataclass
class ToolArgs:
    options: dict[str, str]  # the tool's own options, the last value of each
    lists: dict[str, list[str]] = field(default_factory=dict)  # repeatable options, every value
    overrides: list[str] = field(default_factory=list)  # dataset.* and trainer.*, as key=value


def parse(
    argv: list[str],
    usage: str,
    options: tuple[str, ...],
    repeatable: tuple[str, ...] = (),
    required: tuple[str, ...] = ("ckpt",),
) -> ToolArgs:
    """Split `argv` into the tool's options and the config overrides; anything else is one
    ConfigError that names it and shows `usage`. -h/--help prints `usage` and exits 0."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        sys.exit(0)
    pairs = [a.split("=", 1) if "=" in a else (a, None) for a in argv]
    known = (*options, *repeatable)
    valueless = [k for k, v in pairs if v is None and (k in known or k.startswith(OVERRIDABLE))]
    if valueless:
        key = valueless[0]
        raise ConfigError(f"{key} needs a value: {key}={EXAMPLES.get(key, '<value>')}\n{usage}")
    bad = [k for k, v in pairs if not (k in known or k.startswith(OVERRIDABLE))]
    missing = [k for k in required if k not in {k for k, _ in pairs}]
    if bad or missing:
        problem = (
            f"cannot use {' '.join(bad)} (the model and its settings come from the checkpoint)"
            if bad
            else " and ".join(f"{k}=<...>" for k in missing) + " required"
        )
        if not bad and missing == ["ckpt"]:
            problem = "ckpt=<path> is required"
        raise ConfigError(f"{problem}\n{usage}")
    args = ToolArgs(options={}, lists={k: [] for k in repeatable})
    for key, value in pairs:
        if key in repeatable:
            args.lists[key].append(value)
        elif key in options:
            args.options[key] = value
        else:
            args.overrides.append(f"{key}={value}")
    return args


def choice(args: ToolArgs, key: str, allowed: tuple[str, ...], default: str) -> str:
    value = args.options.get(key, default)
    if value not in allowed:
        raise ConfigError(f"{key}={value} is not allowed: use one of {', '.join(allowed)}")
    return value


def integer(args: ToolArgs, key: str, default: int, low: int = 1) -> int:
    value = args.options.get(key, str(default))
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if number < low:
        raise ConfigError(
            f"{key}={value} is not allowed: use an integer >= {low}, e.g. {key}={default}"
        )
    return number
