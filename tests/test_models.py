"""Every network in conf/model/: it trains, has the textbook's size and shapes, and takes
exactly the inputs its YAML says it takes."""

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from cnnbench import data
from cnnbench.build import build_model
from cnnbench.config import CONFIG_DIR, image_size
from cnnbench.summary import summarize
from tests.conftest import compose_once

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
CPU = torch.device("cpu")


def config(*overrides: str) -> DictConfig:
    return compose_once(list(overrides))


def build(name: str, *overrides: str, dataset: str = "mnist", size: int | None = None):
    resize = [f"dataset.resize={size}"] if size else []
    cfg = config(f"model={name}", f"dataset={dataset}", *overrides, *resize)
    return build_model(cfg, CPU), image_size(cfg)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_at_the_default_size(name, dataset):
    torch.manual_seed(0)
    model, size = build(name, dataset=dataset)
    channels = data.SPECS[dataset].channels
    model.train()
    logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, 10)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# 1 channel, 10 classes, at the model's default size (28x28 unless its YAML says otherwise)
PARAMS = [
    ("softmax", [], 7_850),
    ("mlp", [], 203_530),
    ("lenet", [], 44_426),
    ("lenet_bn", [], 44_878),
    ("lenet5", [], 61_706),
    ("simple_cnn", [], 8_490),
    ("alexnet", [], 46_764_746),
    ("alexnet_bn", [], 46_774_410),
    ("vgg11", ["model.width_divisor=1", "model.fc_width=4096"], 128_806_154),
    ("vgg11", ["model.width_divisor=8"], 2_018_346),
    ("nin", [], 1_992_166),
    ("googlenet", [], 5_977_530),
    ("googlenet_mini", [], 97_298),
    ("resnet", [], 11_178_378),
    ("resnet18", [], 11_178_378),
    ("resnet_mini", [], 41_514),
    ("densenet", [], 758_226),
    ("fastnet", [], 145_578),
    # d2l's chapter networks: LeNet with padding and average pooling has LeNet-5's count
    ("d2l_lenet", [], 61_706),
    ("d2l_lenet_bn", [], 44_878),
    ("d2l_alexnet", [], 46_764_746),
    ("d2l_vgg11", [], 43_093_322),  # convs 576,832 + fc 6272-4096-4096-10
    ("d2l_googlenet", [], 5_977_530),
    ("fastnet", ["model.widths=[16,32]"], 36_954),
]


@pytest.mark.parametrize("name,overrides,params", PARAMS)
def test_parameter_counts(name, overrides, params):
    model, _ = build(name, *overrides)
    assert sum(p.numel() for p in model.parameters()) == params


