"""Look inside a trained network: its feature maps, its first layer's filters, Grad-CAM heatmaps
and what it makes of pure noise.

    python -m cnnbench.explain ckpt=outputs/2026-11-22/10-00-00
    python -m cnnbench.explain ckpt=outputs/.../best.pt classes=Shirt,T-shirt/top n=2
    python -m cnnbench.explain ckpt=outputs/... images=my_shoe.jpg index=0,17

The images: your own files (images=, prepared as cnnbench.predict prepares them), test images of
the named classes (classes=, the first n of each) or at test indices (index=); by default the
first n test images of each of the two classes the run's confusion matrix mixes up most; at
most MAX_IMAGES (16) of them. An image of uniform noise is always added. Writes into
<run dir>/explain/, or out=<dir>: features_<stage>.png (a grid per top-level stage of the
model: a row per image, a column per channel), filters.png (the first convolution's kernels),
gradcam.png (each image and its Grad-CAM heatmap for the predicted class, by torchcam),
overview.png (all of it, labelled) and explain.json; the same images go to TensorBoard's
Images tab (tensorboard --logdir <out>).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torchvision.utils import make_grid

from cnnbench import data, images, runs, toolargs
from cnnbench.atomic import write_json
from cnnbench.errors import USER_ERRORS, ConfigError, fail
from cnnbench.eval import Restored, evaluate, input_transform, load_model

TOOL = "cnnbench.explain"
MAX_CHANNELS = 16  # channels drawn per stage; explain.json says how many a stage has
TILE = 56  # pixels: a feature map is scaled up by a whole factor to about this side
# images looked at (the noise besides): each is a row of every grid, and of overview.png
MAX_IMAGES = 16

USAGE = """usage: python -m cnnbench.explain ckpt=<checkpoint or run dir>
            [images=<file, folder or glob> ...] [classes=<name>,<name>] [index=<i>,<j>]
            [n=4] [invert=auto|true|false] [out=<dir>] [dataset.root=...] [trainer.device=...]

