"""One run: composed config in, trained model, TensorBoard curves and results.json out.

    python -m cnnbench model=mlp dataset=mnist trainer.epochs=3

`main` is the Hydra entry point; `train(cfg, out_dir)` does the work and returns the
results, so tests and other tools can call it without a command line.
"""

from __future__ import annotations

import csv
import ctypes
import inspect
import itertools
import json
import logging
import math
import os
import platform
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from cnnbench import __version__, checkpoint, data, distributed
from cnnbench.config import (
    CONFIG_DIR,
    MODEL_INPUT_KEYS,
    PRECISIONS,
    ConfigError,
    check_writable,
    image_size,
    resolve_device,
    validate,
)
from cnnbench.eval import evaluate
from cnnbench.runs import flatten, objective, write_json
from cnnbench.summary import forward_flops

log = logging.getLogger(__name__)

# metrics.csv column -> TensorBoard tag, once per epoch (train/loss and lr follow the log cadence)
EPOCH_SCALARS = {
    "train_loss": "train/epoch_loss",
    "train_acc": "train/acc",
    "test_loss": "test/loss",
    "test_acc": "test/acc",
    "best_test_acc": "test/best_acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "epoch_s": "perf/epoch_s",
    "images_per_s": "perf/images_per_s",
}
CSV_FIELDS = ["epoch", "step", "lr", *EPOCH_SCALARS]


def keep_freed_memory() -> None:
    """CPU training frees and reallocates megabytes of activations every step. glibc hands
    such blocks back to the kernel and maps them again, paying a page fault per 4 KiB page;
    keeping them in the heap made bfloat16 runs 1.2x faster here (docs/performance.md), as
    torch's `torch.backends.xeon.run_cpu --enable-jemalloc` launcher does with another
    allocator. glibc only (elsewhere nothing changes); CNNBENCH_TUNE_MALLOC=0 turns it off."""
    if os.environ.get("CNNBENCH_TUNE_MALLOC", "1") == "0":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: macOS, Windows, musl
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    libc.mallopt(m_trim_threshold, 2**30)
    libc.mallopt(m_mmap_threshold, 2**25)  # the largest value glibc allows, 32 MiB


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def blame(group: str, node: DictConfig) -> Iterator[None]:
    """Turn a constructor's complaint about its arguments into one ConfigError naming the
    group: torch's optimizers and schedulers, and our models, check their own arguments."""
    try:
        yield
    except (InstantiationException, ValueError, TypeError, ZeroDivisionError) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        raise ConfigError(
            f"{group} ({node._target_}): {cause or err}\nFix the {group}.* values; "
            "python -m cnnbench --cfg job shows them."
        ) from None


def build_model(cfg: DictConfig, spec: data.Spec, size: int, device: torch.device) -> nn.Module:
    """Instantiate the model and run one image through it, which sizes its lazy layers."""
    node = OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k not in MODEL_INPUT_KEYS])
    with blame("model", cfg.model):
        model = instantiate(node, in_channels=spec.channels, num_classes=len(spec.classes))
    model = model.to(device).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, spec.channels, size, size, device=device))
    if out.shape != (1, len(spec.classes)):
        raise ConfigError(
            f"{cfg.model._target_} returned shape {tuple(out.shape)} for one image; "
            f"expected (1, {len(spec.classes)})"
        )
    return model


def device_loader(
    cfg: DictConfig, split: data.Split, device: torch.device, train: bool = False
) -> data.DeviceLoader:
    """The batches of a split on the device: shuffled and augmented for training; in large
    batches, in order, for evaluation."""
    spec, size, ds = data.SPECS[cfg.dataset.name], image_size(cfg), cfg.dataset
    common = dict(
        device=device, mean=spec.mean, std=spec.std, normalize=ds.normalize,
        resize=size if size != spec.size else None, channels_last=cfg.trainer.channels_last,
        rank=distributed.rank(), world_size=distributed.world_size(),
    )  # fmt: skip
    if train:
        return data.DeviceLoader(
            *split, ds.batch_size, shuffle=True, seed=cfg.trainer.seed,
            limit_batches=cfg.trainer.limit_train_batches, translate=ds.translate, flip=ds.flip,
            **common,
        )  # fmt: skip
    return data.DeviceLoader(
        *split, cfg.trainer.eval_batch_size, limit_batches=cfg.trainer.limit_test_batches, **common
    )


