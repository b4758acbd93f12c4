"""Predict the classes of your own images with a trained checkpoint:

    python -m cnnbench.predict ckpt=outputs/2026-11-22/10-00-00 images=my_digit.png
    python -m cnnbench.predict ckpt=outputs/.../best.pt images=photos/ images='scans/*.jpg' topk=5

Each image is prepared as the network was trained (cnnbench.images): the checkpoint's channels,
padded to a square and resized to the dataset's side, then to the training size, normalised
with the dataset's statistics; for MNIST and Fashion-MNIST (light on dark), an image whose
border is lighter than its centre is inverted first (invert=auto|true|false). It prints the
top-k classes of each, and writes predictions.csv, predictions.json and predictions.png (each
input as the network sees it, beside its top-k bars) into <run dir>/predict/, or out=<dir>.
A file that cannot be read gets one error line; the others are still predicted, and the exit
code is 2.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf.errors import OmegaConfBaseException

from cnnbench import images, toolargs
from cnnbench.atomic import write_json, write_text
from cnnbench.errors import USER_ERRORS, WriteError, fail
from cnnbench.eval import Restored, input_transform, load_model

TOOL = "cnnbench.predict"
SHEET_LIMIT = 64  # images drawn on the sheet; the CSV and JSON hold every image

USAGE = """usage: python -m cnnbench.predict ckpt=<checkpoint or run dir>
            images=<file, folder or glob> [images=...] [invert=auto|true|false] [topk=3]
            [out=<dir>] [trainer.device=...]

Predicts the class of each image with the checkpoint's model. images= may be given several
times; a folder gives its image files (not its sub-folders), a glob in quotes ('scans/*.jpg')
the files it matches. invert=auto inverts an image whose border is lighter than its centre
(MNIST and Fashion-MNIST show light objects on a dark ground). Writes predictions.csv,
predictions.json and predictions.png into <run dir>/predict/, or out=<dir>."""


def predict(restored: Restored, batch: list[images.Prepared]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the model's inputs of the first SHEET_LIMIT images, class probabilities of all) of the
    prepared images, trainer.eval_batch_size images a forward pass, as eval runs the test set."""
    transform, size = input_transform(restored), restored.cfg.trainer.eval_batch_size
    shown, probs = [], []
    for start in range(0, len(batch), size):
        pixels = torch.from_numpy(np.stack([p.pixels for p in batch[start : start + size]]))
        x = transform(pixels)
        with torch.inference_mode():
            probs.append(torch.softmax(restored.model(x).float(), dim=1).cpu())
        if start < SHEET_LIMIT:
            shown.append(x[: SHEET_LIMIT - start].cpu())
    return torch.cat(shown), torch.cat(probs)


def records(batch: list[images.Prepared], probs: torch.Tensor, classes, k: int) -> list[dict]:
    top = probs.topk(k, dim=1)
    return [
        {
            "file": str(p.path),
            "inverted": p.inverted,
            "invert_reason": p.invert_reason,
            "border": round(p.border, 1),
            "centre": round(p.centre, 1),
            "top": [
                {"class": classes[i], "index": i, "prob": round(v, 6)}
                for v, i in zip(values.tolist(), indices.tolist(), strict=True)
            ],
            "error": None,
        }
        for p, values, indices in zip(batch, top.values, top.indices, strict=True)
    ]


def line(record: dict) -> str:
    guesses = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in record["top"])
    note = ""
    if record["invert_reason"] == "auto":
        border, centre = record["border"], record["centre"]
        note = f" (inverted: its border, {border:.0f}, is lighter than its centre, {centre:.0f})"
    elif record["inverted"]:
        note = " (inverted: invert=true)"
    return f"{record['file']}: {guesses}{note}"


def table(rows: list[dict], k: int) -> str:
    text = io.StringIO(newline="")
    out = csv.writer(text)
    head = [h for i in range(1, k + 1) for h in (f"class_{i}", f"prob_{i}")]
    out.writerow(["file", "inverted", "invert_reason", *head, "error"])
    for r in rows:
        top = [v for t in r["top"] for v in (t["class"], t["prob"])]
        out.writerow(
            [
                r["file"],
                r["inverted"],
                r["invert_reason"] or "",
                *top,
                *[""] * (2 * k - len(top)),
                r["error"] or "",
            ]
        )
    return text.getvalue()


