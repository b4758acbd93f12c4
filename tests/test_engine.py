"""The fast engine does the same work as a plain loop: its bookkeeping, its switches
(precision, compile, channels-last) and its on-device augmentation."""

import csv
import ctypes
import math
import os

import pytest
import torch
from hydra.utils import instantiate

import cnnbench.train
from cnnbench import build, checkpoint, data
from cnnbench.build import build_model, keep_freed_memory
from cnnbench.config import ConfigError
from cnnbench.seeding import seed_everything
from cnnbench.train import Interrupted, train
from cnnbench.tta import with_tta
from tests.test_checkpoint import signal_at_step


def rows(out) -> list[dict]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_bookkeeping_equals_a_plain_per_step_loop(make_cfg, tmp_path):
    """The engine keeps its sums on the device and reads them once per epoch; a textbook loop
    reads every step's loss and correct count with .item(). Both must report the same."""
    cfg = make_cfg("model=mlp", "optimizer=sgd", "optimizer.lr=0.05", "trainer.epochs=2")
    train(cfg, tmp_path / "run")
    logged = rows(tmp_path / "run")

    seed_everything(cfg.trainer.seed)
    device = torch.device("cpu")
    spec = data.SPECS[cfg.dataset.name]
    ds = cfg.dataset
    train_set = data.load(ds.name, "train", ds.root, ds.download, ds.cache_dir)
    test_set = data.load(ds.name, "test", ds.root, ds.download, ds.cache_dir)
    common = dict(device=device, mean=spec.mean, std=spec.std)
    loader = data.DeviceLoader(*train_set, ds.batch_size, shuffle=True, seed=0, **common)
    test_loader = data.DeviceLoader(*test_set, cfg.trainer.eval_batch_size, **common)
    model = build_model(cfg, device)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch, row in enumerate(logged, start=1):
        model.train()
        loader.set_epoch(epoch)
        loss_sum, correct, n = 0.0, 0, 0
        for x, y in loader:
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
        model.eval()
        test_loss, test_correct = 0.0, 0
        with torch.no_grad():
            for x, y in test_loader:
                logits = model(x)
                test_loss += loss_fn(logits, y).item() * len(y)
                test_correct += (logits.argmax(1) == y).sum().item()
        assert float(row["train_loss"]) == pytest.approx(loss_sum / n, rel=1e-5)
        assert float(row["train_acc"]) == correct / n
        assert float(row["test_loss"]) == pytest.approx(test_loss / test_loader.num_samples, 1e-5)
        assert float(row["test_acc"]) == test_correct / test_loader.num_samples


@pytest.mark.parametrize("precision", ["bf16", "16-mixed"])
def test_reduced_precision_trains_on_the_cpu(make_cfg, tmp_path, precision):
    results = train(make_cfg("model=mlp", f"trainer.precision={precision}"), tmp_path)
    assert results["status"] == "ok"
    assert math.isfinite(results["train_loss"])
    assert results["test_acc"] > 0.5
    scaler = checkpoint.load(tmp_path / "last.pt")["scaler"]
    # float16 keeps a loss scale (resumed with the run); bfloat16 needs none
    assert bool(scaler) == (precision == "16-mixed")


@pytest.mark.parametrize(
    "switches", [["trainer.precision=16-mixed"], ["dataset.translate=2", "dataset.flip=true"]]
)
def test_a_stopped_run_resumes_exactly_with_loss_scale_and_augmentation(
    make_cfg, tmp_path, monkeypatch, switches
):
    """The loss scale is in the checkpoint; augmentation draws are seeded per batch."""
    run = ["model=mlp", "trainer.epochs=2", *switches]
    if "trainer.precision=16-mixed" in switches:
        overflowing_loss_scale(monkeypatch)
    whole = train(make_cfg(*run), tmp_path / "whole")
    signal_at_step(monkeypatch, 13)  # mid-epoch 2 (10 batches per epoch)
    with pytest.raises(Interrupted):
        train(make_cfg(*run), tmp_path / "stopped")
    monkeypatch.undo()  # the resumed run's scaler starts as a default one: its state is loaded
    resumed = train(make_cfg(*run), tmp_path / "stopped", resume=tmp_path / "stopped" / "last.pt")
    for key in ("train_loss", "test_loss", "test_acc", "steps"):
        assert resumed[key] == whole[key], key
    scales = [checkpoint.load(tmp_path / r / "last.pt")["scaler"] for r in ("whole", "stopped")]
    assert scales[0] == scales[1]
    if "trainer.precision=16-mixed" in switches:  # it backed off, then grew: a moving state
        assert 1 < scales[0]["scale"] < 2.0**40
        assert scales[0] != torch.amp.GradScaler("cpu").state_dict()


