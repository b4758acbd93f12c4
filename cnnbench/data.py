"""Datasets as uint8 tensors on the run's device, and the loader that batches them.

A split is found on disk (the configured root, then system folders, then a torchvision
download), decoded once into a uint8 tensor of shape (N, C, H, W), cached as a `.pt`
file, and moved to the device once. Batches are sliced with a seeded permutation and
converted to float, normalised and resized on the device.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from cnnbench.atomic import write_atomic
from cnnbench.datasets import SPECS, Spec
from cnnbench.errors import DataError, WriteError
from cnnbench.seeding import batch_seed, epoch_seed

__all__ = [
    "SPECS",
    "Batch",
    "DataError",
    "DeviceLoader",
    "Draws",
    "Spec",
    "Split",
    "find",
    "hold_out",
    "load",
]

log = logging.getLogger(__name__)


Split = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, C, H, W), int64 labels


class Draws(NamedTuple):
    """One batch's augmentation draws: shifts (2, n, 1) in 0..2*translate, flips (n, 1, 1, 1)."""

    shift: torch.Tensor
    flip: torch.Tensor


class Batch(NamedTuple):
    """One training batch before it is gathered: its number in the epoch, the indices of its
    images in the split (this rank's), and its augmentation draws (None without augmentation)."""

    number: int
    index: torch.Tensor
    draws: Draws | None


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

# ---------------------------------------------------------------------------- finding


def _source_files(name: str, split: str) -> list[str]:
    return CIFAR_FILES[split] if name == "cifar10" else list(IDX_FILES[split])


def _find_in(folder: Path, name: str, split: str) -> list[Path] | None:
    """The split's files in `folder` (IDX files raw or gzipped), or None if any is missing."""
    found = []
    for base in _source_files(name, split):
        candidates = [folder / base, folder / f"{base}.gz"]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _search_folders(name: str, root: Path) -> list[Path]:
    spec = SPECS[name]
    folders = [root / sub for sub in spec.folders]
    folders += [
        root for sub in spec.folders if root.parts[-len(Path(sub).parts) :] == Path(sub).parts
    ]
    return folders + [Path(p) for p in spec.system_folders]


def find(name: str, split: str, root: Path, download: bool) -> list[Path]:
    """Locate the files of a split, downloading them with torchvision as the last resort."""
    folders = _search_folders(name, root)
    for folder in folders:
        if (files := _find_in(folder, name, split)) is not None:
            return files
    problem = "dataset.download=false"
    if download:
        try:
            _download(name, root)
        except (OSError, RuntimeError) as err:  # offline, disk full, no permission
            reason = " ".join(str(err).split())  # torchvision lists each mirror on its own line
            problem = f"the download failed ({type(err).__name__}: {reason})"
        else:
            for folder in folders:
                if (files := _find_in(folder, name, split)) is not None:
                    return files
            problem = "the download left no files where they were expected"
    spec = SPECS[name]
    looked = "\n".join(f"  - {f}" for f in folders)
    hint = (
        f"\n  - on Debian/Ubuntu: apt-get install {spec.system_package}"
        if spec.system_package
        else ""
    )
    raise DataError(
        f"{spec.title} ({split} split) not found, and {problem}.\n"
        f"Looked for {', '.join(_source_files(name, split))} (or .gz) in:\n{looked}\n"
        f"Fix it with one of:\n"
        f"  - dataset.root=<a folder whose {' or '.join(f'{f}/' for f in spec.folders)} "
        "holds the files>\n"
        f"  - dataset.download=true with internet access (torchvision fetches into "
        f"dataset.root){hint}"
    )


def _download(name: str, root: Path) -> None:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, SPECS[name].torchvision_name)
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(root), train=train, download=True)


# ---------------------------------------------------------------------------- decoding


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:  # BadGzipFile is an OSError
        raise DataError(f"{path} cannot be read: {err}. Delete it and fetch it again.") from err