def test_resnet34_has_3_4_6_3_blocks():
    model, _ = build("resnet34")
    assert [len(getattr(model, f"stage{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


def _takes(name: str, size: int) -> bool:
    try:
        build(name, size=size)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("name", MODELS)
def test_min_size_is_the_smallest_size_that_works(name):
    min_size = config(f"model={name}").model.min_size
    assert _takes(name, min_size)
    assert min_size == 1 or not _takes(name, min_size - 1)


# the shapes seed 000 prints for one 1x28x28 (AlexNet: 1x224x224) image, layer by layer
SEED_000 = {
    "lenet5": [
        ("Conv2d", (6, 28, 28)),
        ("Tanh", (6, 28, 28)),
        ("AvgPool2d", (6, 14, 14)),
        ("Conv2d", (16, 10, 10)),
        ("Tanh", (16, 10, 10)),
        ("AvgPool2d", (16, 5, 5)),
        ("Conv2d", (120, 1, 1)),
        ("Tanh", (120, 1, 1)),
        ("Flatten", (120,)),
        ("Linear", (84,)),
        ("Tanh", (84,)),
        ("Linear", (10,)),
    ],
    "alexnet": [
        ("Conv2d", (96, 54, 54)),
        ("ReLU", (96, 54, 54)),
        ("MaxPool2d", (96, 26, 26)),
        ("Conv2d", (256, 26, 26)),
        ("ReLU", (256, 26, 26)),
        ("MaxPool2d", (256, 12, 12)),
        ("Conv2d", (384, 12, 12)),
        ("ReLU", (384, 12, 12)),
        ("Conv2d", (384, 12, 12)),
        ("ReLU", (384, 12, 12)),
        ("Conv2d", (256, 12, 12)),
        ("ReLU", (256, 12, 12)),
        ("MaxPool2d", (256, 5, 5)),
        ("Flatten", (6400,)),
        ("Linear", (4096,)),
        ("ReLU", (4096,)),
        ("Dropout", (4096,)),
        ("Linear", (4096,)),
        ("ReLU", (4096,)),
        ("Dropout", (4096,)),
        ("Linear", (10,)),
    ],
    "googlenet_mini": [
        ("Conv2d", (10, 24, 24)),
        ("ReLU", (10, 24, 24)),
        ("MaxPool2d", (10, 12, 12)),
        ("Inception", (88, 12, 12)),
        ("Conv2d", (20, 8, 8)),
        ("ReLU", (20, 8, 8)),
        ("MaxPool2d", (20, 4, 4)),
        ("Inception", (88, 4, 4)),
        ("Flatten", (1408,)),
        ("Linear", (10,)),
    ],
    "resnet_mini": [
        ("Conv2d", (16, 24, 24)),
        ("ReLU", (16, 24, 24)),
        ("MaxPool2d", (16, 12, 12)),
        ("ResidualBlock", (16, 12, 12)),
        ("Conv2d", (32, 8, 8)),
        ("ReLU", (32, 8, 8)),
        ("MaxPool2d", (32, 4, 4)),
        ("ResidualBlock", (32, 4, 4)),
        ("Flatten", (512,)),
        ("Linear", (10,)),
    ],
}
SEED_000_SETTINGS = {
    "alexnet": ["model.first_padding=1"],
    "googlenet_mini": ["model.pool_branch=false"],
}
SAME_BLOCK = {"InceptionA": "Inception"}  # seed 000 calls its small Inception block Inception


@pytest.mark.parametrize("name", sorted(SEED_000))
def test_layer_shapes_are_the_ones_seed_000_prints(name):
    model, size = build(name, *SEED_000_SETTINGS.get(name, []))
    layers = summarize(model, (1, size, size)).layers
    assert [(SAME_BLOCK.get(r.type, r.type), r.shape) for r in layers] == SEED_000[name]


def _count_flops_by_hand(model: nn.Module, size: int) -> int:
    """2 x multiply-adds of every conv and linear layer, from the shapes they produce."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += 2 * output.numel() * module.in_channels // module.groups * kh * kw
        else:
            total += 2 * output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", ["lenet", "alexnet", "googlenet_mini", "resnet", "densenet"])
def test_flops_agree_with_a_count_by_hand(name):
    model, size = build(name)
    assert summarize(model, (1, size, size)).flops == _count_flops_by_hand(model, size)


def test_lenet_flops_by_the_textbook_formula():
    model, _ = build("lenet")
    convs = 2 * (6 * 24 * 24 * 1 * 25) + 2 * (16 * 8 * 8 * 6 * 25)
    fcs = 2 * (256 * 120 + 120 * 84 + 84 * 10)
    assert summarize(model, (1, 28, 28)).flops == convs + fcs == 563_280


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_default_init_draws_nothing():
    torch.manual_seed(0)
    build("lenet_bn")
    after_default = torch.rand(1)
    torch.manual_seed(0)
    build("lenet_bn", "model.init=default")
    assert torch.equal(torch.rand(1), after_default)


@pytest.mark.parametrize("name", ["d2l_lenet", "lenet_bn", "resnet_mini"])
def test_xavier_init_redraws_every_conv_and_fc_weight_within_its_bound(name):
    torch.manual_seed(0)
    default, _ = build(name)
    torch.manual_seed(0)
    xavier, _ = build(name, "model.init=xavier")
    for ours, theirs in zip(_layers(xavier), _layers(default), strict=True):
        fan_out, fan_in = ours.weight.shape[0], ours.weight[0].numel()
        receptive = ours.weight[0, 0].numel()
        bound = (6 / (fan_in + fan_out * receptive)) ** 0.5
        assert ours.weight.abs().max() <= bound
        assert not torch.equal(ours.weight, theirs.weight)
        assert torch.equal(ours.bias, theirs.bias)  # biases keep PyTorch's values
    norms = [m for m in xavier.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)


def test_kaiming_init_has_he_spread():
    torch.manual_seed(0)
    model, _ = build("d2l_vgg11", "model.init=kaiming")
    fc = next(m for m in _layers(model) if isinstance(m, nn.Linear))  # 6272 -> 4096
    assert fc.weight.std().item() == pytest.approx((2 / 6272) ** 0.5, rel=0.01)


def test_init_is_not_a_network_argument():
    model, _ = build("lenet", "model.init=xavier")
    assert isinstance(model, nn.Sequential)  # built: LeNet was not handed init=
