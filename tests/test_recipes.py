"""The recipe table: docs/results/<recipe>/seed<N>/ against the sources, and the README's copy."""

import json
import re
from pathlib import Path

import pytest

from cnnbench import recipes
from cnnbench.report import main as report_main

REPO = Path(__file__).resolve().parents[1]


def write_run(
    root: Path, recipe: str, seed: int, final: float, best: float, device="cpu", **trainer
) -> None:
    folder = root / recipe / f"seed{seed}"
    folder.mkdir(parents=True)
    config = {"trainer": {"seed": seed, "precision": "32", "channels_last": False, **trainer}}
    results = {
        "status": "ok",
        "test_acc": final,
        "best_test_acc": best,
        "config": config,
        "device": device,
    }
    (folder / "results.json").write_text(json.dumps(results))


def test_the_table_gives_the_median_and_range_over_seeds_and_the_gap(tmp_path, capsys):
    for seed, acc in enumerate([0.7601, 0.7715, 0.7480]):
        write_run(tmp_path, "fashion/lenet", seed, acc, acc)
    write_run(tmp_path, "fashion/resnet", 0, 0.9150, 0.9180)
    write_run(tmp_path, "d2l/resnet", 0, 0.9150, 0.9150, device="cuda:0")
    write_run(tmp_path, "fashion/nin", 0, 0.85, 0.85, precision="bf16", channels_last=True)
    (tmp_path / "fashion/nin/seed1").mkdir()
    (tmp_path / "fashion/nin/seed1/results.json").write_text('{"status": "interrupted"}')
    report_main([str(tmp_path), "--recipes"])
    printed = capsys.readouterr().out
    lenet = "[76.01% (74.80% to 77.15%, 3 seeds)]"
    assert (
        f"| `fashion/lenet` | 75.90% | {lenet}({tmp_path.as_posix()}/fashion/lenet/) | +0.1 |"
        in printed
    )
    assert "[91.50% (best 91.80%)]" in printed and "| -0.5 |" in printed
    assert "[85.00%, bf16 channels-last]" in printed  # the interrupted seed is left out
    assert "[91.50%, cuda]" in printed
    page = (tmp_path / "README.md").read_text()
    assert "](./fashion/lenet/)" in page


def test_a_folder_that_is_no_recipe_is_one_clear_error(tmp_path, capsys):
    write_run(tmp_path, "fashion/lenett", 0, 0.7, 0.7)
    with pytest.raises(SystemExit) as stop:
        report_main([str(tmp_path), "--recipes"])
    assert stop.value.code == 2
    assert "fashion/lenett is not a recipe" in capsys.readouterr().err


def test_the_readme_quotes_docs_results_as_measured():
    """Every figure the README's recipe table links to docs/results/ is what those files say."""
    readme = (REPO / "README.md").read_text()
    measured = {r.name: r for r in recipes.collect(REPO / "docs" / "results")}
    quoted = re.findall(r"\[([^\]]+)\]\(docs/results/([\w/]+)/\)", readme)
    assert quoted, "the README's recipe table links no docs/results/ folder"
    for text, name in quoted:
        assert name in measured, f"README quotes docs/results/{name}/, which holds no run"
        assert text == recipes.figure(measured[name]), name
