"""One run: composed config in, trained model, TensorBoard curves and results.json out.

    python -m cnnbench model=mlp dataset=mnist trainer.epochs=3

`main` is the Hydra entry point; `train(cfg, out_dir)` does the work and returns the
results, so tests and other tools can call it without a command line.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import math
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from cnnbench import __version__, data
from cnnbench.config import (
    CONFIG_DIR,
    MODEL_INPUT_KEYS,
    ConfigError,
    flatten,
    image_size,
    resolve_device,
    validate,
)

log = logging.getLogger(__name__)

# metrics.csv column -> TensorBoard tag, once per epoch (train/loss and lr follow the log cadence)
EPOCH_SCALARS = {
    "train_loss": "train/epoch_loss",
    "train_acc": "train/acc",
    "test_loss": "test/loss",
    "test_acc": "test/acc",
    "best_test_acc": "test/best_acc",
    "epoch_s": "perf/epoch_s",
    "images_per_s": "perf/images_per_s",
}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: data.DeviceLoader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over every sample the loader yields."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    n = 0
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    return loss_sum.item() / n, correct.item() / n


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


def write_json(path: Path, obj: dict) -> None:
    """Whole or not at all, so a reader never sees half a file; NaN and inf become null,
    which strict JSON parsers accept."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        return [finite(x) for x in v] if isinstance(v, list) else v

    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def train(cfg: DictConfig, out_dir: Path) -> dict:
    """Train and evaluate the configured model; write logs into `out_dir`; return the results."""
    start = time.perf_counter()
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:  # creating metrics.csv claims the directory, so two runs never share one
        (out_dir / "metrics.csv").open("x").close()
    except FileExistsError:  # e.g. two runs started within the same second
        raise ConfigError(
            f"{out_dir} already holds a run; its metrics, events and results are left as they "
            "are. Give this run its own directory, e.g. hydra.run.dir=outputs/my-run"
        ) from None
    seed_everything(cfg.trainer.seed)

    # ---- data: decoded once (cached on disk), moved to the device once
    spec = data.SPECS[cfg.dataset.name]
    ds = cfg.dataset
    train_set, test_set = (
        data.load(ds.name, split, ds.root, ds.download, ds.cache_dir) for split in ("train", "test")
    )
    size = image_size(cfg)
    resize = size if size != spec.size else None
    common = dict(
        device=device, mean=spec.mean, std=spec.std, normalize=ds.normalize, resize=resize
    )
    train_loader = data.DeviceLoader(
        *train_set,
        ds.batch_size,
        shuffle=True,
        seed=cfg.trainer.seed,
        limit_batches=cfg.trainer.limit_train_batches,
        **common,
    )
    test_loader = data.DeviceLoader(
        *test_set,
        cfg.trainer.eval_batch_size,
        limit_batches=cfg.trainer.limit_test_batches,
        **common,
    )

    # ---- model, optimizer, schedule
    model = build_model(cfg, spec, size, device)
    params = sum(p.numel() for p in model.parameters())
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

    # ---- logging
    writer = SummaryWriter(log_dir=str(out_dir))
    writer.add_text("config", "    " + OmegaConf.to_yaml(cfg).replace("\n", "\n    "))
    session_start, session_end = hparams_summaries(cfg)
    writer.file_writer.add_summary(session_start)
    csv_file = open(out_dir / "metrics.csv", "w", newline="")  # noqa: SIM115 (closed below)
    metrics_csv = csv.DictWriter(csv_file, fieldnames=["epoch", "step", "lr", *EPOCH_SCALARS])
    metrics_csv.writeheader()

    # ---- the loop
    step, best_acc, best_epoch, history = 0, 0.0, 0, []
    test_loss, test_acc = float("nan"), float("nan")
    status, diverged_at = "ok", None
    lr = optimizer.param_groups[0]["lr"]
    # sums stay on the device: reading one forces a host sync, so that happens only at the
    # log cadence and at the end of an epoch
    window_loss, window_steps = torch.zeros((), device=device), 0
    try:
        if cfg.trainer.epochs == 0:  # nothing to train: report what the untrained model does
            test_loss, test_acc = evaluate(model, test_loader)
            best_acc = test_acc
            for tag, value in [("test/acc", test_acc), ("test/loss", test_loss)]:
                writer.add_scalar(tag, value, 0)
        for epoch in range(1, cfg.trainer.epochs + 1):
            model.train()
            train_loader.set_epoch(epoch)
            epoch_loss = torch.zeros((), device=device)
            epoch_correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            tic = time.perf_counter()
            bar = tqdm(
                train_loader,
                desc=f"epoch {epoch}/{cfg.trainer.epochs}",
                unit="batch",
                leave=False,
                disable=None,
                dynamic_ncols=True,
            )
            for x, y in bar:
                logits = model(x)
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()

                step += 1
                seen += len(y)
                epoch_loss += loss.detach() * len(y)
                epoch_correct += (logits.detach().argmax(1) == y).sum()
                window_loss += loss.detach()
                window_steps += 1
                if step % cfg.trainer.log_every_n_steps == 0:
                    mean_loss = window_loss.item() / window_steps
                    if not math.isfinite(mean_loss):
                        diverged_at = step
                        break
                    writer.add_scalar("train/loss", mean_loss, step)
                    writer.add_scalar("lr", lr, step)
                    bar.set_postfix(
                        loss=f"{mean_loss:.4f}", img_s=f"{seen / (time.perf_counter() - tic):,.0f}"
                    )
                    window_loss.zero_()
                    window_steps = 0
            bar.close()
            train_loss = epoch_loss.item() / max(seen, 1)
            train_acc = epoch_correct.item() / max(seen, 1)
            epoch_s = time.perf_counter() - tic  # after .item(): the device has finished
            if diverged_at is None and not math.isfinite(train_loss):
                diverged_at = step
            if diverged_at is not None:
                status = "diverged"
                log.error(
                    f"the training loss became {train_loss} by step {diverged_at} (epoch "
                    f"{epoch}); the run stops. A smaller learning rate usually helps, e.g. "
                    f"optimizer.lr={cfg.optimizer.lr / 10:g}"
                )
                break

            test_loss, test_acc = evaluate(model, test_loader)
            if test_acc > best_acc:
                best_acc, best_epoch = test_acc, epoch
            row = dict(epoch=epoch, step=step, lr=lr, train_loss=train_loss, train_acc=train_acc)
            row.update(test_loss=test_loss, test_acc=test_acc, best_test_acc=best_acc)
            row.update(epoch_s=epoch_s, images_per_s=seen / epoch_s)
            history.append(row)
            metrics_csv.writerow(row)
            csv_file.flush()
            for key, tag in EPOCH_SCALARS.items():
                writer.add_scalar(tag, row[key], step)
            writer.flush()
            log.info(
                f"epoch {epoch}/{cfg.trainer.epochs}  train loss {train_loss:.4f} acc "
                f"{train_acc:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | lr {lr:.3g} "
                f"| {epoch_s:.1f} s, {seen / epoch_s:,.0f} img/s"
            )

        if window_steps and status == "ok":  # steps since the last point: short runs get one
            writer.add_scalar("train/loss", window_loss.item() / window_steps, step)
            writer.add_scalar("lr", lr, step)
        if status == "ok":
            writer.file_writer.add_summary(session_end)  # the HParams tab shows it finished
    except BaseException as err:
        # a crash (or Ctrl-C) still leaves a results.json that says what happened
        write_json(
            out_dir / "results.json",
            {
                "status": "error",
                "error": f"{type(err).__name__}: {err}",
                "model": model_name,
                "dataset": ds.name,
                "epochs_done": len(history),
                "steps": step,
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
        "best_test_acc": best_acc,
        "best_epoch": best_epoch,
        "train_loss": history[-1]["train_loss"] if history else None,
        "train_acc": history[-1]["train_acc"] if history else None,
        "epochs": cfg.trainer.epochs,
        "epochs_done": len(history),
        "steps": step,
        "params": params,
        "train_images_per_s": images_per_s,
        "train_s": sum(r["epoch_s"] for r in history),
        "wall_s": time.perf_counter() - start,
        "device": str(device),
        "torch_version": torch.__version__,
        "cnnbench_version": __version__,
        "python_version": platform.python_version(),
        "run_dir": str(out_dir),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_json(out_dir / "results.json", results)
    return results


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = train(cfg, out_dir)
    except (ConfigError, data.DataError, OSError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"cnnbench: error: {err}", file=sys.stderr)
        sys.exit(2)
    if results["status"] != "ok":
        print(f"cnnbench: run {results['status']} - {out_dir}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.RUN:  # in a sweep, the other jobs go on
            sys.exit(1)
        return float("nan")
    print(
        f"test accuracy {results['test_acc']:.4f} (best {results['best_test_acc']:.4f}, "
        f"epoch {results['best_epoch']}) - {out_dir}"
    )
    return results["test_acc"]


if __name__ == "__main__":
    main()
