"""Comparing runs through real processes: a sweep that survives a failing job and resumes when
run again, the report over it, TensorBoard's HParams view of it, and an Optuna search."""

import csv
import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_cli, small_overrides
from tests.test_cli import env
from tests.test_interrupts import spawn

pytestmark = pytest.mark.slow


def sweep_dir(tmp: Path) -> Path:
    [found] = (tmp / "outputs" / "multirun").iterdir()
    return found


def results(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/results.json")}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root):
    """Three jobs, the second with an invalid learning rate; then the same command again."""
    tmp = tmp_path_factory.mktemp("sweep")
    args = [
        "-m",
        *small_overrides(data_root, tmp / "cache"),
        "model=mlp",
        "optimizer=sgd",
        "optimizer.lr=0.01,-1,0.1",
    ]
    first = run_cli(*args, cwd=tmp)
    folder = sweep_dir(tmp)
    before = {name: (folder / name / "results.json").stat().st_mtime_ns for name in results(folder)}
    again = run_cli(*args, cwd=tmp)
    return tmp, folder, first, again, before


def test_a_failing_job_is_recorded_and_the_others_finish(sweep):
    _, folder, first, _, _ = sweep
    assert first.returncode == 0, first.stderr
    done = results(folder)
    assert len(done) == 3
    by_lr = {r["config"]["optimizer"]["lr"]: r for r in done.values()}
    assert by_lr[0.01]["status"] == by_lr[0.1]["status"] == "ok"
    assert (
        by_lr[-1]["status"] == "error" and "optimizer.lr=-1.0 is not allowed" in by_lr[-1]["error"]
    )
    assert "sweep" in first.stdout and "3 runs (1 error, 2 ok)" in first.stdout


def test_running_the_same_sweep_again_skips_the_finished_jobs(sweep):
    _, folder, _, again, before = sweep
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already finished") == 2
    after = {name: (folder / name / "results.json").stat().st_mtime_ns for name in results(folder)}
    finished = [n for n, r in results(folder).items() if r["status"] == "ok"]
    assert all(after[n] == before[n] for n in finished)
    assert len(list(folder.iterdir())) == len(before) + 3  # + multirun.yaml, best_*.yaml


def test_the_best_run_is_written_out_and_reruns(sweep):
    tmp, folder, _, _, _ = sweep
    best = (folder / "best_trial.yaml").read_text()
    assert "objective: test_acc" in best and (folder / "best_config.yaml").is_file()
    command = shlex.split(best.split("rerun: ", 1)[1].strip())
    proc = subprocess.run(
        [sys.executable, *command[1:]],
        cwd=tmp,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout


def test_the_report_lists_every_run_with_its_figures(sweep):
    _, folder, _, _, _ = sweep
    proc = run_cli(str(folder), cwd=folder, module="cnnbench.report")
    assert proc.returncode == 0, proc.stderr
    with open(folder / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert {r["optimizer.lr"] for r in rows} == {"0.01", "0.1", "-1.0"}
    assert float(rows[0]["best test acc"]) >= float(rows[1]["best test acc"])
    assert all(int(r["params"]) == 203_530 for r in rows[:2])
    assert "| optimizer.lr |" in proc.stdout and "optimizer.lr=-1.0 is not allowed" in proc.stdout
    for name in ("curves.png", "tradeoffs.png"):
        assert (folder / name).stat().st_size > 10_000, name
    assert (folder / "report.md").read_text().startswith("# Comparison of 3 runs")


def test_a_killed_sweep_resumes_its_unfinished_job(tmp_path, data_root):
    args = [
        "-m",
        *small_overrides(data_root, tmp_path / "cache"),
        "model=mlp",
        "dataset.batch_size=16",
        "trainer.epochs=15",
        "optimizer.lr=0.01,0.02",
    ]
    proc = spawn(*args, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("outputs/multirun/*/0_*/last.pt")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    proc.communicate()
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    done = results(sweep_dir(tmp_path))
    assert sorted((r["status"], r["resumed"]) for r in done.values()) == [
        ("ok", False),
        ("ok", True),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "X-TensorBoard-Feature-Flags": "{}"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
        return json.loads(r.read())


def test_tensorboard_compares_the_sweep_runs(sweep):
    _, folder, _, _, _ = sweep
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(folder),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        runs: list[str] = []
        while time.monotonic() < deadline:
            try:
                runs = request(f"{base}/data/runs")
            except OSError:
                runs = []
            if len(runs) >= 2:
                break
            time.sleep(0.5)
        trained = sorted(r for r in runs if "lr=-1" not in r)
        assert len(trained) == 2, runs
        for run in trained:
            query = urllib.parse.urlencode({"tag": "test/acc", "run": run})
            points = request(f"{base}/data/plugin/scalars/scalars?{query}")
            assert len(points) == 2 and 0 <= points[-1][2] <= 1  # (time, step, value) per epoch

        experiment = request(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        hparams = {h["name"]: h for h in experiment["hparamInfos"]}
        assert "optimizer.lr" in hparams and hparams["optimizer.lr"].get("differs")
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"test/acc", "train/loss"} <= metrics
        groups = request(
            f"{base}/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
                "colParams": [],
                "startIndex": 0,
                "sliceSize": 100,
            },
        )
        sessions = {
            g["hparams"]["optimizer.lr"]: {m["name"]["tag"]: m["value"] for m in g["metricValues"]}
            for g in groups["sessionGroups"]
        }
        by_lr = {r["config"]["optimizer"]["lr"]: r for r in results(folder).values()}
        for lr in (0.01, 0.1):
            assert sessions[lr]["test/acc"] == pytest.approx(by_lr[lr]["test_acc"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_optuna_search_of_three_trials_writes_its_best_config(tmp_path, data_root):
    proc = run_cli(
        *small_overrides(data_root, tmp_path / "cache"),
        "hparams_search=lenet_fashion",
        "hydra.sweeper.n_trials=3",
        "trainer.epochs=1",
        "dataset.val_size=100",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    folder = sweep_dir(tmp_path)
    done = results(folder)
    assert len(done) == 3 and all(r["val_acc"] is not None for r in done.values())
    best = (folder / "best_trial.yaml").read_text()
    assert "objective: val_acc" in best
    assert f"value: {max(r['val_acc'] for r in done.values())}" in best
    assert (folder / "optuna.db").is_file() and (folder / "optimization_results.yaml").is_file()
    chosen = {r["config"]["optimizer"]["lr"] for r in done.values()}
    assert len(chosen) == 3 and all(1e-4 <= lr <= 0.03 for lr in chosen)


def test_a_search_without_a_validation_split_is_refused(tmp_path, data_root):
    proc = run_cli(
        *small_overrides(data_root, tmp_path / "cache"),
        "hparams_search=lenet_fashion",
        "hydra.sweeper.n_trials=1",
        "dataset.val_size=0",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "needs a validation split" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()  # refused before the sweep's directory


def test_the_joblib_launcher_runs_a_sweep_in_parallel(tmp_path, data_root):
    proc = run_cli(
        "-m",
        *small_overrides(data_root, tmp_path / "cache"),
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=mlp,softmax",
        "trainer.epochs=1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    done = results(sweep_dir(tmp_path))  # one sweep directory for both workers
    assert sorted(r["model"] for r in done.values()) == ["MLP", "Softmax"]
    assert all(r["status"] == "ok" for r in done.values())
