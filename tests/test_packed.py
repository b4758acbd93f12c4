"""Models trained as a pack (packed.py) against the same models trained one by one: the
members' losses and weights agree to rounding, batch norm keeps each member's statistics, and
a member that diverges changes nothing for the others. LeNet is the plain net, LeNet-BN the
one with batch norm (ResNet-mini, the course's, has none)."""

import copy
import csv
import json

import pytest
import torch
from torch import nn

from cnnbench import checkpoint, cuda_graph
from cnnbench.build import build_model
from cnnbench.group import train_group
from cnnbench.packed import Pack, PackedStep
from cnnbench.train import Interrupted, train
from tests.test_checkpoint import signal_at_step
from tests.test_step import assert_same_bits

STEPS = 6
BATCH = 16


def members(make_cfg, model: str, n: int) -> list[nn.Module]:
    cfg = make_cfg(f"model={model}", "dataset=mnist")
    built = []
    for seed in range(n):
        torch.manual_seed(seed)
        built.append(build_model(cfg, torch.device("cpu")))
    return built


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS batches for each of n members: (n, BATCH, 1, 28, 28) images, (n, BATCH) labels."""
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, BATCH, 1, 28, 28, generator=g),
            torch.randint(0, 10, (n, BATCH), generator=g),
        )
        for _ in range(STEPS)
    ]


def sgd(model: nn.Module, lr: float, fused: bool | None = None) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, fused=fused)


def solo_losses(model: nn.Module, lr: float, data, i: int) -> list[float]:
    model.train()
    opt, losses = sgd(model, lr), []
    for images, labels in data:
        loss = nn.functional.cross_entropy(model(images[i]), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def packed_losses(
    models: list[nn.Module], lrs: list[float], data, on_device: bool = False
) -> tuple[list[list[float]], PackedStep]:
    pack = Pack(models)
    pack.train()
    fused = True if on_device else None  # found_inf: torch's fused update
    optimizers = [sgd(m, lr, fused) for m, lr in zip(models, lrs, strict=True)]
    step = PackedStep(pack, optimizers, on_device=on_device)
    return [step(images, labels).tolist() for images, labels in data], step


@pytest.mark.parametrize("model", ["lenet", "lenet_bn", "resnet_mini"])
def test_members_train_as_their_solo_runs(make_cfg, model):
    lrs = [0.05, 0.01, 0.1]
    built = members(make_cfg, model, len(lrs))
    solo = [copy.deepcopy(m) for m in built]
    data = batches(len(lrs))
    per_step, _ = packed_losses(built, lrs, data)
    for i, lr in enumerate(lrs):
        alone = solo_losses(solo[i], lr, data, i)
        assert [row[i] for row in per_step] == pytest.approx(alone, rel=1e-5, abs=1e-6)
        theirs = solo[i].state_dict()
        for name, tensor in built[i].state_dict().items():
            # batch norm's running statistics included: each member keeps its own. Measured:
            # within 1.6e-6 (LeNet-BN), losses within 5e-7
            assert torch.allclose(tensor.float(), theirs[name].float(), atol=1e-5), name


def test_each_member_is_an_ordinary_module_whose_state_saves_alone(make_cfg):
    built = members(make_cfg, "lenet_bn", 2)
    pack = Pack(built)
    name, weight = next(built[1].named_parameters())
    assert weight.untyped_storage().data_ptr() == pack.params[name].untyped_storage().data_ptr()
    saved = pack.state_dict(1)
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in saved.values())
    fresh = members(make_cfg, "lenet_bn", 1)[0]
    fresh.load_state_dict(saved)  # an ordinary single-model state
    built[1].eval()
    fresh.eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(built[1](x), fresh(x))


@pytest.mark.parametrize("on_device", [False, True])
def test_a_diverging_member_stops_and_changes_nothing_for_the_others(make_cfg, on_device):
    """On the host (the loss read each step) or on the device (found_inf, no host sync)."""
    data = batches(3)
    runs = {}
    for name, lrs in (("sane", [0.05, 0.01, 0.1]), ("one diverges", [0.05, 1e12, 0.1])):
        built = members(make_cfg, "lenet", 3)
        per_step, step = packed_losses(built, lrs, data, on_device)
        runs[name] = (built, per_step, step)
    sane, wild = runs["sane"], runs["one diverges"]
    assert wild[2].alive() == [True, False, True]
    assert sane[2].alive() == [True, True, True]
    for i in (0, 2):
        assert [r[i] for r in wild[1]] == [r[i] for r in sane[1]]  # bit for bit
        for a, b in zip(wild[0][i].parameters(), sane[0][i].parameters(), strict=True):
            assert torch.equal(a, b)
    frozen = [p.clone() for p in wild[0][1].parameters()]
    wild[2](*data[0])  # a diverged member is updated no more
    assert all(torch.equal(a, b) for a, b in zip(frozen, wild[0][1].parameters(), strict=True))


def test_dropout_draws_a_mask_per_member(make_cfg):
    cfg = make_cfg("model=mlp", "dataset=mnist", "model.dropout=0.5")
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"))
    pack = Pack([copy.deepcopy(model) for _ in range(3)])  # the same weights three times
    images = torch.randn(1, BATCH, 1, 28, 28).expand(3, -1, -1, -1, -1)
    pack.train()
    logits = pack(images)
    assert not torch.equal(logits[0], logits[1]) and not torch.equal(logits[1], logits[2])
    pack.train(False)  # evaluation: no dropout, every member as the model alone
    model.eval()
    assert torch.allclose(pack(images)[2], model(images[2]), atol=1e-6)


# ---------------------------------------------------------------------------- whole runs


def csv_rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", ["lenet", "lenet_bn"])
def test_a_group_writes_each_run_as_its_solo_run(make_cfg, tmp_path, model):
    """Three runs (learning rates, seeds, label smoothing) trained as one group, against the
    same three trained alone by train(): the same files, the same curves to rounding."""
    points = [
        ("optimizer.lr=0.01", "trainer.seed=0"),
        ("optimizer.lr=0.003", "trainer.seed=1"),
        ("optimizer.lr=0.01", "trainer.seed=2", "trainer.label_smoothing=0.1"),
    ]
    common = (f"model={model}", "optimizer=sgd", "optimizer.momentum=0.9")
    common += ("trainer.limit_train_batches=5",)
    cfgs = [make_cfg(*common, *point) for point in points]
    packed = train_group(cfgs, [tmp_path / f"packed{i}" for i in range(3)])
    for i, point in enumerate(points):
        alone = train(make_cfg(*common, *point), tmp_path / f"alone{i}")
        together = packed[i]
        assert together["status"] == alone["status"] == "ok"
        assert together["step"] == "packed"
        # measured after 10 SGD steps: weights and running statistics within 2e-7 of the
        # solo run's. (Adam magnifies the last-bit differences: a conv bias before batch
        # norm, whose gradient is rounding noise, ends 0.08 apart; test loss 5e-4 relative.)
        for key in ("train_loss", "test_loss"):
            assert together[key] == pytest.approx(alone[key], rel=1e-5), key
        assert abs(together["test_acc"] - alone["test_acc"]) <= 0.002  # a test image or so
        rows = csv_rows(tmp_path / f"packed{i}"), csv_rows(tmp_path / f"alone{i}")
        assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]]
        for name in ("last.pt", "best.pt", "results.json"):
            assert (tmp_path / f"packed{i}" / name).is_file(), name
        ckpt = checkpoint.load(tmp_path / f"packed{i}" / "last.pt")  # an ordinary checkpoint
        solo_size = (tmp_path / f"alone{i}" / "last.pt").stat().st_size
        assert (tmp_path / f"packed{i}" / "last.pt").stat().st_size == pytest.approx(
            solo_size, rel=0.01
        )
        assert ckpt["config"]["trainer"]["seed"] == i


def test_a_member_that_diverges_is_recorded_and_the_others_finish(make_cfg, tmp_path):
    common = ("model=mlp", "optimizer=sgd", "trainer.limit_train_batches=5")
    cfgs = [make_cfg(*common, f"optimizer.lr={lr}") for lr in (0.05, 1e12, 0.01)]
    results = train_group(cfgs, [tmp_path / str(i) for i in range(3)])
    assert [r["status"] for r in results] == ["ok", "diverged", "ok"]
    alone = train(make_cfg(*common, "optimizer.lr=0.05"), tmp_path / "alone")
    assert results[0]["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-5)


# mid-epoch 1, mid-epoch 2; the plain pack, and the static one a CUDA graph records
@pytest.mark.parametrize(
    ("step", "form"),
    [
        (3, "trainer.cuda_graph=false"),
        (7, "trainer.cuda_graph=false"),
        (7, "trainer.cuda_graph=true"),
    ],
)
def test_a_stopped_group_resumes_every_member_exactly(make_cfg, tmp_path, monkeypatch, step, form):
    common = ("model=lenet", "optimizer=sgd", "optimizer.momentum=0.9", form)
    common += ("trainer.limit_train_batches=5", "scheduler=cosine")
    cfgs = [
        make_cfg(*common, f"optimizer.lr={lr}", f"trainer.seed={i}")
        for i, lr in enumerate((0.05, 0.01))
    ]
    full = train_group(cfgs, [tmp_path / f"full{i}" for i in range(2)])
    dirs = [tmp_path / f"stopped{i}" for i in range(2)]
    signal_at_step(monkeypatch, step)
    with pytest.raises(Interrupted):
        train_group(cfgs, dirs)
    for d in dirs:
        assert json.loads((d / "results.json").read_text())["status"] == "interrupted"
        assert checkpoint.load(d / "last.pt")["step"] == step
    monkeypatch.undo()
    resumed = train_group(cfgs, dirs, resumes=[d / "last.pt" for d in dirs])
    for i in range(2):
        for key in ("train_loss", "test_loss", "test_acc", "best_test_acc"):
            assert resumed[i][key] == full[i][key], key
        assert resumed[i]["resumed"]
        assert (
            csv_rows(dirs[i])[-1]["train_loss"] == csv_rows(tmp_path / f"full{i}")[-1]["train_loss"]
        )


def test_members_at_different_steps_are_refused(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg("model=lenet", "optimizer=sgd", "trainer.limit_train_batches=3")
    ahead = tmp_path / "ahead"
    signal_at_step(monkeypatch, 2)
    with pytest.raises(Interrupted):
        train(cfg, ahead)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="one step"):
        train_group([cfg, cfg], [ahead, tmp_path / "new"], resumes=[ahead / "last.pt", None])


def test_a_dropout_net_follows_its_solo_run_within_the_measured_spread(make_cfg, tmp_path):
    """Dropout draws the pack's masks at once, not the solo run's: the member takes another
    random path. Measured on MNIST (MLP, dropout 0.5, 2 epochs, docs/performance.md): test
    accuracy within 0.31 points, the epoch's training loss within 2%. Here, on the small
    generated set after 10 steps: the member ends far closer to its solo run than the same run
    without dropout does."""
    common = ("model=mlp", "model.dropout=0.5", "optimizer=sgd", "optimizer.lr=0.02")
    common += ("trainer.limit_train_batches=10",)
    seeds = ("trainer.seed=0", "trainer.seed=1", "trainer.seed=2")
    packed = train_group(
        [make_cfg(*common, seed) for seed in seeds], [tmp_path / f"packed{i}" for i in range(3)]
    )
    for i, seed in enumerate(seeds):
        alone = train(make_cfg(*common, seed), tmp_path / f"alone{i}")
        without = train(make_cfg(*common, seed, "model.dropout=0"), tmp_path / f"nodrop{i}")
        assert packed[i]["train_loss"] != alone["train_loss"]  # the masks are the pack's own
        for key in ("train_loss", "test_loss"):
            gap, dropout_effect = packed[i][key] - alone[key], without[key] - alone[key]
            assert abs(gap) < abs(dropout_effect) / 3, key


@pytest.mark.parametrize("precision", ["bf16", "16-mixed"])
def test_a_pack_trains_in_its_precision(make_cfg, tmp_path, precision):
    """The pack's forward pass runs under the members' autocast, and float16's gradients are
    scaled by each member's own scaler, as in their solo runs. Measured after 8 steps of
    LeNet-BN: training and test loss within 5e-4 (bf16) and 2e-4 (float16) of the solo run's,
    relative; bfloat16 rounds the pack's other order of additions more coarsely."""
    common = ("model=lenet_bn", "optimizer=sgd", "optimizer.momentum=0.9")
    common += ("trainer.limit_train_batches=8", f"trainer.precision={precision}")
    points = [("optimizer.lr=0.02", "trainer.seed=0"), ("optimizer.lr=0.05", "trainer.seed=1")]
    packed = train_group(
        [make_cfg(*common, *p) for p in points], [tmp_path / f"packed{i}" for i in range(2)]
    )
    for i, point in enumerate(points):
        alone = train(make_cfg(*common, *point), tmp_path / f"alone{i}")
        assert packed[i]["precision"] == precision
        for key in ("train_loss", "test_loss"):
            assert packed[i][key] == pytest.approx(alone[key], rel=1e-3), key
        ckpt = checkpoint.load(tmp_path / f"packed{i}" / "last.pt")
        assert bool(ckpt["scaler"]) == (precision == "16-mixed")  # the member's own scaler


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_packed_step_computes_under_autocast(make_cfg, dtype):
    images, labels = batches(2)[0]
    logits = {}
    for name, autocast in (("full", None), ("autocast", torch.autocast("cpu", dtype=dtype))):
        built = members(make_cfg, "lenet", 2)
        step = PackedStep(Pack(built), [sgd(m, 0.01) for m in built], autocast=autocast)
        step(images, labels)
        logits[name] = step.logits.float()
    # vmap adds the bias in float32, so the logits' dtype says nothing: their rounding does
    assert not torch.equal(logits["full"], logits["autocast"])
    assert torch.allclose(logits["full"], logits["autocast"], atol=0.02)


