"""Data-parallel runs: what each process of `torchrun --nproc_per_node=N -m cnnbench ...` needs
to know about the others.

torchrun starts N copies of cnnbench and tells each its RANK, LOCAL_RANK and WORLD_SIZE (and
where to meet, MASTER_ADDR/MASTER_PORT) in the environment. `init()` joins them into one
process group: gloo for CPU tensors, NCCL for CUDA tensors. Without torchrun, every function
here is the trivial one-process answer, so train.py has a single code path.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import torch
import torch.distributed as dist

from cnnbench.errors import ConfigError
from cnnbench.schema import DEVICES
from cnnbench.seeding import rank_seed

T = TypeVar("T")


def init() -> datetime:
    """Join the other processes and agree on the run's start time (it names the run directory,
    which all of them share): rank 0's, returned."""
    # CPU tensors (and the objects below) go over gloo, CUDA tensors over NCCL, which sets up
    # its connections only when a CUDA tensor is first reduced
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    now = [datetime.now()]
    dist.broadcast_object_list(now, src=0)
    return now[0]


def close(together: bool = False) -> None:
    """Leave the process group. `together` (after a run that ended well on every process):
    first wait for the others, so that no process tears its connections down while a peer
    still uses them (a gloo process whose peer had left aborted now and then, SIGABRT)."""
    if not dist.is_initialized():
        return
    if together:
        dist.barrier()
    dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0, the process that writes the run's files and prints its messages (before the
    processes have joined, torchrun's RANK says which one this is)."""
    if dist.is_initialized():
        return rank() == 0
    return os.environ.get("RANK", "0") == "0"


def seed_rank(seed: int, step: int) -> None:
    """The processes other than rank 0 train rank 0's weights (DDP broadcasts them) but draw
    their own dropout masks."""
    if rank() > 0:
        torch.manual_seed(rank_seed(seed, rank(), step))


def total(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all processes (a new tensor; the argument is left as it is)."""
    tensor = tensor.clone()
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """`tensor` of every process, in rank order (on every process)."""
    if not dist.is_initialized():
        return [tensor.clone()]
    every = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(every, tensor)
    return every


def anyone(flag: bool) -> bool:
    """True on every process when `flag` is true on any of them: e.g. "a stop signal came".
    Reduced on the CPU (gloo), so asking at every step never waits for a GPU."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([int(flag)])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def main_first(fn: Callable[[], T], others: bool = True) -> T | None:
    """Run `fn` on rank 0, then (with `others`) on the other processes: a download or a cache
    fill happens once; a directory claim (others=False) only on rank 0. When rank 0 fails,
    every process raises its error, so that all stop at once with the same message rather
    than wait for a process that has gone."""
    if not dist.is_initialized():
        return fn()
    error: list[BaseException | None] = [None]
    result = None
    if is_main():
        try:
            result = fn()
        except Exception as err:
            error[0] = err
    dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise error[0]
    if is_main():
        return result
    return fn() if others else None


# ---------------------------------------------------------------------------- the device


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
            f"trainer.device={name}: not a device name. Allowed: {DEVICES}. "
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


def run_device(name: str) -> torch.device:
    """The device this process trains on: trainer.device, or under torchrun the GPU of its
    LOCAL_RANK."""
    device = resolve_device(name)
    if world_size() == 1:
        if device.type == "cuda" and device.index is not None:  # else GPU 0 gets a context too
            torch.cuda.set_device(device)
        return device
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(
            f"trainer.device={name}: torchrun's processes share their work over "
            f"CUDA (NCCL) or the CPU (gloo), not {device.type}. Use trainer.device=cpu"
        )
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"trainer.device={name}: under torchrun each process takes the GPU "
                "of its LOCAL_RANK. Use trainer.device=cuda (or auto) and choose the GPUs with "
                "CUDA_VISIBLE_DEVICES"
            )
        if local_rank() >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started more processes on this machine than it has GPUs "
                f"({torch.cuda.device_count()}): use --nproc_per_node={torch.cuda.device_count()}"
                ", or trainer.device=cpu"
            )
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    return device


def check_global_batch(batch_size: int, images: int, last_batch: int) -> None:
    """dataset.batch_size is the global batch, dealt out to the processes: each batch of the
    epoch (the last, smaller one too) must leave every process at least one image."""
    n = world_size()
    if n == 1 or min(batch_size, last_batch) >= n:
        return
    fits = next(
        b for b in itertools.count(max(batch_size, n)) if images % b == 0 or images % b >= n
    )
    raise ConfigError(
        f"dataset.batch_size={batch_size}: each batch is shared by the {n} processes, but with "
        f"{images} training images one batch of the epoch would leave a process none. Choose "
        f"another batch size, e.g. dataset.batch_size={fits}"
    )


def describe(device: torch.device, batch_size: int) -> str | None:
    """The start line's note on data parallelism (None without torchrun)."""
    if not dist.is_initialized():
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    processes = "1 process" if world_size() == 1 else f"{world_size()} processes"
    return (
        f"data parallel over {processes} ({backend}): batch size {batch_size} in all, about "
        f"{batch_size // world_size()} per process"
    )