def overflowing_loss_scale(monkeypatch) -> None:
    """A loss scale far past float16's range, which backs off on the first steps and then
    grows every 3 steps: a resume that lost the scaler's state would train differently."""
    build = cnnbench.train.build_engine

    def build_engine(*args, **kwargs):
        engine = build(*args, **kwargs)
        engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, growth_interval=3)
        return engine

    monkeypatch.setattr(cnnbench.train, "build_engine", build_engine)


def test_channels_last_computes_the_same(make_cfg, tmp_path):
    plain = train(make_cfg("model=lenet_bn", "trainer.epochs=1"), tmp_path / "a")
    nhwc = train(
        make_cfg("model=lenet_bn", "trainer.epochs=1", "trainer.channels_last=true"), tmp_path / "b"
    )
    assert nhwc["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
    assert nhwc["test_acc"] == pytest.approx(plain["test_acc"], abs=0.01)


@pytest.mark.slow
def test_compile_trains_the_same_model_and_saves_plain_weights(make_cfg, tmp_path):
    overrides = ["model=simple_cnn", "trainer.epochs=1", "trainer.limit_train_batches=4"]
    plain = train(make_cfg(*overrides), tmp_path / "a")
    compiled = train(make_cfg(*overrides, "trainer.compile=true"), tmp_path / "b")
    assert compiled["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-3)
    assert compiled["test_acc"] == pytest.approx(plain["test_acc"], abs=0.02)
    # the checkpoint holds the model's own parameter names, not torch.compile's wrapper
    weights = checkpoint.load(tmp_path / "b" / "last.pt")["model"]
    assert not any(k.startswith("_orig_mod") for k in weights)


def test_unknown_precision_is_a_config_error(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.precision='fp8'.*bf16"):
        train(make_cfg("trainer.precision=fp8"), tmp_path)


# ---- augmentation


def loader(images, labels, **aug) -> data.DeviceLoader:
    return data.DeviceLoader(
        images,
        labels,
        16,
        torch.device("cpu"),
        mean=(0.0,),
        std=(1 / 255,),
        normalize=True,
        shuffle=True,
        seed=3,
        **aug,
    )


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`image` moved by (dy, dx) pixels, zero-filled: what a padded random crop gives."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


@pytest.mark.parametrize("translate, flip", [(2, False), (0, True), (3, True)])
def test_augmentation_keeps_shapes_and_labels_and_moves_pixels(translate, flip):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(40) % 10
    plain, augmented = (
        loader(images, labels),
        loader(images, labels, translate=translate, flip=flip),
    )
    plain.set_epoch(1)
    augmented.set_epoch(1)
    changed = 0
    for (x, y), (xa, ya) in zip(plain, augmented, strict=True):
        assert xa.shape == x.shape and xa.dtype == x.dtype
        assert torch.equal(ya, y)
        for a, b in zip(x, xa, strict=True):
            candidates = [
                shifted(a.flip(-1) if f else a, dy, dx)
                for f in ([False, True] if flip else [False])
                for dy in range(-translate, translate + 1)
                for dx in range(-translate, translate + 1)
            ]
            assert any(torch.equal(c, b) for c in candidates)
            changed += not torch.equal(a, b)
    assert changed > 10  # many images moved


def test_augmentation_is_seeded_by_epoch_and_batch():
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    labels = torch.zeros(64, dtype=torch.long)
    a = loader(images, labels, translate=2, flip=True)

    def epoch(n: int, start: int = 0) -> list[torch.Tensor]:
        a.set_epoch(n, start)
        return [x for x, _ in a]

    assert all(torch.equal(p, q) for p, q in zip(epoch(1), epoch(1), strict=True))
    assert all(torch.equal(p, q) for p, q in zip(epoch(1)[2:], epoch(1, start=2), strict=True))
    assert not torch.equal(epoch(1)[0], epoch(2)[0])
    a.seed = 2**32 - 1  # the largest trainer.seed: its generator seed must stay in range
    assert len(epoch(1)) == 4


def test_the_allocator_is_tuned_once_asked_and_can_be_left_alone(monkeypatch):
    calls = []

    class Libc:
        def mallopt(self, option: int, value: int) -> int:
            calls.append((option, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setenv("CNNBENCH_TUNE_MALLOC", "0")
    keep_freed_memory()
    assert calls == []
    monkeypatch.delenv("CNNBENCH_TUNE_MALLOC")
    keep_freed_memory()
    assert calls == [(-1, 2**30), (-3, 2**25)]  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD


def test_without_glibc_the_allocator_is_left_alone(monkeypatch):
    def no_glibc(name):
        raise OSError(name)

    asked = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: asked.append(name) or no_glibc(name))
    assert keep_freed_memory() is None  # nothing to tune, nothing raised
    assert asked == ["libc.so.6"]


def test_compile_is_asked_for_static_shapes(make_cfg, monkeypatch):
    from cnnbench.build import build_engine

    asked = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: asked.append(kwargs) or model)
    cfg = make_cfg("model=mlp", "trainer.compile=true")
    build_engine(cfg, build_model(cfg, torch.device("cpu")), torch.device("cpu"))
    assert asked == [{"dynamic": False}]  # a few shapes, each compiled once


@pytest.mark.parametrize(
    "precision,device,fused,expected",
    [
        ("16-mixed", "cuda", "null", True),
        ("16-mixed", "cpu", "null", None),
        ("32", "cuda", "null", None),
        ("16-mixed", "cuda", "false", False),
    ],
)
def test_float16_on_a_gpu_fuses_the_update(make_cfg, precision, device, fused, expected):
    """GradScaler.step reads found_inf on the host unless the optimizer is fused."""
    from cnnbench.build import build_optimizer

    cfg = make_cfg("model=mlp", f"trainer.precision={precision}", f"optimizer.fused={fused}")
    model = build_model(cfg, torch.device("cpu"))  # the arguments are what is checked
    optimizer = build_optimizer(cfg, model, torch.device(device))
    assert optimizer.defaults["fused"] is expected


def test_deterministic_mode_sets_its_switches_and_resumes_exactly(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    run = ["model=lenet_bn", "trainer.epochs=2", "trainer.deterministic=true"]
    try:
        whole = train(make_cfg(*run), tmp_path / "whole")
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        signal_at_step(monkeypatch, 13)
        with pytest.raises(Interrupted):
            train(make_cfg(*run), tmp_path / "stopped")
        monkeypatch.undo()
        resumed = train(
            make_cfg(*run), tmp_path / "stopped", resume=tmp_path / "stopped" / "last.pt"
        )
        for key in ("train_loss", "test_loss", "test_acc", "steps"):
            assert resumed[key] == whole[key], key
        train(make_cfg("model=mlp", "trainer.epochs=1"), tmp_path / "again")
        assert not torch.are_deterministic_algorithms_enabled()  # a run without it turns it off
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("name", ["resnet", "nin", "googlenet", "densenet"])
def test_deterministic_pools_compute_the_global_average(make_cfg, name):
    """On a GPU, trainer.deterministic swaps AdaptiveAvgPool2d(1), whose CUDA backward is
    nondeterministic, for a mean over the feature maps."""
    from cnnbench.build import GlobalAvgPool, deterministic_pools

    cfg = make_cfg(f"model={name}", "dataset.resize=96")
    model = build_model(cfg, torch.device("cpu")).eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        before = model(x)
        deterministic_pools(model)
        after = model(x)
    assert not [m for m in model.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    assert any(isinstance(m, GlobalAvgPool) for m in model.modules())
    assert torch.allclose(before, after, atol=1e-5)


def test_the_float32_matmul_precision_is_a_setting(make_cfg, tmp_path):
    try:
        train(make_cfg("model=mlp", "trainer.epochs=1", "trainer.matmul_precision=high"), tmp_path)
        assert torch.get_float32_matmul_precision() == "high"  # TF32 on a GPU that has it
    finally:
        torch.set_float32_matmul_precision("highest")
    with pytest.raises(ConfigError, match=r"trainer.matmul_precision='tf32' is not allowed"):
        train(make_cfg("trainer.matmul_precision=tf32"), tmp_path / "bad")


def test_a_run_records_its_threads_precision_and_startup(make_cfg, tmp_path):
    results = train(make_cfg("model=mlp", "trainer.threads=1"), tmp_path)
    assert results["threads"] == 1 and results["precision"] == "32"
    phases = results["startup"]
    for key in ("setup_s", "data_s", "model_s", "flops_s", "writer_s", "first_batch_s"):
        assert phases[key] >= 0, key
    assert phases["total_s"] == pytest.approx(
        sum(v for k, v in phases.items() if k != "total_s"), abs=0.02
    )


@pytest.mark.parametrize("units,expected", [(True, "bf16"), (False, "32")])
def test_auto_precision_follows_the_bf16_units(monkeypatch, units, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: units)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert build.precision_for("auto", torch.device("cpu")) == expected
    assert build.precision_for("32", torch.device("cpu")) == "32"


def test_auto_precision_trains(make_cfg, tmp_path):
    results = train(make_cfg("model=mlp", "trainer.precision=auto"), tmp_path)
    assert results["status"] == "ok"
    assert results["precision"] == build.precision_for("auto", torch.device("cpu"))


def test_forward_flops_count_a_multiply_add_as_two():
    """Conv 1->2, 3x3 on 28x28: 2 x 26 x 26 outputs of 9 multiply-adds; fc 1352 -> 10."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(1352, 10)
    )
    net.train()
    assert build.forward_flops(net, (1, 28, 28)) == 2 * (2 * 26 * 26 * 9) + 2 * 1352 * 10
    assert net.training  # put back as it was


class Mirror(torch.nn.Module):
    """Logits that tell the views apart: the mean of the left and of the top half."""

    def forward(self, x):
        w = x.shape[-1]
        return torch.stack(
            [x[..., : w // 2].mean((1, 2, 3)), x[..., : w // 2, :].mean((1, 2, 3))], 1
        )


def test_tta_averages_the_views():
    x = torch.rand(3, 1, 8, 8)
    net = Mirror()
    assert with_tta(net, "none") is net
    flip = with_tta(net, "flip")(x)
    torch.testing.assert_close(flip, 0.5 * (net(x) + net(x.flip(3))))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    up, down = padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]
    expected = 0.5 * net(x) + 0.25 * (net(up) + net(down))
    torch.testing.assert_close(with_tta(net, "translate")(x), expected)
    both = with_tta(net, "flip_translate")(x.contiguous(memory_format=torch.channels_last))
    assert both.shape == (3, 2)


def test_a_run_evaluates_with_tta(make_cfg, tmp_path):
    plain = train(make_cfg("model=lenet", "trainer.epochs=1"), tmp_path / "plain")
    tta = train(
        make_cfg(
            "model=lenet",
            "trainer.epochs=1",
            "trainer.tta=flip_translate",
            "trainer.channels_last=true",
        ),
        tmp_path / "tta",
    )
    assert tta["status"] == "ok"
    assert tta["test_loss"] != plain["test_loss"]  # other logits: the views were averaged


def test_bad_tta_is_a_config_error(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.tta='mirror'.*flip_translate"):
        train(make_cfg("trainer.tta=mirror"), tmp_path)
