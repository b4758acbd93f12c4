"""python -m cnnbench.summary: the layer-by-layer inspector."""

import re

import pytest

from cnnbench.summary import main
from tests.test_models import MODELS, build


@pytest.mark.parametrize("name", MODELS)
def test_every_model_prints_with_its_totals(capsys, name):
    main([f"model={name}"])
    out = capsys.readouterr().out
    model, size = build(name, dataset="fashion_mnist")
    assert f"input 1x{size}x{size}" in out
    params = int(re.search(r"^parameters +([\d,]+)", out, re.M)[1].replace(",", ""))
    assert params == sum(p.numel() for p in model.parameters())
    assert re.search(r"^forward FLOPs/image +\S+", out, re.M)
    assert re.search(r"^activations/image +[\d,]+ values", out, re.M)


def test_rows_are_the_textbook_listing_and_depth_opens_blocks(capsys):
    main(["model=alexnet", "dataset=fashion_mnist"])
    out = capsys.readouterr().out
    assert "resized from 28x28" in out
    assert re.search(r"^0 +Conv2d +96 x 54 x 54 +11,712 ", out, re.M)
    assert re.search(r"^13 +Flatten +6400 ", out, re.M)
    main(["model=resnet"])
    shallow = capsys.readouterr().out
    main(["model=resnet", "--depth", "2"])
    deep = capsys.readouterr().out
    assert "stage1.0  Residual" in deep and "stage1.0" not in shallow
    assert re.search(r"^stage4 +Sequential +512 x 1 x 1 ", shallow, re.M)


@pytest.mark.parametrize(
    "args,words",
    [
        (["model=alexnet", "dataset.resize=28"], "AlexNet takes images of at least 67x67"),
        (["model=nope"], "model=nope: no such option"),
        (["optimizer.lr=-1"], "optimizer.lr=-1.0 is not allowed"),
    ],
)
def test_bad_input_is_one_message_and_exit_2(capsys, args, words):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnbench.summary: error: ") and words in err


def test_the_readme_zoo_table_is_what_the_inspector_measures():
    """Every row of README.md's model table: input side, min_size, parameters and FLOPs."""
    from cnnbench.config import image_size
    from cnnbench.summary import human, summarize
    from tests.conftest import REPO
    from tests.test_models import config

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Models") :].split("\n\n")[1]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    documented = set()
    for cells in rows:
        names = re.findall(r"`(\w+)`", cells[0])
        size, min_size, params, flops = cells[3:7]
        for name in names:
            model, side = build(name, dataset="fashion_mnist")
            s = summarize(model, (1, side, side))
            assert int(size) == image_size(config(f"model={name}")), name
            assert int(min_size) == config(f"model={name}").model.min_size, name
            assert params == f"{s.params:,}", name
            assert flops.rstrip(" |") == human(s.flops), name
            documented.add(name)
    assert documented == set(MODELS)
