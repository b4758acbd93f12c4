"""The step a CUDA graph records (step.StaticStep) is the plain step: run uncaptured on the CPU,
it gives the plain step's numbers bit for bit, and cuda_graph.choose says when it is used."""

import csv
import signal

import pytest
import torch

from cnnbench import cuda_graph
from cnnbench.train import Interrupted, train
from tests.test_checkpoint import signal_at_step

# each a different part of the step: a plain net under SGD with momentum and a schedule;
# batch norm and augmentation draws; dropout and weight decay under Adam
NETS = {
    "lenet": [
        "model=lenet",
        "optimizer=sgd",
        "optimizer.momentum=0.9",
        "optimizer.nesterov=true",
        "scheduler=onecycle",
    ],
    "resnet_mini": ["model=resnet_mini", "dataset.translate=2", "dataset.flip=true"],
    "mlp_dropout": ["model=mlp", "model.dropout=0.3", "optimizer=adamw", "scheduler=cosine"],
}


def rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in ("epoch_s", "images_per_s")}
            for r in csv.DictReader(f)
        ]


def weights(run_dir) -> dict:
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    return {**ckpt["model"], **{f"opt.{k}": v for k, v in flat(ckpt["optimizer"]["state"])}}


def flat(state: dict):
    for i, entry in state.items():
        for k, v in entry.items():
            yield f"{i}.{k}", v


def assert_same_bits(a, b) -> None:
    assert rows(a) == rows(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("net", NETS)
def test_the_static_step_gives_the_plain_steps_bits(make_cfg, tmp_path, net):
    """Two epochs, each with a partial last batch (600 images in batches of 64), which the
    static step hands to the plain one. Both take torch's fused update, as a captured run does."""
    common = [*NETS[net], "trainer.epochs=2", "optimizer.fused=true", "trainer.log_every_n_steps=1"]
    plain = train(make_cfg(*common, "trainer.cuda_graph=false"), tmp_path / "plain")
    static = train(make_cfg(*common, "trainer.cuda_graph=true"), tmp_path / "static")
    assert (plain["step"], static["step"]) == ("plain", "static")
    assert_same_bits(tmp_path / "plain", tmp_path / "static")


def test_a_static_run_stopped_mid_epoch_resumes_to_the_plain_runs_bits(
    make_cfg, tmp_path, monkeypatch
):
    common = [*NETS["resnet_mini"], "trainer.epochs=2", "optimizer.fused=true"]
    train(make_cfg(*common, "trainer.cuda_graph=false"), tmp_path / "plain")
    cfg = make_cfg(*common, "trainer.cuda_graph=true")
    signal_at_step(monkeypatch, 14)  # mid-epoch 2 (10 batches an epoch)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "static")
    monkeypatch.undo()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    train(cfg, tmp_path / "static", resume=tmp_path / "static" / "last.pt")
    assert_same_bits(tmp_path / "plain", tmp_path / "static")


def choose(make_cfg, *overrides, device="cuda", world=1):
    cfg = make_cfg("trainer.precision=32", *overrides)
    return cuda_graph.choose(cfg, torch.device(device), world)


def test_auto_captures_on_cuda_and_nowhere_else(make_cfg):
    assert choose(make_cfg) == ("captured", None)
    assert choose(make_cfg, device="cpu") == ("plain", None)
    assert choose(make_cfg, "trainer.cuda_graph=false") == ("plain", None)
    kind, why = choose(make_cfg, "trainer.cuda_graph=true", device="cpu")
    assert kind == "static" and "uncaptured" in why


@pytest.mark.parametrize(
    ("overrides", "world", "reason"),
    [
        (["trainer.precision=16-mixed"], 1, "16-mixed"),
        ([], 2, "torchrun"),
        (["trainer.compile=true"], 1, "trainer.compile"),
        (["optimizer.fused=false"], 1, "optimizer.fused=false"),
        (["scheduler=onecycle", "scheduler.cycle_momentum=true"], 1, "cycle_momentum"),
    ],
)
def test_where_capture_cannot_work_the_run_says_why_and_steps_plainly(
    make_cfg, overrides, world, reason
):
    for setting in ("auto", "true"):
        kind, why = choose(make_cfg, f"trainer.cuda_graph={setting}", *overrides, world=world)
        assert kind == "plain"
        assert reason in why and "\n" not in why


def test_the_capture_layer_warms_up_records_once_and_replays_every_full_batch(
    make_cfg, tmp_path, monkeypatch, fake_capture
):
    """Two epochs of 9 full batches and a partial one: 3 warm-up steps, one recording, 15
    replays, the partial batches plainly; the numbers are the plain step's."""
    common = [*NETS["resnet_mini"], "trainer.epochs=2", "optimizer.fused=true"]
    captured = train(make_cfg(*common), tmp_path / "captured")
    assert captured["step"] == "captured"
    assert len(fake_capture) == 1 and fake_capture[0].replays == 15
    monkeypatch.setattr(cuda_graph, "choose", lambda cfg, device, world: ("plain", None))
    plain = train(make_cfg(*common), tmp_path / "plain")
    assert plain["step"] == "plain"
    assert_same_bits(tmp_path / "plain", tmp_path / "captured")


def test_a_capture_that_fails_says_so_once_and_steps_on(
    make_cfg, tmp_path, monkeypatch, caplog, fake_capture
):
    def refuse(body):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(cuda_graph, "record", refuse)
    common = [*NETS["lenet"], "trainer.epochs=2", "optimizer.fused=true"]
    results = train(make_cfg(*common), tmp_path / "failed")
    assert results["status"] == "ok" and results["step"] == "static"
    lines = [r.getMessage() for r in caplog.records if "could not be captured" in r.getMessage()]
    assert lines == [
        "trainer.cuda_graph: the step could not be captured (CUDA error: operation not "
        "permitted when stream is capturing); the plain step"
    ]
    monkeypatch.setattr(cuda_graph, "choose", lambda cfg, device, world: ("plain", None))
    train(make_cfg(*common), tmp_path / "plain")
    assert_same_bits(tmp_path / "plain", tmp_path / "failed")
