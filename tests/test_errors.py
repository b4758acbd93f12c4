"""Every bad input tried, through the real command line: one message, a non-zero exit, no
traceback. docs/errors.md is this table with the messages as a user sees them; the test fails
when they drift apart. Rewrite the doc after changing a message:

    python -m tests.test_errors > docs/errors.md
"""

import gzip
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cnnbench.config import CONFIG_DIR
from tests.conftest import REPO, write_mnist_like
from tests.test_cli import cnnbench

# (what is wrong, arguments); {tmp} is a scratch folder holding the fixtures made below
CASES = [
    ("unknown model", "model=nope"),
    ("misspelt key", "trainer.epoch=3"),
    ("a key nothing reads", "+trainer.epoch=3"),
    ("negative learning rate", "optimizer.lr=-1"),
    ("zero learning rate", "optimizer.lr=0"),
    ("learning rate of the wrong type", "optimizer.lr=fast"),
    ("momentum of 1", "optimizer=sgd optimizer.momentum=1.0"),
    ("Nesterov without momentum", "optimizer=sgd optimizer.nesterov=true"),
    ("negative weight decay", "optimizer.weight_decay=-0.1"),
    ("Adam beta of 1.5", "optimizer.betas=[0.9,1.5]"),
    ("batch size 0", "dataset.batch_size=0"),
    ("fractional batch size", "dataset.batch_size=2.5"),
    ("negative resize", "dataset.resize=-3"),
    ("input smaller than the model takes", "model=alexnet dataset.resize=32"),
    ("negative epochs", "trainer.epochs=-1"),
    ("boolean epochs", "trainer.epochs=true"),
    ("negative seed", "trainer.seed=-1"),
    ("label smoothing of 1", "trainer.label_smoothing=1"),
    ("unknown precision", "trainer.precision=fp8"),
    ("negative augmentation shift", "dataset.translate=-2"),
    ("scheduler step of 0", "scheduler=step scheduler.step_size=0"),
    ("unknown activation", "model=mlp model.activation=foo"),
    ("device this machine lacks", "trainer.device=cuda:7"),
    ("device name that does not exist", "trainer.device=gpu"),
    ("no data and no download", "dataset=mnist dataset.root={tmp}/empty dataset.download=false"),
    ("data root that is a file", "dataset.root={tmp}/file"),
    ("truncated data file", "dataset.root={tmp}/corrupt dataset.download=false"),
    ("run directory that cannot be written", "hydra.run.dir=/proc/cnnbench-run"),
    ("run directory that already holds a run", "hydra.run.dir={tmp}/mlp-run"),
    ("checkpoint that does not exist", "trainer.resume={tmp}/nothing.pt"),
    ("checkpoint that is not one", "trainer.resume={tmp}/garbage.pt"),
    ("checkpoint of another model", "model=lenet trainer.resume={tmp}/mlp-run"),
]


def make_fixtures(tmp: Path) -> None:
    (tmp / "empty").mkdir()
    (tmp / "file").write_text("not a folder")
    write_mnist_like(tmp / "corrupt" / "fashion-mnist", n_train=50, n_test=20)
    images = tmp / "corrupt" / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    (tmp / "garbage.pt").write_bytes(b"\x80\x04not a checkpoint")
    write_mnist_like(tmp / "data" / "fashion-mnist", n_train=50, n_test=20)
    run = cnnbench(*common(tmp), "model=mlp", "trainer.epochs=1", f"hydra.run.dir={tmp}/mlp-run",
                   cwd=tmp)  # fmt: skip
    assert run.returncode == 0, run.stderr


def common(tmp: Path) -> list[str]:
    return [f"dataset.root={tmp}/data", f"dataset.cache_dir={tmp}/cache",
            "dataset.download=false", "trainer.device=cpu"]  # fmt: skip


def run_case(tmp: Path, number: int, args: str) -> tuple[int, str]:
    argv = [*common(tmp), *args.replace("{tmp}", str(tmp)).split()]
    # each case in a folder of its own: two runs started in the same second would otherwise
    # share outputs/<date>/<time>, and the second would be refused
    cwd = tmp / "cases" / str(number)
    cwd.mkdir(parents=True)
    proc = cnnbench(*argv, cwd=cwd)
    message = (
        (proc.stderr + proc.stdout).replace(str(tmp), "{tmp}").replace(str(CONFIG_DIR), "{conf}")
    )
    return proc.returncode, message.strip()


def table(tmp: Path) -> str:
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda i: run_case(tmp, i, CASES[i][1]), range(len(CASES))))
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
    for (what, args), (code, message) in zip(CASES, outcomes, strict=True):
        cell = message.replace("|", "\\|").replace("\n", "<br>")
        lines.append(f"| {what} | `{args}` | {code} | {cell} |")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_every_bad_input_gets_one_message_and_docs_errors_md_shows_it(tmp_path):
    make_fixtures(tmp_path)
    expected = table(tmp_path)
    rows = expected.split("| --- | --- | --- | --- |\n", 1)[1].splitlines()
    assert len(rows) == len(CASES)
    for row in rows:
        what, _args, code, message = row[2:-2].split(" | ", 3)
        assert code != "0", what
        assert "Traceback" not in message, what
        assert re.search(r"error|Could not|not found|Error", message), what
    assert (REPO / "docs" / "errors.md").read_text() == expected, (
        "docs/errors.md is out of date: python -m tests.test_errors > docs/errors.md"
    )


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        make_fixtures(Path(tmp))
        sys.stdout.write(table(Path(tmp)))
