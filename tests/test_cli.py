"""The command line as a user runs it: `cli.main` in this process (run_cli), and a real
`python -m cnnbench` process where only one shows it (two processes give the same results)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED_DATA, run_cli, small_overrides

pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    """The environment of a child that imports this checkout's cnnbench."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def cnnbench(*args: str, cwd, module: str = "cnnbench") -> subprocess.CompletedProcess:
    """`python -m cnnbench ...` run from `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_run_writes_its_files_and_prints_accuracy(tmp_path, data_root):
    run_dir = tmp_path / "run"
    proc = run_cli(
        *small_overrides(data_root, tmp_path / "cache"), f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    for name in ("results.json", "metrics.csv", "train.log", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())


def test_default_output_layout_and_sweep(tmp_path, data_root):
    common = [
        *small_overrides(data_root, tmp_path / "cache"),
        "trainer.epochs=1",
        "trainer.limit_train_batches=2",
    ]
    assert run_cli(*common, cwd=tmp_path).returncode == 0
    [single] = [p for p in (tmp_path / "outputs").glob("*/*") if p.parent.name != "multirun"]
    assert (single / "results.json").is_file()

    proc = run_cli("-m", *common, "optimizer.lr=0.01,0.1", "dataset.batch_size=32,64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = sorted((tmp_path / "outputs" / "multirun").glob("*/*/results.json"))
    assert len(results) == 4
    seen = {
        (r["config"]["optimizer"]["lr"], r["config"]["dataset"]["batch_size"])
        for r in map(json.loads, (p.read_text() for p in results))
    }
    assert seen == {(0.01, 32), (0.01, 64), (0.1, 32), (0.1, 64)}
    # each job directory is named by its number and what it overrides
    assert any("optimizer.lr=0.1" in p.parent.name for p in results)


@pytest.mark.parametrize(
    "override,words",
    [
        ("model=nope", "model=nope: no such option"),
        ("trainer.epoch=3", "trainer.epoch: cnnbench has no such setting. Did you mean trainer.ep"),
        ("optimizer.lr=-1", "optimizer.lr=-1.0 is not allowed: use a number > 0"),
        ("dataset.batch_size=0", "dataset.batch_size=0 is not allowed: use an integer >= 1"),
        ("trainer.device=cuda:7", "trainer.device=cuda:7"),
        ("dataset=mnist", "MNIST (train split) not found"),
        ("model=alexnet dataset.resize=32", "AlexNet takes images of at least 67x67"),
    ],
)
def test_bad_input_gives_one_clear_message(tmp_path, data_root, override, words):
    args = [*small_overrides(data_root, tmp_path / "cache"), *override.split()]
    if override == "dataset=mnist":  # an empty root: nothing to find, download off
        args.append(f"dataset.root={tmp_path / 'empty'}")
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode != 0
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_divergence_exits_non_zero_but_a_sweep_goes_on(tmp_path, data_root):
    common = [*small_overrides(data_root, tmp_path / "cache"), "model=mlp", "optimizer=sgd"]
    proc = run_cli(*common, "optimizer.lr=1e12", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1 and "diverged" in proc.stderr
    assert "optimizer.lr=1e+11" in proc.stdout  # the likely fix, in the log
    proc = run_cli(
        "-m", *common, "optimizer.lr=1e12,0.01", f"hydra.sweep.dir={tmp_path / 'sw'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    statuses = sorted(
        json.loads(p.read_text())["status"] for p in (tmp_path / "sw").glob("*/results.json")
    )
    assert statuses == ["diverged", "ok"]


def test_equal_seeds_give_equal_results_across_processes(tmp_path, data_root):
    results = []
    for name, run in (("a", cnnbench), ("b", run_cli)):  # a child process, and this one
        proc = run(
            *small_overrides(data_root, tmp_path / "cache"),
            "model=mlp",
            f"hydra.run.dir={tmp_path / name}",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads((tmp_path / name / "results.json").read_text()))
    for key in ("test_acc", "test_loss", "train_loss", "train_acc"):
        assert results[0][key] == results[1][key], key


def test_help_lists_the_groups_and_cfg_prints_the_config(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for group in ("model:", "dataset:", "optimizer:", "scheduler:", "trainer:"):
        assert group in proc.stdout
    proc = run_cli("--cfg", "job", "model=mlp", cwd=tmp_path)
    assert proc.returncode == 0 and "cnnbench.models.MLP" in proc.stdout


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="needs ../shared/data")
def test_real_mnist_mlp_one_epoch(tmp_path):
    """The issue's acceptance run: python -m cnnbench model=mlp dataset=mnist trainer.epochs=1."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        "model=mlp",
        "dataset=mnist",
        "trainer.epochs=1",
        "trainer.device=cpu",
        f"dataset.root={SHARED_DATA}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_acc"] > 0.9  # an MLP reaches about 0.95 on MNIST in one epoch


def test_summary_prints_the_layers_without_reading_data(tmp_path):
    proc = run_cli(
        "model=alexnet",
        "dataset=fashion_mnist",
        f"dataset.root={tmp_path / 'none'}",
        cwd=tmp_path,
        module="cnnbench.summary",
    )
    assert proc.returncode == 0, proc.stderr
    assert "AlexNet for Fashion-MNIST: input 1x224x224" in proc.stdout
    assert "parameters            46,764,746" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # no outputs/, no data, no cache
    proc = run_cli("model=alexnet", "dataset.resize=8", cwd=tmp_path, module="cnnbench.summary")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "dataset.resize=224" in proc.stderr


@pytest.mark.skipif(not (SHARED_DATA / "fashion-mnist").is_dir(), reason="needs ../shared/data")
def test_every_model_trains_from_the_command_line_on_real_data(tmp_path):
    """One sweep over the whole zoo: a training step and a test batch each. Plain SGD: Adam's
    two moments would triple the AlexNets' 187 MB checkpoints, seconds each to write."""
    from tests.test_models import MODELS

    proc = run_cli(
        "-m",
        f"model={','.join(MODELS)}",
        "dataset=fashion_mnist",
        f"dataset.root={SHARED_DATA}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.batch_size=8",
        "optimizer=sgd",
        "trainer.epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.eval_batch_size=8",
        "trainer.device=cpu",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/results.json")]
    assert len(results) == len(MODELS)
    assert all(r["status"] == "ok" and r["steps"] == 1 for r in results), results
