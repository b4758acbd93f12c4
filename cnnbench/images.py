"""Images of a user's own (PNG, JPEG, BMP, GIF, TIFF, WebP, ...) as a dataset's images: found
from files, folders and globs, decoded with Pillow, turned to the dataset's channels, padded to
a square, resized to the dataset's own side and, for the datasets of light objects on a dark
ground, inverted when they are the other way round. No torch here: the result is uint8 numpy,
which the tools normalise and resize as the training batches were (eval.input_transform).
"""

from __future__ import annotations

import glob
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnbench.datasets import Spec

# the suffixes a folder is searched for; a file named on the command line is tried whatever
# its suffix
SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".pgm",
    ".ppm",
    ".pbm",
    ".pnm",
)
# a 48-megapixel phone photo decodes in about a second into 150 MB; beyond this an image is a
# mistake (or a decompression bomb), not a digit
MAX_PIXELS = 50_000_000
INVERT_CHOICES = ("auto", "true", "false")


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and says why."""


@dataclass
class Prepared:
    path: Path
    pixels: np.ndarray  # uint8 (C, side, side) at the dataset's own side, after any inversion
    inverted: bool
    invert_reason: str | None  # "auto" (its border was lighter), "forced" (invert=true), None
    border: float  # mean brightness of the border and of the centre, 0..255, before inversion
    centre: float


def expand(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """The image files named by files, folders (their images, not recursing) and globs, in
    order and each once; and a problem line for each pattern that names none."""
    files: list[Path] = []
    problems = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
            if not found:
                problems.append(f"{pattern}: the folder holds no images ({', '.join(SUFFIXES)})")
        elif path.exists() or not glob.has_magic(pattern):
            found = [path]  # a missing file is reported when it is read
        else:
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            found = [p for p in found if p.is_file()]
            if not found:
                problems.append(f"{pattern}: no file matches")
        files += [p for p in found if p not in files]
    return files, problems


def read(path: Path, channels: int) -> Image.Image:
    """The image as Pillow decodes it, upright (EXIF orientation), 16-bit gray scaled to 8 bits,
    transparency laid over a ground that contrasts with its opaque pixels, in grayscale
    (1 channel) or RGB (3)."""
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: the file is empty")
        # Pillow warns (two lines on stderr) between its two limits; ours, lower, says it once
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = decode(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{path}: not an image Pillow can read (an unsupported format, or not an image)"
        ) from None
    except Image.DecompressionBombError as err:  # Pillow's own limit, past twice ours
        raise ImageError(
            f"{path}: too large to decode sensibly ({err}); the limit is {MAX_PIXELS:,} pixels, "
            "scale it down first"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ImageError):
            raise
        raise ImageError(f"{path}: corrupt, truncated or unreadable ({err})") from None
    image = eight_bit(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = flatten(image.convert("RGBA"))
    return image.convert("L" if channels == 1 else "RGB")


def decode(path: Path) -> Image.Image:
    with Image.open(path) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageError(
                f"{path}: too large to decode sensibly ({width}x{height} pixels); the "
                f"limit is {MAX_PIXELS:,} pixels, scale it down first"
            )
        image.load()
        return ImageOps.exif_transpose(image)


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit gray (I;16, I, F) scaled to 0..255 in mode L, which convert("L")
    would clip instead: I;16 by its range (65535 -> 255), I and F by the image's own maximum
    when it passes 255."""
    if image.mode.startswith("I;16"):
        scaled = np.asarray(image, dtype=np.float64) / 257
    elif image.mode in ("I", "F"):
        scaled = np.asarray(image, dtype=np.float64)
        high = scaled.max(initial=0)
        scaled = scaled * (255 / high) if high > 255 else scaled
    else:
        return image
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def flatten(rgba: Image.Image) -> Image.Image:
    """Transparency laid over black when the opaque pixels are mostly light (white strokes on
    a transparent ground), else over white paper, so that the strokes stay visible."""
    pixels = np.asarray(rgba, dtype=np.float64)
    alpha = pixels[..., 3] / 255
    light = pixels[..., :3].mean(axis=-1)  # of the colours, whatever their opacity
    mostly_light = alpha.sum() > 0 and (light * alpha).sum() / alpha.sum() > 127.5
    ground = (0, 0, 0, 255) if mostly_light else (255, 255, 255, 255)
    return Image.alpha_composite(Image.new("RGBA", rgba.size, ground), rgba)


def square(image: Image.Image) -> Image.Image:
    """Padded to a square with the colour of its border, so that resizing keeps its shape."""
    width, height = image.size
    if width == height:
        return image
    array = np.asarray(image)
    ring = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    fill = tuple(int(v) for v in np.median(ring, axis=0).reshape(-1))
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill[0] if image.mode == "L" else fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def border_and_centre(pixels: np.ndarray) -> tuple[float, float]:
    """Mean brightness of the outer eighth of each side and of the central half. (C, s, s)"""
    gray = pixels.astype(np.float64).mean(axis=0)
    side = gray.shape[0]
    ring, quarter = max(1, side // 8), side // 4
    inner = np.ones_like(gray, dtype=bool)
    inner[ring:-ring, ring:-ring] = False
    centre = gray[quarter : side - quarter, quarter : side - quarter]
    return float(gray[inner].mean()), float(centre.mean())


def prepare(path: Path, spec: Spec, invert: str = "auto") -> Prepared:
    """One image as the dataset's images are stored: uint8 (C, side, side). `invert`: auto
    inverts an image whose border is lighter than its centre, for the datasets of light
    objects on a dark ground; true and false decide for every image."""
    image = square(read(path, spec.channels))
    image = image.resize((spec.size, spec.size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.uint8)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    border, centre = border_and_centre(pixels)
    reason = "forced" if invert == "true" else None
    if invert == "auto" and spec.dark_ground and border > centre:
        reason = "auto"
    if reason:
        pixels = 255 - pixels
    return Prepared(path, np.ascontiguousarray(pixels), reason is not None, reason, border, centre)
