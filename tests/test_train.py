import csv
import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench.config import ConfigError
from cnnbench.train import train

TAGS = {
    "train/loss",
    "train/acc",
    "test/loss",
    "test/acc",
    "lr",
    "perf/images_per_s",
    "perf/epoch_s",
    "test/best_acc",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    """One end-to-end run on generated data, shared by the tests that read its files."""
    from cnnbench.config import compose
    from tests.conftest import small_overrides

    out = tmp_path_factory.mktemp("run")
    # the MLP learns the generated prototypes within a few steps; sigmoid LeNet needs more
    overrides = [
        *small_overrides(data_root, out / "cache"),
        "model=mlp",
        "trainer.epochs=3",
        "optimizer.lr=0.01",
    ]
    cfg = compose(overrides)
    return cfg, out, train(cfg, out)


def test_loss_falls_and_model_learns(run):
    _, out, results = run
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert results["test_acc"] > 0.9  # ten well-separated prototypes; chance is 0.1


def test_metrics_csv_has_one_row_per_epoch(run):
    _, out, results = run
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["test_acc"]) == results["test_acc"]
    assert int(rows[-1]["step"]) == results["steps"] == 3 * math.ceil(600 / 64)
    assert all(float(r["images_per_s"]) > 0 for r in rows)


def test_results_json_holds_what_it_promises(run):
    _cfg, out, results = run
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for key in (
        "test_acc",
        "best_test_acc",
        "params",
        "wall_s",
        "train_images_per_s",
        "device",
        "torch_version",
        "status",
        "config",
    ):
        assert saved[key] is not None, key
    assert saved["status"] == "ok" and saved["params"] == 203_530
    assert saved["best_test_acc"] >= saved["test_acc"]
    assert saved["config"]["optimizer"]["lr"] == 0.01
    assert saved["init"] == saved["config"]["model"]["init"] == "default"


def test_the_init_is_used_and_recorded(make_cfg, tmp_path):
    cfg = make_cfg("trainer.epochs=1", "trainer.limit_train_batches=2")
    default = train(cfg, tmp_path / "default")
    xavier = train(
        make_cfg("trainer.epochs=1", "trainer.limit_train_batches=2", "model.init=xavier"),
        tmp_path / "xavier",
    )
    assert (default["init"], xavier["init"]) == ("default", "xavier")
    assert xavier["train_loss"] != default["train_loss"]


