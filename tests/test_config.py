import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnbench import schema
from cnnbench.build import INIT_SCHEMES, PRECISIONS, blame, run_length_args
from cnnbench.config import (
    CONFIG_DIR,
    ConfigError,
    flatten,
    image_size,
    validate,
)
from cnnbench.distributed import resolve_device
from cnnbench.schema import ALLOWED

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


def build_optimizer(cfg) -> torch.optim.Optimizer:
    with blame("optimizer", cfg.optimizer):
        return instantiate(cfg.optimizer, _convert_="all")([torch.nn.Parameter(torch.zeros(2))])


def lr_curve(cfg, steps: int) -> list[float]:
    """The learning rate of each of `steps` optimizer steps, built as train.py builds it."""
    opt = build_optimizer(cfg)
    with blame("scheduler", cfg.scheduler):
        sched = instantiate(cfg.scheduler, _convert_="all")(
            opt, **run_length_args(cfg.scheduler, steps)
        )
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("optimizer", GROUPS["optimizer"])
@pytest.mark.parametrize("scheduler", GROUPS["scheduler"])
def test_optimizer_and_scheduler_build_and_step(make_cfg, optimizer, scheduler):
    lrs = lr_curve(make_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}"), 50)
    assert len(lrs) == 50 and all(lr > 0 for lr in lrs)


def test_schedules_span_the_whole_run_step_by_step(make_cfg):
    lr = 0.1
    none = lr_curve(make_cfg("optimizer=sgd", f"optimizer.lr={lr}"), 100)
    assert none == [lr] * 100
    cosine = lr_curve(make_cfg("optimizer=sgd", f"optimizer.lr={lr}", "scheduler=cosine"), 100)
    assert cosine[0] == lr and cosine == sorted(cosine, reverse=True)
    assert cosine[50] == pytest.approx(lr / 2, rel=0.05) and cosine[-1] < lr / 100
    onecycle = lr_curve(make_cfg("optimizer=sgd", f"optimizer.lr={lr}", "scheduler=onecycle"), 100)
    peak = onecycle.index(max(onecycle))
    assert 25 <= peak <= 35 and max(onecycle) == pytest.approx(lr)  # pct_start 0.3
    assert onecycle[0] < lr / 10 and onecycle[-1] < lr / 1000
    step = lr_curve(
        make_cfg("optimizer=sgd", f"optimizer.lr={lr}", "scheduler=step", "scheduler.step_size=10"),
        25,
    )
    assert (
        step[9] == lr and step[10] == pytest.approx(lr / 10) and step[20] == pytest.approx(lr / 100)
    )


@pytest.mark.parametrize(
    "override,words",
    [
        ("optimizer=sgd optimizer.nesterov=true", "Nesterov momentum requires a momentum"),
    ],
)
def test_constructor_complaints_become_config_errors(make_cfg, override, words):
    cfg = make_cfg(*override.split())
    with pytest.raises(ConfigError, match=words):
        build_optimizer(cfg)


def test_struct_mode_refuses_unknown_keys(make_cfg):
    cfg = make_cfg()
    assert OmegaConf.is_struct(cfg)
    with pytest.raises(AttributeError):
        _ = cfg.trainer.epoch  # misspelt key
    with pytest.raises(AttributeError):  # without struct mode this would add a key
        cfg.trainer.epoch = 3


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
        ("trainer.limit_test_batches=0", "trainer.limit_test_batches"),
        ("model.min_size=0", "model.min_size"),
        ("model.input_size=-1", "model.input_size"),
    ],
)
def test_bad_values_are_named_with_a_fix(make_cfg, override, key):
    with pytest.raises(ConfigError) as err:  # a wrong type already when composing
        validate(make_cfg(*override.split()))
    message = str(err.value)
    assert message.startswith(f"{key}=") and "e.g. " + key in message


