"""Checkpoints, resuming, stopping on a signal, and evaluating a checkpoint, in-process.
The same behaviour through real processes (Ctrl-C, SIGTERM, kill -9) is in test_cli.py."""

import csv
import json
import math
import shutil
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cnnbench.train
from cnnbench import checkpoint
from cnnbench.checkpoint import CheckpointError
from cnnbench.config import compose
from cnnbench.train import Interrupted, train
from tests.conftest import write_mnist_like

RUN = (
    "model=mlp",
    "model.dropout=0.2",
    "optimizer=sgd",
    "optimizer.momentum=0.9",
    "scheduler=cosine",
    "trainer.epochs=3",
    "dataset.batch_size=32",
)
RESULTS = (
    "test_acc",
    "test_loss",
    "train_loss",
    "train_acc",
    "best_test_acc",
    "best_epoch",
    "steps",
    "epochs_done",
)


def signal_at_step(monkeypatch, step: int, signum: int = signal.SIGINT) -> None:
    """Deliver `signum` to this process during the forward pass of training step `step`."""
    build = cnnbench.train.build_model

    def build_with_alarm(*args, **kwargs):
        model = build(*args, **kwargs)
        calls = 0

        def pre_hook(module, inputs):
            nonlocal calls
            if module.training:
                calls += 1
                if calls == step:
                    signal.raise_signal(signum)

        model.register_forward_pre_hook(pre_hook)
        return model

    monkeypatch.setattr(cnnbench.train, "build_model", build_with_alarm)


def rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in ("epoch_s", "images_per_s")}
            for r in csv.DictReader(f)
        ]


def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in EventAccumulator(str(run_dir)).Reload().Scalars(tag)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """The run never stopped, shared by the tests that compare with it (read-only)."""
    from cnnbench.config import compose
    from tests.conftest import small_overrides

    out = tmp_path_factory.mktemp("reference")
    cfg = compose([*small_overrides(data_root, out / "cache"), *RUN])
    return train(cfg, out / "run"), out / "run"


def test_every_epoch_leaves_last_pt_and_best_pt(reference):
    results, run_dir = reference
    last = checkpoint.load(run_dir / "last.pt")  # weights_only
    assert last["epochs_done"] == 3 and last["batches_done"] == 0
    assert last["step"] == results["steps"]
    assert {"model", "optimizer", "scheduler", "rng", "config", "cnnbench_version"} <= set(last)
    assert {"torch", "numpy", "python", "cuda"} <= set(last["rng"])
    assert last["config"]["model"]["_target_"] == "cnnbench.models.MLP"
    best = checkpoint.load(run_dir / "best.pt")
    assert best["epochs_done"] == results["best_epoch"]
    assert best["best_acc"] == results["best_test_acc"]
    assert not list(run_dir.glob(".*.tmp"))


# 19 steps per epoch: mid-epoch 1, mid-epoch 2, and the last step of epoch 2 (the checkpoint is
# then the end-of-epoch one)
@pytest.mark.parametrize("step", [5, 25, 38])
def test_a_run_stopped_and_resumed_ends_exactly_like_one_never_stopped(
    make_cfg, tmp_path, monkeypatch, reference, step
):
    full, full_dir = reference
    run_dir = tmp_path / "stopped"
    signal_at_step(monkeypatch, step)
    with pytest.raises(Interrupted) as stop:
        train(make_cfg(*RUN), run_dir)
    assert stop.value.signum == signal.SIGINT and stop.value.checkpoint == run_dir / "last.pt"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "interrupted" and saved["checkpoint"] == str(run_dir / "last.pt")
    assert checkpoint.load(run_dir / "last.pt")["step"] == step

    monkeypatch.undo()
    resumed = train(make_cfg(*RUN), run_dir, resume=run_dir / "last.pt")
    for key in RESULTS:
        assert resumed[key] == full[key], key
    assert resumed["resumed"] and resumed["status"] == "ok"
    assert rows(run_dir) == rows(full_dir)
    for tag in ("train/loss", "lr", "test/acc", "train/acc"):
        assert scalars(run_dir, tag) == scalars(full_dir, tag), tag


def test_a_kill_loses_at_most_the_epoch_in_progress(make_cfg, tmp_path, monkeypatch, reference):
    """A kill after epoch 3 wrote its metrics row and curve points but before its checkpoint:
    resuming from epoch 2's checkpoint drops them and redoes the epoch, logging no step twice."""
    full, full_dir = reference
    run_dir = tmp_path / "killed"
    signal_at_step(monkeypatch, 38)  # stops with the end-of-epoch-2 checkpoint
    with pytest.raises(Interrupted):
        train(make_cfg(*RUN), run_dir)
    monkeypatch.undo()
    epoch_2 = (run_dir / "last.pt").read_bytes()
    train(make_cfg(*RUN), run_dir, resume=run_dir)
    (run_dir / "last.pt").write_bytes(epoch_2)  # what a kill before the last save leaves
    (run_dir / "results.json").unlink()
    assert len(rows(run_dir)) == 3

    resumed = train(make_cfg(*RUN), run_dir, resume=run_dir)
    for key in RESULTS:
        assert resumed[key] == full[key], key
    assert rows(run_dir) == rows(full_dir)
    for tag in ("train/loss", "test/acc"):
        assert scalars(run_dir, tag) == scalars(full_dir, tag), tag


