"""python -m cnnbench.bench: what it runs and what it writes (no timing is checked)."""

import json
import sys

import pytest
import torch

from cnnbench import bench, data
from cnnbench.build import device_loader
from tests.conftest import run_cli

# every record holds these; each a number above zero
POSITIVE = [
    "textbook_train_images_per_s",
    "cnnbench_train_images_per_s",
    "bare_train_images_per_s",
    "textbook_eval_images_per_s",
    "cnnbench_eval_images_per_s",
    "textbook_epoch_s",
    "cnnbench_epoch_s",
    "speedup",
    "engine_efficiency",
    "textbook_peak_mib",
    "cnnbench_peak_mib",
    "bare_peak_mib",
    "cnnbench_warmup_s",
    "train_flops_per_image",
    "cnnbench_train_flops_per_s",
    "cnnbench_peak_fraction",
    "epoch_images",
    "full_epoch_images",
]


def overrides(data_root, cache_dir) -> list[str]:
    return [
        f"dataset.root={data_root}",
        f"dataset.cache_dir={cache_dir}",
        "dataset.download=false",
        "trainer.device=cpu",
    ]


@pytest.mark.slow
def test_quick_run_prints_a_row_per_model_and_writes_json(tmp_path, data_root, cache_dir):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "--quick",
        "--no-process",
        "--json",
        str(out),
        *overrides(data_root, cache_dir),
        cwd=tmp_path,
        module="cnnbench.bench",
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["machine"]["torch_threads"] >= 1
    assert results["matmul_peak_flops_per_s"] > 0
    records = results["records"]
    assert [r["model"] for r in records] == ["lenet5", "lenet"]
    # lenet5 runs seed 000's recipe: MNIST, SGD lr 0.9, batch 256
    assert (records[0]["dataset"], records[0]["optimizer"], records[0]["lr"]) == (
        "mnist",
        "SGD",
        0.9,
    )
    assert records[0]["batch_size"] == 256
    for record in records:
        assert record["image_size"] == 28
        for key in POSITIVE:
            assert record[key] > 0, key
        # the generated training split (600 images) is shorter than 8 batches: nothing to
        # extrapolate, and every loop saw the same images
        assert record["epoch_images"] == record["full_epoch_images"] == 600
        assert not record["epoch_s_extrapolated"]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("lenet5 ") for line in lines)
    assert any(line.startswith("lenet ") for line in lines)
    assert f"results: {out}" in proc.stdout


@pytest.mark.parametrize(
    "name,extra",
    [
        ("lenet", []),
        ("lenet", ["dataset.normalize=false"]),
        ("lenet", ["dataset=cifar10"]),
        ("resnet@96", []),
    ],
)
def test_textbook_dataset_gives_the_engines_tensors(data_root, cache_dir, name, extra):
    """Both loops feed the model the same numbers: the PIL + ToTensor + Normalize pipeline and
    the DeviceLoader's on-device transform agree image by image."""
    cfg = bench.compose_config(bench.case_for(name), [*overrides(data_root, cache_dir), *extra])
    _, (images, labels) = bench.load_splits(cfg)
    textbook = bench.TextbookDataset(images, labels, bench.textbook_transform(cfg))
    loader = device_loader(cfg, (images, labels), torch.device("cpu"))
    spec = data.SPECS[cfg.dataset.name]
    # resized, PIL rounds each pixel back to a grey level; the engine keeps floats
    atol = 1.01 / 255 / min(spec.std) if cfg.dataset.resize else 1e-5
    for i in (0, 7, len(labels) - 1):
        x, y = textbook[i]
        assert y == labels[i]
        torch.testing.assert_close(x, loader.transform(images[i : i + 1])[0], atol=atol, rtol=0)


