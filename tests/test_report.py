"""python -m cnnbench.report on run directories written here, without training."""

import csv
import json
import statistics
import sys

import pytest

from cnnbench import stats
from cnnbench.report import main, pareto, report
from cnnbench.runs import confusion_csv


def fake_run(folder, model, lr, accs, status="ok", wall=10.0, params=1000, seed=0):
    folder.mkdir(parents=True)
    config = {
        "model": {"_target_": f"cnnbench.models.{model}"},
        "optimizer": {"lr": lr},
        "dataset": {"name": "fashion_mnist", "root": str(folder)},
        "trainer": {"seed": seed},
    }
    results = {
        "status": status,
        "model": model,
        "dataset": "fashion_mnist",
        "params": params,
        "flops_per_image": 5e5,
        "test_acc": accs[-1] if accs else None,
        "best_test_acc": max(accs) if accs else None,
        "epochs_done": len(accs),
        "wall_s": wall,
        "train_images_per_s": 1e4,
        "config": config,
    }
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
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "cnnbench.report",
            str(sweep),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / "out" / "report.md").is_file()
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert "cnnbench.atomic" in imported  # what the report imports of cnnbench
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]


def test_the_run_directory_is_a_column(sweep, tmp_path):
    text = report([sweep], tmp_path / "out")
    assert text.splitlines()[2].endswith("| 3_lenet/nested |")
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["run_dir"] == str(sweep / "3_lenet" / "nested")


# 2 models x 3 seeds: (final test accuracy per epoch, wall s) of each seed
SEEDED = {
    "LeNet": [([0.70, 0.75], 20.0), ([0.72, 0.74], 22.0), ([0.69, 0.71], 19.0)],
    "ResNetMini": [([0.85, 0.88], 50.0), ([0.86, 0.87], 55.0), ([0.87, 0.89], 52.5)],
}


@pytest.fixture
def seeded(tmp_path):
    for m, (model, runs) in enumerate(SEEDED.items()):
        for seed, (accs, wall) in enumerate(runs):
            folder = tmp_path / "sweep" / f"{2 * seed + m}_model={model},trainer.seed={seed}"
            fake_run(folder, model, 0.001, accs, wall=wall, seed=seed)
    fake_run(tmp_path / "sweep" / "9_alone", "MLP", 0.001, [0.8], wall=5.0)  # no other seed
    return tmp_path / "sweep"


def test_runs_that_differ_only_in_the_seed_are_grouped_with_mean_and_std(seeded, tmp_path):
    text = report([seeded], tmp_path / "out")
    with open(tmp_path / "out" / "groups.csv", newline="") as f:
        groups = list(csv.DictReader(f))
    assert [(g["group"], g["model"], g["n"], g["seeds"]) for g in groups] == [
        ("G1", "ResNetMini", "3", "0 1 2"),
        ("G2", "LeNet", "3", "0 1 2"),
    ]
    for g, model in zip(groups, ("ResNetMini", "LeNet"), strict=True):
        final = [accs[-1] for accs, _ in SEEDED[model]]
        best = [max(accs) for accs, _ in SEEDED[model]]
        wall = [w for _, w in SEEDED[model]]
        for key, values in (("test_acc", final), ("best_test_acc", best), ("wall_s", wall)):
            assert float(g[f"{key}_mean"]) == pytest.approx(statistics.mean(values), abs=1e-12)
            assert float(g[f"{key}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    # Welch's t-test of LeNet's final accuracies (0.75, 0.74, 0.71) against ResNetMini's
    # (0.88, 0.87, 0.89): the reference values are scipy.stats.ttest_ind(equal_var=False)'s
    assert float(groups[1]["welch_t_vs_g1"]) == pytest.approx(-10.999999999999986, rel=1e-9)
    assert float(groups[1]["welch_p_vs_g1"]) == pytest.approx(0.0019418870115703996, rel=1e-9)
    assert "| G2 | LeNet | fashion_mnist | #5 #6 #7 | 3 | 0 1 2 | 0.7333 ± 0.0208 |" in text
    assert "real (p < 0.05)" in text and "Welch's two-sided t-test" in text
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 7  # every run still has its row


def test_a_difference_within_the_noise_says_so(tmp_path):
    for seed, (a, b) in enumerate([(0.80, 0.81), (0.84, 0.80), (0.82, 0.83)]):
        fake_run(tmp_path / "s" / f"a{seed}", "MLP", 0.1, [a], seed=seed)
        fake_run(tmp_path / "s" / f"b{seed}", "MLP", 0.01, [b], seed=seed)
    text = report([tmp_path / "s"], tmp_path / "out")
    assert "| G2 | 0.01 | MLP |" in text and "within the noise" in text
    with open(tmp_path / "out" / "groups.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:8] == [
        "group",
        "optimizer.lr",
        "model",
        "dataset",
        "runs",
        "n",
        "seeds",
        "best_test_acc_mean",
    ]
    assert rows[0][-1] == "welch_p_vs_g1" and {len(r) for r in rows} == {len(rows[0])}
    g2 = dict(zip(rows[0], rows[2], strict=True))
    assert (g2["optimizer.lr"], g2["model"], g2["n"], g2["seeds"]) == ("0.01", "MLP", "3", "0 1 2")
    assert float(g2["test_acc_mean"]) == pytest.approx(statistics.mean([0.81, 0.80, 0.83]))


def test_seeds_are_ordered_by_number(tmp_path):
    for seed, acc in ((10, 0.80), (2, 0.81), (1, 0.82)):
        fake_run(tmp_path / "s" / f"seed{seed}", "MLP", 0.1, [acc], seed=seed)
    text = report([tmp_path / "s"], tmp_path / "out")
    with open(tmp_path / "out" / "groups.csv", newline="") as f:
        assert next(csv.DictReader(f))["seeds"] == "1 2 10"
    assert "| 3 | 1 2 10 |" in text


def test_each_runs_most_confused_pairs_side_by_side_and_in_a_figure(sweep, tmp_path):
    classes = ["a", "b", "c", "d"]
    matrix = [[50, 9, 1, 0], [3, 60, 0, 0], [0, 7, 40, 7], [0, 0, 2, 70]]
    for run in ("0_lr=0.1", "1_lr=0.01"):
        (sweep / run / "confusion_matrix.csv").write_text(confusion_csv(matrix, classes))
    text = report([sweep], tmp_path / "out")
    assert "| 2 | 0.1 | MLP | a ↔ b: 12 | c ↔ d: 9 | c ↔ b: 7 |" in text
    assert (tmp_path / "out" / "confusions.png").stat().st_size > 5000


def test_welch_and_the_interval_against_reference_values():
    """The references: Welch's formulas by hand (t, df) and scipy.stats 1.17's p and t quantile
    (2.7764451051977934 for 0.975 at 4 degrees of freedom)."""
    xs = [0.80, 0.82, 0.85, 0.81, 0.83]
    low, high = stats.interval95(xs)
    half = 2.7764451051977934 * statistics.stdev(xs) / 5**0.5
    assert (low, high) == pytest.approx((statistics.mean(xs) - half, statistics.mean(xs) + half))
    test = stats.welch([0.81, 0.83, 0.82], [0.75, 0.74, 0.78])
    assert (test.t, test.df, test.p) == pytest.approx(
        (4.749999999999994, 2.876404494382014, 0.019459351754698248), rel=1e-10
    )
    assert stats.welch([0.8, 0.8], [0.8, 0.8]).p == 1.0
    assert stats.welch([0.8, 0.8], [0.7, 0.7]).p == 0.0
    assert stats.welch([0.8], [0.7, 0.75]) is None
