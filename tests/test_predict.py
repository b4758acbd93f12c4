"""python -m cnnbench.predict on image files the test writes, with a model trained on generated
MNIST-like data (light class patterns on a dark ground)."""

import csv
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from cnnbench.datasets import SPECS
from cnnbench.images import ImageError, expand, prepare
from tests.conftest import run_cli, write_idx


def patterns(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten light patterns in the middle of a black 28x28 ground, with noise."""
    prototypes = np.random.default_rng(7).integers(60, 256, (10, 28, 28))
    prototypes[:, :6], prototypes[:, -6:], prototypes[:, :, :6], prototypes[:, :, -6:] = 0, 0, 0, 0
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = np.clip(prototypes[labels] + rng.normal(0, 25, (n, 28, 28)), 0, 255)
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cnnbench.config import compose
    from cnnbench.train import train
    from tests.conftest import small_overrides

    tmp = tmp_path_factory.mktemp("predict")
    for split, n, seed in (("train", 1000, 0), ("t10k", 200, 1)):
        images, labels = patterns(n, seed)
        write_idx(tmp / "data" / "mnist" / f"{split}-images-idx3-ubyte", images)
        write_idx(tmp / "data" / "mnist" / f"{split}-labels-idx1-ubyte", labels)
    cfg = compose(
        [
            *small_overrides(tmp / "data", tmp / "cache"),
            "dataset=mnist",
            "model=mlp",
            "trainer.epochs=3",
        ]
    )
    results = train(cfg, tmp / "run")
    assert results["test_acc"] > 0.95
    return tmp


def write_inputs(folder):
    """Class 3 light on dark (PNG), class 5 dark on light (JPEG), class 8 in colour at twice
    the size (RGB PNG, light on dark), an empty file and a corrupt PNG."""
    folder.mkdir()
    images, labels = patterns(200, 2)
    pick = {c: images[list(labels).index(c)] for c in (3, 5, 8)}
    Image.fromarray(pick[3]).save(folder / "a_light_on_dark.png")
    Image.fromarray(255 - pick[5]).save(folder / "b_dark_on_light.jpg", quality=95)
    big = np.asarray(Image.fromarray(pick[8]).resize((56, 56), Image.Resampling.BILINEAR))
    tinted = np.stack([big, big * 0.9, big * 0.7], axis=-1).astype(np.uint8)
    Image.fromarray(tinted, "RGB").save(folder / "c_rgb.png")
    (folder / "d_empty.png").write_bytes(b"")
    good = (folder / "a_light_on_dark.png").read_bytes()
    (folder / "e_corrupt.png").write_bytes(good[: len(good) // 2])
    return folder


def test_predict_inverts_dark_on_light_predicts_the_rest_and_names_the_bad_files(trained, tmp_path):
    folder = write_inputs(tmp_path / "in")
    ran = run_cli(
        f"ckpt={trained / 'run'}",
        f"images={folder}",
        "topk=2",
        f"out={tmp_path / 'out'}",
        cwd=tmp_path,
        module="cnnbench.predict",
    )
    assert ran.returncode == 2
    errors = ran.stderr.splitlines()
    assert errors[0] == f"cnnbench.predict: error: {folder / 'd_empty.png'}: the file is empty"
    assert errors[1].startswith(f"cnnbench.predict: error: {folder / 'e_corrupt.png'}: corrupt")
    assert errors[2] == "cnnbench.predict: error: 2 of 5 inputs could not be predicted"
    assert len(errors) == 3
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    assert {
        n: (r["class_1"], r["inverted"], r["invert_reason"])
        for n, r in rows.items()
        if not r["error"]
    } == {
        "a_light_on_dark.png": ("3", "False", ""),
        "b_dark_on_light.jpg": ("5", "True", "auto"),
        "c_rgb.png": ("8", "False", ""),
    }
    assert float(rows["a_light_on_dark.png"]["prob_1"]) > 0.5
    assert "the file is empty" in rows["d_empty.png"]["error"]
    assert "inverted: its border, 2" in ran.stdout  # the JPEG's border, 255 give or take
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [len(r["top"]) for r in saved["images"]] == [2, 2, 2, 0, 0]
    assert Image.open(tmp_path / "out" / "predictions.png").size[0] > 600


def test_the_same_pixels_as_a_png_give_the_probabilities_of_the_array(trained, tmp_path):
    """What predict feeds the model is what the test set's own images would be."""
    from cnnbench.eval import input_transform, load_model
    from cnnbench.predict import predict

    images, labels = patterns(10, 3)
    Image.fromarray(images[0]).save(tmp_path / "x.png")
    restored = load_model(trained / "run", [])
    prepared = prepare(tmp_path / "x.png", SPECS["mnist"], "false")
    assert (prepared.pixels[0] == images[0]).all()
    _, probs = predict(restored, [prepared])
    import torch

    expected = restored.model(input_transform(restored)(torch.from_numpy(images[:1, None])))
    assert torch.allclose(probs, torch.softmax(expected, 1), atol=1e-6)
    assert probs.argmax().item() == labels[0]


def test_invert_overrides_padding_and_expand(tmp_path):
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "flat.bmp")
    assert prepare(tmp_path / "flat.bmp", SPECS["mnist"], "true").inverted
    assert not prepare(tmp_path / "flat.bmp", SPECS["mnist"], "false").inverted
    wide = np.full((28, 56), 10, np.uint8)
    wide[:, 14:42] = 250  # a light square on a dark ground, padded with the ground's colour
    Image.fromarray(wide).save(tmp_path / "wide.gif")
    pixels = prepare(tmp_path / "wide.gif", SPECS["mnist"]).pixels[0]
    assert pixels[:6].max() <= 12 and pixels[10:18, 10:18].min() >= 240
    (tmp_path / "wide.gif").unlink()
    files, problems = expand([str(tmp_path / "*.bmp"), str(tmp_path / "*.gif"), str(tmp_path)])
    assert files == [tmp_path / "flat.bmp"]
    assert problems == [f"{tmp_path / '*.gif'}: no file matches"]


