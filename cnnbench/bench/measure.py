"""How the bench measures: synchronised timers, peak memory, the matmul peak, FLOPs, and the
machine it ran on."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnbench import __version__
from cnnbench.cores import load_average


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: GPU kernels run asynchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class PeakMemory:
    """The peak memory in MiB (`.mib`) while the `with` block runs: CUDA's allocator peak on a
    GPU; else the process's resident set, read from /proc/self/statm every 10 ms by a
    background thread; without /proc, getrusage's peak over the process's whole life."""

    STATM = Path("/proc/self/statm")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "rss /proc/self/statm" if self.STATM.exists() else "getrusage maxrss (lifetime)"

    def _rss_mib(self) -> float:
        resident_pages = int(self.STATM.read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.mib = max(self.mib, self._rss_mib())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.STATM.exists():
            self.mib = self._rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.mib = max(self.mib, self._rss_mib())
        else:
            import resource  # Unix only; kilobytes on Linux, bytes on macOS

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.mib = peak / (2**20 if sys.platform == "darwin" else 2**10)


def matmul_peak_flops(
    device: torch.device, n: int = 2048, seconds: float = 1.0, dtype: torch.dtype | None = None
) -> float:
    """FLOP/s of n x n matrix products on `device` in `dtype` (None: float32, at the process's
    float32 matmul precision, TF32 where it is "high"), after two warm-up products: the
    yardstick for how much of the device a training loop uses, in the loop's compute dtype."""
    kind = dict(device=device, dtype=dtype or torch.float32)
    a, b = torch.randn(n, n, **kind), torch.randn(n, n, **kind)
    for _ in range(2):
        torch.mm(a, b)
    sync(device)
    flops, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        for _ in range(5):
            torch.mm(a, b)
        sync(device)
        flops += 5 * 2 * n**3
    return flops / (time.perf_counter() - tic)


def train_flops_per_image(
    model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> float:
    """FLOPs of one image's forward and backward pass, counted by torch on one batch
    (convolutions and matrix products; a multiply-add counts 2)."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(y)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cnnbench_version": __version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        # other processes' load: on a shared CPU the timings are low and noisy
        "load_average_1min": load_average(),
    }
