"""Draw a digit the way a hand on paper would, for the README's cnnbench.predict example: a
dark, uneven pen stroke on an off-white sheet with a shadowed corner, 300x300 pixels, saved as
a JPEG. It is drawn with Pillow's lines, not photographed: a stand-in for a phone photo of a
digit, made the same way on every machine.

    python tools/draw_digit.py docs/img/hand_drawn_7.jpg 7
    python tools/draw_digit.py docs/img/hand_drawn_2.jpg 2
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# pen strokes of each digit, as many people write them, on a 300x300 sheet
STROKES = {
    "7": [
        [(85, 80), (150, 74), (215, 70)],
        [(215, 70), (180, 150), (140, 240)],
        [(120, 160), (160, 156), (200, 152)],
    ],  # with a crossbar
    "2": [
        [(90, 110), (110, 75), (150, 62), (195, 80), (205, 120), (180, 165), (135, 205), (95, 240)],
        [(95, 240), (150, 236), (215, 232)],
    ],
}


def draw(path: str, digit: str = "7", seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    side = 300
    # paper: off-white, a little darker towards one corner, with grain
    yy, xx = np.mgrid[0:side, 0:side]
    paper = 235 - 25 * (xx + yy) / (2 * side) + rng.normal(0, 3, (side, side))
    image = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGB")
    pen = ImageDraw.Draw(image)
    for stroke in STROKES[digit]:
        points = [(x + rng.normal(0, 2), y + rng.normal(0, 2)) for x, y in stroke]
        pen.line(points, fill=(40, 40, 55), width=int(rng.integers(16, 20)), joint="curve")
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    image.save(path, quality=90)


if __name__ == "__main__":
    draw(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "7")
