"""The GPU check's one table, from what scripts/gpu_check.sh left in its work folder:

    python tools/gpu_summary.py WORK_DIR      # prints the table, writes WORK_DIR/summary.json

Each row is a figure with the issue's target beside it, or a step that ran (ok or failed).
A part that did not run shows as missing; nothing is filled in.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def runs(folder: Path) -> list[dict]:
    """The results.json of each run under `folder` (a sweep's jobs), with its metrics.csv rows."""
    found = []
    for path in sorted(folder.glob("**/results.json")):
        result = json.loads(path.read_text())
        with open(path.parent / "metrics.csv", newline="") as f:
            result["rows"] = list(csv.DictReader(f))
        found.append(result)
    return found


def tests_row(work: Path) -> tuple[str, str, str]:
    path = work / "tests.xml"
    if not path.is_file():
        return ("device tests", "missing", "all pass")
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n, fails, errors, skips = (
        int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")
    )
    figure = f"{n - fails - errors - skips} passed, {fails + errors} failed, {skips} skipped"
    return ("device tests (test_devices, test_step, torchrun)", figure, "all pass")


def later_epochs_s(result: dict) -> float:
    """The median epoch time after the first (which pays for warm-up, autotuning, capture)."""
    times = [float(r["epoch_s"]) for r in result["rows"]]
    return statistics.median(times[1:] or times)


def lenet5_rows(work: Path) -> list[tuple[str, str, str]]:
    rows = []
    for result in runs(work / "lenet5"):
        step = result["step"]
        figure = (
            f"{later_epochs_s(result):.3f} s an epoch (epoch 1: "
            f"{float(result['rows'][0]['epoch_s']):.2f} s), test acc {result['test_acc']:.4f}"
        )
        target = "<= 0.12 s" if step == "captured" else "(the plain step, for comparison)"
        rows.append((f"LeNet-5 MNIST epoch, batch 256, {step} step", figure, target))
    return rows or [("LeNet-5 MNIST epoch", "missing", "<= 0.12 s")]


def fast_mnist_row(work: Path) -> tuple[str, str, str]:
    found = runs(work / "fast_mnist")
    if not found:
        return ("fast_mnist, 5 seeds", "missing", ">= 99.0% mean, <= 0.5 s training")
    accs = [r["test_acc"] for r in found]
    train_s = [r["train_s"] for r in found]
    figure = (
        f"mean {100 * statistics.mean(accs):.2f}% (min {100 * min(accs):.2f}%), training "
        f"{statistics.mean(train_s):.2f} s mean, {max(train_s):.2f} s max, "
        f"{len(found)} seeds, {found[0]['step']} step"
    )
    return ("fast_mnist", figure, ">= 99.0% mean, <= 0.5 s training")


def resnet_rows(work: Path) -> list[tuple[str, str, str]]:
    rows = []
    for result in runs(work / "fashion_resnet"):
        first, *rest = result["rows"]
        later = f", epoch 2 {float(rest[0]['images_per_s']):,.0f} img/s" if rest else ""
        figure = (
            f"epoch 1 {float(first['images_per_s']):,.0f} img/s{later}; test acc "
            f"{result['test_acc']:.4f} after {len(result['rows'])} epochs"
        )
        rows.append(
            (
                f"fashion/resnet (ResNet-18 at 96), {result['precision']}, {result['step']}",
                figure,
                ">= 38,000 img/s (bf16)" if result["precision"] == "bf16" else "",
            )
        )
    return rows or [("fashion/resnet", "missing", "")]


def bench_rows(work: Path) -> list[tuple[str, str, str]]:
    path = work / "bench.json"
    if not path.is_file():
        return [("bench (lenet5, resnet@96)", "missing", "")]
    bench = json.loads(path.read_text())
    rows = []
    for r in bench["records"]:
        if "error" in r:
            rows.append((f"bench {r['model']}", r["error"], ""))
            continue
        plain = r.get("cnnbench_plain_train_images_per_s")
        figure = (
            f"engine {r['cnnbench_train_images_per_s']:,.0f} img/s ({r['cnnbench_step']}), "
            f"plain step {plain:,.0f}, "
            if plain
            else f"engine {r['cnnbench_train_images_per_s']:,.0f} img/s, "
        )
        figure += (
            f"bare loop {r['bare_train_images_per_s']:,.0f}, engine/bare "
            f"{r['engine_efficiency']:.2f}, textbook {r['textbook_train_images_per_s']:,.0f}"
        )
        rows.append(
            (f"bench {r['case']}, batch {r['batch_size']}, float32", figure, "engine/bare >= 0.9")
        )
    for r in bench.get("bf16", []):
        rows.append(
            (
                f"bench {r['model']}, {' '.join(r['switches'])} ({r['precision']})",
                f"{r['images_per_s']:,.0f} img/s",
                ">= 38,000 img/s",
            )
        )
    return rows


def quick_row(work: Path) -> tuple[str, str, str]:
    path = work / "bench-quick.json"
    if not path.is_file():
        return ("bench --quick", "missing", "runs, < 1 min")
    quick = json.loads(path.read_text())
    skipped = "joblib sweep skipped" if (quick.get("process") or {}).get("sweep") is None else ""
    return (
        "bench --quick",
        f"{len(quick['records'])} models; {skipped}".strip("; "),
        "runs, < 1 min",
    )


def packed_rows(work: Path) -> list[tuple[str, str, str]]:
    """Issue 30: the same sweep with the basic launcher and packed (tools/packed_sweep.py)."""
    path = work / "packed_sweep.json"
    if not path.is_file():
        return [("packed sweep", "missing", ">= 4x the basic launcher (LeNet-5 x16)")]
    measured = json.loads(path.read_text())
    rows = []
    for name, s in measured["sweeps"].items():
        figure = (
            f"basic {s['basic']:.1f} s, packed {s['packed']:.1f} s "
            f"({s['basic'] / s['packed']:.2f}x), auto {s['auto']:.1f} s "
            f"({s['basic'] / s['auto']:.2f}x), {measured['epochs']} epochs"
        )
        target = ">= 4x the basic launcher" if name.startswith("lenet5") else ""
        rows.append((f"packed sweep {name}", figure, target))
    return rows


def steps_rows(work: Path) -> list[tuple[str, str, str]]:
    path = work / "steps.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [(*line.split("\t"), "") for line in lines]


def main(work: Path) -> None:
    rows = [
        *steps_rows(work),
        tests_row(work),
        quick_row(work),
        *bench_rows(work),
        *lenet5_rows(work),
        fast_mnist_row(work),
        *resnet_rows(work),
        *packed_rows(work),
    ]
    device = (work / "device.txt").read_text().strip() if (work / "device.txt").is_file() else "?"
    print(f"\n## GPU check: {device}\n\n| what | measured | target |\n| --- | --- | --- |")
    for what, figure, target in rows:
        print(f"| {what} | {figure} | {target} |")
    (work / "summary.json").write_text(json.dumps({"device": device, "rows": rows}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
