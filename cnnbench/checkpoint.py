"""Checkpoints: written whole or not at all, loaded without running code, and refused when
they belong to another network.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
`torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import pickle
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from cnnbench.atomic import write_atomic
from cnnbench.config import class_name
from cnnbench.datasets import SPECS
from cnnbench.errors import CheckpointError
from cnnbench.runs import run_identity

__all__ = ["FORMAT", "CheckpointError", "find", "load", "load_for_resume", "save"]

FORMAT = 1


def save(obj: dict, path: Path) -> None:
    """Whole or not at all (atomic.write_atomic)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def rng_states(device: torch.device | None = None) -> dict:
    """The random states a resume restores: torch's CPU generator, numpy's, Python's, and the
    generator of the run's own GPU (only that one: a run resumed on fewer GPUs, or on another,
    restores it to the device it runs on)."""
    np_state = np.random.get_state()
    on_gpu = device is not None and device.type == "cuda"
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if on_gpu else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_states(states: dict, device: torch.device | None = None, saved_on: str = "") -> None:
    """`saved_on`: the checkpoint's trainer.device. Checkpoints before 0.1's redesign hold one
    CUDA state per visible GPU; the run's own is the one of that device's index."""
    torch.set_rng_state(states["torch"])
    cuda = states["cuda"]
    if len(cuda) > 1:  # one per visible GPU: the run's own
        index = torch.device(saved_on).index if saved_on.startswith("cuda:") else 0
        cuda = cuda[index : index + 1]
    if cuda and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda[0], device)
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def find(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's last.pt."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}. Give a run directory that holds last.pt, or a .pt file "
            "(best.pt, last.pt)"
        )
    return path


def load(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    """Read a checkpoint without unpickling code (weights_only)."""
    path = find(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} is not a cnnbench checkpoint: it holds objects other than tensors and plain "
            "values, which are not loaded, or it is damaged. Use a checkpoint that cnnbench wrote"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable cnnbench checkpoint ({str(err).splitlines()[0]}). "
            "It may be truncated or from another program; use another checkpoint or start "
            "a new run"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a cnnbench checkpoint (format {FORMAT}); start a new run or use "
            "a checkpoint that cnnbench wrote"
        )
    # before the typed schema (schema.TrainerConfig), trainer.precision 32 was saved as a
    # number, and trainer.deterministic did not exist; model.init came later still
    ckpt.get("config", {}).get("model", {}).setdefault("init", "default")
    trainer = ckpt.get("config", {}).get("trainer", {})
    if "precision" in trainer:
        trainer["precision"] = str(trainer["precision"])
        trainer.setdefault("deterministic", False)
        trainer.setdefault("matmul_precision", "highest")
    return ckpt


def load_for_resume(path: Path, config: dict, image_size: int) -> dict:
    """The checkpoint a run resumes from, refused when it belongs to another network or to a
    run with other settings. Loaded on the CPU: the RNG states must stay there."""
    ckpt = load(path)
    spec = SPECS[config["dataset"]["name"]]
    check_compatible(ckpt, path, config["model"], spec.channels, len(spec.classes), image_size)
    check_same_run(ckpt["config"], path, config)
    return ckpt


def check_compatible(
    ckpt: dict, path: Path, model_cfg: dict, channels: int, classes: int, size: int
) -> None:
    """Refuse a checkpoint of another network, or of data with other channels, classes or
    image size."""
    theirs, ours = ckpt["config"]["model"], model_cfg
    # the initialisation only chose the starting weights, which the checkpoint replaces
    keys = ["_target_"] if theirs.get("_target_") != ours.get("_target_") else sorted(theirs | ours)
    keys = [k for k in keys if k != "init"]
    differences = [
        f"model.{k}: {theirs.get(k)!r} in the checkpoint, {ours.get(k)!r} here"
        for k in keys
        if theirs.get(k) != ours.get(k)
    ]
    if ckpt["in_channels"] != channels:
        differences.append(
            f"{ckpt['in_channels']}-channel images in the checkpoint, {channels} here"
        )
    if ckpt["num_classes"] != classes:
        differences.append(f"{ckpt['num_classes']} classes in the checkpoint, {classes} here")
    if ckpt["image_size"] != size:
        differences.append(
            f"{ckpt['image_size']}x{ckpt['image_size']} images in the checkpoint, {size}x{size} "
            "here (dataset.resize)"
        )
    if differences:
        name = class_name(theirs.get("_target_", "?"))
        raise CheckpointError(
            f"{path} holds a different network ({name}, trained on "
            f"{ckpt['config']['dataset']['name']}):\n  " + "\n  ".join(differences) + "\n"
            "Give the settings the checkpoint was trained with, or leave out trainer.resume to "
            "start a new run"
        )


def load_weights(model: torch.nn.Module, ckpt: dict, path: Path) -> None:
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{path} does not fit this model: {str(err).splitlines()[0]} (and more). Give the "
            "settings the checkpoint was trained with"
        ) from None


def check_same_run(saved: dict, path: Path, cfg: dict) -> None:
    """A run continues with the config it started with (paths and device aside): another
    batch size, schedule or epoch count would not give the run it promises."""
    theirs, ours = run_identity(saved), run_identity(cfg)
    differences = [
        f"{k}: {theirs.get(k)!r} in the run, {ours.get(k)!r} here"
        for k in sorted(theirs | ours)
        if theirs.get(k) != ours.get(k)
    ]
    if differences:
        shown = differences[:8] + (
            [f"... and {len(differences) - 8} more"] if differences[8:] else []
        )
        raise CheckpointError(
            f"{path} belongs to a run with other settings:\n  " + "\n  ".join(shown) + "\n"
            "Resume it with the command line it was started with plus trainer.resume (a stopped "
            "run prints that command), or leave out trainer.resume to start a new run"
        )
