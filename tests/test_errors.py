"""Every bad input tried through the command line (cli.main, in this process): exit code 2
and one `cnnbench: error:` message, no traceback, no run directory left behind. docs/errors.md is this table with the messages as a user sees them; the test fails
when they drift apart. Rewrite the doc after changing a message:

    python -m tests.test_errors > docs/errors.md
"""

import gzip
import sys
from pathlib import Path

import pytest

from cnnbench.config import CONFIG_DIR
from tests.conftest import REPO, run_cli, write_mnist_like

# (what is wrong, arguments, what the message must say); {tmp} is a scratch folder holding the
# fixtures made below
CASES = [
    ("unknown model", "model=resnt", "model=resnt: no such option. Did you mean model=resnet?"),
    (
        "misspelt key",
        "trainer.epoch=3",
        "trainer.epoch: cnnbench has no such setting. Did you mean trainer.epochs?",
    ),
    (
        "a key nothing reads",
        "+trainer.epoch=3",
        "trainer.epoch: cnnbench has no such setting; remove it",
    ),
    (
        "negative learning rate",
        "optimizer.lr=-1",
        "optimizer.lr=-1.0 is not allowed: use a number > 0, e.g. optimizer.lr=0.01",
    ),
    ("zero learning rate", "optimizer.lr=0", "optimizer.lr=0.0 is not allowed: use a number > 0"),
    ("learning rate of the wrong type", "optimizer.lr=fast", "optimizer.lr='fast' is not allowed"),
    (
        "momentum of 1",
        "optimizer=sgd optimizer.momentum=1.0",
        "optimizer.momentum=1.0 is not allowed: use a number in [0, 1)",
    ),
    (
        "Nesterov without momentum",
        "optimizer=sgd optimizer.nesterov=true",
        "optimizer (torch.optim.SGD): Nesterov momentum requires a momentum",
    ),
    (
        "negative weight decay",
        "optimizer.weight_decay=-0.1",
        "optimizer.weight_decay=-0.1 is not allowed: use a number >= 0",
    ),
    (
        "Adam beta of 1.5",
        "optimizer.betas=[0.9,1.5]",
        "optimizer.betas=[0.9, 1.5] is not allowed: use two numbers in [0, 1)",
    ),
    (
        "batch size 0",
        "dataset.batch_size=0",
        "dataset.batch_size=0 is not allowed: use an integer >= 1",
    ),
    (
        "fractional batch size",
        "dataset.batch_size=2.5",
        "dataset.batch_size=2.5 is not allowed: use an integer >= 1",
    ),
    (
        "negative resize",
        "dataset.resize=-3",
        "dataset.resize=-3 is not allowed: use null or an integer >= 1",
    ),
    (
        "input smaller than the model takes",
        "model=alexnet dataset.resize=32",
        "AlexNet takes images of at least 67x67, but dataset.resize=32",
    ),
    (
        "negative epochs",
        "trainer.epochs=-1",
        "trainer.epochs=-1 is not allowed: use an integer >= 0",
    ),
    (
        "boolean epochs",
        "trainer.epochs=true",
        "trainer.epochs=True is not allowed: use an integer >= 0",
    ),
    (
        "negative seed",
        "trainer.seed=-1",
        "trainer.seed=-1 is not allowed: use an integer in [0, 2**32)",
    ),
    (
        "label smoothing of 1",
        "trainer.label_smoothing=1",
        "trainer.label_smoothing=1.0 is not allowed: use a number in [0, 1)",
    ),
    (
        "unknown precision",
        "trainer.precision=fp8",
        "trainer.precision='fp8' is not allowed: use one of 32, bf16, 16-mixed, auto",
    ),
    ("zero threads", "trainer.threads=0", "trainer.threads=0 is not allowed: use null"),
    (
        "unknown CUDA graph setting",
        "trainer.cuda_graph=always",
        "trainer.cuda_graph='always' is not allowed: use one of auto, true, false",
    ),
    (
        "unknown test-time augmentation",
        "trainer.tta=mirror",
        "trainer.tta='mirror' is not allowed: use one of none, flip",
    ),
    (
        "negative augmentation shift",
        "dataset.translate=-2",
        "dataset.translate=-2 is not allowed: use an integer >= 0",
    ),
    (
        "scheduler step of 0",
        "scheduler=step scheduler.step_size=0",
        "scheduler.step_size=0 is not allowed: use an integer >= 1",
    ),
    (
        "unknown activation",
        "model=mlp model.activation=foo",
        "model (cnnbench.models.MLP): activation='foo'; choose one of relu",
    ),
    (
        "device this machine lacks",
        "trainer.device=cuda:7",
        "trainer.device=cuda:7: this machine has no such device",
    ),
    (
        "device name that does not exist",
        "trainer.device=gpu",
        "trainer.device=gpu: not a device name",
    ),
    (
        "no data and no download",
        "dataset=mnist dataset.root={tmp}/empty dataset.download=false",
        "MNIST (train split) not found, and dataset.download=false.",
    ),
    (
        "data root that is a file",
        "dataset.root={tmp}/file",
        "dataset.root='{tmp}/file' is not a readable folder",
    ),
    (
        "truncated data file",
        "dataset.root={tmp}/corrupt dataset.download=false",
        "{tmp}/corrupt/fashion-mnist/train-images-idx3-ubyte.gz is truncated or padded",
    ),
    (
        "run directory that cannot be written",
        "hydra.run.dir=/proc/cnnbench-run",
        "cannot write the run directory /proc/cnnbench-run",
    ),
    (
        "run directory named by an interpolation that cannot be written",
        "hydra.run.dir=/proc/cnnbench-${trainer.seed}",
        "cannot write the run directory /proc/cnnbench-0",
    ),
    (
        "run directory that already holds a run",
        "hydra.run.dir={tmp}/mlp-run",
        "{tmp}/mlp-run already holds a run",
    ),
    (
        "checkpoint that does not exist",
        "trainer.resume={tmp}/nothing.pt",
        "no checkpoint at {tmp}/nothing.pt",
    ),
    (
        "checkpoint that is not one",
        "trainer.resume={tmp}/garbage.pt",
        "{tmp}/garbage.pt is not a cnnbench checkpoint",
    ),
    (
        "checkpoint of another model",
        "model=lenet trainer.resume={tmp}/mlp-run",
        "{tmp}/mlp-run/last.pt holds a different network (MLP",
    ),
]


