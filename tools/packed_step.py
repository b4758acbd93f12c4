"""One training step of N models: one after another, as a sweep trains its points today,
against the same N trained as one pack (cnnbench/packed.py). Prints ms per step and the
ratio, side by side in one process, on the given device. The figure that decides where
packing pays (issue 30: on a GPU; not on this 2-core CPU).

    python tools/packed_step.py                      # the device trainer.device=auto picks
    python tools/packed_step.py --device cpu --threads 1 --models lenet5:8 resnet_mini:4
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from cnnbench.build import build_model
from cnnbench.config import compose
from cnnbench.distributed import resolve_device
from cnnbench.packed import Pack, PackedStep


def timed(step, steps: int, device: torch.device) -> float:
    """ms per call of step(), after 3 warm-up calls."""
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def compare(model: str, n: int, batch: int, steps: int, device: torch.device) -> dict:
    cfg = compose([f"model={model}", "dataset=mnist"])
    torch.manual_seed(0)
    one = build_model(cfg, device)
    side = cfg.model.input_size or 28
    images = torch.randn(n, batch, 1, side, side, device=device)
    labels = torch.randint(0, 10, (n, batch), device=device)

    alone = [copy.deepcopy(one).train() for _ in range(n)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in alone]

    def one_after_another() -> None:
        for i, (m, opt) in enumerate(zip(alone, optimizers, strict=True)):
            loss = nn.functional.cross_entropy(m(images[i]), labels[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    members = [copy.deepcopy(one) for _ in range(n)]
    pack = Pack(members)
    pack.train()
    packed = PackedStep(
        pack, [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in members]
    )
    separately = timed(one_after_another, steps, device)
    together = timed(lambda: packed(images, labels), steps, device)
    return {"model": model, "n": n, "separately_ms": separately, "packed_ms": together}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", default=["lenet5:16", "lenet:16", "resnet_mini:8"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, help="intra-op CPU threads (torch's default)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"one training step of N models, batch {args.batch} each, {device}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(f"{'model':<14} {'N':>3} {'one after another':>18} {'packed':>10} {'ratio':>6}")
    for spec in args.models:
        model, _, n = spec.partition(":")
        row = compare(model, int(n or 8), args.batch, args.steps, device)
        ratio = row["separately_ms"] / row["packed_ms"]
        print(
            f"{model:<14} {row['n']:>3} {row['separately_ms']:>15.1f} ms "
            f"{row['packed_ms']:>7.1f} ms {ratio:>5.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
