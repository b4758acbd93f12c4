"""Fixtures: small generated datasets in the real on-disk formats, and the shipped configs
composed with Hydra and shrunk for the CPU."""

from __future__ import annotations

import contextlib
import copy
import functools
import gzip
import io
import logging
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# under pytest-xdist the workers share the cores: a thread each (children inherit it), so
# that they do not take every core from each other (set before torch is imported)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from omegaconf import DictConfig

from cnnbench.config import compose

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file, as the MNIST distribution does."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_images(n: int, channels: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten noisy class prototypes: easy to learn, so a falling loss means the loop works."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(1234).integers(0, 256, (10, channels, size, size))
    labels = rng.integers(0, 10, n)
    noise = rng.normal(0, 40, (n, channels, size, size))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def write_mnist_like(folder: Path, n_train: int = 600, n_test: int = 250, gz: bool = True):
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_images(n, 1, 28, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte", images[:, 0], gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz)


def write_cifar_like(folder: Path, per_batch: int = 40, n_test: int = 50) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        images, labels = make_images(n_test if name == "test_batch" else per_batch, 3, 32, i)
        batch = {b"data": images.reshape(len(images), -1), b"labels": labels.tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root laid out like ../shared/data, with small generated sets."""
    root = tmp_path_factory.mktemp("data")
    write_mnist_like(root / "mnist")
    write_mnist_like(root / "fashion-mnist")
    write_cifar_like(root / "cifar-10-batches-py")
    return root


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def small_overrides(data_root: Path, cache_dir: Path) -> list[str]:
    """What every test run shares: generated data, private cache, CPU, no download."""
    return [
        f"dataset.root={data_root}",
        f"dataset.cache_dir={cache_dir}",
        "dataset.download=false",
        "dataset.batch_size=64",
        "trainer.device=cpu",
        "trainer.epochs=2",
        "trainer.log_every_n_steps=2",
    ]


@functools.cache
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    return compose(list(overrides))


def compose_once(overrides: list[str]) -> DictConfig:
    """compose(overrides), a copy of its own for each caller: the suite asks for the same
    configs hundreds of times, and Hydra takes a fifth of a second to compose one."""
    return copy.deepcopy(_composed(tuple(overrides)))


@pytest.fixture
def make_cfg(data_root, cache_dir) -> Callable[..., DictConfig]:
    """Compose the shipped conf/ with the test defaults plus `overrides`."""

    def _make(*overrides: str) -> DictConfig:
        # composed with a shared cache_dir, so that other tests' configs serve, then this test's
        cfg = compose_once([*small_overrides(data_root, data_root / "cache"), *overrides])
        if not any(o.startswith("dataset.cache_dir=") for o in overrides):
            cfg.dataset.cache_dir = str(cache_dir)
        return cfg

    return _make


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path, module: str = "cnnbench") -> Ran:
    """`python -m cnnbench ...` from `cwd`, in this process: the same code from the argument
    parsing to the exit code, without a second interpreter's start (torch's import alone is
    seconds). What only a real process shows (signals, torchrun, imports) uses
    tests.test_cli.cnnbench instead."""
    import importlib

    main = importlib.import_module("cnnbench.cli" if module == "cnnbench" else module).main
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, os.getcwd(), os.environ.pop("HYDRA_FULL_ERROR", None)
    sys.argv = [module, *args]
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        if saved[2] is not None:
            os.environ["HYDRA_FULL_ERROR"] = saved[2]
        for handler in logging.getLogger().handlers[:]:  # Hydra's, for this run's train.log
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logging.getLogger().removeHandler(handler)
    return Ran(code, out.getvalue(), err.getvalue())


class FakeGraph:
    """What cuda_graph.record returns, on the CPU: replay() runs the recorded body."""

    def __init__(self, body) -> None:
        self.body, self.replays = body, 0

    def replay(self) -> None:
        self.replays += 1
        self.body()


@pytest.fixture
def fake_capture(monkeypatch):
    """A captured step on the CPU: a recorded body replays eagerly, the side stream is none.
    Returns the graphs recorded."""
    from cnnbench import cuda_graph

    graphs = []

    def record(body):
        graphs.append(FakeGraph(body))
        return graphs[-1]

    monkeypatch.setattr(cuda_graph, "choose", lambda cfg, device, world: ("captured", None))
    monkeypatch.setattr(cuda_graph, "record", record)
    monkeypatch.setattr(cuda_graph, "side_stream", contextlib.nullcontext)
    return graphs