@pytest.mark.parametrize("override", ["+trainer.epoch=3", "+dataset.batchsize=64", "+lr=0.1"])
def test_settings_nothing_reads_are_refused(make_cfg, override):
    """Hydra's hint for a misspelt key is to add it with +; such a key would do nothing."""
    key = override[1:].split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: cnnbench has no such setting"):
        validate(make_cfg(override))


def test_onecycle_leaves_the_optimizers_momentum_alone(make_cfg):
    cfg = make_cfg("optimizer=sgd", "optimizer.momentum=0.9", "scheduler=onecycle")
    opt = build_optimizer(cfg)
    sched = instantiate(cfg.scheduler, _convert_="all")(opt, **run_length_args(cfg.scheduler, 20))
    for _ in range(10):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["momentum"] == 0.9


def test_every_problem_is_reported_at_once(make_cfg):
    cfg = make_cfg("optimizer.lr=-1", "dataset.batch_size=0")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert len(str(err.value).splitlines()) == 2


def test_every_checked_key_is_a_shipped_key(make_cfg):
    """A schema field no YAML file has would check nothing."""
    shipped = set()
    for group, options in GROUPS.items():
        for option in options:
            shipped |= set(flatten(OmegaConf.to_container(make_cfg(f"{group}={option}"))))
    assert set(ALLOWED) <= shipped, set(ALLOWED) - shipped


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ConfigError, match=r"trainer\.device=gpu0"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no such device"):
            resolve_device("cuda")


def test_config_dir_is_the_repository_conf_in_a_source_tree():
    assert Path(__file__).resolve().parents[1] / "conf" == CONFIG_DIR


@pytest.mark.parametrize(
    "overrides,size",
    [
        (["model=lenet"], 28),
        (["model=lenet", "dataset=cifar10"], 32),
        (["model=alexnet"], 224),
        (["model=alexnet", "dataset.resize=96"], 96),
        (["model=resnet", "model.input_size=96"], 96),
    ],
)
def test_image_size_is_resize_then_the_models_then_the_datasets(make_cfg, overrides, size):
    assert image_size(make_cfg(*overrides)) == size


@pytest.mark.parametrize(
    "overrides,words",
    [
        (
            ["model=alexnet", "dataset.resize=32"],
            ["AlexNet takes images of at least 67x67, but dataset.resize=32", "dataset.resize=224"],
        ),
        (
            ["model=densenet", "model.input_size=null"],
            [
                "DenseNet takes images of at least 29x29",
                "Fashion-MNIST images are 28x28",
                "dataset.resize=29",
            ],
        ),
        (["model=nin", "model.input_size=40"], ["but model.input_size=40", "dataset.resize=67"]),
    ],
)
def test_too_small_inputs_are_refused_with_the_size_that_works(make_cfg, overrides, words):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    for w in words:
        assert w in str(err.value)


def test_a_model_config_must_declare_its_input_sizes(make_cfg):
    with pytest.raises(ConfigError, match=r"every conf/model/.*declares"):
        validate(make_cfg("~model.min_size"))


EXPERIMENTS = sorted(
    p.relative_to(CONFIG_DIR / "experiment").with_suffix("").as_posix()
    for p in (CONFIG_DIR / "experiment").rglob("*.yaml")
)


def test_the_textbook_recipes_are_there():
    assert {"tutorial/lenet5_mnist", "course/simple_cnn", "fashion/lenet", "fashion/resnet"} <= set(
        EXPERIMENTS
    )
    assert sum(e.startswith("d2l/") for e in EXPERIMENTS) >= 8
    assert {"fast_mnist", "fast_fashion"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_validates_and_cites_its_source(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    validate(cfg)
    text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert f"# Run with: python -m cnnbench experiment={name}\n" in text
    # a textbook recipe cites its figure; cnnbench's own (fast_*) states its target
    assert re.search(r"Reported: [\d.]+%|No accuracy reported|report no accuracy|Target: >=", text)


def test_the_names_a_schema_allows_are_the_names_the_code_implements():
    assert set(PRECISIONS) | {"auto"} == set(schema.PRECISIONS)
    assert set(INIT_SCHEMES) | {"default"} == set(schema.INITS)
