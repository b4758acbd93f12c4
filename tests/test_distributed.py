"""Data-parallel runs: how the ranks share the data (in one process), and real 2-process gloo
runs started by torchrun on generated data, compared with one process."""

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench import data, distributed
from cnnbench.build import build_model, device_loader
from cnnbench.data import DataError
from cnnbench.eval import evaluate
from tests.conftest import run_cli, small_overrides
from tests.test_cli import env
from tests.test_devices import DEVICES


def loader(rank: int, world_size: int, **kwargs) -> data.DeviceLoader:
    images = torch.arange(103 * 4, dtype=torch.uint8).view(103, 1, 2, 2)
    labels = torch.arange(103)
    return data.DeviceLoader(
        images,
        labels,
        10,
        torch.device("cpu"),
        mean=(0.0,),
        std=(1.0,),
        normalize=False,
        shuffle=True,
        seed=3,
        rank=rank,
        world_size=world_size,
        **kwargs,
    )


@pytest.mark.parametrize("world_size", [2, 3])
def test_the_ranks_deal_out_each_batch_of_the_epoch(world_size):
    one = loader(0, 1)
    ranks = [loader(r, world_size) for r in range(world_size)]
    for epoch in (1, 2):
        for each in [one, *ranks]:
            each.set_epoch(epoch)
        assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == len(one) == 11
        seen = []
        for (_, whole), *shards in zip(one, *ranks, strict=True):
            labels = [y for _, y in shards]
            together = torch.cat(labels)
            # the ranks share exactly the batch one process would train on, without overlap
            assert sorted(together.tolist()) == sorted(whole.tolist())
            assert all(abs(len(y) - len(whole) / world_size) < 1 for y in labels)
            seen += together.tolist()
        assert sorted(seen) == list(range(103))  # the whole epoch, nothing twice


def test_a_rank_augments_its_images_as_one_process_would():
    one = loader(0, 1, translate=1, flip=True)
    ranks = [loader(r, 2, translate=1, flip=True) for r in range(2)]
    for (x, _), (x0, _), (x1, _) in zip(one, *ranks, strict=True):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)


