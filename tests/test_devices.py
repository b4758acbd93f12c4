"""What depends on the device, once per device: the CPU always, CUDA where a GPU is present
(skipped elsewhere). scripts/gpu_check.sh runs this file on a machine with a GPU."""

import math

import pytest
import torch

import cnnbench.train
from cnnbench import checkpoint
from cnnbench.eval import main as evaluate_checkpoint
from cnnbench.train import Interrupted, train
from tests.test_checkpoint import signal_at_step

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
DEVICES = ["cpu", pytest.param("cuda", marks=[GPU, pytest.mark.cuda])]


def on(make_cfg, device: str, *overrides: str):
    return make_cfg(f"trainer.device={device}", "model=mlp", "trainer.epochs=1", *overrides)


@pytest.mark.parametrize("device", DEVICES)
def test_trains(make_cfg, tmp_path, device):
    results = train(on(make_cfg, device), tmp_path)
    assert results["status"] == "ok" and results["device"].startswith(device)
    assert results["test_acc"] > 0.5 and math.isfinite(results["train_loss"])


@pytest.mark.parametrize("device", DEVICES)
def test_a_deterministic_run_resumes_bit_identically(make_cfg, tmp_path, monkeypatch, device):
    run = ["model=lenet_bn", "trainer.epochs=2", "trainer.deterministic=true"]
    try:
        whole = train(on(make_cfg, device, *run), tmp_path / "whole")
        signal_at_step(monkeypatch, 13)  # mid-epoch 2
        with pytest.raises(Interrupted):
            train(on(make_cfg, device, *run), tmp_path / "stopped")
        monkeypatch.undo()
        resumed = train(
            on(make_cfg, device, *run),
            tmp_path / "stopped",
            resume=tmp_path / "stopped" / "last.pt",
        )
    finally:
        torch.use_deterministic_algorithms(False)
    for key in ("train_loss", "test_loss", "test_acc", "steps"):
        assert resumed[key] == whole[key], key


SWITCHES = [
    ["trainer.precision=bf16"],
    ["trainer.precision=16-mixed"],
    ["trainer.channels_last=true", "model=lenet_bn"],
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("switches", SWITCHES)
def test_the_engine_switches_train(make_cfg, tmp_path, device, switches):
    results = train(on(make_cfg, device, "trainer.epochs=2", *switches), tmp_path)
    assert results["status"] == "ok" and math.isfinite(results["train_loss"])
    scaler = checkpoint.load(tmp_path / "last.pt")["scaler"]
    assert bool(scaler) == ("trainer.precision=16-mixed" in switches)  # float16's loss scale


# on the CPU, test_engine's compile test trains and checks the same: a second compile there
# costs 35 s on a machine whose inductor cache is cold
@pytest.mark.parametrize("device", DEVICES[1:])
def test_compile_trains_and_saves_plain_weights(make_cfg, tmp_path, device):
    results = train(on(make_cfg, device, "trainer.compile=true"), tmp_path)
    assert results["status"] == "ok"
    names = checkpoint.load(tmp_path / "last.pt")["model"]
    assert not [n for n in names if n.startswith("_orig_mod.")]


@pytest.mark.parametrize("device", DEVICES)
def test_eval_on_the_device_gives_the_logged_accuracy(make_cfg, tmp_path, device, capsys):
    results = train(on(make_cfg, device), tmp_path / "run")
    result = evaluate_checkpoint(
        [f"ckpt={tmp_path / 'run'}", f"trainer.device={device}", f"out={tmp_path / 'eval'}"]
    )
    assert result.acc == results["test_acc"]


@pytest.mark.cuda
@GPU
def test_the_captured_step_trains_as_the_plain_step(make_cfg, tmp_path):
    """Deterministic kernels on both sides: the replayed graph runs the kernels the eager
    static step runs, so the runs agree to rounding (float32 sums in another order at most)."""
    run = [
        "model=lenet_bn",
        "trainer.epochs=2",
        "trainer.deterministic=true",
        "optimizer.fused=true",
        "dataset.translate=1",
    ]
    try:
        plain = train(on(make_cfg, "cuda", *run, "trainer.cuda_graph=false"), tmp_path / "plain")
        captured = train(on(make_cfg, "cuda", *run), tmp_path / "captured")
    finally:
        torch.use_deterministic_algorithms(False)
    assert (plain["step"], captured["step"]) == ("plain", "captured")
    assert captured["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
    assert captured["test_acc"] == pytest.approx(plain["test_acc"], abs=0.01)


@pytest.mark.cuda
@GPU
def test_a_step_that_cannot_be_captured_falls_back_in_one_line(
    make_cfg, tmp_path, monkeypatch, caplog
):
    """A model that reads a value on the host in its forward pass cannot be recorded."""
    build = cnnbench.train.build_model

    def build_with_host_read(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: inputs[0].sum().item())
        return model

    monkeypatch.setattr(cnnbench.train, "build_model", build_with_host_read)
    results = train(on(make_cfg, "cuda", "trainer.epochs=2"), tmp_path)
    assert results["status"] == "ok" and math.isfinite(results["train_loss"])
    lines = [r.message for r in caplog.records if "could not be captured" in r.message]
    assert len(lines) == 1 and "\n" not in lines[0]


@pytest.mark.cuda
@GPU
def test_a_captured_pack_trains_as_the_plain_pack(make_cfg, tmp_path):
    """A pack of three on CUDA takes the captured form (cuda_graph.CapturedPackedStep), whose
    members agree with the plain pack's to rounding, a diverging member included."""
    from cnnbench.group import train_group

    run = ["trainer.epochs=2", "trainer.deterministic=true", "optimizer=sgd"]
    run += ["optimizer.fused=true"]
    points = [("optimizer.lr=0.05",), ("optimizer.lr=1e12",), ("optimizer.lr=0.01",)]
    results = {}
    try:
        for name, graph in (("plain", "false"), ("captured", "auto")):
            cfgs = [on(make_cfg, "cuda", *run, *p, f"trainer.cuda_graph={graph}") for p in points]
            results[name] = train_group(cfgs, [tmp_path / f"{name}{i}" for i in range(3)])
    finally:
        torch.use_deterministic_algorithms(False)
    assert [r["step"] for r in results["captured"]] == ["packed-captured"] * 3
    assert [r["status"] for r in results["captured"]] == ["ok", "diverged", "ok"]
    for plain, captured in zip(results["plain"], results["captured"], strict=True):
        assert captured["status"] == plain["status"]
        if plain["status"] == "ok":
            assert captured["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
            assert captured["test_acc"] == pytest.approx(plain["test_acc"], abs=0.01)