def how_to_run(
    cfg: DictConfig, model: nn.Module, device: torch.device
) -> tuple[nn.Module, torch.autocast, torch.amp.GradScaler]:
    """The trainer's switches: channels-last weights (in place), DistributedDataParallel under
    torchrun, torch.compile, autocast, and the gradient scaler float16 needs (its gradients
    underflow; bfloat16 has float32's range). Returns (forward, autocast, scaler)."""
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = model
    if distributed.world_size() > 1:  # all-reduces the gradients during backward
        forward = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    forward = torch.compile(forward) if cfg.trainer.compile else forward
    dtype = PRECISIONS[str(cfg.trainer.precision)]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return forward, autocast, scaler


def run_length_args(node: DictConfig, total_steps: int) -> dict:
    """Schedulers step after every optimizer step. One whose horizon is the whole run (T_max
    of cosine, total_steps of one-cycle) is given the run's length here, unless its YAML
    sets it."""
    params = inspect.signature(hydra.utils.get_class(node._target_)).parameters
    return {k: total_steps for k in ("T_max", "total_steps") if k in params and k not in node}


def hparams_summaries(cfg: DictConfig) -> tuple:
    """The session-start and session-end summaries of TensorBoard's HParams tab, holding the
    flattened config.

    They go into the run's own event file: SummaryWriter.add_hparams would put them in a
    separate sub-run named by the time, apart from the curves. No experiment summary is
    written, so TensorBoard builds one over all runs under --logdir: it marks the hparams
    that differ between runs and takes every scalar tag (test/acc, ...) as a metric.
    """
    flat = {}
    for key, value in flatten(OmegaConf.to_container(cfg, resolve=True)).items():
        flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    _experiment, session_start, session_end = hparams(flat, {})
    return session_start, session_end


class Discard:
    """The TensorBoard writer of the ranks other than 0: takes any call, keeps nothing."""

    def __getattr__(self, name: str) -> Discard:
        return self

    def __call__(self, *args, **kwargs) -> Discard:
        return self