def test_tensorboard_events_hold_the_tags_and_hparams(run):
    _, out, _ = run
    events = EventAccumulator(str(out)).Reload()
    scalars = set(events.Tags()["scalars"])
    assert scalars >= TAGS, TAGS - scalars
    acc = events.Scalars("test/acc")
    assert len(acc) == 3 and acc[-1].step == run[2]["steps"]
    assert len(events.Scalars("train/loss")) == 3 * math.ceil(600 / 64) // 2
    # the hparams live in this run's own directory, not in a timestamped sub-run
    plugins = events.PluginTagToContent("hparams")
    assert {"_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(plugins)
    assert "config" in events.Tags()["tensors"] or "config/text_summary" in events.Tags()["tensors"]
    assert [p for p in out.iterdir() if p.is_dir() and p.name != "cache"] == []


def test_same_seed_same_results(make_cfg, tmp_path):
    cfg = make_cfg("trainer.epochs=2")
    first = train(cfg, tmp_path / "a")
    second = train(cfg, tmp_path / "b")
    for key in ("test_acc", "test_loss", "train_loss", "best_test_acc"):
        assert first[key] == second[key], key
    other = train(make_cfg("trainer.epochs=2", "trainer.seed=1"), tmp_path / "c")
    assert other["train_loss"] != first["train_loss"]


@pytest.mark.parametrize("model", ["softmax", "mlp"])
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_models_train_on_each_dataset(make_cfg, tmp_path, model, dataset):
    results = train(
        make_cfg(
            f"model={model}",
            f"dataset={dataset}",
            "trainer.epochs=1",
            "optimizer=sgd",
            "scheduler=cosine",
        ),
        tmp_path,
    )
    assert results["status"] == "ok" and math.isfinite(results["train_loss"])
    test_images = 50 if dataset == "cifar10" else 250  # conftest's generated splits
    correct = results["test_acc"] * test_images
    assert correct == pytest.approx(round(correct)) and 0 <= correct <= test_images


def test_resize_and_limit_batches(make_cfg, tmp_path):
    results = train(
        make_cfg("dataset.resize=32", "trainer.limit_train_batches=2", "trainer.epochs=1"), tmp_path
    )
    assert results["steps"] == 2
    assert results["params"] == 44_426 + (400 - 256) * 120  # the first fc sees 16x5x5 at 32


def test_zero_epochs_evaluates_the_untrained_model(make_cfg, tmp_path):
    results = train(make_cfg("trainer.epochs=0"), tmp_path)
    assert results["steps"] == 0 and results["epochs_done"] == 0
    correct = results["test_acc"] * 250
    assert correct == pytest.approx(round(correct))
    assert results["test_acc"] < 0.3  # untrained: near chance on 10 classes
    assert results["best_test_acc"] == results["test_acc"] and math.isfinite(results["test_loss"])


def test_too_small_input_is_a_config_error(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"LeNet takes images of at least 16x16.*resize=16"):
        train(make_cfg("dataset.resize=8"), tmp_path)


@pytest.mark.parametrize(
    "epochs,cadence,steps",
    [
        (4, 5, [5, 10, 12]),  # 3 batches an epoch: the window runs on over epoch boundaries,
        (1, 50, [3]),  # and what is left at the end is written, so short runs get a point too
    ],
)
def test_train_loss_and_lr_follow_the_cadence(make_cfg, tmp_path, epochs, cadence, steps):
    cfg = make_cfg(
        "trainer.limit_train_batches=3",
        f"trainer.epochs={epochs}",
        f"trainer.log_every_n_steps={cadence}",
    )
    train(cfg, tmp_path)
    events = EventAccumulator(str(tmp_path)).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == steps
    assert [e.step for e in events.Scalars("lr")] == steps


def test_divergence_stops_the_run_and_is_recorded(make_cfg, tmp_path):
    results = train(
        make_cfg("model=mlp", "optimizer=sgd", "optimizer.lr=1e12", "trainer.epochs=3"), tmp_path
    )
    assert results["status"] == "diverged" and results["diverged_at_step"] >= 1
    assert results["epochs_done"] < 3
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "diverged"


def test_a_crash_leaves_results_json_with_the_error(make_cfg, tmp_path, monkeypatch):
    import cnnbench.train

    def broken(*args):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(cnnbench.train, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation exploded"):
        train(make_cfg(), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "error" and "evaluation exploded" in saved["error"]
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,step")


def test_schedule_runs_over_the_real_step_count(make_cfg, tmp_path):
    results = train(make_cfg("optimizer=sgd", "scheduler=onecycle", "trainer.epochs=2"), tmp_path)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    # the lr of each epoch's last step: rising to the peak at 30 %, then annealed to ~0
    assert float(rows[0]["lr"]) > float(rows[1]["lr"]) and float(rows[1]["lr"]) < 1e-4
    assert results["status"] == "ok"


def test_an_existing_run_is_never_overwritten(make_cfg, tmp_path):
    train(make_cfg("trainer.epochs=1", "trainer.limit_train_batches=1"), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="already holds a run"):
        train(make_cfg("trainer.epochs=1"), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    "override,words",
    [
        ("model.activation=foo", "activation='foo'; choose one of relu"),
        ("model.hidden=[0]", "hidden=[0]; give layer widths >= 1"),
        ("+model.depth=3", "unexpected keyword argument 'depth'"),
    ],
)
def test_model_argument_errors_name_the_model(make_cfg, tmp_path, override, words):
    with pytest.raises(ConfigError, match=r"^model \(cnnbench.models.MLP\): ") as err:
        train(make_cfg("model=mlp", override), tmp_path)
    assert words in str(err.value)


def test_diverged_results_are_strict_json(make_cfg, tmp_path):
    train(make_cfg("model=mlp", "optimizer=sgd", "optimizer.lr=1e12"), tmp_path)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_a_validation_split_is_held_out_logged_and_tracked(make_cfg, tmp_path):
    results = train(make_cfg("model=mlp", "dataset.val_size=100"), tmp_path)
    assert results["val_size"] == 100 and 0 <= results["val_acc"] <= 1
    assert results["best_val_acc"] == max(
        float(r["val_acc"]) for r in csv.DictReader((tmp_path / "metrics.csv").open())
    )
    assert results["steps"] == 2 * math.ceil(500 / 64)  # 600 training images less 100
    events = EventAccumulator(str(tmp_path)).Reload()
    assert {"val/acc", "val/loss"} <= set(events.Tags()["scalars"])
    from cnnbench import checkpoint

    assert checkpoint.load(tmp_path / "best.pt")["best_acc"] == results["best_val_acc"]


def test_the_validation_split_is_seeded_and_disjoint():
    import torch

    from cnnbench.data import hold_out

    images, labels = torch.arange(50).view(50, 1, 1, 1), torch.arange(50)
    (_, train_a), (_, val_a) = hold_out(images, labels, 10, seed=3)
    _, (_, val_b) = hold_out(images, labels, 10, seed=3)
    assert torch.equal(val_a, val_b) and len(val_a) == 10 and len(train_a) == 40
    assert set(val_a.tolist()).isdisjoint(train_a.tolist())
    (_, _), (_, val_c) = hold_out(images, labels, 10, seed=4)
    assert not torch.equal(val_a, val_c)


def test_a_validation_split_as_large_as_the_training_set_is_refused(make_cfg, tmp_path):
    from cnnbench.data import DataError

    with pytest.raises(DataError, match=r"dataset\.val_size=600 leaves no training images"):
        train(make_cfg("dataset.val_size=600"), tmp_path)
