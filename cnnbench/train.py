"""One run: composed config in, trained model, TensorBoard curves and results.json out.

    python -m cnnbench model=mlp dataset=mnist trainer.epochs=3

`main` is the Hydra entry point; `train(cfg, out_dir)` does the work and returns the
results, so tests and other tools can call it without a command line.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import random
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from cnnbench import __version__, data
from cnnbench.config import CONFIG_DIR, ConfigError, resolve_device, validate

log = logging.getLogger(__name__)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: data.DeviceLoader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over every sample the loader yields."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = loader.num_samples
    return loss_sum.item() / n, correct.item() / n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig, spec: data.Spec, size: int, device: torch.device) -> nn.Module:
    """Instantiate the model and run one image through it, which sizes its lazy layers and
    turns an input the network cannot take into a message instead of a traceback mid-run."""
    model = instantiate(cfg.model, in_channels=spec.channels, num_classes=len(spec.classes))
    model.to(device).eval()
    probe = torch.zeros(1, spec.channels, size, size, device=device)
    try:
        with torch.no_grad():
            out = model(probe)
    except RuntimeError as err:
        raise ConfigError(
            f"{cfg.model._target_} cannot take {spec.channels}x{size}x{size} "
            f"{spec.title} images: {str(err).splitlines()[0]}\n"
            f"Give it larger images, e.g. dataset.resize={spec.size if size < spec.size else 224}"
        ) from None
    if out.shape != (1, len(spec.classes)):
        raise ConfigError(
            f"{cfg.model._target_} returned shape {tuple(out.shape)} "
            f"for one image; expected (1, {len(spec.classes)})"
        )
    return model


def hparams_summaries(cfg: DictConfig) -> tuple:
    """The session-start and session-end summaries of TensorBoard's HParams tab, holding the
    flattened config.

    They go into the run's own event file: SummaryWriter.add_hparams would put them in a
    separate sub-run named by the time, apart from the curves. No experiment summary is
    written, so TensorBoard builds one over all runs under --logdir: it marks the hparams
    that differ between runs and takes every scalar tag (test/acc, ...) as a metric.
    """
    flat = {}
    for key, value in _flatten(OmegaConf.to_container(cfg, resolve=True)).items():
        flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    _experiment, session_start, session_end = hparams(flat, {})
    return session_start, session_end


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def train(cfg: DictConfig, out_dir: Path) -> dict:
    """Train and evaluate the configured model; write logs into `out_dir`; return the results."""
    start = time.perf_counter()
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.trainer.seed)

    # ---- data: decoded once (cached on disk), moved to the device once
    spec = data.SPECS[cfg.dataset.name]
    splits = {
        split: data.load(
            cfg.dataset.name,
            split,
            root=cfg.dataset.root,
            download=cfg.dataset.download,
            cache_dir=cfg.dataset.cache_dir,
        )
        for split in ("train", "test")
    }
    size = cfg.dataset.resize or spec.size
    common = dict(
        device=device,
        mean=spec.mean,
        std=spec.std,
        normalize=cfg.dataset.normalize,
        resize=cfg.dataset.resize,
    )
    train_loader = data.DeviceLoader(
        *splits["train"],
        cfg.dataset.batch_size,
        shuffle=True,
        seed=cfg.trainer.seed,
        limit_batches=cfg.trainer.limit_train_batches,
        **common,
    )
    test_loader = data.DeviceLoader(*splits["test"], cfg.trainer.eval_batch_size, **common)

    # ---- model, optimizer, schedule
    model = build_model(cfg, spec, size, device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = instantiate(cfg.optimizer, _convert_="all")(model.parameters())
    scheduler = instantiate(cfg.scheduler, _convert_="all")(optimizer)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    log.info(
        "%s on %s (%d train / %d test images at %dx%d), %s parameters, device %s",
        cfg.model._target_.rsplit(".", 1)[-1],
        spec.title,
        train_loader.num_samples,
        test_loader.num_samples,
        size,
        size,
        f"{params:,}",
        device,
    )

    # ---- logging
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(out_dir))
    writer.add_text("config", "    " + OmegaConf.to_yaml(cfg).replace("\n", "\n    "))
    session_start, session_end = hparams_summaries(cfg)
    writer.file_writer.add_summary(session_start)
    csv_file = open(out_dir / "metrics.csv", "w", newline="")  # noqa: SIM115 (kept open)
    columns = [
        "epoch",
        "step",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "lr",
        "epoch_s",
        "images_per_s",
    ]
    metrics_csv = csv.DictWriter(csv_file, fieldnames=columns)
    metrics_csv.writeheader()

    # ---- the loop
    step, best_acc, best_epoch, history = 0, 0.0, 0, []
    test_loss, test_acc = float("nan"), float("nan")
    train_time = 0.0
    for epoch in range(1, cfg.trainer.epochs + 1):
        model.train()
        train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        # sums stay on the device: reading them forces a sync, so that happens only at
        # the log cadence and at the end of the epoch
        epoch_loss = torch.zeros((), device=device)
        epoch_correct = torch.zeros((), device=device, dtype=torch.long)
        window_loss, window_steps = torch.zeros((), device=device), 0
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
            optimizer.step()

            step += 1
            seen += len(y)
            epoch_loss += loss.detach() * len(y)
            epoch_correct += (logits.detach().argmax(1) == y).sum()
            window_loss += loss.detach()
            window_steps += 1
            if step % cfg.trainer.log_every_n_steps == 0:
                mean_loss = window_loss.item() / window_steps
                writer.add_scalar("train/loss", mean_loss, step)
                bar.set_postfix(
                    loss=f"{mean_loss:.4f}", img_s=f"{seen / (time.perf_counter() - tic):,.0f}"
                )
                window_loss.zero_()
                window_steps = 0
        train_loss = epoch_loss.item() / max(seen, 1)
        train_acc = epoch_correct.item() / max(seen, 1)
        epoch_s = time.perf_counter() - tic
        train_time += epoch_s
        scheduler.step()

        test_loss, test_acc = evaluate(model, test_loader)
        if test_acc > best_acc:
            best_acc, best_epoch = test_acc, epoch
        row = dict(
            epoch=epoch,
            step=step,
            train_loss=train_loss,
            train_acc=train_acc,
            test_loss=test_loss,
            test_acc=test_acc,
            lr=lr,
            epoch_s=epoch_s,
            images_per_s=seen / epoch_s,
        )
        history.append(row)
        metrics_csv.writerow(row)
        csv_file.flush()
        for tag, key in [
            ("train/epoch_loss", "train_loss"),
            ("train/acc", "train_acc"),
            ("test/loss", "test_loss"),
            ("test/acc", "test_acc"),
            ("lr", "lr"),
            ("perf/epoch_s", "epoch_s"),
            ("perf/images_per_s", "images_per_s"),
        ]:
            writer.add_scalar(tag, row[key], step)
        writer.add_scalar("test/best_acc", best_acc, step)
        writer.flush()
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f | test loss %.4f acc %.4f | "
            "lr %.3g | %.1f s, %s img/s",
            epoch,
            cfg.trainer.epochs,
            train_loss,
            train_acc,
            test_loss,
            test_acc,
            lr,
            epoch_s,
            f"{seen / epoch_s:,.0f}",
        )

    csv_file.close()
    if cfg.trainer.epochs == 0:  # nothing trained: still report what the untrained model does
        test_loss, test_acc = evaluate(model, test_loader)
        best_acc = test_acc
        writer.add_scalar("test/acc", test_acc, 0)
        writer.add_scalar("test/loss", test_loss, 0)
        writer.add_scalar("test/best_acc", best_acc, 0)
    writer.file_writer.add_summary(session_end)  # marks the run finished in the HParams tab
    writer.close()

    images = sum(r["images_per_s"] * r["epoch_s"] for r in history)
    results = {
        "status": "ok",
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "dataset": cfg.dataset.name,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "best_test_acc": best_acc,
        "best_epoch": best_epoch,
        "train_loss": history[-1]["train_loss"] if history else None,
        "train_acc": history[-1]["train_acc"] if history else None,
        "epochs": cfg.trainer.epochs,
        "steps": step,
        "params": params,
        "train_images_per_s": images / train_time if train_time else None,
        "train_s": train_time,
        "wall_s": time.perf_counter() - start,
        "device": str(device),
        "torch_version": torch.__version__,
        "cnnbench_version": __version__,
        "python_version": platform.python_version(),
        "run_dir": str(out_dir),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    _write_json(out_dir / "results.json", results)
    return results


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = train(cfg, out_dir)
    except (ConfigError, data.DataError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"cnnbench: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(
        f"test accuracy {results['test_acc']:.4f} (best {results['best_test_acc']:.4f}, "
        f"epoch {results['best_epoch']}) - {out_dir}"
    )
    return results["test_acc"]


if __name__ == "__main__":
    main()