def read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """Decode an IDX file of unsigned bytes (magic 0x0000080N, N = number of dimensions)."""
    raw = _read_bytes(path)
    if len(raw) < 4 + 4 * expect_dims or raw[:3] != b"\x00\x00\x08" or raw[3] != expect_dims:
        raise DataError(
            f"{path} is not an IDX file of {expect_dims}-d unsigned bytes "
            f"(magic {raw[:4].hex() or 'missing'}, expected 0000080{expect_dims}). "
            "Delete it and fetch it again."
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(expect_dims))
    body = raw[4 + 4 * expect_dims :]
    if len(body) != int(np.prod(shape)):
        raise DataError(
            f"{path} is truncated or padded: its header promises {shape} = "
            f"{int(np.prod(shape))} bytes but it holds {len(body)}. Delete it and fetch it again."
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


class _CifarUnpickler(pickle.Unpickler):
    """Only what the CIFAR-10 batches need: a pickle cannot run arbitrary code here."""

    allowed: ClassVar = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as err:
        raise DataError(
            f"{path} is not a readable CIFAR-10 batch ({type(err).__name__}: {err}). "
            "Delete it and fetch it again."
        ) from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"{path} holds data of shape {data.shape} and {len(labels)} labels; "
            "expected (N, 3072) and N labels."
        )
    return data.reshape(-1, 3, 32, 32), labels


def decode(name: str, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, C, H, W) and labels as int64 (N,)."""
    spec = SPECS[name]
    if name == "cifar10":
        parts = [_read_cifar_batch(p) for p in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    else:
        images = read_idx(files[0], 3)[:, None]
        labels = read_idx(files[1], 1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(
            f"{files[0]} holds {len(images)} images but {files[-1]} holds {len(labels)} labels."
        )
    if images.shape[1:] != (spec.channels, spec.size, spec.size):
        raise DataError(
            f"{files[0]} holds images of shape {images.shape[1:]}, expected "
            f"{(spec.channels, spec.size, spec.size)} for {spec.title}."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(spec.classes)):
        raise DataError(f"{files[-1]} holds labels outside 0..{len(spec.classes) - 1}.")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


# ---------------------------------------------------------------------------- caching


def _fingerprint(files: list[Path]) -> str:
    """Identifies the source files by path, size and modification time."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load(
    name: str, split: str, root: str | Path, download: bool, cache_dir: str | Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as (uint8 images (N, C, H, W), int64 labels), from the cache when it is current."""
    if name not in SPECS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(SPECS)}")
    files = find(name, split, Path(root).expanduser(), download)
    key = _fingerprint(files)
    cache = Path(cache_dir).expanduser() / f"{name}-{split}.pt"
    if cache.is_file():
        try:
            cached = torch.load(cache, weights_only=True)
            if cached["source"] == key:
                return cached["images"], cached["labels"]
        except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError):
            pass  # a broken or foreign cache file is rebuilt, never trusted
    images, labels = decode(name, files)
    try:
        entry = {"source": key, "images": images, "labels": labels}
        write_atomic(cache, lambda f: torch.save(entry, f))
    except WriteError as err:  # costs a decode next time, nothing more
        log.warning("cannot cache %s (%s); set dataset.cache_dir to a writable folder", name, err)
    return images, labels


def hold_out(
    images: torch.Tensor, labels: torch.Tensor, size: int, seed: int
) -> tuple[Split, Split | None]:
    """Split `size` images off a training split, chosen by a permutation seeded with `seed`:
    (train, validation), or (train, None) when size is 0."""
    if size == 0:
        return (images, labels), None
    if size >= len(labels):
        raise DataError(
            f"dataset.val_size={size} leaves no training images (the split holds {len(labels)}); "
            f"hold out fewer, e.g. dataset.val_size={len(labels) // 6}"
        )
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val, train = order[:size], order[size:]
    return (images[train], labels[train]), (images[val], labels[val])


# ---------------------------------------------------------------------------- loading


def resize_like_pil(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize 0-255 images to `size` x `size` as torchvision's `Resize` does a PIL image, which
    is what the textbooks' pipelines do: PIL filters the width, then the height (antialiased
    when it shrinks), and rounds each pass to an 8-bit image. tools/resize_check.py measures
    how close this comes on real images."""
    h = images.shape[-2]
    wide = F.interpolate(images, size=(h, size), mode="bilinear", antialias=True)
    wide = wide.add_(0.5).floor_()  # PIL rounds halves up, not to even
    tall = F.interpolate(wide, size=(size, size), mode="bilinear", antialias=True)
    return tall.add_(0.5).floor_()