def sheet(rows: list[dict], inputs: torch.Tensor, restored: Restored, path: Path) -> None:
    """Each input as the network sees it (resized, inverted, normalised), beside its top-k."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    n = min(len(rows), SHEET_LIMIT)
    per_row = min(n, 3)
    lines = -(-n // per_row)
    fig = Figure(figsize=(max(4.2 * per_row, 6), 1.9 * lines + 0.6), layout="constrained")
    axes = fig.subplots(
        lines, 2 * per_row, squeeze=False, gridspec_kw={"width_ratios": [1, 1.3] * per_row}
    )
    low, high = value_range(restored)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i // 2 >= n:
            continue
        record, x = rows[i // 2], inputs[i // 2]
        if i % 2 == 0:
            shown = x[0] if x.shape[0] == 1 else ((x - x.min()) / (x.max() - x.min() + 1e-12))
            shown = shown if x.shape[0] == 1 else shown.permute(1, 2, 0)
            ax.imshow(shown.numpy(), cmap="gray", vmin=low, vmax=high)
            name = Path(record["file"]).name
            ax.set_title(name[:24] + (" (inverted)" if record["inverted"] else ""), fontsize=8)
            continue
        ax.set_axis_on()
        top = record["top"]
        ax.barh(range(len(top))[::-1], [t["prob"] for t in top], color="tab:blue")
        ax.set_yticks(range(len(top))[::-1], [t["class"] for t in top], fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=7)
        for y, t in zip(range(len(top))[::-1], top, strict=True):
            ax.text(min(t["prob"] + 0.02, 0.75), y, f"{t['prob']:.2f}", va="center", fontsize=7)
    fig.suptitle(
        f"{restored.title}\neach input as the network sees it (resized, inverted, "
        f"normalised), and its top {len(rows[0]['top'])}",
        fontsize=8,
    )
    fig.savefig(path, dpi=100)


def value_range(restored: Restored) -> tuple[float, float]:
    """The model-input values of black and white, for a gray image drawn as the network sees it."""
    mean, std = restored.spec.mean[0], restored.spec.std[0]
    if not restored.cfg.dataset.normalize:
        return 0.0, 1.0
    return -mean / std, (1 - mean) / std


def main(argv: list[str] | None = None) -> list[dict]:
    try:
        args = toolargs.parse(
            sys.argv[1:] if argv is None else argv,
            USAGE,
            options=("ckpt", "out", "invert", "topk"),
            repeatable=("images",),
            required=("ckpt", "images"),
        )
        invert = toolargs.choice(args, "invert", images.INVERT_CHOICES, "auto")
        k = toolargs.integer(args, "topk", 3)
        files, problems = images.expand(args.lists["images"])
        restored = load_model(Path(args.options["ckpt"]), args.overrides)
        out = args.options.get("out")
        out_dir = Path(out) if out else restored.path.parent / "predict"
    except (*USER_ERRORS, OmegaConfBaseException) as err:
        fail(TOOL, err)
    classes = restored.spec.classes
    k = min(k, len(classes))
    batch, failed = [], []
    for path in files:
        try:
            batch.append(images.prepare(path, restored.spec, invert))
        except images.ImageError as err:
            failed.append(
                {
                    "file": str(path),
                    "inverted": None,
                    "invert_reason": None,
                    "top": [],
                    "error": str(err),
                }
            )
    for problem in problems + [r["error"] for r in failed]:
        print(f"{TOOL}: error: {problem}", file=sys.stderr)
    rows: list[dict] = []
    if batch:
        inputs, probs = predict(restored, batch)
        rows = records(batch, probs, classes, k)
        print("\n".join(map(line, rows)))
        try:
            write_outputs(rows, failed, inputs, restored, out_dir, k)
        except OSError as err:
            fail(TOOL, err)
    if problems or failed:
        given = len(files) + len(problems)
        fail(TOOL, f"{len(problems) + len(failed)} of {given} inputs could not be predicted")
    return rows


def write_outputs(rows, failed, inputs, restored: Restored, out_dir: Path, k: int) -> None:
    """predictions.csv, .json and .png; a folder or file that cannot be written is one
    WriteError naming the folder."""
    every = rows + failed
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "predictions.csv", table(every, k))
        write_json(
            out_dir / "predictions.json", {"checkpoint": str(restored.path), "images": every}
        )
        sheet(rows, inputs, restored, out_dir / "predictions.png")
    except OSError as err:  # write_atomic's WriteError names the file, so say only why
        cause = err.__cause__ if isinstance(err, WriteError) and err.__cause__ else err
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else cause
        raise WriteError(f"cannot write predictions to {out_dir}: {reason}") from err
    drawn = (
        "" if len(rows) <= SHEET_LIMIT else f" (it draws the first {SHEET_LIMIT} of {len(rows)})"
    )
    print(f"predictions.csv, predictions.json, predictions.png{drawn}: {out_dir}")


if __name__ == "__main__":
    main()