class Interrupted(Exception):
    """A SIGINT or SIGTERM stopped the run after a step; a checkpoint holds its state."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.checkpoint = signum, checkpoint


class StopSignals:
    """The first SIGINT or SIGTERM asks the loop to stop after its current step (it then
    saves a checkpoint); a second one stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
        # torchrun passes a signal on to its processes, which the terminal has sent them too:
        # there the second one is ignored, and torchrun kills them 30 s after the first
        alone = distributed.world_size() == 1
        if self.received is not None and alone:
            raise KeyboardInterrupt
        self.received = signum
        at_once = (
            "press Ctrl-C again to stop at once"
            if alone
            else "torchrun kills the processes 30 s after the signal"
        )
        log.warning(
            f"{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
            f"({at_once})"
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def claim(out_dir: Path, restart: bool) -> bool:
    """Creating metrics.csv claims the directory, so two runs never share one. With `restart`
    (a sweep job run again before it saved a checkpoint), a claimed directory is taken over;
    the return value says whether it was."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        (out_dir / "metrics.csv").open("x").close()
    except FileExistsError:  # e.g. two runs started within the same second
        if restart:
            return True
        raise ConfigError(
            f"{out_dir} already holds a run; its metrics, events and results are left as they "
            "are. Give this run its own directory, e.g. hydra.run.dir=outputs/my-run, or "
            f"continue it with trainer.resume={out_dir}"
        ) from None
    return False


def keep_rows_up_to(path: Path, epochs_done: int) -> None:
    """metrics.csv of a resumed run: drop the rows of epochs after its checkpoint (a run
    killed between writing a row and its checkpoint). Rewritten whole, like the checkpoints;
    a checkpoint copied away from its metrics.csv starts a new one."""
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= epochs_done]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        out.writeheader()
        out.writerows(rows)
    os.replace(tmp, path)


def train(
    cfg: DictConfig, out_dir: Path, resume: Path | None = None, restart: bool = False
) -> dict:
    """Train and evaluate the configured model; write logs and checkpoints into `out_dir`;
    return the results. With `resume`, continue the run that checkpoint stopped; with
    `restart`, start afresh in a directory a run without a checkpoint left behind."""
    start = time.perf_counter()
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    rank, world_size = distributed.rank(), distributed.world_size()
    main_rank = rank == 0  # writes the files and the progress bar
    if world_size > 1 and device.type not in ("cuda", "cpu"):
        raise ConfigError(
            f"trainer.device={cfg.trainer.device}: torchrun's processes share their work over "
            f"CUDA (NCCL) or the CPU (gloo), not {device.type}. Use trainer.device=cpu"
        )
    if world_size > 1 and device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"trainer.device={cfg.trainer.device}: under torchrun each process takes the GPU "
                "of its LOCAL_RANK. Use trainer.device=cuda (or auto) and choose the GPUs with "
                "CUDA_VISIBLE_DEVICES"
            )
        if distributed.local_rank() >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started more processes on this machine than it has GPUs "
                f"({torch.cuda.device_count()}): use --nproc_per_node={torch.cuda.device_count()}"
                ", or trainer.device=cpu"
            )
        device = torch.device("cuda", distributed.local_rank())
        torch.cuda.set_device(device)
    if device.type == "cuda":  # the fastest convolution algorithms for these fixed shapes
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_memory()
    spec = data.SPECS[cfg.dataset.name]
    size = image_size(cfg)
    ckpt = None
    if resume is not None:
        ckpt = checkpoint.load(resume)  # on the CPU: the RNG states must stay there
        resolved = OmegaConf.to_container(cfg, resolve=True)
        checkpoint.check_compatible(
            ckpt, resume, resolved["model"], spec.channels, len(spec.classes), size
        )
        checkpoint.check_same_run(ckpt["config"], resume, resolved)
    restarted = False
    if ckpt is None:
        restarted = distributed.main_first(lambda: claim(out_dir, restart), others=False)
    seed_everything(cfg.trainer.seed)

    # ---- data: decoded once (cached on disk; by rank 0 first), moved to the device once
    ds = cfg.dataset

    def load(split: str) -> data.Split:
        return distributed.main_first(
            lambda: data.load(ds.name, split, ds.root, ds.download, ds.cache_dir)
        )

    train_set, test_set = load("train"), load("test")
    train_set, val_set = data.hold_out(*train_set, ds.val_size, seed=cfg.trainer.seed)
    train_loader = device_loader(cfg, train_set, device, train=True)
    test_loader = device_loader(cfg, test_set, device)
    val_loader = device_loader(cfg, val_set, device) if val_set is not None else None

    # ---- model, optimizer, schedule
    model = build_model(cfg, spec, size, device)
    params = sum(p.numel() for p in model.parameters())
    flops = forward_flops(model, (spec.channels, size, size))
    # `forward` runs the model (compiled or not); `model` holds the weights that are saved
    forward, autocast, scaler = how_to_run(cfg, model, device)

    def run_eval(loader: data.DeviceLoader):
        with autocast:
            return evaluate(forward, loader, len(spec.classes))

    with blame("optimizer", cfg.optimizer):
        optimizer = instantiate(cfg.optimizer, _convert_="all")(model.parameters())
    total_steps = max(1, cfg.trainer.epochs * len(train_loader))
    with blame("scheduler", cfg.scheduler):
        scheduler = instantiate(cfg.scheduler, _convert_="all")(
            optimizer, **run_length_args(cfg.scheduler, total_steps)
        )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    model_name = cfg.model._target_.rsplit(".", 1)[-1]
    log.info(
        f"{model_name} on {spec.title} ({train_loader.num_samples} train / "
        f"{test_loader.num_samples} test images at {size}x{size}), {params:,} parameters, "
        f"device {device}"
    )
    if world_size > 1:
        # dataset.batch_size is the global batch: the same batches and steps as on one process
        n = train_loader.num_samples
        if min(ds.batch_size, train_loader.batch_len(len(train_loader) - 1)) < world_size:
            fits = next(
                b
                for b in itertools.count(max(ds.batch_size, world_size))
                if n % b == 0 or n % b >= world_size
            )
            raise ConfigError(
                f"dataset.batch_size={ds.batch_size}: each batch is shared by the {world_size} "
                f"processes, but with {n} training images one batch of the epoch would leave a "
                f"process none. Choose another batch size, e.g. dataset.batch_size={fits}"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        log.info(
            f"data parallel over {world_size} processes ({backend}): batch size "
            f"{ds.batch_size} in all, about {ds.batch_size // world_size} per process"
        )

    # ---- where the run stands: fresh, or as its checkpoint left it
    # the sums of the epoch in progress stay on the device: reading one forces a host sync,
    # so that happens only at the log cadence and at the end of an epoch
    zeros = dict(
        loss=torch.zeros((), device=device),
        correct=torch.zeros((), device=device, dtype=torch.long),
        window=torch.zeros((), device=device),
    )
    state = dict(
        epochs_done=0, batches_done=0, step=0, best_acc=0.0, best_epoch=0, history=[],
        seen=0, window_steps=0, elapsed_s=0.0, wall_s=0.0, sums=zeros,
    )  # fmt: skip
    if ckpt is not None:
        checkpoint.load_weights(model, ckpt, resume)
        optimizer.load_state_dict(ckpt["optimizer"])  # moves its state to the parameters' device
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        checkpoint.set_rng_states(ckpt["rng"])
        state.update({k: ckpt[k] for k in state})
        state["sums"] = {k: v.to(device) for k, v in state["sums"].items()}
        if not main_rank:  # the epoch's sums so far are over all ranks: rank 0 carries them on
            state.update(seen=0, sums={k: torch.zeros_like(v) for k, v in zeros.items()})
        if main_rank:
            keep_rows_up_to(out_dir / "metrics.csv", state["epochs_done"])
        log.info(
            f"resuming {resume} at step {state['step']} (epoch {state['epochs_done'] + 1}, "
            f"batch {state['batches_done']})"
        )
    step, best_acc, best_epoch, history = (
        state["step"], state["best_acc"], state["best_epoch"], state["history"]
    )  # fmt: skip
    if rank > 0:  # the same weights everywhere (DDP broadcasts rank 0's), but its own dropout
        torch.manual_seed(cfg.trainer.seed * 1_000_003 + rank * 100_003 + step)

    def save(path: Path, epochs_done: int, batches_done: int, **progress) -> None:
        if not main_rank:
            return
        checkpoint.atomic_save(
            {
                "format": checkpoint.FORMAT,
                "cnnbench_version": __version__,
                "config": OmegaConf.to_container(cfg, resolve=True),
                "in_channels": spec.channels,
                "num_classes": len(spec.classes),
                "image_size": size,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": checkpoint.rng_states(),
                "epochs_done": epochs_done,
                "batches_done": batches_done,
                "step": step,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "history": history,
                "wall_s": state["wall_s"] + time.perf_counter() - start,
                **{"seen": 0, "window_steps": 0, "elapsed_s": 0.0, "sums": zeros, **progress},
            },
            path,
        )

    # ---- logging; a resumed run first drops the points logged after its checkpoint
    # (only rank 0 writes: the other ranks' writer and metrics.csv discard what they are given)
    purge = step + 1 if ckpt else (0 if restarted else None)
    writer = SummaryWriter(log_dir=str(out_dir), purge_step=purge) if main_rank else Discard()
    session_start, session_end = hparams_summaries(cfg)
    if ckpt is None:
        writer.add_text("config", "    " + OmegaConf.to_yaml(cfg).replace("\n", "\n    "))
        writer.file_writer.add_summary(session_start)
    csv_path = out_dir / "metrics.csv" if main_rank else os.devnull
    csv_file = open(csv_path, "a" if ckpt else "w", newline="")  # noqa: SIM115
    metrics_csv = csv.DictWriter(csv_file, fieldnames=CSV_FIELDS)
    if ckpt is None:
        metrics_csv.writeheader()

    # ---- the loop
    # best_acc and best_epoch (and best.pt) follow the validation accuracy when there is a
    # validation split, else the test accuracy
    test_loss = history[-1]["test_loss"] if history else float("nan")
    test_acc = history[-1]["test_acc"] if history else float("nan")
    val_loss = history[-1]["val_loss"] if history else None
    val_acc = history[-1]["val_acc"] if history else None
    status, diverged_at = "ok", None
    lr = optimizer.param_groups[0]["lr"]
    sums = state["sums"]
    window_loss, window_steps = sums["window"], state["window_steps"]
    first_epoch = state["epochs_done"] + 1
    try:
        with StopSignals() as stop:
            if cfg.trainer.epochs == 0:  # nothing to train: report what the untrained model does
                result = run_eval(test_loader)
                test_loss, test_acc = result.loss, result.acc
                if val_loader is not None:
                    result = run_eval(val_loader)
                    val_loss, val_acc = result.loss, result.acc
                    writer.add_scalar("val/acc", val_acc, 0)
                best_acc = test_acc if val_acc is None else val_acc
                for tag, value in [("test/acc", test_acc), ("test/loss", test_loss)]:
                    writer.add_scalar(tag, value, 0)
            for epoch in range(first_epoch, cfg.trainer.epochs + 1):
                model.train()
                resumed = epoch == first_epoch
                train_loader.set_epoch(epoch, start=state["batches_done"] if resumed else 0)
                batch = train_loader.start
                epoch_loss, epoch_correct = sums["loss"], sums["correct"]
                seen = state["seen"] if resumed else 0
                elapsed = state["elapsed_s"] if resumed else 0.0
                tic = time.perf_counter()
                bar = tqdm(
                    train_loader,
                    desc=f"epoch {epoch}/{cfg.trainer.epochs}",
                    unit="batch",
                    initial=batch,
                    total=len(train_loader),
                    leave=False,
                    disable=None if main_rank else True,
                    dynamic_ncols=True,
                )
                for x, y in bar:
                    with autocast:
                        logits = forward(x)
                        loss = loss_fn(logits, y)
                    # this rank's part of the global batch's mean loss (all of it on one process);
                    # DDP averages the ranks' gradients, hence the factor world_size
                    share = loss * (len(y) / train_loader.batch_len(batch))
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(share * world_size).backward()
                    lr = optimizer.param_groups[0]["lr"]
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()

                    step += 1
                    batch += 1
                    seen += len(y)
                    epoch_loss += loss.detach() * len(y)
                    epoch_correct += (logits.detach().argmax(1) == y).sum()
                    window_loss += share.detach()
                    window_steps += 1
                    if step % cfg.trainer.log_every_n_steps == 0:
                        mean_loss = distributed.total(window_loss).item() / window_steps
                        if not math.isfinite(mean_loss):
                            diverged_at = step
                            break
                        writer.add_scalar("train/loss", mean_loss, step)
                        writer.add_scalar("lr", lr, step)
                        rate = batch * ds.batch_size / (elapsed + time.perf_counter() - tic)
                        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:,.0f}")
                        window_loss.zero_()
                        window_steps = 0
                    if batch < len(train_loader) and distributed.anyone(stop.received is not None):
                        # mid-epoch: the checkpoint also holds the epoch's sums so far
                        sums = dict(loss=epoch_loss, correct=epoch_correct, window=window_loss)
                        save(
                            out_dir / "last.pt",
                            epoch - 1,
                            batch,
                            seen=int(distributed.total(torch.tensor(seen))),
                            window_steps=window_steps,
                            elapsed_s=elapsed + time.perf_counter() - tic,
                            sums={k: distributed.total(v) for k, v in sums.items()},
                        )
                        raise Interrupted(stop.received or signal.SIGTERM, out_dir / "last.pt")
                bar.close()
                # the epoch's sums over all ranks (window: the steps since the last loss point)
                sums = dict(loss=epoch_loss, correct=epoch_correct, window=window_loss)
                totals = {k: distributed.total(v) for k, v in sums.items()}
                seen = int(distributed.total(torch.tensor(seen)))
                train_loss = totals["loss"].item() / max(seen, 1)
                train_acc = totals["correct"].item() / max(seen, 1)
                epoch_s = elapsed + time.perf_counter() - tic  # after .item(): the device is done
                if diverged_at is None and not math.isfinite(train_loss):
                    diverged_at = step
                if diverged_at is not None:
                    status = "diverged"
                    log.error(
                        f"the training loss became {train_loss} by step {diverged_at} (epoch "
                        f"{epoch}); the run stops and its last checkpoint is kept. A smaller "
                        f"learning rate usually helps, e.g. optimizer.lr={cfg.optimizer.lr / 10:g}"
                    )
                    break

                result = run_eval(test_loader)
                test_loss, test_acc = result.loss, result.acc
                if val_loader is not None:
                    result = run_eval(val_loader)
                    val_loss, val_acc = result.loss, result.acc
                tracked = test_acc if val_acc is None else val_acc
                improved = tracked > best_acc
                if improved:
                    best_acc, best_epoch = tracked, epoch
                best_test = max([r["test_acc"] for r in history] + [test_acc])
                row = dict(epoch=epoch, step=step, lr=lr, train_loss=train_loss)
                row.update(train_acc=train_acc, test_loss=test_loss, test_acc=test_acc)
                row.update(best_test_acc=best_test, epoch_s=epoch_s, images_per_s=seen / epoch_s)
                row.update(val_loss=val_loss, val_acc=val_acc)
                history.append(row)
                metrics_csv.writerow(row)
                csv_file.flush()
                for key, tag in EPOCH_SCALARS.items():
                    if row[key] is not None:
                        writer.add_scalar(tag, row[key], step)
                writer.flush()
                epoch_loss.zero_()
                epoch_correct.zero_()
                # the next epoch's sums start at zero; the window goes on
                save(out_dir / "last.pt", epoch, 0, window_steps=window_steps,
                     sums={**sums, "window": totals["window"]})  # fmt: skip
                if improved:
                    save(out_dir / "best.pt", epoch, 0)
                log.info(
                    f"epoch {epoch}/{cfg.trainer.epochs}  train loss {train_loss:.4f} acc "
                    f"{train_acc:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | lr "
                    f"{lr:.3g} | {epoch_s:.1f} s, {seen / epoch_s:,.0f} img/s"
                )
                if epoch < cfg.trainer.epochs and distributed.anyone(stop.received is not None):
                    raise Interrupted(stop.received or signal.SIGTERM, out_dir / "last.pt")

        if window_steps and status == "ok":  # steps since the last point: short runs get one
            writer.add_scalar(
                "train/loss", distributed.total(window_loss).item() / window_steps, step
            )
            writer.add_scalar("lr", lr, step)
        if status == "ok":
            writer.file_writer.add_summary(session_end)  # the HParams tab shows it finished
    except BaseException as err:
        # a crash or a stop still leaves a results.json that says what happened
        if not main_rank:
            raise
        write_json(
            out_dir / "results.json",
            {
                "status": "interrupted"
                if isinstance(err, Interrupted | KeyboardInterrupt)
                else "error",
                "error": f"{type(err).__name__}: {err}",
                "model": model_name,
                "dataset": ds.name,
                "epochs_done": len(history),
                "steps": step,
                "checkpoint": str(out_dir / "last.pt") if (out_dir / "last.pt").exists() else None,
                "config": OmegaConf.to_container(cfg, resolve=True),
            },
        )
        raise
    finally:
        csv_file.close()
        writer.close()

    # the first epoch pays for warm-up (allocations, lazy init), so it is left out of the
    # throughput when later epochs exist
    timed = history[1:] or history
    timed_s = sum(r["epoch_s"] for r in timed)
    images_per_s = sum(r["images_per_s"] * r["epoch_s"] for r in timed) / timed_s if timed else None
    results = {
        "status": status,
        "diverged_at_step": diverged_at,
        "model": model_name,
        "dataset": ds.name,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "best_test_acc": max([r["test_acc"] for r in history], default=test_acc),
        "best_epoch": best_epoch,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "best_val_acc": best_acc if val_acc is not None else None,
        "val_size": ds.val_size,
        "train_loss": history[-1]["train_loss"] if history else None,
        "train_acc": history[-1]["train_acc"] if history else None,
        "epochs": cfg.trainer.epochs,
        "epochs_done": len(history),
        "steps": step,
        "params": params,
        "flops_per_image": flops,
        "train_images_per_s": images_per_s,
        "train_s": sum(r["epoch_s"] for r in history),
        "wall_s": state["wall_s"] + time.perf_counter() - start,
        "resumed": ckpt is not None,
        "device": str(device),
        "world_size": world_size,
        "torch_version": torch.__version__,
        "cnnbench_version": __version__,
        "python_version": platform.python_version(),
        "run_dir": str(out_dir),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if main_rank:
        write_json(out_dir / "results.json", results)
    return results


def tell(*args, **kwargs) -> None:
    """print() on rank 0 only: the other processes of a distributed run would say the same."""
    if distributed.is_main():
        print(*args, **kwargs)


def launcher() -> list[str]:
    """How this process was started: python -m, or torchrun with as many processes."""
    if distributed.world_size() == 1:
        return ["python", "-m"]
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size()))
    nodes = distributed.world_size() // per_node
    if nodes == 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={per_node}", "-m"]
    # several hosts: the rendezvous options of the first start are needed again
    return ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={per_node}", "<rdzv options>", "-m"]


def resume_command(out_dir: Path, sweep: bool) -> str:
    """The command that continues this run: the same sweep again, or this run's command line
    with trainer.resume pointing at its directory."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("trainer.resume=")]
    flags = [a for a in sys.argv[1:] if a.startswith(("--config", "-cp", "-cn", "-cd"))]
    overrides = flags + overrides
    if sweep:  # the sweep's own command line: every job of it goes on where it stopped
        return shlex.join([*launcher(), "cnnbench", *sys.argv[1:]])
    return shlex.join([*launcher(), "cnnbench", *overrides, f"trainer.resume={out_dir}"])


def checkpoint_to_resume(setting: str | None, out_dir: Path) -> Path | None:
    """trainer.resume: null starts afresh; a path names a checkpoint or run directory;
    auto takes this directory's last.pt, which conf/config.yaml's run-directory resolver
    chose as the newest run with the same config (none: a fresh run)."""
    if setting is None:
        return None
    if setting == "auto":
        return out_dir / "last.pt" if (out_dir / "last.pt").is_file() else None
    return checkpoint.find(setting)


def score(results: dict) -> float:
    """The value a sweeper (Optuna) maximises. A failed or diverged run scores 0, the worst
    accuracy, so that a search goes on: hydra-optuna-sweeper stops at a NaN."""
    value = objective(results)
    return 0.0 if value is None else value


def finished_with(out_dir: Path, status: str) -> bool:
    try:
        return json.loads((out_dir / "results.json").read_text()).get("status") == status
    except (OSError, ValueError):
        return False


def finished(out_dir: Path, cfg: DictConfig) -> bool:
    """A run directory whose results.json says it trained all of cfg's epochs."""
    try:
        results = json.loads((out_dir / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return results.get("status") == "ok" and results.get("epochs_done") == cfg.trainer.epochs


class TorchrunSweeps(Callback):
    """Under torchrun, a sweep runs its jobs one after another, each on all processes. A
    sweeper or launcher of its own (Optuna, joblib, submitit) would have each process draw
    or start jobs alone: refused before the first job, once, on rank 0."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        plugins = [str(config.hydra[k].get("_target_", "")) for k in ("sweeper", "launcher")]
        parting = [p.rsplit(".", 1)[-1] for p in plugins if ".Basic" not in p]
        if distributed.launched() and parting:
            tell(
                "cnnbench: error: under torchrun a sweep runs its jobs one after another on all "
                f"processes, with Hydra's basic sweeper and launcher; with {' and '.join(parting)}"
                " the processes would each go their own way. Run it without torchrun.",
                file=sys.stderr,
            )
            sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    searching = "optuna" in str(hydra_cfg.sweeper.get("_target_", "")).lower()
    together = distributed.launched()  # under torchrun: every job on all processes
    if searching and not cfg.dataset.val_size:  # the same for every trial: the search stops
        tell(
            "cnnbench: error: a hyperparameter search needs a validation split, so that it never "
            "tunes on the test set: set dataset.val_size, e.g. dataset.val_size=10000",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        resume = checkpoint_to_resume(cfg.trainer.resume, out_dir)
        if sweep and cfg.trainer.resume is None and (out_dir / "last.pt").is_file():
            resume = out_dir / "last.pt"  # the same sweep run again: this job goes on
        if resume and finished(out_dir, cfg):
            results = json.loads((out_dir / "results.json").read_text())
            checkpoint.check_same_run(
                results["config"], out_dir, OmegaConf.to_container(cfg, resolve=True)
            )
            tell(f"already finished: test accuracy {results['test_acc']:.4f} - {out_dir}")
            return score(results)
        results = train(cfg, out_dir, resume, restart=sweep)
    except Interrupted as stop:
        if searching:  # a new search draws new trials: this one is not picked up again
            tell(
                f"cnnbench: {stop}; trial {hydra_cfg.job.num} is abandoned (its checkpoint is "
                f"{stop.checkpoint}). Running the same command again adds new trials to the "
                "study.",
                file=sys.stderr,
            )
        else:
            tell(
                f"cnnbench: {stop}; checkpoint saved to {stop.checkpoint}. Resume with:\n"
                f"  {resume_command(out_dir, sweep)}",
                file=sys.stderr,
            )
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:
        last = out_dir / "last.pt"
        kept = f"the last checkpoint is {last}" if last.exists() else "no checkpoint was saved yet"
        tell(f"cnnbench: stopped at once; {kept}", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        known = isinstance(err, ConfigError | data.DataError | checkpoint.CheckpointError | OSError)
        # under torchrun, a job that failed on one process cannot go on without it: all stop
        ends_here = not sweep or together
        if (
            os.environ.get("HYDRA_FULL_ERROR") == "1"
            or not (known or sweep)
            or (together and not known)
        ):
            raise
        tell(f"cnnbench: error: {err}", file=sys.stderr)
        if ends_here:
            sys.exit(2)
        # in a sweep the job is recorded (train() has done so if it got that far) and the
        # others go on
        if not known:
            log.exception(f"job {hydra_cfg.job.num} failed")
        if distributed.is_main() and not finished_with(out_dir, "error"):
            write_json(
                out_dir / "results.json",
                {
                    "status": "error",
                    "error": f"{type(err).__name__}: {err}",
                    "config": OmegaConf.to_container(cfg, resolve=True),
                    "run_dir": str(out_dir),
                },
            )
        return score({})
    if results["status"] != "ok":
        tell(f"cnnbench: run {results['status']} - {out_dir}", file=sys.stderr)
        if not sweep:
            sys.exit(1)
        return score(results)
    tell(
        f"test accuracy {results['test_acc']:.4f} (best {results['best_test_acc']:.4f}, "
        f"epoch {results['best_epoch']}) - {out_dir}"
    )
    return score(results)


def main() -> None:
    """The console entry point. A run or sweep directory given on the command line is checked
    first: Hydra creates it before any of cnnbench's code runs. Under torchrun, the processes
    then join up (so that they agree on the run directory), and only rank 0 writes Hydra's
    files and logs."""
    try:
        overrides = OverridesParser.create().parse_overrides(
            [a for a in sys.argv[1:] if not a.startswith("-")]
        )
    except Exception:
        overrides = []
    resuming = any(o.key_or_group == "trainer.resume" for o in overrides)
    for o in overrides:
        value = o.value()
        # an interpolated directory is checked by conf/config.yaml's resolver instead
        given = isinstance(value, str) and "${" not in value
        if o.key_or_group in ("hydra.run.dir", "hydra.sweep.dir") and given:
            check_writable(value)
        if o.key_or_group == "hydra.run.dir" and given and not resuming:
            try:  # refused before Hydra writes its .hydra/ files into the run there
                claimed = (Path(value).expanduser() / "metrics.csv").exists()
                if claimed:
                    claim(Path(value).expanduser(), restart=False)
            except ConfigError as err:
                tell(f"cnnbench: error: {err}", file=sys.stderr)
                sys.exit(2)
    distributed.init()
    if not distributed.is_main():
        quiet = ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
        sys.argv += ["hydra.output_subdir=null", *quiet]
    try:
        hydra_main()
    finally:
        distributed.close()


if __name__ == "__main__":
    main()