class DeviceLoader:
    """Batches of a uint8 image tensor that lives on the device.

    The whole split is copied to `device` once. Each epoch draws a permutation from a
    generator seeded with (seed, epoch), so any epoch can be replayed (resume) and every
    rank of a distributed run can take its own shard of the same permutation. Augmentation,
    conversion to float, normalisation and resizing happen per batch on the device.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        normalize: bool = True,
        resize: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        limit_batches: int | None = None,
        translate: int = 0,
        flip: bool = False,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        # one copy, once: pinning it first would only add a second host copy, kept cached
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size = batch_size
        self.device = device
        c = images.shape[1]
        if normalize:
            self.mean = torch.tensor(mean, device=device).view(1, c, 1, 1) * 255
            self.std = torch.tensor(std, device=device).view(1, c, 1, 1) * 255
        else:  # plain ToTensor scaling to [0, 1], as most textbook cells do
            self.mean = torch.zeros(1, c, 1, 1, device=device)
            self.std = torch.full((1, c, 1, 1), 255.0, device=device)
        self.resize = resize
        self.shuffle = shuffle
        self.seed = seed
        self.limit_batches = limit_batches
        self.translate, self.flip = translate, flip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw epoch `epoch`'s order; begin at batch `start` (a run resumed mid-epoch)."""
        self.epoch, self.start = epoch, start

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            # drawn on the CPU so that every device (and every rank) sees the same order
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            return torch.randperm(len(self.labels), generator=g).to(self.device)
        return torch.arange(len(self.labels), device=self.device)

    @property
    def num_samples(self) -> int:
        """The images of an epoch, over all ranks."""
        return len(self.labels)

    def __len__(self) -> int:
        batches = -(-self.num_samples // self.batch_size)
        return batches if self.limit_batches is None else min(batches, self.limit_batches)

    def batch_len(self, i: int) -> int:
        """The images in batch `i`, over all ranks; a rank holds about 1/world_size of them."""
        return min(self.batch_size, self.num_samples - i * self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches():
            yield self.gather(batch)

    def batches(self) -> Iterator[Batch]:
        """The epoch's batches from `start` on, as what to gather: the training loop gathers
        them itself, so that a captured step can gather through a fixed index buffer."""
        order = self._order()
        for i in range(self.start, len(self)):
            # each batch of the epoch's order is dealt out to the ranks: together they train
            # on the batch one process would, and no image is seen twice or left out
            batch = order[i * self.batch_size : (i + 1) * self.batch_size]
            draws = self.draws(i) if self.translate or self.flip else None
            yield Batch(i, batch[self.rank :: self.world_size], draws)

    def gather(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's images (augmented, converted, normalised, resized) and labels."""
        images = self.images[batch.index]
        if batch.draws is not None:
            images = self.augment(images, batch.draws)
        return self.transform(images), self.labels[batch.index]

    def draws(self, batch: int) -> Draws:
        """The random draws of one batch's augmentation, from a generator seeded with (seed,
        epoch, batch), one per image of the whole batch: a resumed run augments as the
        original, and a rank's images as on one process. A shift of 0 and no flip where that
        augmentation is off."""
        g = torch.Generator(self.device)
        g.manual_seed(batch_seed(self.seed, self.epoch, batch))
        mine, size = slice(self.rank, None, self.world_size), self.batch_len(batch)
        if self.translate:  # drawn first, then the flips: the order fixes the streams
            high = 2 * self.translate + 1
            shift = torch.randint(0, high, (2, size, 1), generator=g, device=self.device)
        else:
            shift = torch.zeros(2, size, 1, dtype=torch.long, device=self.device)
        if self.flip:
            flip = torch.rand(size, 1, 1, 1, generator=g, device=self.device) < 0.5
        else:
            flip = torch.zeros(size, 1, 1, 1, dtype=torch.bool, device=self.device)
        return Draws(shift[:, mine], flip[mine])

    def augment(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Random translation by up to `translate` pixels (zero fill, i.e. a random crop of
        the padded image) and horizontal flips, on the device."""
        n, c, h, w = images.shape
        if self.translate:
            p = self.translate
            padded = F.pad(images, (p, p, p, p))
            dy, dx = draws.shift
            rows = (torch.arange(h, device=self.device) + dy)[:, None, :, None]
            cols = (torch.arange(w, device=self.device) + dx)[:, None, None, :]
            n_idx = torch.arange(n, device=self.device)[:, None, None, None]
            c_idx = torch.arange(c, device=self.device)[None, :, None, None]
            images = padded[n_idx, c_idx, rows, cols]
        if self.flip:
            images = torch.where(draws.flip, images.flip(3), images)
        return images

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.resize is not None and self.resize != x.shape[-1]:
            x = resize_like_pil(x, self.resize)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)
