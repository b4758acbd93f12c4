"""Evaluate a model on a test split: `evaluate()` is the one accuracy implementation (train.py
uses it after every epoch), and `python -m cnnbench.eval` checks a saved checkpoint:

    python -m cnnbench.eval ckpt=outputs/2026-11-22/10-00-00/best.pt
    python -m cnnbench.eval ckpt=outputs/2026-11-22/10-00-00 dataset.root=../shared/data

It prints the test accuracy and the accuracy of every class, and writes the confusion matrix
(CSV and PNG) and TensorBoard events (the matrix, a grid of misclassified images) into
`<run dir>/eval/`, or `out=<dir>`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from cnnbench import checkpoint, data, distributed, runs, toolargs
from cnnbench.atomic import write_text
from cnnbench.build import build_model, device_loader
from cnnbench.config import image_size, model_name, validate
from cnnbench.errors import USER_ERRORS, ConfigError, fail


@dataclass
class Evaluation:
    loss: float  # mean cross-entropy
    acc: float
    confusion: (
        torch.Tensor
    )  # (classes, classes) counts on the CPU; row = true class, column = predicted


@torch.inference_mode()
def evaluate(model: nn.Module, loader: data.DeviceLoader, num_classes: int) -> Evaluation:
    """Loss, accuracy and confusion matrix over every batch the loader yields, over all ranks of
    a distributed run (each evaluates its shard). The sums stay on the device until the end."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    confusion = torch.zeros(num_classes * num_classes, device=loader.device, dtype=torch.long)
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        # index_add_ of a fixed-size matrix: bincount would sync with the GPU to size its output
        cells = y * num_classes + logits.argmax(1)
        confusion.index_add_(0, cells, torch.ones_like(cells))
    loss_sum, confusion = distributed.total(loss_sum), distributed.total(confusion)
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = confusion.sum().item()
    return Evaluation(loss_sum.item() / n, confusion.diag().sum().item() / n, confusion)


