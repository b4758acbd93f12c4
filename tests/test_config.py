from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from cnnbench.config import CONFIG_DIR, ConfigError, resolve_device, validate

GROUPS = {
    g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml"))
    for g in ("model", "dataset", "optimizer", "scheduler", "trainer")
}


def test_groups_hold_the_promised_options():
    assert {"softmax", "mlp", "lenet"} <= set(GROUPS["model"])
    assert {"mnist", "fashion_mnist", "cifar10"} <= set(GROUPS["dataset"])
    assert {"sgd", "adam", "adamw"} <= set(GROUPS["optimizer"])
    assert {"none", "step", "cosine", "onecycle"} <= set(GROUPS["scheduler"])
    assert "default" in GROUPS["trainer"]


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_validates(make_cfg, group, option):
    cfg = make_cfg(f"{group}={option}")
    validate(cfg)
    assert cfg.model._target_.startswith("cnnbench.models.")


@pytest.mark.parametrize("optimizer", GROUPS["optimizer"])
@pytest.mark.parametrize("scheduler", GROUPS["scheduler"])
def test_optimizer_and_scheduler_instantiate(make_cfg, optimizer, scheduler):
    cfg = make_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}")
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate(cfg.optimizer, _convert_="all")(params)
    sched = instantiate(cfg.scheduler, _convert_="all")(opt)
    assert opt.param_groups[0]["lr"] > 0
    for _ in range(cfg.trainer.epochs):
        opt.step()
        sched.step()


def test_struct_mode_refuses_unknown_keys(make_cfg):
    cfg = make_cfg()
    with pytest.raises(AttributeError):
        _ = cfg.trainer.epoch  # misspelt key


@pytest.mark.parametrize(
    "override,key",
    [
        ("optimizer.lr=-1", "optimizer.lr"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("optimizer=sgd optimizer.momentum=1.0", "optimizer.momentum"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
        ("optimizer.betas=[0.9,1.5]", "optimizer.betas"),
        ("dataset.batch_size=0", "dataset.batch_size"),
        ("dataset.batch_size=2.5", "dataset.batch_size"),
        ("dataset.resize=-3", "dataset.resize"),
        ("trainer.epochs=-1", "trainer.epochs"),
        ("trainer.epochs=true", "trainer.epochs"),
        ("trainer.label_smoothing=1", "trainer.label_smoothing"),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches"),
    ],
)
def test_bad_values_are_named_with_a_fix(make_cfg, override, key):
    cfg = make_cfg(*override.split())
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert message.startswith(f"{key}=") and "e.g. " + key in message


def test_every_problem_is_reported_at_once(make_cfg):
    cfg = make_cfg("optimizer.lr=-1", "dataset.batch_size=0")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert len(str(err.value).splitlines()) == 2


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ConfigError, match=r"trainer\.device=gpu0"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no such device"):
            resolve_device("cuda")


def test_configs_ship_inside_the_package():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["package-dir"]["cnnbench.conf"] == "conf"
    assert (CONFIG_DIR / "config.yaml").is_file()