def _in_group(rank: int, world_size: int, init: str, test: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        if test == "main_first":
            calls = []

            def fail_on_rank_zero():
                calls.append(rank)
                raise DataError("the files are broken")

            with pytest.raises(DataError, match="the files are broken"):
                distributed.main_first(fail_on_rank_zero)
            assert calls == ([0] if rank == 0 else [])  # the others did not try
            assert distributed.main_first(lambda: rank, others=False) == (0 if rank == 0 else None)
        else:  # evaluate: each rank its shard, the result over all of them
            torch.manual_seed(0)
            images = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
            labels = torch.randint(0, 10, (50,))
            model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
            make = lambda r, w: data.DeviceLoader(  # noqa: E731
                images,
                labels,
                8,
                torch.device("cpu"),
                mean=(0.5,),
                std=(0.5,),
                rank=r,
                world_size=w,
            )
            mine = evaluate(model, make(rank, world_size), 10)
            dist.destroy_process_group()
            whole = evaluate(model, make(0, 1), 10)
            assert torch.equal(mine.confusion, whole.confusion) and mine.acc == whole.acc
            assert mine.loss == pytest.approx(whole.loss, rel=1e-6)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("test", ["main_first", "evaluate"])
def test_in_a_real_process_group(tmp_path, test):
    mp.spawn(_in_group, args=(2, f"file://{tmp_path / 'store'}", test), nprocs=2)


# ---------------------------------------------------------------- torchrun, 2 processes

# plain SGD, whose step follows the gradient's scale; batches of 31 split 16/15 between the
# two ranks (and the epoch's last, of 11, 6/5), so every step needs the ranks' loss weights
RUN = [
    "model=lenet5",
    "dataset.batch_size=31",
    "trainer.epochs=3",
    "optimizer=sgd",
    "optimizer.lr=0.05",
    "optimizer.momentum=0.9",
    "dataset.translate=1",
    "trainer.log_every_n_steps=3",
]
STEPS = 20  # per epoch: 600 images in batches of 31


def torchrun(*args: str, cwd: Path, nproc: int = 2, **popen) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "cnnbench",
        *args,
    ]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_loss_points(run_dir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir)).Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def wait_for_checkpoint(run_dir: Path, epochs: int, proc: subprocess.Popen) -> None:
    """Until last.pt holds `epochs` finished epochs: a signal then lands in the next epoch."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        path = run_dir / "last.pt"
        if path.is_file() and torch.load(path, weights_only=True)["epochs_done"] >= epochs:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    pytest.fail("the run did not get going")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """The same run on one process and (torchrun) on two: (one, two) run directories."""
    tmp = tmp_path_factory.mktemp("ddp")
    args = [*small_overrides(data_root, tmp / "cache"), *RUN]
    one = run_cli(*args, f"hydra.run.dir={tmp / 'one'}", cwd=tmp)
    assert one.returncode == 0, one.stderr
    two = torchrun(*args, f"hydra.run.dir={tmp / 'two'}", cwd=tmp)
    out, err = two.communicate(timeout=300)
    assert two.returncode == 0, err
    return tmp / "one", tmp / "two", out, err


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_global_batch(runs):
    one, two, _, _ = runs
    a, b = results(one), results(two)
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["steps"] == b["steps"] == 3 * STEPS
    # LeNet-5 has no BatchNorm or dropout: only the order of float sums differs, which the
    # epochs amplify; the first epoch agrees to float precision
    first_a, first_b = metrics(one)[0], metrics(two)[0]
    for key in ("train_loss", "test_loss"):
        assert float(first_b[key]) == pytest.approx(float(first_a[key]), rel=1e-4), key
    assert first_b["train_acc"] == first_a["train_acc"]
    for row_a, row_b in zip(metrics(one), metrics(two), strict=True):
        assert float(row_b["test_acc"]) == pytest.approx(float(row_a["test_acc"]), abs=0.02)
        assert float(row_b["train_loss"]) == pytest.approx(float(row_a["train_loss"]), rel=0.02)
    assert float(first_b["test_acc"]) < 0.9 < b["test_acc"]  # it learned


@pytest.mark.slow
def test_only_rank_zero_writes_and_the_logged_metrics_are_global(runs, data_root, tmp_path):
    _, two, out, _ = runs
    assert out.count("test accuracy") == 1
    assert out.count("data parallel over 2 processes (gloo): batch size 31 in all") == 1
    assert len(list(two.glob("events.out.tfevents.*"))) == 1
    assert (two / "train.log").read_text().count("epoch 3/3") == 1
    assert [int(row["epoch"]) for row in metrics(two)] == [1, 2, 3]
    steps = [e.step for e in EventAccumulator(str(two)).Reload().Scalars("test/acc")]
    assert steps == [STEPS * e for e in range(1, 4)]
    # the logged test accuracy is over the whole test split, as one process measures it
    ckpt = torch.load(two / "last.pt", weights_only=True)
    cfg = OmegaConf.create(ckpt["config"])
    model = build_model(cfg, torch.device("cpu"))
    model.load_state_dict(ckpt["model"])
    test_set = data.load("fashion_mnist", "test", data_root, False, tmp_path / "cache")
    assert (
        evaluate(model, device_loader(cfg, test_set, torch.device("cpu")), 10).acc
        == (results(two)["test_acc"])
    )


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, data_root) -> tuple[Path, list[str]]:
    """The torchrun run stopped by Ctrl-C in its second epoch, and the command it prints."""
    tmp = tmp_path_factory.mktemp("stopped")
    run_dir = tmp / "run"
    args = [*small_overrides(data_root, tmp / "cache"), *RUN, f"hydra.run.dir={run_dir}"]
    proc = torchrun(*args, cwd=tmp, start_new_session=True)
    wait_for_checkpoint(run_dir, 1, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: torchrun and both ranks get it
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert err.count("stopped by SIGINT") == 1, err
    assert results(run_dir)["status"] == "interrupted"
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epochs_done"] == 1 and 0 < state["batches_done"] < STEPS  # mid-epoch
    command = shlex.split(err.split("Resume with:\n", 1)[1].strip().splitlines()[0])
    assert command[:4] == ["torchrun", "--standalone", "--nproc_per_node=2", "-m"], command
    assert f"trainer.resume={run_dir}" in command
    return run_dir, command


@pytest.mark.slow
@pytest.mark.parametrize("how", ["torchrun", "one process"])
def test_a_stopped_run_resumes_with_any_number_of_processes(runs, stopped, tmp_path, how):
    _, reference, _, _ = runs
    # each resumes its own copy of the stopped run, moved as a user may move a run directory
    run_dir = tmp_path / "run"
    shutil.copytree(stopped[0], run_dir)
    command = [a.replace(str(stopped[0]), str(run_dir)) for a in stopped[1]]
    if how == "torchrun":
        resumed = torchrun(*command[5:], cwd=tmp_path)
    else:  # the global batch stays the same, so may the number of processes change
        resumed = subprocess.Popen(
            [sys.executable, "-m", *command[4:]],
            cwd=tmp_path,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    got, want = results(run_dir), results(reference)
    assert got["epochs_done"] == 3 and got["steps"] == want["steps"] and got["resumed"]
    assert [int(row["epoch"]) for row in metrics(run_dir)] == [1, 2, 3]
    if how == "torchrun":  # the same processes again: the run never stopped, to the bit,
        # the epoch it stopped in (whose sums so far came from the checkpoint) included
        columns = ("train_loss", "train_acc", "test_loss", "test_acc")
        for row, ref in zip(metrics(run_dir), metrics(reference), strict=True):
            assert [row[c] for c in columns] == [ref[c] for c in columns], row["epoch"]
        assert train_loss_points(run_dir) == train_loss_points(reference)
    else:  # the same global batches, summed in another order: equal to rounding, every epoch
        for row, ref in zip(metrics(run_dir), metrics(reference), strict=True):
            for column in ("train_loss", "test_loss"):
                assert float(row[column]) == pytest.approx(float(ref[column]), rel=1e-3), column
            for column in ("train_acc", "test_acc"):
                assert float(row[column]) == pytest.approx(float(ref[column]), abs=0.01), column
        points, ref_points = train_loss_points(run_dir), train_loss_points(reference)
        assert [step for step, _ in points] == [step for step, _ in ref_points]
        assert [v for _, v in points] == pytest.approx([v for _, v in ref_points], rel=1e-3)


@pytest.mark.slow
def test_a_batch_the_processes_cannot_share_is_refused_once(data_root, tmp_path):
    # 600 training images in batches of 599 leave one image for the last batch
    args = [*small_overrides(data_root, tmp_path / "cache"), "dataset.batch_size=599"]
    proc = torchrun(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert err.count("cnnbench: error: dataset.batch_size=599: each batch is shared") == 1, err
    assert "dataset.batch_size=600" in err


@pytest.mark.slow
def test_a_sweep_under_torchrun_runs_each_job_on_both_processes(data_root, tmp_path):
    args = [*small_overrides(data_root, tmp_path / "cache"), "model=lenet5", "trainer.epochs=1"]
    proc = torchrun("-m", "optimizer.lr=0.001,0.003", *args, cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.count("2 runs (2 ok)") == 1 and out.count("#1 : optimizer.lr=0.003") == 1, out
    [sweep] = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(sweep.glob("*/results.json"))
    assert [json.loads(p.read_text())["world_size"] for p in jobs] == [2, 2]
    assert (sweep / "best_config.yaml").is_file()


@pytest.mark.slow
def test_a_launcher_whose_jobs_would_part_the_processes_is_refused(data_root, tmp_path):
    args = [*small_overrides(data_root, tmp_path / "cache"), "hydra/launcher=joblib"]
    proc = torchrun("-m", "optimizer.lr=0.001,0.003", *args, cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert err.count("cnnbench: error: under torchrun a sweep runs its jobs") == 1, err
    assert "with JoblibLauncher the processes" in err


def test_a_single_process_on_cuda_n_makes_it_the_current_device(monkeypatch):
    """Else the first CUDA call would open a context on GPU 0 as well."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert distributed.run_device("cuda:1") == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]
    assert distributed.run_device("cuda") == torch.device("cuda") and len(chosen) == 1


