"""python -m cnnbench.eval on a checkpoint of a run on generated data."""

import csv

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench.data import SPECS
from cnnbench.eval import main
from cnnbench.train import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_root):
    from cnnbench.config import compose
    from tests.conftest import small_overrides

    out = tmp_path_factory.mktemp("eval")
    overrides = [
        *small_overrides(data_root, out / "cache"),
        "model=mlp",
        "trainer.epochs=1",
        "trainer.limit_train_batches=1",
    ]
    cfg = compose(overrides)
    results = train(cfg, out / "run")
    return out / "run", results


def test_eval_prints_per_class_accuracy_and_writes_the_confusion_matrix(run_dir, capsys):
    path, results = run_dir
    result = main([f"ckpt={path / 'best.pt'}"])
    assert result.acc == results["best_test_acc"]
    out = capsys.readouterr().out
    assert f"test accuracy {results['best_test_acc']:.4f}" in out
    for name in SPECS["fashion_mnist"].classes:
        assert name in out
    with open(path / "eval" / "confusion_matrix.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0][1:] == list(SPECS["fashion_mnist"].classes) and len(table) == 11
    assert sum(int(n) for row in table[1:] for n in row[1:]) == 250  # every test image
    assert (path / "eval" / "confusion_matrix.png").stat().st_size > 10_000
    # training wrote the same matrix at its end, beside results.json (one epoch: last = best)
    assert (path / "confusion_matrix.csv").read_text() == (
        path / "eval" / "confusion_matrix.csv"
    ).read_text()
    events = EventAccumulator(str(path / "eval")).Reload()
    assert "eval/misclassified" in events.Tags()["images"]
    assert "eval/confusion_matrix" in events.Tags()["images"]
    assert [e.value for e in events.Scalars("eval/acc")] == [pytest.approx(result.acc)]


def test_eval_takes_a_run_directory_dataset_overrides_and_an_out_dir(run_dir, tmp_path, capsys):
    path, _ = run_dir
    result = main(
        [
            f"ckpt={path}",
            f"out={tmp_path}",
            "trainer.limit_test_batches=1",
            "trainer.eval_batch_size=100",
        ]
    )
    assert "100 images" in capsys.readouterr().out
    with open(tmp_path / "confusion_matrix.csv", newline="") as f:
        _, *rows = csv.reader(f)
    counts = [[int(n) for n in row[1:]] for row in rows]
    assert sum(map(sum, counts)) == 100  # one batch of 100 images, each counted once
    assert result.acc == sum(counts[i][i] for i in range(len(counts))) / 100


@pytest.mark.parametrize(
    "args,words",
    [
        (["model.hidden=[3]"], "cannot use model.hidden (the model and its settings come"),
        (["dataset.rot=3"], "dataset.rot: no such setting"),
        (["dataset=cifar10"], "cannot use dataset "),
        (["dataset.name=cifar10"], "1-channel images in the checkpoint, 3 here"),
        (["dataset.resize=32"], "28x28 images in the checkpoint, 32x32 here"),
        (["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0 is not allowed"),
        ([], None),
    ],
)
def test_eval_refuses_bad_input_with_one_message(run_dir, tmp_path, capsys, args, words):
    path, _ = run_dir
    argv = [f"ckpt={path}", *args] if args else [f"ckpt={tmp_path / 'none.pt'}"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnbench.eval: error: ")
    assert (words or "no checkpoint at") in err