def test_forced_inversion_says_invert_true_and_records_it(trained, tmp_path):
    images, _ = patterns(10, 4)
    Image.fromarray(255 - images[0]).save(tmp_path / "dark_on_light.png")
    ran = run_cli(
        f"ckpt={trained / 'run'}",
        f"images={tmp_path / 'dark_on_light.png'}",
        "invert=true",
        f"out={tmp_path / 'out'}",
        cwd=tmp_path,
        module="cnnbench.predict",
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[0].endswith(" (inverted: invert=true)")
    assert "lighter" not in ran.stdout  # its border is darker: inverted only because it was told
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    assert (saved[0]["inverted"], saved[0]["invert_reason"]) == (True, "forced")
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        assert next(csv.DictReader(f))["invert_reason"] == "forced"


def test_predict_batches_by_eval_batch_size_and_keeps_the_sheet_inputs_only(
    trained, tmp_path, monkeypatch
):
    import torch

    from cnnbench import predict
    from cnnbench.eval import load_model

    images, _ = patterns(5, 5)
    batch = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        batch.append(prepare(tmp_path / f"{i}.png", SPECS["mnist"], "false"))
    restored = load_model(trained / "run", ["trainer.eval_batch_size=2"])
    sizes = []
    restored.model.register_forward_hook(lambda _m, inputs, _out: sizes.append(len(inputs[0])))
    monkeypatch.setattr(predict, "SHEET_LIMIT", 3)
    inputs, probs = predict.predict(restored, batch)
    assert sizes == [2, 2, 1] and probs.shape == (5, 10) and inputs.shape[0] == 3
    sizes.clear()
    _, whole = predict.predict(load_model(trained / "run", []), batch)
    assert torch.allclose(probs, whole, atol=1e-6)


def test_an_unwritable_out_names_the_folder_and_why(trained, tmp_path):
    images, _ = patterns(1, 6)
    Image.fromarray(images[0]).save(tmp_path / "x.png")
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "predict"
    ran = run_cli(
        f"ckpt={trained / 'run'}",
        f"images={tmp_path / 'x.png'}",
        f"out={out}",
        cwd=tmp_path,
        module="cnnbench.predict",
    )
    assert ran.returncode == 2
    assert (
        ran.stderr
        == f"cnnbench.predict: error: cannot write predictions to {out}: Not a directory\n"
    )


def test_pillow_does_not_warn_below_its_limit_where_ours_refuses(tmp_path):
    (tmp_path / "big.png").write_bytes(huge_png_header(10_000, 10_000))  # between Pillow's two
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would be two more lines
        with pytest.raises(ImageError, match="too large to decode sensibly \\(10000x10000"):
            prepare(tmp_path / "big.png", SPECS["mnist"])


def test_16_bit_gray_is_scaled_not_clipped(tmp_path):
    stripes = np.zeros((28, 28), np.uint16)
    stripes[:, 10:19], stripes[:, 19:] = 25700, 65535  # 100 and 255 in 8 bits
    Image.fromarray(stripes).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    pixels = prepare(tmp_path / "sixteen.png", SPECS["mnist"], "false").pixels[0]
    assert (pixels[:, :10] == 0).all() and (pixels[:, 12:17] == 100).all()
    assert (pixels[:, 21:] == 255).all()
    Image.fromarray((stripes // 65).astype(np.int32)).save(tmp_path / "thousand.tif")  # mode I
    pixels = prepare(tmp_path / "thousand.tif", SPECS["mnist"], "false").pixels[0]
    assert pixels[0, 0] == 0 and pixels[0, 14] == round(395 * 255 / 1008) and pixels[0, 25] == 255


def test_strokes_on_a_transparent_ground_stay_visible(tmp_path):
    for name, stroke in (("white", 255), ("black", 0)):
        drawing = np.zeros((28, 28, 4), np.uint8)  # transparent black
        drawing[8:20, 8:20] = (stroke, stroke, stroke, 255)
        Image.fromarray(drawing, "RGBA").save(tmp_path / f"{name}.png")
    white = prepare(tmp_path / "white.png", SPECS["mnist"])  # over black: already light on dark
    assert not white.inverted and white.pixels[0, 10:18, 10:18].min() == 255
    assert white.pixels[0, :6].max() == 0
    black = prepare(tmp_path / "black.png", SPECS["mnist"])  # over white paper, then inverted
    assert black.invert_reason == "auto" and black.pixels[0, 10:18, 10:18].min() == 255
    assert black.pixels[0, :6].max() == 0


@pytest.mark.parametrize(
    "args,words",
    [
        (["images=x.png"], "ckpt=<path> is required"),
        (["ckpt={run}"], "images=<...> required"),
        (["ckpt={run}", "images"], "images needs a value: images=digit.png"),
        (["ckpt={run}", "images=x.png", "invert=maybe"], "invert=maybe is not allowed"),
        (["ckpt={run}", "images=x.png", "topk=0"], "topk=0 is not allowed"),
        (["ckpt={run}", "images=x.png", "model.hidden=3"], "cannot use model.hidden"),
        (["ckpt={tmp}/none", "images=x.png"], "no checkpoint at"),
        (["ckpt={run}", "images={tmp}/missing.png"], "missing.png: no such file"),
        (["ckpt={run}", "images={tmp}/notes.txt"], "notes.txt: not an image Pillow can read"),
        (["ckpt={run}", "images={tmp}/huge.png"], "huge.png: too large to decode sensibly"),
        (
            ["ckpt={run}", "images={tmp}/big.png"],
            "big.png: too large to decode sensibly (8000x8000",
        ),
    ],
)
def test_bad_input_gets_one_message_and_exit_code_2(trained, tmp_path, args, words):
    (tmp_path / "notes.txt").write_text("not an image")
    huge = tmp_path / "huge.png"
    huge.write_bytes(huge_png_header(20_000, 20_000))  # past Pillow's own limit
    (tmp_path / "big.png").write_bytes(huge_png_header(8000, 8000))  # past cnnbench's
    argv = [a.format(run=trained / "run", tmp=tmp_path) for a in args]
    before = sorted((trained / "run").iterdir())
    ran = run_cli(*argv, cwd=tmp_path, module="cnnbench.predict")
    assert ran.returncode == 2
    assert ran.stderr.startswith("cnnbench.predict: error: ") and words in ran.stderr
    assert sorted((trained / "run").iterdir()) == before  # nothing written, nothing lost


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, and whose pixels are missing."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