# ---------------------------------------------------------------------------- captured packs

STATIC = ("optimizer=sgd", "optimizer.momentum=0.9", "scheduler=cosine", "optimizer.fused=true")
STATIC += ("trainer.epochs=2", "trainer.log_every_n_steps=1")


def assert_same_files(a, b) -> None:
    """The same metrics and weights, bit for bit; a member that diverged in its first epoch
    has no checkpoint and no rows in either."""
    if (a / "last.pt").exists() or (b / "last.pt").exists():
        assert_same_bits(a, b)
    else:
        assert not csv_rows(a) and not csv_rows(b)


def group_of(make_cfg, tmp_path, name: str, model: str, *extra: str) -> list[dict]:
    """Three members trained as a group into tmp_path/name<i>; the middle one at a learning
    rate that makes an MLP diverge (batch norm keeps LeNet-BN's loss finite)."""
    points = [("optimizer.lr=0.05", "trainer.seed=0"), ("optimizer.lr=1e12", "trainer.seed=1")]
    points += [("optimizer.lr=0.01", "trainer.seed=2", "trainer.label_smoothing=0.1")]
    cfgs = [make_cfg(f"model={model}", *STATIC, *extra, *p) for p in points]
    return train_group(cfgs, [tmp_path / f"{name}{i}" for i in range(3)])


