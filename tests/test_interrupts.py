"""A real `python -m cnnbench` child stopped by Ctrl-C, SIGTERM or kill -9, then resumed: the
run ends exactly as one never stopped, and nothing already saved is lost."""

import csv
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench import checkpoint
from tests.conftest import run_cli, small_overrides
from tests.test_cli import env

pytestmark = pytest.mark.slow

# 19 steps per epoch, 12 epochs: long enough to be stopped part-way
RUN = [
    "model=mlp",
    "dataset.batch_size=32",
    "trainer.epochs=12",
    "optimizer=sgd",
    "optimizer.momentum=0.9",
    "scheduler=cosine",
]
SAME = ("test_acc", "test_loss", "train_loss", "train_acc", "best_test_acc", "steps", "epochs_done")


def spawn(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnbench", *args],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_epochs(run_dir: Path, epochs: int, proc: subprocess.Popen) -> None:
    """Until metrics.csv holds `epochs` rows."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        path = run_dir / "metrics.csv"
        if path.is_file() and len(path.read_text().splitlines()) > epochs:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pytest.fail("the run did not get going")


def epochs_and_steps(run_dir: Path) -> tuple[list[int], list[int]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    steps = [e.step for e in EventAccumulator(str(run_dir)).Reload().Scalars("train/loss")]
    return epochs, steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp("reference")
    args = [*small_overrides(data_root, tmp / "cache"), *RUN, f"hydra.run.dir={tmp / 'run'}"]
    proc = run_cli(*args, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp / "run" / "results.json").read_text()), tmp / "run"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_prints_the_resume_command_and_resuming_matches(
    tmp_path, data_root, reference, signum
):
    full, full_dir = reference
    run_dir = tmp_path / "run"
    proc = spawn(
        *small_overrides(data_root, tmp_path / "cache"),
        *RUN,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    wait_for_epochs(run_dir, 2, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "Traceback" not in stderr
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    assert (run_dir / "last.pt").is_file()

    command = shlex.split(stderr.split("Resume with:\n", 1)[1].strip().splitlines()[0])
    assert command[:3] == ["python", "-m", "cnnbench"] and f"trainer.resume={run_dir}" in command
    resumed = run_cli(*command[3:], cwd=tmp_path)  # the printed command, in this process
    assert resumed.returncode == 0, resumed.stderr
    results = json.loads((run_dir / "results.json").read_text())
    for key in SAME:
        assert results[key] == full[key], key
    assert epochs_and_steps(run_dir) == epochs_and_steps(full_dir)


def test_kill_9_loses_at_most_the_epoch_in_progress(tmp_path, data_root, reference):
    full, full_dir = reference
    run_dir = tmp_path / "run"
    args = [*small_overrides(data_root, tmp_path / "cache"), *RUN, f"hydra.run.dir={run_dir}"]
    proc = spawn(*args, cwd=tmp_path)
    wait_for_epochs(run_dir, 3, proc)
    time.sleep(0.05)  # somewhere in a later epoch
    proc.kill()
    proc.communicate()
    # what the kill left: an epoch-end checkpoint, whole, of an epoch that metrics.csv has
    killed = checkpoint.load(run_dir / "last.pt")
    assert killed["epochs_done"] >= 3 and killed["batches_done"] == 0
    rows = len((run_dir / "metrics.csv").read_text().splitlines()) - 1
    assert rows in (killed["epochs_done"], killed["epochs_done"] + 1)  # a row before its save
    # a kill in the middle of a write leaves its temporary file (never a partial last.pt);
    # the resumed run removes it: one is planted, so that this holds however the kill fell
    (run_dir / ".last.pt.abc123.tmp").write_bytes(b"cut off")

    resumed = run_cli(*args, f"trainer.resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run_dir.glob(".*.tmp"))
    log = (run_dir / "train.log").read_text()
    assert f"at step {killed['step']} (epoch {killed['epochs_done'] + 1}, batch 0)" in log
    results = json.loads((run_dir / "results.json").read_text())
    for key in SAME:
        assert results[key] == full[key], key
    epochs, steps = epochs_and_steps(run_dir)
    assert (epochs, steps) == epochs_and_steps(full_dir)
    assert len(steps) == len(set(steps))


def wait_for_log(run_dir: Path, words: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = run_dir / "train.log"
        if log.is_file() and words in log.read_text():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    pytest.fail(f"{words!r} never appeared in train.log")


def test_a_second_ctrl_c_stops_at_once(tmp_path, data_root):
    # a ResNet-18 step at 96x96 takes a few seconds on a CPU: time to press Ctrl-C twice (the
    # second once the first has been seen; signals that arrive together count once)
    run_dir = tmp_path / "run"
    proc = spawn(
        *small_overrides(data_root, tmp_path / "cache"),
        "model=resnet",
        "dataset.resize=96",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    wait_for_log(run_dir, "parameters, device", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    wait_for_log(run_dir, "stopping after this step", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "stopped at once; no checkpoint was saved yet" in stderr and "Traceback" not in stderr
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    assert not list(run_dir.glob("*.pt")) and not list(run_dir.glob(".*.tmp"))


def test_resume_auto_finds_the_run_with_the_same_config(tmp_path, data_root):
    """Run in the default layout, kill it, rerun the same command with trainer.resume=auto:
    it continues in the same directory; once finished, a rerun does not train again."""
    args = [*small_overrides(data_root, tmp_path / "cache"), *RUN, "trainer.resume=auto"]
    other = run_cli(*args, "optimizer.lr=0.05", cwd=tmp_path)  # same but for lr: not a match
    assert other.returncode == 0, other.stderr
    proc = spawn(*args, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "outputs").glob("*/*/last.pt"))[1:]:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.kill()
    proc.communicate()
    runs = sorted(p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir())
    assert len(runs) == 2

    resumed = run_cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()) == runs
    done = [json.loads(p.read_text()) for p in (tmp_path / "outputs").glob("*/*/results.json")]
    assert sorted(r["config"]["optimizer"]["lr"] for r in done) == [0.05, 0.1]
    assert all(r["status"] == "ok" and r["epochs_done"] == 12 for r in done)
    assert [r["resumed"] for r in done if r["config"]["optimizer"]["lr"] == 0.1] == [True]

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stdout
    assert sorted(p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()) == runs


def test_resume_into_another_runs_directory_is_refused_before_anything_is_written(
    tmp_path, data_root
):
    """trainer.resume=auto with a hydra.run.dir that holds a run of other settings, and a
    checkpoint resumed into a directory that holds another run: exit 2, and that run's files
    (its .hydra/ config included) are left as they were."""
    args = [*small_overrides(data_root, tmp_path / "cache"), "model=mlp", "trainer.epochs=1"]
    there = tmp_path / "there"
    assert (
        run_cli(*args, "optimizer.lr=0.01", f"hydra.run.dir={there}", cwd=tmp_path).returncode == 0
    )
    before = {p: p.read_bytes() for p in there.rglob("*") if p.is_file()}
    auto = run_cli(*args, "trainer.resume=auto", f"hydra.run.dir={there}", cwd=tmp_path)
    assert auto.returncode == 2 and "other settings" in auto.stderr, auto.stderr
    other = tmp_path / "other"
    assert run_cli(*args, f"hydra.run.dir={other}", cwd=tmp_path).returncode == 0
    into = run_cli(*args, f"trainer.resume={other}", f"hydra.run.dir={there}", cwd=tmp_path)
    assert into.returncode == 2 and f"{there} already holds a run" in into.stderr, into.stderr
    assert {p: p.read_bytes() for p in there.rglob("*") if p.is_file()} == before