Draws the feature maps after every top-level stage of the model, the first layer's filters
and Grad-CAM heatmaps, for your images, test images of the named classes (the first n of each)
or at the given test indices; by default for the first n test images of the two classes the
confusion matrix mixes up most; the first 16 of them. An image of pure noise is always added.
Writes PNGs and TensorBoard images into <run dir>/explain/, or out=<dir>."""


@dataclass
class Picked:
    pixels: torch.Tensor  # uint8 (N, C, side, side) at the dataset's own side
    labels: list[str]  # what each image is: a file name, "test #12 Shirt", "noise"
    truth: list[int | None]  # the true class of a test image


# ---------------------------------------------------------------------------- choosing


def class_indices(names: str, classes: tuple[str, ...]) -> list[int]:
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in classes]
    if unknown or not wanted:
        raise ConfigError(
            f"classes={names}: no class {', '.join(unknown) or '(none given)'}; the classes are "
            f"{', '.join(classes)}"
        )
    return [classes.index(n) for n in wanted]


def test_indices(text: str, count: int) -> list[int]:
    try:
        indices = [int(i) for i in text.split(",")]
    except ValueError:
        indices = [-1]
    if any(not 0 <= i < count for i in indices):
        raise ConfigError(f"index={text}: use test indices in 0..{count - 1}, e.g. index=0,1")
    return indices


def most_confused(restored: Restored, test: data.Split) -> tuple[str, str, int]:
    """The pair of classes the run's test confusion matrix mixes up most: from the run's
    confusion_matrix.csv (written at the end of training), else evaluated now."""
    saved = runs.read_confusion(restored.path.parent / runs.CONFUSION_FILE)
    if saved is None:
        from cnnbench.build import device_loader

        cfg = OmegaConf.merge(restored.cfg, {"trainer": {"channels_last": False}})
        loader = device_loader(cfg, test, restored.device)
        confusion = evaluate(restored.model, loader, len(restored.spec.classes)).confusion
        saved = (list(restored.spec.classes), confusion.tolist())
    pairs = runs.confused_pairs(*saved, k=1)
    if not pairs:
        raise ConfigError("the model makes no mistakes on the test split; name classes= instead")
    return pairs[0]


def pick(restored: Restored, args: toolargs.ToolArgs, n: int, invert: str) -> Picked:
    """The images to look at, then one of uniform noise."""
    spec, chosen = restored.spec, Picked(torch.zeros(0, dtype=torch.uint8), [], [])
    arrays = []
    files, problems = images.expand(args.lists["images"])
    if problems:
        raise ConfigError("; ".join(problems))
    for path in files[:MAX_IMAGES]:  # the rest would be dropped below
        arrays.append(images.prepare(path, spec, invert).pixels)  # ImageError: one line
        chosen.labels.append(path.name)
        chosen.truth.append(None)
    indices = []
    wants_test = "classes" in args.options or "index" in args.options or not files
    if wants_test:
        ds = restored.cfg.dataset
        test = data.load(ds.name, "test", ds.root, ds.download, ds.cache_dir)
        if "index" in args.options:
            indices += test_indices(args.options["index"], len(test[1]))
        names = args.options.get("classes")
        if names is None and not indices and not files:
            a, b, errors = most_confused(restored, test)
            print(
                f"the most confused classes: {a} and {b} ({errors} test images mistaken "
                "for the other)"
            )
            names = f"{a},{b}"
        for c in class_indices(names, spec.classes) if names else []:
            indices += (test[1] == c).nonzero().flatten()[:n].tolist()
        for i in indices:
            arrays.append(test[0][i].numpy())
            chosen.labels.append(f"test #{i} {spec.classes[test[1][i]]}")
            chosen.truth.append(int(test[1][i]))
    given = len(files) + len(indices)
    if given > MAX_IMAGES:
        print(
            f"looking at the first {MAX_IMAGES} of {given} images (explain draws at most "
            f"{MAX_IMAGES})"
        )
        del arrays[MAX_IMAGES:], chosen.labels[MAX_IMAGES:], chosen.truth[MAX_IMAGES:]
    noise = np.random.default_rng(0).integers(0, 256, (spec.channels, spec.size, spec.size))
    arrays.append(noise.astype(np.uint8))
    chosen.labels.append("noise")
    chosen.truth.append(None)
    chosen.pixels = torch.from_numpy(np.stack(arrays))
    return chosen


# ---------------------------------------------------------------------------- looking


def stage_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """The output of each top-level block of the model that is still an image (N, C, H, W
    with H x W > 1), in the order they run."""
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []

    def hook(name: str):
        def keep(module: nn.Module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output[0, 0].numel() > 1:
                seen.append((name, module, output.detach()))

        return keep

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_children()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ConfigError(
            f"{type(model).__name__} has no top-level block whose output is an image (it has "
            "no convolutions to look at)"
        )
    return seen


def cam_layer(stages: list[tuple[str, nn.Module, torch.Tensor]]) -> str:
    """Grad-CAM's layer: the last stage whose maps are at least 4x4 (coarser ones locate
    nothing), else the last stage."""
    big = [name for name, _, out in stages if min(out.shape[-2:]) >= 4]
    return (big or [stages[-1][0]])[-1]


def gradcam(model: nn.Module, layer: str, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] for the given class of each image, at the input's
    size, with torchcam."""
    from torchcam.methods import GradCAM

    with torch.enable_grad(), GradCAM(model, target_layer=layer) as extractor:
        scores = model(x)
        cams = extractor(class_idx=classes, scores=scores)[0]
    return F.interpolate(cams[:, None], size=x.shape[-2:], mode="bilinear")[:, 0].clamp(0, 1)


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


# ---------------------------------------------------------------------------- drawing