@pytest.mark.parametrize(
    ("model", "extra", "statuses"),
    [
        ("mlp", (), ["ok", "diverged", "ok"]),
        ("lenet_bn", ("dataset.translate=2", "dataset.flip=true"), ["ok", "ok", "ok"]),
    ],
)
def test_the_static_pack_gives_the_plain_packs_bits(make_cfg, tmp_path, model, extra, statuses):
    """The form a CUDA graph records (buffers, tensor learning rates, divergence found on the
    device), uncaptured on the CPU: each member's files and weights are the plain pack's, bit
    for bit, partial last batches and a diverging member included."""
    plain = group_of(make_cfg, tmp_path, "plain", model, *extra)
    static = group_of(make_cfg, tmp_path, "static", model, *extra, "trainer.cuda_graph=true")
    assert [r["step"] for r in plain] == ["packed"] * 3
    assert [r["step"] for r in static] == ["packed-static"] * 3
    assert [r["status"] for r in static] == [r["status"] for r in plain] == statuses
    for i in range(3):
        assert static[i]["diverged_at_step"] == plain[i]["diverged_at_step"]
        assert_same_files(tmp_path / f"plain{i}", tmp_path / f"static{i}")


def test_a_captured_pack_records_once_and_replays_every_full_batch(
    make_cfg, tmp_path, monkeypatch, fake_capture
):
    """Two epochs of 9 full batches and a partial one: 3 warm-up steps, one recording, 15
    replays; the numbers are the plain pack's, a member's divergence included."""
    captured = group_of(make_cfg, tmp_path, "captured", "mlp")
    assert [r["step"] for r in captured] == ["packed-captured"] * 3
    assert [r["status"] for r in captured] == ["ok", "diverged", "ok"]
    assert len(fake_capture) == 1 and fake_capture[0].replays == 15
    monkeypatch.setattr(cuda_graph, "choose", lambda cfg, device, world: ("plain", None))
    group_of(make_cfg, tmp_path, "plain", "mlp")
    for i in range(3):
        assert_same_files(tmp_path / f"plain{i}", tmp_path / f"captured{i}")


def test_a_float16_pack_asked_to_capture_steps_plainly(make_cfg, tmp_path):
    """float16's scaler reads its scale on the host, so the pack takes the plain form."""
    common = ("model=lenet_bn", "trainer.precision=16-mixed", "trainer.cuda_graph=true")
    common += ("trainer.limit_train_batches=3",)
    cfgs = [make_cfg(*common, f"trainer.seed={seed}") for seed in (0, 1)]
    results = train_group(cfgs, [tmp_path / "a", tmp_path / "b"])
    assert [(r["status"], r["step"]) for r in results] == [("ok", "packed")] * 2
