"""Named sweeps (conf/sweep/) and the names of a sweep's job directories, which TensorBoard
shows as run names."""

import csv

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from cnnbench.cli import check_overrides
from cnnbench.config import CONFIG_DIR, compose, validate
from cnnbench.rundir import job_name
from tests.conftest import run_cli, small_overrides


def test_a_named_sweep_runs_its_list_and_names_each_job_by_what_varies(tmp_path, data_root):
    args = [
        *small_overrides(data_root, tmp_path / "cache"),
        "sweep=seeds",
        "model=mlp",
        "trainer.epochs=1",
        "trainer.limit_train_batches=2",
    ]
    ran = run_cli(*args, cwd=tmp_path)  # no -m: the sweep file sets hydra.mode=MULTIRUN
    assert ran.returncode == 0, ran.stderr
    [sweep] = (tmp_path / "outputs" / "multirun").iterdir()
    assert "sweep=seeds__model=mlp__" in sweep.name and "root" not in sweep.name  # no paths
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_trainer.seed=0", "1_trainer.seed=1", "2_trainer.seed=2"]
    assert run_cli(str(sweep), cwd=tmp_path, module="cnnbench.report").returncode == 0
    with open(sweep / "groups.csv", newline="") as f:
        [group] = list(csv.DictReader(f))
    assert (group["model"], group["n"], group["seeds"]) == ("MLP", "3", "0 1 2")
    assert (sweep / "0_trainer.seed=0" / "confusion_matrix.csv").is_file()


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "sweep").glob("*.yaml")))
def test_every_job_of_a_named_sweep_composes_and_validates(name):
    params = compose([f"sweep={name}"], hydra_config=True).hydra.sweeper.params
    assert params, name
    for key, values in params.items():
        [override] = OverridesParser.create().parse_overrides([f"{key}={values}"])
        for value in override.sweep_string_iterator():
            validate(compose([f"sweep={name}", f"{key}={value}"]))


def test_a_bad_value_in_a_sweep_is_refused_before_the_first_job(tmp_path):
    ran = run_cli("-m", "sweep=small_models", "model=lenet,resnt", cwd=tmp_path)
    assert ran.returncode == 2 and "model=resnt: no such option" in ran.stderr
    assert not (tmp_path / "outputs").exists()


def test_job_names_keep_what_varies():
    args = "-m model=lenet,mlp dataset=mnist trainer.epochs=3 dataset.root=/data hydra.x=1"
    task = ["model=lenet", "dataset=mnist", "trainer.epochs=3", "dataset.root=/data"]
    assert job_name(0, args, task) == "0_model=lenet"
    # a sweep file's list (trainer.seed) is not on the command line: it varies
    task = ["trainer.seed=1", "sweep=seeds", "model=lenet"]
    assert job_name(4, "sweep=seeds model=lenet", task) == "4_trainer.seed=1"
    task = ["optimizer=sgd", "optimizer.lr=0.1"]
    assert job_name(2, "-m", task) == "2_optimizer.lr=0.1,optimizer=sgd"
    assert job_name(1, "model=mlp", ["model=mlp"]) == "1"
    assert job_name(3, "", ["experiment=fashion/lenet"]) == "3_experiment=fashion_lenet"


def test_an_interval_or_glob_is_left_to_the_sweeper_and_the_rest_is_checked(tmp_path):
    check_overrides(["-m", "optimizer.lr=interval(0.001,0.1)", "model=glob(le*)"])  # no error
    ran = run_cli("-m", "optimizer.lr=interval(0.001,0.1)", "model=resnt", cwd=tmp_path)
    assert ran.returncode == 2 and "model=resnt: no such option" in ran.stderr