def test_cases_name_a_model_and_a_size():
    assert bench.case_for("resnet@96").overrides[:2] == ("model=resnet", "dataset.resize=96")
    other = bench.case_for("vgg11@64")
    assert other.overrides == ("model=vgg11", "dataset.resize=64")
    assert (other.train_batches, other.test_batches) == bench.OTHER_BATCHES


@pytest.mark.parametrize(
    "args,words",
    [
        (["trainer.epoch=3"], "trainer.epoch"),
        (["--models", "nope"], "model=nope: no such option"),
        (["optimizer.lr=-1"], "optimizer.lr=-1.0 is not allowed"),
        (["--models", "alexnet@28"], "AlexNet takes images of at least 67x67"),
    ],
)
def test_bad_input_is_one_message_and_exit_2(capsys, data_root, cache_dir, args, words):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--quick", *overrides(data_root, cache_dir), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnbench.bench: error: ") and words in err


def test_missing_data_is_one_message_and_exit_2(capsys, tmp_path, cache_dir):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--quick", *overrides(tmp_path / "empty", cache_dir)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnbench.bench: error: MNIST (train split) not found")


@pytest.mark.slow
def test_ablation_measures_every_switch_side_by_side(tmp_path, data_root, cache_dir, monkeypatch):
    # the table's mechanics, not the compiler: test_engine trains a compiled model for real
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    out = tmp_path / "ablation.json"
    results = bench.main(
        [
            "--ablation",
            "--quick",
            "--models",
            "lenet",
            "--json",
            str(out),
            *overrides(data_root, cache_dir),
            "dataset.batch_size=32",  # bf16 on a CPU without bf16 units is slow
        ]
    )
    rows = json.loads(out.read_text())["ablation"]
    assert rows == results["ablation"]
    assert [r["choice"] for r in rows] == [
        "glibc keeps freed memory (defaults)",
        "glibc keeps freed memory (trainer.precision=bf16)",
        "no .item() per step (bare loop)",
        *bench.SWITCHES,
    ]
    for r in rows:
        assert r["model"] == "lenet"
        assert r["with_images_per_s"] > 0 and r["without_images_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["with_images_per_s"] / r["without_images_per_s"])


def test_the_peak_is_measured_in_the_runs_compute_dtype(make_cfg, monkeypatch):
    """bf16 work against a float32 peak could pass 100%."""
    from cnnbench.bench import compare

    asked = []
    monkeypatch.setattr(
        compare, "matmul_peak_flops", lambda device, dtype=None: asked.append(dtype) or 1e9
    )
    peaks = {}
    cpu = torch.device("cpu")
    for precision in ("bf16", "bf16", "16-mixed", "32"):
        compare.peak_for(make_cfg(f"trainer.precision={precision}"), cpu, peaks)
    assert asked == [torch.bfloat16, torch.float16, None]  # once per compute dtype
    torch.set_float32_matmul_precision("highest")


@pytest.mark.slow
def test_the_textbook_program_trains_lenet5_alone(data_root):
    from cnnbench.bench import process

    wall, out = process.timed(
        [
            sys.executable,
            str(process.TEXTBOOK),
            "--root",
            str(data_root),
            "--epochs",
            "1",
            "--limit-batches",
            "2",
        ]
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert wall > 0 and len(result["epochs"]) == 1 and 0 <= result["test_acc"] <= 1


@pytest.mark.slow
def test_startup_is_measured_against_import_torch(data_root, cache_dir):
    from cnnbench.bench import process

    common = [o for o in overrides(data_root, cache_dir) if not o.startswith("trainer.device")]
    s = process.startup(common, repeats=1)
    assert s["import_torch_s"] > 0 and s["torch_first_step_s"] > 0
    assert s["cnnbench_first_step_s"] == s["phases_s"]["total_s"] > 0
    assert {"hydra_s", "import_train_s", "data_s", "model_s", "writer_s"} <= set(s["phases_s"])


def test_process_only_writes_just_the_whole_process_section(
    tmp_path, data_root, cache_dir, monkeypatch
):
    calls = []
    monkeypatch.setattr(
        bench, "whole_process", lambda cfg, o, quick: calls.append(quick) or {"startup": {}}
    )
    out = tmp_path / "p.json"
    bench.main(["--process-only", "--quick", "--json", str(out), *overrides(data_root, cache_dir)])
    written = json.loads(out.read_text())
    assert calls == [True] and written["process"] == {"startup": {}}
    assert "records" not in written and "--process-only" in written["command"]


def test_the_whole_process_section_waits_for_the_load_to_fall(monkeypatch):
    from cnnbench.bench import whole

    loads = iter([2.4, 1.9, 1.2])
    monkeypatch.setattr(whole, "load", lambda: next(loads))
    monkeypatch.setattr(whole.time, "sleep", lambda s: None)
    whole.settle(cores=2)
    with pytest.raises(StopIteration):  # it stopped asking once the load was 1.2
        whole.load()


def test_a_gpu_trains_the_large_models_at_their_recipes_batch_size():
    cpu = bench.case_for("resnet@96")
    gpu = bench.for_gpu(cpu)
    assert "dataset.batch_size=64" in cpu.overrides
    assert gpu.overrides == ("model=resnet", "dataset.resize=96")  # batch 256, the default
    assert gpu.train_batches == cpu.train_batches * bench.GPU_BATCHES
    assert bench.for_gpu(cpu, scale=1).train_batches == cpu.train_batches
    lenet5 = bench.case_for("lenet5")
    assert bench.for_gpu(lenet5) == lenet5  # a whole epoch already


def test_without_the_joblib_extra_the_sweep_is_skipped_in_one_line(make_cfg, monkeypatch, capsys):
    """The whole-process section runs without the optional launchers and says what it left out."""
    from cnnbench.bench import whole

    real = whole.importlib.util.find_spec

    def find_spec(name: str):
        if name.startswith("hydra_plugins"):  # as without any Hydra plugin installed
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")
        return real(name)

    monkeypatch.setattr(whole.importlib.util, "find_spec", find_spec)
    calls = []
    for part in ("startup", "concurrency", "textbook_ratio", "recipe"):
        monkeypatch.setattr(
            whole, part, lambda *a, part=part, **k: calls.append(part) or FAKE[part]
        )
    monkeypatch.setattr(whole, "sweep", lambda *a, **k: pytest.fail("the sweep needs joblib"))
    out = whole.whole_process(make_cfg(), [], quick=True)
    assert out["sweep"] is None and calls == ["startup", "concurrency", "textbook_ratio", "recipe"]
    assert "2-job sweep: skipped, hydra/launcher=joblib is not installed" in capsys.readouterr().out


# what each whole-process measurement returns, in the shape the printed lines read
FAKE = {
    "startup": {
        "cnnbench_first_step_s": 1.0,
        "import_torch_s": 0.5,
        "gap_s": 0.5,
        "torch_first_step_s": 0.6,
        "phases_s": {"data_s": 0.1},
    },
    "concurrency": {
        "two_images_per_s": [1.0, 1.0],
        "alone_images_per_s": 1.0,
        "two_total_over_alone": 2.0,
        "before_two_images_per_s": [1.0, 1.0],
        "before_alone_images_per_s": 1.0,
        "before_two_total_over_alone": 2.0,
        "alone_over_before": 1.0,
        "alone_one_thread_images_per_s": 1.0,
        "two_one_thread_over_alone": 2.0,
    },
    "textbook_ratio": {
        "epochs": 1,
        "pairs": [{"textbook_s": 2.0, "cnnbench_s": 1.0}],
        "median_ratio": 2.0,
        "textbook_epoch1_s": 1.0,
    },
    "recipe": {
        "runs": [{"seed": 0, "test_acc": 0.99, "wall_s": 1.0}],
        "median_test_acc": 0.99,
        "median_wall_s": 1.0,
    },
}