def test_a_diverged_run_keeps_its_last_good_checkpoint(make_cfg, tmp_path):
    # the lr is multiplied by 1e6 after 2 epochs (19 steps each): epoch 3 diverges
    cfg = make_cfg(
        "model=mlp",
        "optimizer=sgd",
        "optimizer.lr=0.05",
        "scheduler=step",
        "scheduler.step_size=38",
        "scheduler.gamma=1e12",
        "trainer.epochs=4",
        "dataset.batch_size=32",
        "trainer.log_every_n_steps=1",
    )
    results = train(cfg, tmp_path)
    assert results["status"] == "diverged" and results["epochs_done"] == 2
    last = checkpoint.load(tmp_path / "last.pt")
    assert last["epochs_done"] == 2
    assert all(torch.isfinite(t).all() for t in last["model"].values())


def test_a_second_signal_stops_at_once(make_cfg, tmp_path, monkeypatch):
    build = cnnbench.train.build_model

    def build_twice_signalled(*args, **kwargs):
        model = build(*args, **kwargs)

        def pre_hook(module, inputs):
            if module.training:  # Ctrl-C twice within one step
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)

        model.register_forward_pre_hook(pre_hook)
        return model

    monkeypatch.setattr(cnnbench.train, "build_model", build_twice_signalled)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(*RUN), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


@pytest.mark.parametrize(
    "override,words",
    [
        ("model=lenet", "model._target_: 'cnnbench.models.MLP' in the checkpoint"),
        ("model.hidden=[128]", "model.hidden: [256] in the checkpoint, [128] here"),
        ("dataset=cifar10", "1-channel images in the checkpoint, 3 here"),
    ],
)
def test_a_checkpoint_of_another_network_is_refused(make_cfg, tmp_path, reference, override, words):
    _, run_dir = reference
    before = (run_dir / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match="holds a different network") as err:
        overrides = [override, *RUN[2:]] if override.startswith("model=") else [*RUN, override]
        train(make_cfg(*overrides), run_dir, resume=run_dir / "last.pt")
    assert words in str(err.value)
    assert (run_dir / "last.pt").read_bytes() == before


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