# trainer.tta -> the views averaged at test time
@torch.inference_mode()
def misclassified(
    model: nn.Module, loader: data.DeviceLoader, images: torch.Tensor, limit: int = 64
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Up to `limit` test images the model gets wrong (as stored, uint8), with (true, predicted)."""
    model.eval()
    picked, pairs, first = [], [], 0
    for x, y in loader:
        pred = model(x).argmax(1)
        wrong = (pred != y).nonzero().flatten().cpu()
        picked.append(images[first + wrong])
        pairs += list(zip(y.cpu()[wrong].tolist(), pred.cpu()[wrong].tolist(), strict=True))
        first += len(y)
        if len(pairs) >= limit:
            break
    return torch.cat(picked)[:limit], pairs[:limit]


def confusion_figure(confusion: torch.Tensor, classes: tuple[str, ...], title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(confusion.numpy(), cmap="Blues")
    fig.colorbar(im, ax=ax)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    high = confusion.max().item() / 2
    for i in ticks:
        for j in ticks:
            n = confusion[i, j].item()
            ax.text(
                j,
                i,
                n,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if n > high else "black",
            )
    return fig


def confusion_csv(confusion: torch.Tensor, classes: tuple[str, ...]) -> str:
    return runs.confusion_csv(confusion.tolist(), classes)


USAGE = """usage: python -m cnnbench.eval ckpt=<checkpoint or run dir> [out=<dir>]
                                [dataset.KEY=VALUE ...] [trainer.KEY=VALUE ...]

Evaluates a checkpoint on its dataset's test split. The model and its settings come from the
checkpoint; dataset.* (root, cache_dir, download, normalize, ...) and trainer.* (device,
eval_batch_size, limit_test_batches) may be overridden."""


def parse(argv: list[str]) -> tuple[Path, Path | None, list[str]]:
    args = toolargs.parse(argv, USAGE, options=("ckpt", "out"))
    out = args.options.get("out")
    return Path(args.options["ckpt"]), Path(out) if out else None, args.overrides


def checkpoint_config(ckpt: dict, overrides: list[str]) -> DictConfig:
    """The config the checkpoint was trained with, plus the dataset.* and trainer.* overrides."""
    cfg = OmegaConf.create(ckpt["config"])
    OmegaConf.set_struct(cfg, True)  # a misspelt override is an error, not a new key
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(
            f"{err.full_key}: no such setting in the checkpoint's config; "
            f"python -m cnnbench --cfg job lists the dataset.* and trainer.* settings"
        ) from None
    validate(cfg)
    return cfg


@dataclass
class Restored:
    """A checkpoint's model, rebuilt as it was trained, and what it was trained on."""

    model: nn.Module
    cfg: DictConfig  # the checkpoint's config with the overrides
    ckpt: dict
    path: Path  # the checkpoint file
    device: torch.device
    spec: data.Spec
    size: int  # the side the model sees

    @property
    def title(self) -> str:
        """LeNet from outputs/.../best.pt (epoch 3, MNIST)"""
        name, epoch = model_name(self.ckpt["config"]), self.ckpt["epochs_done"]
        return f"{name} from {self.path} (epoch {epoch}, {self.spec.title})"


def load_model(path: Path, overrides: list[str]) -> Restored:
    """The model of a checkpoint file or run directory, with its weights, in eval mode."""
    path = checkpoint.find(path)
    ckpt = checkpoint.load(path)
    cfg = checkpoint_config(ckpt, overrides)
    device = distributed.resolve_device(cfg.trainer.device)
    spec, size = data.SPECS[cfg.dataset.name], image_size(cfg)
    checkpoint.check_compatible(
        ckpt, path, OmegaConf.to_container(cfg.model), spec.channels, len(spec.classes), size
    )
    model = build_model(cfg, device)
    checkpoint.load_weights(model, ckpt, path)
    return Restored(model.eval(), cfg, ckpt, path, device, spec, size)


def input_transform(restored: Restored) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images (N, C, side, side) at the dataset's own side -> the model's input, as the
    training batches were made: normalised with the dataset's statistics (if it was) and
    resized to the side the model trained at."""
    c, side = restored.spec.channels, restored.spec.size
    empty = (torch.zeros(0, c, side, side, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    cfg = OmegaConf.merge(restored.cfg, {"trainer": {"channels_last": False}})
    loader = device_loader(cfg, empty, restored.device)
    return lambda images: loader.transform(images.to(restored.device))


def per_class(result: Evaluation, classes: tuple[str, ...], title: str) -> list[str]:
    confusion = result.confusion
    accuracy = confusion.diag() / confusion.sum(1).clamp(min=1)
    width = max(map(len, classes))
    return [
        f"{title}, {int(confusion.sum())} images",
        f"test accuracy {result.acc:.4f}, loss {result.loss:.4f}",
        "",
        f"{'class':<{width}}  accuracy  images",
        *(
            f"{c:<{width}}  {a:8.4f}  {int(n):6d}"
            for c, a, n in zip(classes, accuracy.tolist(), confusion.sum(1), strict=True)
        ),
    ]


def main(argv: list[str] | None = None) -> Evaluation:
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid

    try:
        path, out_dir, overrides = parse(sys.argv[1:] if argv is None else argv)
        restored = load_model(path, overrides)
        model, cfg, ckpt, path, spec = (
            restored.model,
            restored.cfg,
            restored.ckpt,
            restored.path,
            restored.spec,
        )
        device = restored.device
        ds = cfg.dataset
        images, labels = data.load(ds.name, "test", ds.root, ds.download, ds.cache_dir)
        out_dir = out_dir or path.parent / "eval"
        out_dir.mkdir(parents=True, exist_ok=True)
    except (*USER_ERRORS, OmegaConfBaseException) as err:
        fail("cnnbench.eval", err)

    # the test split in order, as training evaluates it (without its channels-last switch)
    loader = device_loader(
        OmegaConf.merge(cfg, {"trainer": {"channels_last": False}}), (images, labels), device
    )
    result = evaluate(model, loader, len(spec.classes))
    name, epoch, classes = model_name(ckpt["config"]), ckpt["epochs_done"], spec.classes
    lines = per_class(result, classes, f"{name} from {path} (epoch {epoch}) on {spec.title} test")
    print("\n".join(lines))
    write_text(out_dir / "confusion_matrix.csv", confusion_csv(result.confusion, classes))
    title = f"{name}, {spec.title} test: accuracy {result.acc:.4f}"
    figure = confusion_figure(result.confusion, classes, title)
    figure.savefig(out_dir / "confusion_matrix.png", dpi=120)
    wrong, pairs = misclassified(model, loader, images)
    with SummaryWriter(log_dir=str(out_dir)) as writer:
        writer.add_scalar("eval/acc", result.acc, epoch)
        writer.add_scalar("eval/loss", result.loss, epoch)
        writer.add_figure("eval/confusion_matrix", figure, epoch)
        if len(wrong):
            writer.add_image("eval/misclassified", make_grid(wrong, nrow=8, pad_value=255), epoch)
            named = ", ".join(f"{classes[t]} as {classes[p]}" for t, p in pairs)
            writer.add_text("eval/misclassified", named, epoch)
        writer.add_text("eval/per_class", "    " + "\n    ".join(lines), epoch)
    print(f"\nconfusion matrix and TensorBoard events: {out_dir}")
    return result


if __name__ == "__main__":
    main()
