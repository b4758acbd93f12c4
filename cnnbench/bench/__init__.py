"""Time the textbook training loop against cnnbench's engine, in one process, for the same
model, batch size, optimizer and data:

    python -m cnnbench.bench dataset.root=../shared/data             # the default list, minutes
    python -m cnnbench.bench --quick dataset.root=../shared/data     # lenet5 and lenet, seconds
    python -m cnnbench.bench --models lenet,resnet@96 --device cuda  # name@size resizes

Each model is trained by three loops over the same images:

- textbook: the loop of the course sources. A torchvision-style Dataset returning PIL images,
  ToTensor and Normalize per image, a DataLoader (shuffled, no workers), and `.item()` of the
  loss and of the correct count after every step;
- cnnbench: the engine itself, `cnnbench.train.train`, for two epochs: the first is the
  warm-up, the second is timed (its row of metrics.csv);
- bare: forward, loss, backward and step over batches already prepared on the device, and
  nothing else: the most a loop can reach. cnnbench / bare is the engine's efficiency.

Evaluation is timed too: the textbook's DataLoader under no_grad, and `cnnbench.eval.evaluate`
on the engine's DeviceLoader. One table row per model is printed; every figure, the machine
and its matmul peak (measured here) go to JSON (outputs/bench/<time>.json, or --json).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnbench import data
from cnnbench.atomic import write_json
from cnnbench.bench.compare import SWITCHES, ablation, bench_model, bf16_rows
from cnnbench.bench.loops import (
    ABLATION_MODELS,
    DEFAULT_CASES,
    GPU_BATCHES,
    OTHER_BATCHES,
    QUICK_BATCHES,
    QUICK_MODELS,
    Case,
    ModelFailed,
    TextbookDataset,
    case_for,
    compose_config,
    for_gpu,
    load_splits,
    run_textbook,
    textbook_transform,
)
from cnnbench.bench.measure import machine, matmul_peak_flops
from cnnbench.bench.table import COLUMNS, LEGEND, table_line, table_row
from cnnbench.bench.whole import whole_process
from cnnbench.distributed import resolve_device
from cnnbench.errors import ConfigError, DataError, fail

__all__ = [
    "OTHER_BATCHES",
    "SWITCHES",
    "TextbookDataset",
    "case_for",
    "compose_config",
    "load_splits",
    "main",
    "textbook_transform",
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cnnbench.bench",
        description="Time the textbook training loop, cnnbench's engine and a bare compute "
        "loop on the same model, batch size, optimizer and data; print a table and write JSON.",
    )
    p.add_argument(
        "overrides", nargs="*", help="Hydra overrides for every model, e.g. dataset.root=data"
    )
    p.add_argument(
        "--quick", action="store_true", help=f"{QUICK_MODELS} on a few batches (under a minute)"
    )
    p.add_argument(
        "--models",
        help="comma-separated model names, name@size to resize (default: "
        f"{','.join(c.name for c in DEFAULT_CASES)}; with --quick: {QUICK_MODELS})",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--ablation",
        action="store_true",
        help="instead of the table, what each engine choice buys (per-step sync, "
        f"channels-last, bf16, compile, fused optimizer) on {ABLATION_MODELS}",
    )
    what.add_argument(
        "--no-process",
        action="store_true",
        help="leave out the whole-process measurements (start-up, runs at once, the joblib "
        "sweep, the textbook program, the fast recipes)",
    )
    what.add_argument(
        "--process-only",
        action="store_true",
        help="only the whole-process measurements (about 10 minutes on 2 cores)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: trainer.device)")
    p.add_argument(
        "--json", type=Path, help="results file (default: outputs/bench/<date>_<time>.json)"
    )
    return p


def chosen_cases(args: argparse.Namespace, p: argparse.ArgumentParser) -> list[Case]:
    default = ",".join(c.name for c in DEFAULT_CASES)
    names = args.models or (QUICK_MODELS if args.quick else default)
    if args.ablation and not args.models:
        names = QUICK_MODELS if args.quick else ABLATION_MODELS
    cases = [case_for(name) for name in names.split(",") if name]
    if not cases:
        p.error(f"--models {args.models!r}: name at least one model, e.g. --models lenet")
    if args.quick:
        quick = dict(train_batches=QUICK_BATCHES[0], test_batches=QUICK_BATCHES[1])
        cases = [dataclasses.replace(c, **quick) for c in cases]
    return cases


def check_inputs(cases: list[Case], overrides: list[str]) -> list[DictConfig]:
    """Every config is composed and checked, and every split found, before minutes of timing."""
    configs = [compose_config(case, overrides) for case in cases]
    for cfg in configs:
        resolve_device(cfg.trainer.device)
        for split in ("train", "test"):
            ds = cfg.dataset
            data.find(ds.name, split, Path(ds.root).expanduser(), ds.download)
    return configs


def measure_machine(device: torch.device) -> tuple[dict, float]:
    about = machine(device)  # first: the load average is the other processes'
    peak = matmul_peak_flops(device)
    print(
        f"{about['device_name']} ({device}), {about['torch_threads']} threads, torch "
        f"{about['torch_version']}; float32 matmul peak {peak / 1e9:,.1f} GFLOP/s"
    )
    if (about["load_average_1min"] or 0) > 0.5:
        print(
            f"note: the 1-minute load average is {about['load_average_1min']:.1f}: while "
            "other processes use this machine, the timings are low and noisy"
        )
    print()
    return about, peak


def table(cases: list[Case], configs: list[DictConfig], peak: float) -> list[dict]:
    """One record and table row per model. `peak`: the float32 matmul peak, measured first;
    a run in another compute dtype is compared with a peak measured in that dtype."""
    peaks = {(None, "highest"): peak}
    print(table_line([name for name, _, _ in COLUMNS]), flush=True)
    # every textbook loop first: on the CPU the engine tunes the process's allocator
    # (build.keep_freed_memory), which a textbook loop, as users run it, goes without
    textbook = {}
    for case, cfg in zip(cases, configs, strict=True):
        try:
            textbook[case] = run_textbook(cfg)
        except torch.OutOfMemoryError as err:
            textbook[case] = err
    records = []
    for case, cfg in zip(cases, configs, strict=True):
        try:
            if isinstance(textbook[case], Exception):
                raise textbook[case]
            record = bench_model(case, cfg, peaks, textbook[case])
        except (ModelFailed, torch.OutOfMemoryError) as err:
            record = {"model": case.name, "error": f"{type(err).__name__}: {err}"}
        records.append(record)
        print(table_row(record), flush=True)
    print(f"\n{LEGEND}")
    return records


def about_run(argv: list[str] | None, machine: dict) -> dict:
    """What every results file begins with: when, the command, the machine."""
    args = sys.argv[1:] if argv is None else argv
    return {
        "created": datetime.now().isoformat(timespec="seconds"),
        "command": ["python", "-m", "cnnbench.bench", *args],
        "machine": machine,
    }


def main(argv: list[str] | None = None) -> dict:
    p = parser()
    args = p.parse_intermixed_args(argv)
    cases = chosen_cases(args, p)
    overrides = [*args.overrides, *([f"trainer.device={args.device}"] if args.device else [])]
    out = args.json or Path("outputs/bench") / f"{datetime.now():%Y-%m-%d_%H-%M-%S}.json"
    try:
        configs = check_inputs(cases, overrides)
        device = resolve_device(configs[0].trainer.device)
        if device.type == "cuda":  # --quick stays quick
            cases = [for_gpu(case, scale=1 if args.quick else GPU_BATCHES) for case in cases]
            configs = check_inputs(cases, overrides)
        about, peak = measure_machine(device)
        header = about_run(argv, about)  # before the minutes of timing: "created" is the start
        if args.ablation:
            results = {"machine": about, "ablation": ablation(cases, overrides)}
        elif args.process_only:
            results = {**header, "process": whole_process(configs[0], overrides, args.quick)}
        else:
            records = table(cases, configs, peak)
            results = {**header, "matmul_peak_flops_per_s": peak, "records": records}
            results["bf16"] = bf16_rows(cases, overrides, results["records"])
            if not args.no_process:
                results["process"] = whole_process(configs[0], overrides, args.quick)
        write_json(out, results)
    except (ConfigError, DataError) as err:
        fail("cnnbench.bench", err)
    print(f"results: {out}")
    return {"ablation": results["ablation"]} if args.ablation else results
