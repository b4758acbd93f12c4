"""python -m cnnbench.explain on a LeNet trained briefly on generated data."""

import json

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench import runs
from cnnbench.explain import MAX_CHANNELS, MAX_IMAGES, TILE
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_root):
    from cnnbench.config import compose
    from cnnbench.train import train
    from tests.conftest import small_overrides

    out = tmp_path_factory.mktemp("explain")
    cfg = compose(
        [
            *small_overrides(data_root, out / "cache"),
            "model=lenet",
            "trainer.epochs=1",
            "trainer.limit_train_batches=3",
        ]
    )
    train(cfg, out / "run")
    return out / "run"


def grid_size(rows: int, columns: int, side: int) -> tuple[int, int]:
    """(width, height) of a make_grid of rows x columns tiles of side pixels scaled up by a
    whole factor, 2 pixels apart."""
    tile = side * max(1, TILE // side)
    return columns * (tile + 2) + 2, rows * (tile + 2) + 2


def test_explain_draws_feature_maps_filters_and_heatmaps_of_the_most_confused_pair(run_dir):
    ran = run_cli(f"ckpt={run_dir}", "n=2", cwd=run_dir, module="cnnbench.explain")
    assert ran.returncode == 0, ran.stderr
    # the pair the run's own confusion_matrix.csv (written by training) mixes up most
    a, b, errors = runs.confused_pairs(*runs.read_confusion(run_dir / runs.CONFUSION_FILE), k=1)[0]
    assert ran.stdout.startswith(f"the most confused classes: {a} and {b} ({errors} test ")
    out = run_dir / "explain"
    summary = json.loads((out / "explain.json").read_text())
    images = summary["images"]
    assert len(images) == 5 and images[-1]["image"] == "noise"  # 2 of each class, and noise
    assert [i["true"] for i in images[:4]] == [a, a, b, b]
    # LeNet's stages that are still images: conv, sigmoid, pool, conv, sigmoid, pool
    stages = summary["stages"]
    assert [(s["module"], s["shape"]) for s in stages] == [
        ("Conv2d", [6, 24, 24]),
        ("Sigmoid", [6, 24, 24]),
        ("MaxPool2d", [6, 12, 12]),
        ("Conv2d", [16, 8, 8]),
        ("Sigmoid", [16, 8, 8]),
        ("MaxPool2d", [16, 4, 4]),
    ]
    for s in stages:  # a row per image, a column per channel
        columns = min(s["shape"][0], MAX_CHANNELS)
        assert Image.open(out / s["file"]).size == grid_size(5, columns, s["shape"][2]), s
    assert summary["filters"] == [6, 1, 5, 5]
    assert Image.open(out / "filters.png").size == grid_size(1, 6, 5)
    assert Image.open(out / "gradcam.png").size == grid_size(5, 2, 28)  # image, heatmap
    assert summary["gradcam"] == {"library": "torchcam", "method": "GradCAM", "layer": "5"}
    assert Image.open(out / "overview.png").size[0] > 800
    tags = EventAccumulator(str(out)).Reload().Tags()["images"]
    assert {
        "explain/filters",
        "explain/gradcam",
        "explain/overview",
        "explain/features_0_Conv2d",
    } <= set(tags)


def test_explain_takes_classes_indices_and_files(run_dir, tmp_path):
    Image.new("L", (40, 40), 255).save(tmp_path / "white.png")
    ran = run_cli(
        f"ckpt={run_dir}",
        "classes=Shirt,T-shirt/top",
        "n=1",
        "index=3",
        f"images={tmp_path / 'white.png'}",
        f"out={tmp_path / 'x'}",
        cwd=tmp_path,
        module="cnnbench.explain",
    )
    assert ran.returncode == 0, ran.stderr
    images = json.loads((tmp_path / "x" / "explain.json").read_text())["images"]
    assert images[0]["image"] == "white.png" and images[0]["true"] is None
    assert images[1]["image"].startswith("test #3 ") and images[-1]["image"] == "noise"
    assert [i["true"] for i in images[2:4]] == ["Shirt", "T-shirt/top"]


def test_explain_looks_at_no_more_than_max_images(run_dir, tmp_path):
    wanted = MAX_IMAGES + 4
    ran = run_cli(
        f"ckpt={run_dir}",
        f"index={','.join(map(str, range(wanted)))}",
        f"out={tmp_path / 'x'}",
        cwd=tmp_path,
        module="cnnbench.explain",
    )
    assert ran.returncode == 0, ran.stderr
    assert f"looking at the first {MAX_IMAGES} of {wanted} images" in ran.stdout
    images = json.loads((tmp_path / "x" / "explain.json").read_text())["images"]
    assert len(images) == MAX_IMAGES + 1 and images[-1]["image"] == "noise"
    assert images[MAX_IMAGES - 1]["image"].startswith(f"test #{MAX_IMAGES - 1} ")


@pytest.mark.parametrize(
    "args,words",
    [
        (["classes=Shirt,Sweater"], "classes=Shirt,Sweater: no class Sweater; the classes are"),
        (["index=10000"], "index=10000: use test indices in 0..249"),
        (["n=0"], "n=0 is not allowed"),
        (["images={tmp}/none.png"], "none.png: no such file"),
        (["layer=3"], "cannot use layer"),
    ],
)
def test_explain_refuses_bad_input_with_one_message(run_dir, tmp_path, args, words):
    ran = run_cli(
        f"ckpt={run_dir}",
        f"out={tmp_path / 'x'}",
        *[a.format(tmp=tmp_path) for a in args],
        cwd=tmp_path,
        module="cnnbench.explain",
    )
    assert ran.returncode == 2
    assert ran.stderr.startswith("cnnbench.explain: error: ") and words in ran.stderr
    assert not (tmp_path / "x").exists()
