"""Data-parallel runs: what each process of `torchrun --nproc_per_node=N -m cnnbench ...` needs
to know about the others.

torchrun starts N copies of cnnbench and tells each its RANK, LOCAL_RANK and WORLD_SIZE (and
where to meet, MASTER_ADDR/MASTER_PORT) in the environment. `init()` joins them into one
process group: gloo for CPU tensors, NCCL for CUDA tensors. Without torchrun, every function
here is the trivial one-process answer, so train.py has a single code path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

_started: datetime | None = None


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the other processes and agree on the run's start time (it names the run directory,
    which all of them share)."""
    global _started
    if not launched() or dist.is_initialized():
        return
    # CPU tensors (and the objects below) go over gloo, CUDA tensors over NCCL, which sets up
    # its connections only when a CUDA tensor is first reduced
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    now = [datetime.now()]
    dist.broadcast_object_list(now, src=0)
    _started = now[0]


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def started() -> datetime:
    """Now, or in a distributed run the moment rank 0 joined the others."""
    return _started or datetime.now()


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


def total(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all processes (a new tensor; the argument is left as it is)."""
    tensor = tensor.clone()
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


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
