"""Where a training step's time goes: torch.profiler over cnnbench's engine step, for any
composed run (not needed by the package).

    python tools/profile_step.py experiment=fast_fashion dataset.root=../shared/data \
        --steps 40 --out docs/perf/fast_fashion-profile.txt

The step is train.py's on one process: autocast forward, loss, zero_grad, backward, optimizer
and scheduler step, on the run's own device-resident batches (augmentation included), after
`--warmup` steps that are not recorded. It leaves out the step's bookkeeping (the loss and
correct-count sums) and torchrun's gradient averaging.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from cnnbench import distributed
from cnnbench.build import (
    build_engine,
    build_loaders,
    build_model,
    build_optimizer,
    build_scheduler,
    tune_backend,
)
from cnnbench.config import compose, validate
from cnnbench.cores import load_average
from cnnbench.seeding import seed_everything


def batches(loader, epoch: int = 1):
    """The loader's batches, again and again."""
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=fast_fashion")
    ap.add_argument("--steps", type=int, default=40, help="steps recorded")
    ap.add_argument("--warmup", type=int, default=5, help="steps run first, not recorded")
    ap.add_argument("--rows", type=int, default=25, help="rows of the table")
    ap.add_argument("--shapes", action="store_true", help="a row per op and input shape")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args()

    cfg = compose(args.overrides)
    validate(cfg)
    t = cfg.trainer
    device = distributed.run_device(t.device)
    threads = tune_backend(device, t.deterministic, t.matmul_precision, t.threads)
    seed_everything(t.seed)
    loaders = build_loaders(cfg, device)
    model = build_model(cfg, device)
    engine = build_engine(cfg, model, device)
    optimizer = build_optimizer(cfg, model, device)
    # as long as the whole run, or the recorded steps if longer (OneCycle refuses to overrun)
    total = max(t.epochs * len(loaders.train), args.warmup + args.steps, 1)
    scheduler = build_scheduler(cfg, optimizer, total)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    model.train()
    data = batches(loaders.train)

    def step() -> None:
        x, y = next(data)
        with engine.autocast:
            loss = loss_fn(engine.forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        engine.scaler.scale(loss).backward()
        engine.scaler.step(optimizer)
        engine.scaler.update()
        scheduler.step()

    for _ in range(args.warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=args.shapes) as prof:
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages(group_by_input_shape=args.shapes)
    table = averages.table(sort_by=sort, row_limit=args.rows, max_name_column_width=40)
    load = load_average()
    head = (
        f"# torch.profiler, cnnbench's engine step: {' '.join(args.overrides)}\n"
        f"# {args.steps} batches of {cfg.dataset.batch_size} after {args.warmup} warm-up "
        f"steps, {threads[0]} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}\n"
        f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"load {'unknown' if load is None else f'{load:.1f}'}\n"
        f"# command: python tools/profile_step.py {' '.join(sys.argv[1:])}\n"
    )
    print(head + table)
    if args.out:
        args.out.write_text(head + table)


if __name__ == "__main__":
    main()
