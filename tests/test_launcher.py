"""hydra/launcher=packed: a sweep's compatible points grouped, and trained as one pack where
that is chosen; each point a full run that the report, eval and a rerun treat as any other."""

import json
import signal

import pytest

from cnnbench.config import compose, resolved
from cnnbench.group import groups
from tests.conftest import run_cli, small_overrides
from tests.test_interrupts import RUN, SAME, spawn, wait_for_epochs


def configs(*points: tuple[str, ...]) -> list[dict]:
    return [resolved(compose(list(point))) for point in points]


def test_points_that_differ_in_what_a_member_may_are_grouped():
    found = groups(
        configs(
            ("optimizer.lr=0.1", "trainer.seed=1"),
            ("optimizer.lr=0.2", "optimizer.weight_decay=0.1"),
            ("model=mlp",),  # another architecture
            ("optimizer=sgd",),  # another optimizer class
            ("trainer.label_smoothing=0.1", "model.init=xavier", "dataset.flip=true"),
            ("dataset.batch_size=64",),  # another batch size
            ("trainer.precision=16-mixed",),  # another precision; float16 packs with itself
            ("trainer.precision=16-mixed", "trainer.seed=3"),
        )
    )
    assert found == [[0, 1, 4], [2], [3], [5], [6, 7]]
    assert groups(configs(*[(f"trainer.seed={s}",) for s in range(5)]), max_members=2) == [
        [0, 1],
        [2, 3],
        [4],
    ]


def test_a_pack_holds_at_most_the_devices_default_unless_max_members_says():
    from hydra_plugins.cnnbench_launcher.packed_launcher import PackedLauncher

    task = compose(["trainer.device=cpu"])
    launcher = PackedLauncher(pack="true")
    assert launcher.packing(task) == (True, "hydra.launcher.pack=true")
    assert launcher.size() == 8
    launcher.device_type = "cuda"  # as packing() finds it on a GPU
    assert launcher.size() == 16
    assert PackedLauncher(max_members=3).size() == 3


