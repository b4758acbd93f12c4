"""What the bench records per model (the three loops side by side) and what each engine
choice buys (--ablation)."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig, OmegaConf

from cnnbench.bench.loops import (
    Case,
    compose_config,
    load_splits,
    run_bare,
    run_engine,
)
from cnnbench.bench.measure import PeakMemory, matmul_peak_flops
from cnnbench.build import PRECISIONS, precision_for
from cnnbench.config import class_name, image_size
from cnnbench.distributed import resolve_device

# the allocator is measured with the defaults and with bfloat16 (which allocates more)
ALLOCATOR_SWITCHES = ["", "trainer.precision=bf16"]
SWITCHES = [
    "trainer.channels_last=true",
    "trainer.precision=bf16",
    "trainer.channels_last=true trainer.precision=bf16",
    "trainer.compile=true",
    "optimizer.fused=true",
]


def ablation(cases: list[Case], overrides: list[str]) -> list[dict]:
    """One row per engine choice and model: images/s without it and with it, side by side.
    The per-step sync is measured on the bare loop, the rest on the engine itself. The
    allocator setting (build.keep_freed_memory) lasts for the process: the runs without it
    come first."""
    rows = []

    def row(case: Case, choice: str, without: float, with_: float) -> None:
        rows.append(
            {
                "model": case.name,
                "choice": choice,
                "without_images_per_s": without,
                "with_images_per_s": with_,
                "ratio": with_ / without,
            }
        )
        print(
            f"{case.name:<14}  {choice:<50}  {without:>10,.0f}  {with_:>10,.0f}  "
            f"{with_ / without:>5.2f}x",
            flush=True,
        )

    print(f"{'model':<14}  {'choice':<50}  {'without':>10}  {'with':>10}  ratio")
    configs = [compose_config(case, overrides) for case in cases]
    untuned = {}
    os.environ["CNNBENCH_TUNE_MALLOC"] = "0"
    for case, cfg in zip(cases, configs, strict=True):
        device, (_, test_set) = resolve_device(cfg.trainer.device), load_splits(cfg)
        for switch in ALLOCATOR_SWITCHES:
            switched = compose_config(case, [*overrides, *switch.split()])
            untuned[case, switch] = run_engine(switched, device, test_set)
    del os.environ["CNNBENCH_TUNE_MALLOC"]
    for case, cfg in zip(cases, configs, strict=True):
        device, (train_set, test_set) = resolve_device(cfg.trainer.device), load_splits(cfg)
        for switch in ALLOCATOR_SWITCHES:
            switched = compose_config(case, [*overrides, *switch.split()])
            rate = run_engine(switched, device, test_set)["cnnbench_train_images_per_s"]
            without = untuned[case, switch]["cnnbench_train_images_per_s"]
            row(case, f"glibc keeps freed memory ({switch or 'defaults'})", without, rate)
        synced = run_bare(cfg, device, train_set, item_every_step=True)
        free = run_bare(cfg, device, train_set)
        row(
            case,
            "no .item() per step (bare loop)",
            synced["bare_train_images_per_s"],
            free["bare_train_images_per_s"],
        )
        base = run_engine(cfg, device, test_set)["cnnbench_train_images_per_s"]
        for switch in SWITCHES:
            switched = compose_config(case, [*overrides, *switch.split()])
            rate = run_engine(switched, device, test_set)["cnnbench_train_images_per_s"]
            row(case, switch, base, rate)
    return rows


def peak_for(cfg: DictConfig, device: torch.device, peaks: dict) -> float:
    """The matmul peak in the run's compute dtype (autocast's, else float32 at the run's
    matmul precision), measured once per kind: bf16 work against a float32 peak could pass
    100%."""
    dtype = PRECISIONS[precision_for(cfg.trainer.precision, device)]
    key = (dtype, cfg.trainer.matmul_precision)
    if key not in peaks:
        torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)
        peaks[key] = matmul_peak_flops(device, dtype=dtype)
    return peaks[key]


def bench_model(case: Case, cfg: DictConfig, peaks: dict, textbook: dict) -> dict:
    """One record: the three loops on the same model, batch size, optimizer and data (the
    textbook loop's figures measured beforehand)."""
    device = resolve_device(cfg.trainer.device)
    train_set, test_set = load_splits(cfg)
    record = {
        "case": case.name,
        "model": case.name.partition("@")[0],
        "dataset": cfg.dataset.name,
        "image_size": image_size(cfg),
        "batch_size": cfg.dataset.batch_size,
        "eval_batch_size": cfg.trainer.eval_batch_size,
        "optimizer": class_name(cfg.optimizer._target_),
        "lr": cfg.optimizer.lr,
        "train_batches": cfg.trainer.limit_train_batches,
        "test_batches": cfg.trainer.limit_test_batches,
        "overrides": list(case.overrides),
        "device": str(device),
        "memory_source": PeakMemory(device).source,
    }
    record |= textbook
    record |= run_engine(cfg, device, test_set)
    if record["cnnbench_step"] == "captured":  # the same run with the plain step, beside it
        plain = OmegaConf.merge(cfg, {"trainer": {"cuda_graph": "false"}})
        rate = run_engine(plain, device, test_set)["cnnbench_train_images_per_s"]
        record["cnnbench_plain_train_images_per_s"] = rate
    record |= run_bare(cfg, device, train_set)

    # a limited run's epoch time is extrapolated to the whole training split
    full = len(train_set[1])
    extrapolated = record["epoch_images"] < full
    engine_rate = record["cnnbench_train_images_per_s"]
    flops_per_s = engine_rate * record["train_flops_per_image"]
    return record | {
        "full_epoch_images": full,
        "epoch_s_extrapolated": extrapolated,
        "speedup": engine_rate / record["textbook_train_images_per_s"],
        "textbook_epoch_s": full / record["textbook_train_images_per_s"],
        "cnnbench_epoch_s": full / engine_rate
        if extrapolated
        else record["cnnbench_measured_epoch_s"],
        "engine_efficiency": engine_rate / record["bare_train_images_per_s"],
        "cnnbench_train_flops_per_s": flops_per_s,
        "matmul_peak_flops_per_s": peak_for(cfg, device, peaks),
        "cnnbench_peak_fraction": flops_per_s / peak_for(cfg, device, peaks),
    }


# the models whose bf16 step the bench compares with the float32 textbook loop
BF16_CASES = ("resnet@96", "alexnet")
BF16_SWITCHES = ["trainer.precision=auto", "trainer.channels_last=true"]


def bf16_rows(cases: list[Case], overrides: list[str], records: list[dict]) -> list[dict]:
    """For ResNet-18 at 96 and AlexNet at 224 (when in the table): the engine with
    trainer.precision=auto (bf16 where the device has bfloat16 units) and channels-last,
    against the float32 textbook loop and the float32 engine of the same table row."""
    rows = []
    for case, record in zip(cases, records, strict=True):
        if case.name not in BF16_CASES or "error" in record:
            continue
        cfg = compose_config(case, [*overrides, *BF16_SWITCHES])
        device = resolve_device(cfg.trainer.device)
        rate = run_engine(cfg, device, load_splits(cfg)[1])["cnnbench_train_images_per_s"]
        row = {
            "model": case.name,
            "switches": BF16_SWITCHES,
            "precision": precision_for(cfg.trainer.precision, device),
            "images_per_s": rate,
            "over_textbook_fp32": rate / record["textbook_train_images_per_s"],
            "over_engine_fp32": rate / record["cnnbench_train_images_per_s"],
        }
        rows.append(row)
        print(
            f"{case.name:<14}  {' '.join(BF16_SWITCHES)} ({row['precision']}): {rate:,.1f} "
            f"img/s, {row['over_textbook_fp32']:.2f}x the float32 textbook loop, "
            f"{row['over_engine_fp32']:.2f}x the float32 engine",
            flush=True,
        )
    return rows
