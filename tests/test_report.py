"""python -m cnnbench.report on run directories written here, without training."""

import csv
import json
import sys

import pytest

from cnnbench.report import main, pareto, report


def fake_run(folder, model, lr, accs, status="ok", wall=10.0, params=1000):
    folder.mkdir(parents=True)
    config = {"model": {"_target_": f"cnnbench.models.{model}"}, "optimizer": {"lr": lr},
              "dataset": {"name": "fashion_mnist", "root": str(folder)}}  # fmt: skip
    results = {"status": status, "model": model, "dataset": "fashion_mnist", "params": params,
               "flops_per_image": 5e5, "test_acc": accs[-1] if accs else None,
               "best_test_acc": max(accs) if accs else None, "epochs_done": len(accs),
               "wall_s": wall, "train_images_per_s": 1e4, "config": config}  # fmt: skip
    if status == "error":
        results["error"] = "ConfigError: optimizer.lr=-1 is not allowed"
    (folder / "results.json").write_text(json.dumps(results))
    with open(folder / "metrics.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["epoch", "step", "train_loss", "test_acc"])
        out.writerows([i + 1, 10 * (i + 1), 1.0 / (i + 1), a] for i, a in enumerate(accs))


@pytest.fixture
def sweep(tmp_path):
    fake_run(tmp_path / "0_lr=0.1", "MLP", 0.1, [0.80, 0.85], wall=5, params=200_000)
    fake_run(tmp_path / "1_lr=0.01", "MLP", 0.01, [0.70, 0.75], wall=6, params=200_000)
    fake_run(tmp_path / "2_lr=-1", "MLP", -1, [], status="error")
    fake_run(tmp_path / "3_lenet" / "nested", "LeNet", 0.1, [0.86, 0.88], wall=20, params=44_000)
    return tmp_path


def test_one_row_per_run_sorted_by_accuracy_with_the_differing_keys(sweep, tmp_path):
    text = report([sweep], tmp_path / "out")
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["LeNet", "MLP", "MLP", "MLP"]
    assert [r["optimizer.lr"] for r in rows] == ["0.1", "0.1", "0.01", "-1"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"]
    assert "dataset.root" not in rows[0]  # paths differ, but say nothing about the runs
    assert text.splitlines()[0].startswith("| # | optimizer.lr | model | dataset | params |")
    assert "error: ConfigError: optimizer.lr=-1 is not allowed" in text
    for name in ("report.md", "curves.png", "tradeoffs.png"):
        assert (tmp_path / "out" / name).stat().st_size > 100, name


def test_the_report_goes_into_the_first_directory_by_default(sweep, capsys):
    main([str(sweep)])
    assert (sweep / "report.csv").is_file()
    assert "| LeNet |" in capsys.readouterr().out


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_empty_or_missing_directories_get_a_clear_message(tmp_path, capsys, what):
    folder = tmp_path / "runs"
    if what == "empty":
        folder.mkdir()
    with pytest.raises(SystemExit) as exit_:
        main([str(folder)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    words = "no such directory" if what == "missing" else "no results.json below"
    assert err.startswith("cnnbench.report: error: ") and words in err


def test_an_unreadable_results_file_is_named_and_skipped(sweep, tmp_path, capsys):
    (sweep / "0_lr=0.1" / "results.json").write_text('{"status": "ok", "test_')
    report([sweep], tmp_path / "out")
    assert "skipping" in capsys.readouterr().err
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3


def test_pareto_front():
    points = [(1, 0.5), (2, 0.4), (3, 0.7), (4, 0.7), (5, 0.9), (5, 0.8)]
    assert pareto(points) == [(1, 0.5), (3, 0.7), (5, 0.9)]


@pytest.mark.slow
def test_the_report_runs_without_importing_torch(sweep, tmp_path):
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cnnbench.report", str(sweep), "--out",
         str(tmp_path / "out")], capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert (tmp_path / "out" / "report.md").is_file()
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert "cnnbench.atomic" in imported  # what the report imports of cnnbench
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
