"""Sweeps through hydra-submitit-launcher: submitit_local runs each sweep point as a job of its
own on this machine, by the path a SLURM cluster takes (hydra/launcher=slurm)."""

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from cnnbench.config import CONFIG_DIR, setup
from tests import fake_slurm
from tests.conftest import small_overrides
from tests.test_cli import cnnbench, env


@pytest.mark.slow
def test_a_sweep_through_submitit_local_completes_and_is_reported(tmp_path, data_root):
    args = [*small_overrides(data_root, tmp_path / "cache"), "model=lenet5", "trainer.epochs=1"]
    proc = cnnbench(
        "-m", "hydra/launcher=submitit_local", "optimizer.lr=0.001,0.003", *args, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    [sweep] = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1"]
    for job in jobs:
        assert json.loads((job / "results.json").read_text())["status"] == "ok"
    # each ran as a submitit job of its own, which logged there
    assert len(list(sweep.glob(".submitit/*/*_log.out"))) == 2
    assert "sweep " in proc.stdout and "2 runs (2 ok)" in proc.stdout

    report = subprocess.run(
        [sys.executable, "-m", "cnnbench.report", str(sweep)],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    table = (sweep / "report.md").read_text()
    assert "| 0.001 |" in table and "| 0.003 |" in table


def test_the_slurm_preset_composes_with_the_documented_settings():
    # Hydra's own compose: the launcher's values are read inside its context
    setup()  # the schemas and resolvers conf/config.yaml needs
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    # the preset's values, where the plugin's defaults differ (no GPU, 60 min, 256 at once)
    assert launcher.partition is None and launcher.gpus_per_node == 1
    assert launcher.timeout_min == 120 and launcher.array_parallelism == 8
    assert (launcher.cpus_per_task, launcher.mem_gb, launcher.tasks_per_node) == (4, 16, 1)


@pytest.mark.slow
def test_hydra_launcher_slurm_submits_one_array_task_per_sweep_point(tmp_path, data_root):
    # sbatch, srun and sacct are stand-ins here (tests/fake_slurm.py); submitit, the launcher
    # and cnnbench run as they would on a cluster
    fake_slurm.install(tmp_path / "bin", tmp_path / "slurm")
    child_env = env()
    child_env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{child_env['PATH']}"
    args = [*small_overrides(data_root, tmp_path / "cache"), "model=lenet5", "trainer.epochs=1"]
    command = [
        sys.executable,
        "-m",
        "cnnbench",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.array_parallelism=1",
        "optimizer.lr=0.001,0.003",
        *args,
    ]
    proc = subprocess.run(
        command, cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    script = (tmp_path / "slurm" / f"{fake_slurm.JOB_ID}.sh").read_text()
    for line in ("--partition=debug", "--gpus-per-node=1", "--time=120", "--array=0-1%1"):
        assert f"#SBATCH {line}\n" in script, script
    [sweep] = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1"]
    for job in jobs:
        assert json.loads((job / "results.json").read_text())["status"] == "ok"