@pytest.mark.parametrize("content", ["code", "truncated", "foreign"])
def test_unsafe_broken_or_foreign_checkpoints_are_refused(tmp_path, reference, content, capsys):
    path = tmp_path / "bad.pt"
    if content == "code":
        torch.save({"format": 1, "model": Payload()}, path)
    elif content == "truncated":
        path.write_bytes((reference[1] / "last.pt").read_bytes()[:1000])
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"not a (readable )?cnnbench checkpoint"):
        checkpoint.load(path)
    assert "this ran" not in capsys.readouterr().out


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save({"v": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_states_round_trip():
    import random

    import numpy as np

    states = checkpoint.rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_states(states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all()
    assert expected[2] == again[2] and not math.isnan(again[2])


@pytest.mark.parametrize(
    "override,words",
    [
        ("dataset.batch_size=64", "dataset.batch_size: 32 in the run, 64 here"),
        ("trainer.epochs=5", "trainer.epochs: 3 in the run, 5 here"),
        ("optimizer=adam", "optimizer._target_: 'torch.optim.SGD' in the run"),
    ],
)
def test_a_run_continues_only_with_its_own_settings(make_cfg, tmp_path, reference, override, words):
    _, run_dir = reference
    overrides = (
        [o for o in RUN if not o.startswith("optimizer.momentum")] if "adam" in override else RUN
    )
    with pytest.raises(CheckpointError, match="belongs to a run with other settings") as err:
        train(make_cfg(*overrides, override), tmp_path / "x", resume=run_dir / "last.pt")
    assert words in str(err.value)


def test_a_checkpoint_for_another_image_size_is_refused(make_cfg, tmp_path, reference):
    _, run_dir = reference
    with pytest.raises(CheckpointError, match="28x28 images in the checkpoint, 32x32 here"):
        train(make_cfg(*RUN, "dataset.resize=32"), tmp_path / "x", resume=run_dir / "last.pt")


def test_sweep_names_follow_the_command_line():
    from cnnbench.rundir import sweep_name

    assert (
        sweep_name(
            [
                "-m",
                "model=mlp,lenet",
                "optimizer.lr=0.1",
                "dataset.root=/data",
                "hydra/launcher=joblib",
            ]
        )
        == "model=mlp,lenet__optimizer.lr=0.1"
    )
    assert sweep_name(["-m", "optimizer.lr=0.1", "model=mlp,lenet"]) != sweep_name(
        ["-m", "model=mlp,lenet", "optimizer.lr=0.1"]
    )  # Hydra numbers the jobs in the order given
    assert sweep_name(["-m"]) == "defaults"
    assert len(sweep_name(["-m", "x=" + "1," * 200])) <= 150


def test_a_checkpoint_written_before_the_redesign_resumes_exactly(tmp_path, cache_dir):
    """tests/data/format1_softmax_stopped.pt: written by cnnbench 02fcbf3 (before train.py was
    redesigned around TrainState), a softmax run stopped by SIGINT at step 6, in epoch 2.
    Resumed now, it ends exactly as the same run never stopped."""
    root = tmp_path / "data"
    write_mnist_like(root / "fashion-mnist", n_train=200, n_test=50)
    overrides = [
        "model=softmax",
        f"dataset.root={root}",
        f"dataset.cache_dir={cache_dir}",
        "dataset.download=false",
        "trainer.device=cpu",
        "trainer.epochs=3",
        "dataset.batch_size=64",
        "optimizer=sgd",
        "optimizer.momentum=0.9",
        "optimizer.lr=0.05",
    ]
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "format1_softmax_stopped.pt", old / "last.pt")
    assert checkpoint.load(old / "last.pt")["step"] == 6
    resumed = train(compose(overrides), old, resume=old / "last.pt")
    never_stopped = train(compose(overrides), tmp_path / "new")
    assert resumed["resumed"] and resumed["steps"] == never_stopped["steps"] == 12
    for key in RESULTS:
        assert resumed[key] == never_stopped[key], key
    # Epoch 1 and the first steps of epoch 2 ran on the machine that wrote the file: on another
    # CPU (AVX2 against AVX-512) their sums run in another order, so those rows agree to rounding
    *before, last_old = rows(old)
    *never_stopped_rows, last_new = rows(tmp_path / "new")
    assert last_old == last_new
    for row, ref in zip(before, never_stopped_rows, strict=True):
        assert row.keys() == ref.keys()
        for key, value in row.items():
            if value != ref[key]:
                assert float(value) == pytest.approx(float(ref[key]), rel=1e-4), key


def test_only_the_run_gpus_random_state_is_kept(monkeypatch):
    """One CUDA generator state, the run device's, restored to the device the run resumes on:
    a 4-GPU machine's run resumed on one GPU, or on another GPU, restores without an error."""
    asked, restored = [], []

    def get_rng_state(device):
        asked.append(device)
        return torch.tensor([7], dtype=torch.uint8)

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)

    def set_rng_state(state, device):
        restored.append((state.tolist(), device))

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    gpu1 = torch.device("cuda", 1)
    states = checkpoint.rng_states(gpu1)
    assert asked == [gpu1] and len(states["cuda"]) == 1
    checkpoint.set_rng_states(states, torch.device("cuda", 0), saved_on="cuda:1")
    assert restored == [([7], torch.device("cuda", 0))]
    # before the redesign: a state per visible GPU; the run was on cuda:2 of four
    old = {**states, "cuda": [torch.tensor([i], dtype=torch.uint8) for i in range(4)]}
    restored.clear()
    checkpoint.set_rng_states(old, torch.device("cuda"), saved_on="cuda:2")
    assert restored == [([2], torch.device("cuda"))]
    restored.clear()
    checkpoint.set_rng_states(old, torch.device("cpu"), saved_on="cuda")  # on the CPU now
    assert restored == []
    assert checkpoint.rng_states(torch.device("cpu"))["cuda"] == []


def test_a_run_resumed_from_best_pt_logs_the_loss_window_it_had(make_cfg, tmp_path, monkeypatch):
    """best.pt is the epoch's last.pt, loss window included: the first train/loss point after
    the resume averages the same steps as in the run never stopped."""
    run = ["model=mlp", "trainer.epochs=3", "trainer.log_every_n_steps=3"]  # 10 steps an epoch
    train(make_cfg(*run), tmp_path / "whole")
    signal_at_step(monkeypatch, 20)  # the last step of epoch 2: it stops at the epoch's end
    with pytest.raises(Interrupted):
        train(make_cfg(*run), tmp_path / "stopped")
    monkeypatch.undo()
    best = checkpoint.load(tmp_path / "stopped" / "best.pt")  # of epoch 1 or 2
    assert best["batches_done"] == 0 and best["window_steps"] == best["step"] % 3 > 0
    train(make_cfg(*run), tmp_path / "stopped", resume=tmp_path / "stopped" / "best.pt")
    assert scalars(tmp_path / "stopped", "train/loss") == scalars(tmp_path / "whole", "train/loss")
