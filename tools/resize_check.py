"""How far cnnbench's on-device resize is from torchvision's Resize of a PIL image, the path of
the textbooks (d2l's load_data_fashion_mnist), on real images.

    python tools/resize_check.py --root ../shared/data --sizes 96 224

For each size it compares, over the first --images training images, ToTensor(Resize(PIL image))
against two device paths: one bilinear interpolation of the float image (cnnbench before
resize_like_pil), and data.resize_like_pil. Differences are in 8-bit levels (1 = 1/255).
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from cnnbench import data


def pil_path(images: torch.Tensor, size: int) -> torch.Tensor:
    resize, to_tensor = transforms.Resize(size), transforms.ToTensor()
    out = [to_tensor(resize(Image.fromarray(im[0].numpy(), mode="L"))) for im in images]
    return torch.stack(out) * 255


def one_pass(images: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)


def differences(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    diff = (ours - theirs).abs()
    return {
        "max": diff.max().item(),
        "mean": diff.mean().item(),
        "pixels_off_by_more_than_half": (diff > 0.5).float().mean().item(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    p.add_argument("--images", type=int, default=500)
    args = p.parse_args()
    files = data.find(args.dataset, "train", Path(args.root), download=False)
    images = data.decode(args.dataset, files)[0][: args.images]
    print(f"{args.images} {args.dataset} training images; differences in 8-bit levels")
    print(f"{'size':>4}  {'device path':<22} {'max':>6} {'mean':>8} {'pixels off':>11}")
    for size in args.sizes:
        reference = pil_path(images, size)
        paths = {
            "one bilinear pass": one_pass(images, size),
            "resize_like_pil": data.resize_like_pil(images.float(), size),
        }
        for name, ours in paths.items():
            d = differences(ours, reference)
            print(
                f"{size:>4}  {name:<22} {d['max']:>6.2f} {d['mean']:>8.4f} "
                f"{d['pixels_off_by_more_than_half']:>10.2%}"
            )


if __name__ == "__main__":
    main()
