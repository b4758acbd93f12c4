import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnbench.config import CONFIG_DIR

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


def build(name: str, channels: int, classes: int = 10) -> torch.nn.Module:
    cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    return instantiate(cfg, in_channels=channels, num_classes=classes)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name, channels, size):
    torch.manual_seed(0)
    model = build(name, channels)
    x = torch.randn(4, channels, size, size)
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name,params", [("softmax", 7_850), ("mlp", 203_530), ("lenet", 44_426)])
def test_parameter_counts_at_28x28(name, params):
    model = build(name, 1)
    model(torch.zeros(1, 1, 28, 28))  # sizes the lazy layers
    assert sum(p.numel() for p in model.parameters()) == params