def scale_up(maps: torch.Tensor) -> torch.Tensor:
    """(..., h, w) -> nearest-neighbour larger by a whole factor, to about TILE pixels."""
    factor = max(1, TILE // maps.shape[-1])
    return maps.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def feature_grid(out: torch.Tensor) -> torch.Tensor:
    """A row per image, a column per channel (at most MAX_CHANNELS); each channel scaled to
    [0, 1] over all the images, so that the images compare."""
    maps = out[:, :MAX_CHANNELS].float().cpu()
    low = maps.amin(dim=(0, 2, 3), keepdim=True)
    high = maps.amax(dim=(0, 2, 3), keepdim=True)
    maps = (maps - low) / (high - low).clamp(min=1e-12)
    tiles = scale_up(maps).flatten(0, 1)[:, None]  # (N * C, 1, H, W)
    return make_grid(tiles, nrow=maps.shape[1], padding=2, pad_value=1.0)


def filter_grid(conv: nn.Conv2d) -> torch.Tensor:
    """The kernels, 8 a row: gray for one input channel, colour for three, else their mean;
    0 is mid-gray."""
    w = conv.weight.detach().float().cpu()
    w = w if w.shape[1] in (1, 3) else w.mean(1, keepdim=True)
    w = w / (2 * w.abs().max().clamp(min=1e-12)) + 0.5
    return make_grid(scale_up(w), nrow=min(len(w), 8), padding=2, pad_value=1.0)


def heat(cams: torch.Tensor) -> torch.Tensor:
    """(N, H, W) in [0, 1] -> (N, 3, H, W), matplotlib's jet colours."""
    from matplotlib import colormaps

    return torch.from_numpy(colormaps["jet"](cams.numpy())[..., :3]).permute(0, 3, 1, 2).float()


def cam_grid(pixels: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    """A row per image: the image, then its heatmap laid over it."""
    shown = scale_up(pixels.float() / 255)
    shown = shown.expand(-1, 3, -1, -1) if shown.shape[1] == 1 else shown
    overlay = 0.5 * shown + 0.5 * heat(scale_up(cams))
    tiles = torch.stack([shown, overlay], dim=1).flatten(0, 1)
    return make_grid(tiles, nrow=2, padding=2, pad_value=1.0)


def save_png(grid: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


def overview(picked: Picked, probs: torch.Tensor, cams: torch.Tensor, stages, restored: Restored):
    """A row per image: the image (its true class, the prediction), its Grad-CAM heatmap, and
    its feature maps after each stage (the first MAX_CHANNELS channels)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    classes, n = restored.spec.classes, len(picked.labels)
    columns = 2 + len(stages)
    fig = Figure(figsize=(1.7 * columns, 1.75 * n + 0.5), layout="constrained")
    axes = fig.subplots(n, columns, squeeze=False)
    gray = picked.pixels.float() / 255
    for i in range(n):
        p, c = probs[i].max(0)
        image = gray[i, 0] if gray.shape[1] == 1 else gray[i].permute(1, 2, 0)
        axes[i, 0].imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(f"{picked.labels[i]}\n-> {classes[c]} {p:.2f}", fontsize=7)
        axes[i, 1].imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i, 1].imshow(cams[i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axes[i, 1].set_title("Grad-CAM", fontsize=7)
        for j, (name, module, out) in enumerate(stages):
            maps = out[i : i + 1, :MAX_CHANNELS]
            side = int(np.ceil(np.sqrt(maps.shape[1])))
            grid = make_grid(grid_tiles(maps[0]), nrow=side, padding=1, pad_value=1.0)
            axes[i, 2 + j].imshow(grid[0].numpy(), cmap="viridis", vmin=0, vmax=1)
            if i == 0:
                c_, h, w = out.shape[1:]
                axes[i, 2 + j].set_title(
                    f"{name} {type(module).__name__}\n{c_}@{h}x{w}", fontsize=7
                )
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(f"{restored.title}", fontsize=8)
    return fig


def grid_tiles(maps: torch.Tensor) -> torch.Tensor:
    """One image's channels (C, H, W), each scaled to [0, 1] on its own -> (C, 1, H', W')."""
    maps = maps.float().cpu()
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return scale_up((maps - low) / (high - low).clamp(min=1e-12))[:, None]


# ---------------------------------------------------------------------------- the tool


def look(restored: Restored, picked: Picked) -> dict:
    """Everything explain draws, as tensors."""
    model = restored.model
    x = input_transform(restored)(picked.pixels)
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), 1).cpu()
    stages = stage_outputs(model, x)
    layer = cam_layer(stages)
    cams = gradcam(model, layer, x, probs.argmax(1).tolist()).cpu()
    if cams.shape[-1] != picked.pixels.shape[-1]:  # trained at another size: back to the data's
        cams = F.interpolate(cams[:, None], size=picked.pixels.shape[-2:], mode="bilinear")[:, 0]
    return {"probs": probs, "stages": stages, "layer": layer, "cams": cams}


def stage_file(name: str, module: nn.Module) -> str:
    """features_0_Conv2d, features_b2_Sequential"""
    return f"features_{name}_{type(module).__name__}"


def write(restored: Restored, picked: Picked, seen: dict, out_dir: Path) -> dict:
    """The PNGs, the TensorBoard images and explain.json; returns explain.json's content."""
    from torch.utils.tensorboard import SummaryWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    grids = {stage_file(name, m): feature_grid(out) for name, m, out in seen["stages"]}
    conv = first_conv(restored.model)
    if conv is not None:
        grids["filters"] = filter_grid(conv)
    grids["gradcam"] = cam_grid(picked.pixels, seen["cams"])
    figure = overview(picked, seen["probs"], seen["cams"], seen["stages"], restored)
    for name, grid in grids.items():
        save_png(grid, out_dir / f"{name}.png")
    figure.savefig(out_dir / "overview.png", dpi=110)
    epoch = restored.ckpt["epochs_done"]
    with SummaryWriter(log_dir=str(out_dir)) as writer:
        for name, grid in grids.items():
            writer.add_image(f"explain/{name}", grid, epoch)
        writer.add_figure("explain/overview", figure, epoch)
    classes = restored.spec.classes
    summary = {
        "checkpoint": str(restored.path),
        "images": [
            {
                "image": label,
                "true": classes[t] if t is not None else None,
                "predicted": classes[int(p.argmax())],
                "prob": round(float(p.max()), 6),
            }
            for label, t, p in zip(picked.labels, picked.truth, seen["probs"], strict=True)
        ],
        "stages": [
            {
                "file": f"{stage_file(name, m)}.png",
                "module": type(m).__name__,
                "shape": list(out.shape[1:]),
                "channels_drawn": min(out.shape[1], MAX_CHANNELS),
            }
            for name, m, out in seen["stages"]
        ],
        "filters": list(conv.weight.shape) if conv is not None else None,
        "gradcam": {"library": "torchcam", "method": "GradCAM", "layer": seen["layer"]},
    }
    write_json(out_dir / "explain.json", summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    try:
        args = toolargs.parse(
            sys.argv[1:] if argv is None else argv,
            USAGE,
            options=("ckpt", "out", "classes", "index", "n", "invert"),
            repeatable=("images",),
        )
        n = toolargs.integer(args, "n", 4)
        invert = toolargs.choice(args, "invert", images.INVERT_CHOICES, "auto")
        restored = load_model(Path(args.options["ckpt"]), args.overrides)
        picked = pick(restored, args, n, invert)
        seen = look(restored, picked)
        out = args.options.get("out")
        out_dir = Path(out) if out else restored.path.parent / "explain"
        summary = write(restored, picked, seen, out_dir)
    except (*USER_ERRORS, images.ImageError, OmegaConfBaseException) as err:
        fail(TOOL, err)
    for item in summary["images"]:  # a test image's label names its true class
        print(f"{item['image']}: {item['predicted']} {item['prob']:.3f}")
    stages = ", ".join(
        f"{s['file']} {s['shape'][0]}@{s['shape'][1]}x{s['shape'][2]}" for s in summary["stages"]
    )
    print(f"Grad-CAM at stage {seen['layer']}; feature maps: {stages}")
    print(f"features_*.png, filters.png, gradcam.png, overview.png, explain.json: {out_dir}")
    return summary


if __name__ == "__main__":
    main()