def make_fixtures(tmp: Path) -> None:
    (tmp / "empty").mkdir()
    (tmp / "file").write_text("not a folder")
    write_mnist_like(tmp / "corrupt" / "fashion-mnist", n_train=50, n_test=20)
    images = tmp / "corrupt" / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    (tmp / "garbage.pt").write_bytes(b"\x80\x04not a checkpoint")
    write_mnist_like(tmp / "data" / "fashion-mnist", n_train=50, n_test=20)
    run = run_cli(
        *common(tmp), "model=mlp", "trainer.epochs=1", f"hydra.run.dir={tmp}/mlp-run", cwd=tmp
    )
    assert run.returncode == 0, run.stderr


def common(tmp: Path) -> list[str]:
    return [
        f"dataset.root={tmp}/data",
        f"dataset.cache_dir={tmp}/cache",
        "dataset.download=false",
        "trainer.device=cpu",
    ]


def run_case(tmp: Path, number: int, args: str) -> tuple[int, str]:
    argv = [*common(tmp), *args.replace("{tmp}", str(tmp)).split()]
    # each case in a folder of its own: two runs started in the same second would otherwise
    # share outputs/<date>/<time>, and the second would be refused
    cwd = tmp / "cases" / str(number)
    cwd.mkdir(parents=True)
    proc = run_cli(*argv, cwd=cwd)
    message = (
        (proc.stderr + proc.stdout).replace(str(tmp), "{tmp}").replace(str(CONFIG_DIR), "{conf}")
    )
    return proc.returncode, message.strip()


def run_cases(tmp: Path) -> list[tuple[int, str]]:
    return [run_case(tmp, i, args) for i, (_, args, _) in enumerate(CASES)]


def table(tmp: Path, outcomes: list[tuple[int, str]]) -> str:
    lines = [
        "# Bad input and what cnnbench says",
        "",
        "Every row was run by `tests/test_errors.py` as `python -m cnnbench <arguments>` (with",
        "`dataset.root`, `dataset.cache_dir`, `dataset.download=false` and `trainer.device=cpu`",
        "pointing at generated data; `{tmp}` stands for a scratch folder, `{conf}` for the",
        "folder of the shipped configs). The message is the",
        "whole output; `HYDRA_FULL_ERROR=1` adds the Python traceback behind it.",
        "",
        "| what is wrong | arguments | exit | message |",
        "| --- | --- | --- | --- |",
    ]
    for (what, args, _), (code, message) in zip(CASES, outcomes, strict=True):
        cell = message.replace("|", "\\|").replace("\n", "<br>")
        lines.append(f"| {what} | `{args}` | {code} | {cell} |")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_every_bad_input_gets_one_message_and_docs_errors_md_shows_it(tmp_path):
    make_fixtures(tmp_path)
    run = tmp_path / "mlp-run"  # the run two cases point at: left as it was, .hydra/ included
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    outcomes = run_cases(tmp_path)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    for number, (what, _args, says) in enumerate(CASES):
        code, message = outcomes[number]
        assert code == 2, (what, message)
        # refused before Hydra made a run directory: the case's folder is as empty as it was
        assert not any((tmp_path / "cases" / str(number)).iterdir()), what
        assert message.startswith(f"cnnbench: error: {says}"), (what, message)
        assert "Traceback" not in message and "HYDRA_FULL_ERROR" not in message, what
        assert "Config search path" not in message, what
    assert (REPO / "docs" / "errors.md").read_text() == table(tmp_path, outcomes), (
        "docs/errors.md is out of date: python -m tests.test_errors > docs/errors.md"
    )


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        make_fixtures(Path(tmp))
        sys.stdout.write(table(Path(tmp), run_cases(Path(tmp))))
