"""What a run writes and says as it goes and when it ends: progress off a terminal, a hint at
chance-level accuracy, results.json for a run that failed after claiming its directory, and a
full disk reported in one line that keeps what was saved."""

import json
import logging
import os
import sys

import pytest

import cnnbench.atomic
from cnnbench import checkpoint, cli, runlog
from cnnbench.errors import DataError, WriteError
from cnnbench.train import train
from tests.conftest import run_cli, small_overrides


def test_off_a_terminal_a_long_epoch_prints_progress_lines(make_cfg, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(runlog, "PROGRESS_EVERY_S", 0.0)  # a line after every batch
    with caplog.at_level(logging.INFO, logger="cnnbench.train"):
        train(make_cfg("trainer.epochs=1", "model=mlp"), tmp_path)  # pytest's stderr: no tty
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1: ")]
    assert lines[0].startswith("epoch 1/1: batch 1/10, ") and "img/s" in lines[0]
    assert lines[-1].startswith("epoch 1/1: batch 10/10, ") and ", loss " in lines[-1]


def test_the_default_interval_prints_no_progress_lines_in_a_short_epoch(make_cfg, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cnnbench.train"):
        train(make_cfg("trainer.epochs=1", "model=mlp"), tmp_path)
    assert not [r for r in caplog.records if r.getMessage().startswith("epoch 1/1: batch")]


def test_chance_level_accuracy_comes_with_a_hint(make_cfg, tmp_path, caplog):
    cfg = make_cfg("trainer.epochs=1", "optimizer.lr=1e-12", "trainer.limit_train_batches=1")
    with caplog.at_level(logging.WARNING, logger="cnnbench.train"):
        results = train(cfg, tmp_path / "stuck")
    assert results["test_acc"] < 0.15
    [hint] = [r.getMessage() for r in caplog.records if "chance level" in r.getMessage()]
    assert hint.startswith(f"test accuracy {results['test_acc']:.4f} is at chance level (0.10")
    assert "optimizer.lr" in hint
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnbench.train"):
        assert train(make_cfg("trainer.epochs=1", "model=mlp"), tmp_path / "ok")["test_acc"] > 0.5
    assert "chance level" not in caplog.text


def test_missing_data_after_the_claim_leaves_results_json(make_cfg, tmp_path):
    cfg = make_cfg(f"dataset.root={tmp_path / 'empty'}")
    with pytest.raises(DataError):
        train(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "error" and saved["error"].startswith("DataError: Fashion-MNIST")
    assert saved["epochs_done"] == 0 and saved["checkpoint"] is None


def fill_disk_for(monkeypatch, name: str, after: int) -> None:
    """The writes of `name` after the first `after` go to /dev/full, which answers ENOSPC, as
    a full disk does."""
    real, writes = os.fdopen, 0

    def fdopen(fd, mode="r", *args, **kwargs):
        nonlocal writes
        if f".{name}." in os.readlink(f"/proc/self/fd/{fd}"):  # its temporary file
            writes += 1
            if writes > after:
                os.close(fd)
                return open("/dev/full", mode)
        return real(fd, mode, *args, **kwargs)

    monkeypatch.setattr(cnnbench.atomic.os, "fdopen", fdopen)


def test_a_full_disk_is_one_line_that_keeps_the_last_checkpoint(make_cfg, tmp_path, monkeypatch):
    run = tmp_path / "run"
    fill_disk_for(monkeypatch, "last.pt", after=1)  # epoch 1's is written, epoch 2's is not
    with pytest.raises(WriteError) as err:
        train(make_cfg("trainer.epochs=3"), run)
    assert str(err.value) == (
        f"cannot write {run / 'last.pt'}: no space left on the device (the previous file is kept)"
    )
    assert checkpoint.load(run / "last.pt")["epochs_done"] == 1  # the one before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    saved = json.loads((run / "results.json").read_text())  # what can still be recorded
    assert saved["status"] == "error" and "no space left" in saved["error"]


def test_the_command_line_names_the_full_disk_and_how_to_resume(
    data_root, cache_dir, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    args = [*small_overrides(data_root, cache_dir), f"hydra.run.dir={run}"]
    fill_disk_for(monkeypatch, "last.pt", after=1)
    monkeypatch.setattr(sys, "argv", ["cnnbench", *args, "trainer.epochs=3"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (
        f"cnnbench: error: cannot write {run / 'last.pt'}: no space left on the device (the "
        "previous file is kept). Make room, then resume with:"
    )
    assert err[1].startswith("  python -m cnnbench ") and err[1].endswith(f"trainer.resume={run}")


@pytest.mark.parametrize(
    "bad", ["optimizer.lr=-1", "trainer.device=cuda:7", "model=resnt", "trainer.epoch=3"]
)
def test_a_refused_run_leaves_no_run_directory(data_root, cache_dir, tmp_path, bad):
    """Refused before Hydra starts (a bad value, option or key) or once torch is loaded (a
    device this machine lacks): exit 2, one line, and no empty outputs/<date>/<time>/."""
    ran = run_cli(*small_overrides(data_root, cache_dir), bad, cwd=tmp_path)
    assert ran.returncode == 2 and ran.stderr.startswith("cnnbench: error: ")
    assert len(ran.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()