def test_under_torchrun_a_stop_is_asked_for_at_the_log_cadence(monkeypatch):
    from cnnbench.signals import StopSignals

    asked = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "anyone", lambda flag: asked.append(flag) or flag)
    stop = StopSignals(every=3)
    assert [stop.requested(step) for step in range(1, 7)] == [False] * 6
    assert len(asked) == 2  # steps 3 and 6: one all-reduce each
    stop.received = signal.SIGTERM
    assert not stop.requested(7) and stop.requested(9) and stop.requested()
    assert len(asked) == 4


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_one_process_under_torchrun_joins_a_group_of_one(data_root, tmp_path, device):
    """On a GPU the sums over the processes then go through NCCL (scripts/gpu_check.sh)."""
    run_dir = tmp_path / "run"
    args = [
        *small_overrides(data_root, tmp_path / "cache"),
        "model=mlp",
        "trainer.epochs=1",
        f"trainer.device={device}",
        f"hydra.run.dir={run_dir}",
    ]
    proc = torchrun(*args, cwd=tmp_path, nproc=1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    backend = "nccl" if device == "cuda" else "gloo"
    assert f"data parallel over 1 process ({backend})" in (run_dir / "train.log").read_text()
    got = results(run_dir)
    assert got["status"] == "ok" and got["world_size"] == 1 and got["device"].startswith(device)


@pytest.mark.slow
def test_a_taken_directory_is_refused_once_and_no_process_fails_otherwise(runs, data_root):
    """Every process agrees the directory holds a run before rank 0 could claim it: one
    message, no process runs into the others' exit."""
    one, _, _, _ = runs
    args = [*small_overrides(data_root, one.parent / "cache"), *RUN]
    proc = torchrun(*args, f"hydra.run.dir={one}", cwd=one.parent)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert err.count("cnnbench: error: ") == 1 and f"{one} already holds a run" in err, err
    assert "Error executing job" not in err and "RuntimeError" not in err, err


@pytest.mark.slow
def test_a_batch_that_leaves_a_process_no_image_is_refused_before_the_directory(
    tmp_path, data_root
):
    args = [*small_overrides(data_root, tmp_path / "cache"), *RUN, "dataset.batch_size=1"]
    proc = torchrun(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and err.count("cnnbench: error: ") == 1, err
    assert "dataset.batch_size=1: each batch is shared by the 2 processes" in err, err
    assert not (tmp_path / "run").exists()