def sweep(tmp_path, data_root, name: str, *launcher: str):
    args = [
        *small_overrides(data_root, tmp_path / "cache"),
        "trainer.epochs=1",
        "trainer.limit_train_batches=4",
        "optimizer=sgd",
        "optimizer.momentum=0.9",
    ]
    folder = tmp_path / name
    ran = run_cli(
        "-m",
        *args,
        *launcher,
        "optimizer.lr=0.01,0.05",
        "trainer.seed=0,1",
        f"hydra.sweep.dir={folder}",
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    found = {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/results.json")}
    return ran, folder, found


def test_a_packed_sweep_writes_the_runs_the_basic_launcher_writes(tmp_path, data_root):
    packed_run, folder, packed = sweep(
        tmp_path, data_root, "packed", "hydra/launcher=packed", "hydra.launcher.pack=true"
    )
    _, _, basic = sweep(tmp_path, data_root, "basic")
    assert "4 jobs in 1 groups; each group trained as one pack" in packed_run.stdout
    assert sorted(packed) == sorted(basic) and len(packed) == 4
    for name, result in packed.items():
        assert result["status"] == "ok" and result["step"] == "packed"
        assert result["train_loss"] == basic[name]["train_loss"] or (
            abs(result["train_loss"] - basic[name]["train_loss"]) < 1e-5 * basic[name]["train_loss"]
        )
        assert abs(result["test_acc"] - basic[name]["test_acc"]) <= 0.002
        for file in (".hydra/config.yaml", "metrics.csv", "last.pt", "best.pt", "train.log"):
            assert (folder / name / file).is_file(), (name, file)
        assert "epoch 1/1" in (folder / name / "train.log").read_text()
    assert run_cli(str(folder), cwd=tmp_path, module="cnnbench.report").returncode == 0
    member = next(iter(packed))
    evaluated = run_cli(f"ckpt={folder / member}", cwd=tmp_path, module="cnnbench.eval")
    assert evaluated.returncode == 0, evaluated.stderr

    before = {p: p.stat().st_mtime_ns for p in folder.glob("*/results.json")}
    # the same sweep again: every member is reported, none retrained
    sweep(tmp_path, data_root, "packed", "hydra/launcher=packed", "hydra.launcher.pack=true")
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/results.json")} == before


def test_on_this_cpu_auto_trains_the_points_one_after_another(tmp_path, data_root):
    ran, _, found = sweep(tmp_path, data_root, "auto", "hydra/launcher=packed")
    assert "one after another (cpu: packing is slower here" in ran.stdout
    assert len(found) == 4 and all(r["step"] != "packed" for r in found.values())


def test_a_member_that_cannot_start_fails_alone(tmp_path, data_root):
    ran = run_cli(
        "-m",
        *small_overrides(data_root, tmp_path / "cache"),
        "trainer.epochs=1",
        "trainer.limit_train_batches=2",
        "hydra/launcher=packed",
        "hydra.launcher.pack=true",
        "optimizer.lr=0.01,-1,0.05",
        f"hydra.sweep.dir={tmp_path / 'sw'}",
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    found = {
        json.loads(p.read_text())["config"]["optimizer"]["lr"]: json.loads(p.read_text())
        for p in (tmp_path / "sw").glob("*/results.json")
    }
    assert found[-1.0]["status"] == "error" and "optimizer.lr=-1.0" in found[-1.0]["error"]
    assert found[0.01]["step"] == found[0.05]["step"] == "packed"
    assert found[0.01]["status"] == found[0.05]["status"] == "ok"


def test_optuna_with_n_jobs_trains_its_trials_together(tmp_path, data_root):
    """The Optuna sweeper hands the launcher n_jobs trials at a time: they form one pack."""
    ran = run_cli(
        "-m",
        *small_overrides(data_root, tmp_path / "cache"),
        "trainer.epochs=1",
        "trainer.limit_train_batches=2",
        "dataset.val_size=100",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "optimizer.lr=interval(0.0001,0.03)",
        "hydra/launcher=packed",
        "hydra.launcher.pack=true",
        f"hydra.sweep.dir={tmp_path / 'search'}",
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert "2 jobs in 1 groups; each group trained as one pack" in ran.stdout
    found = [json.loads(p.read_text()) for p in (tmp_path / "search").glob("*/results.json")]
    assert len(found) == 2 and all(r["step"] == "packed" and r["status"] == "ok" for r in found)


def test_a_pack_that_does_not_fit_in_memory_is_split(tmp_path, data_root, monkeypatch):
    import torch

    from cnnbench import group

    real = group.train_group

    def small_device(cfgs, *args, **kwargs):
        if len(cfgs) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (a stand-in)")
        return real(cfgs, *args, **kwargs)

    monkeypatch.setattr(group, "train_group", small_device)
    ran, _, found = sweep(
        tmp_path, data_root, "split", "hydra/launcher=packed", "hydra.launcher.pack=true"
    )
    assert "4 members do not fit in the device's memory; packing 2 and 2" in ran.stdout
    assert len(found) == 4 and all(
        r["status"] == "ok" and r["step"] == "packed" for r in found.values()
    )


@pytest.mark.slow
def test_a_stopped_packed_sweep_resumes_every_member_exactly(tmp_path, data_root):
    """SIGTERM saves every member; the same command again ends each as a sweep never stopped."""
    args = [
        "-m",
        *small_overrides(data_root, tmp_path / "cache"),
        *RUN,
        "hydra/launcher=packed",
        "hydra.launcher.pack=true",
        "optimizer.lr=0.01,0.05",
    ]
    full = run_cli(*args, f"hydra.sweep.dir={tmp_path / 'full'}", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    stopped = [*args, f"hydra.sweep.dir={tmp_path / 'stopped'}"]
    proc = spawn(*stopped, cwd=tmp_path)
    wait_for_epochs(tmp_path / "stopped" / "0_optimizer.lr=0.01", 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    members = sorted((tmp_path / "stopped").glob("*/results.json"))
    assert [json.loads(p.read_text())["status"] for p in members] == ["interrupted"] * 2
    again = run_cli(*stopped, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for p in members:
        resumed = json.loads(p.read_text())
        reference = json.loads((tmp_path / "full" / p.parent.name / "results.json").read_text())
        assert resumed["resumed"] and resumed["step"] == "packed"
        for key in SAME:
            assert resumed[key] == reference[key], (p.parent.name, key)
