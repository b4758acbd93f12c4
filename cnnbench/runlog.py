"""What a run writes, all in one place: TensorBoard scalars and hparams, metrics.csv, the
progress bar (or, off a terminal, a progress line every 30 s), and results.json for every way
a run ends: ok, diverged, interrupted or error. Only rank 0 writes; the other processes of a
torchrun run get a log that keeps nothing.
"""

from __future__ import annotations

import csv
import io
import logging
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from cnnbench import __version__, distributed
from cnnbench.atomic import remove_leftovers, write_atomic, write_json, write_text
from cnnbench.config import model_name
from cnnbench.data import DeviceLoader
from cnnbench.datasets import SPECS
from cnnbench.errors import WriteError
from cnnbench.records import METRICS_COLUMNS, EpochRow, Figures, RunFacts
from cnnbench.runs import CONFUSION_FILE, confusion_csv, flatten
from cnnbench.signals import Interrupted
from cnnbench.startup import Phases
from cnnbench.state import TrainState

log = logging.getLogger("cnnbench.train")

# metrics.csv column -> TensorBoard tag, once per epoch (train/loss and lr follow the log cadence)
EPOCH_SCALARS = {
    "train_loss": "train/epoch_loss",
    "train_acc": "train/acc",
    "test_loss": "test/loss",
    "test_acc": "test/acc",
    "best_test_acc": "test/best_acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "epoch_s": "perf/epoch_s",
    "images_per_s": "perf/images_per_s",
}
# off a terminal (nohup, a cluster's log file) a progress line comes this often, in seconds
PROGRESS_EVERY_S = 30.0


class Discard:
    """The TensorBoard writer of the ranks other than 0: takes any call, keeps nothing."""

    def __getattr__(self, name: str) -> Discard:
        return self

    def __call__(self, *args, **kwargs) -> Discard:
        return self


def hparams_summaries(config: dict) -> tuple:
    """The session-start and session-end summaries of TensorBoard's HParams tab, holding the
    flattened config.

    They go into the run's own event file: SummaryWriter.add_hparams would put them in a
    separate sub-run named by the time, apart from the curves. No experiment summary is
    written, so TensorBoard builds one over all runs under --logdir: it marks the hparams
    that differ between runs and takes every scalar tag (test/acc, ...) as a metric.
    """
    flat = {}
    for key, value in flatten(config).items():
        flat[key] = value if isinstance(value, int | float | str | bool) else str(value)
    _experiment, session_start, session_end = hparams(flat, {})
    return session_start, session_end


def write_metrics(path: Path, rows: list[dict]) -> None:
    """metrics.csv, a row per epoch, rewritten whole after each epoch (a resumed run's rows
    are its checkpoint's history: the rows of epochs after the checkpoint are gone)."""
    text = io.StringIO(newline="")
    out = csv.DictWriter(text, fieldnames=METRICS_COLUMNS)
    out.writeheader()
    out.writerows(rows)
    write_atomic(path, lambda f: f.write(text.getvalue().encode()))


def wait_for_a_later_second(out_dir: Path) -> None:
    """TensorBoard reads a run's event files in the order of their names, which begin with the
    second they were created: a resumed run's file must not share its second with the file
    of the run it continues (the purge of the points after the checkpoint would come first)."""
    seconds = [
        int(p.name.split(".")[3])
        for p in out_dir.glob("events.out.tfevents.*")
        if p.name.split(".")[3].isdigit()
    ]
    while seconds and int(time.time()) <= max(seconds):
        time.sleep(0.05)


class RunLog:
    """`logger`: where the run's lines go (a packed group gives each member its own)."""

    def __init__(
        self, out_dir: Path, config: dict, phases: Phases, logger: logging.Logger | None = None
    ) -> None:
        self.out_dir, self.config, self.phases = out_dir, config, phases
        self.log = logger or log
        self.main = distributed.is_main()
        self.writer: SummaryWriter | Discard = Discard()
        self.state: TrainState | None = None
        self.num_classes = 0
        self._last_loss: float | None = None
        self._bar: tqdm | None = None

    # ---- the start

    def open(self, state: TrainState, resumed: bool, restarted: bool, num_classes: int) -> None:
        """Start the TensorBoard log; a resumed run first drops the points logged after its
        checkpoint (purge_step), a restarted one all of them."""
        self.state, self.num_classes = state, num_classes
        if not self.main:
            return
        purge = state.step + 1 if resumed else (0 if restarted else None)
        if resumed or restarted:
            remove_leftovers(self.out_dir)  # of the writes a kill -9 cut off
            wait_for_a_later_second(self.out_dir)
        self.writer = SummaryWriter(log_dir=str(self.out_dir), purge_step=purge)
        if not resumed:
            text = OmegaConf.to_yaml(self.config)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "))
            self.writer.file_writer.add_summary(hparams_summaries(self.config)[0])
        write_metrics(self.out_dir / "metrics.csv", state.history)
        self.phases.mark("writer")  # TensorBoard (its import included) and metrics.csv

    def say(self, line: str | None) -> None:
        if line and self.main:
            self.log.info(line)

    def warn(self, line: str | None) -> None:
        if line and self.main:
            self.log.warning(line)

    def untrained(self, figures: Figures) -> None:
        """trainer.epochs=0: what the untrained model does, at step 0."""
        if figures.val_acc is not None:
            self.writer.add_scalar("val/acc", figures.val_acc, 0)
        self.writer.add_scalar("test/acc", figures.test_acc, 0)
        self.writer.add_scalar("test/loss", figures.test_loss, 0)

    # ---- during an epoch

    def batches(self, loader: DeviceLoader, epoch: int, epochs: int) -> Iterator:
        """The epoch's batches, behind a progress bar on a terminal; elsewhere a progress line
        every PROGRESS_EVERY_S seconds, so that a long epoch in a log file is not silent."""
        state = self.state
        self._bar = bar = tqdm(
            loader.batches(),
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            initial=loader.start,
            total=len(loader),
            leave=False,
            disable=None if self.main else True,
            dynamic_ncols=True,
        )
        quiet = bar.disable and self.main
        next_line = time.monotonic() + PROGRESS_EVERY_S
        try:
            for batch in bar:
                if "first_batch" not in self.phases.seconds:  # the start lines, the first batch
                    self.phases.mark("first_batch")
                yield batch
                if quiet and time.monotonic() >= next_line:
                    next_line = time.monotonic() + PROGRESS_EVERY_S
                    loss = "" if self._last_loss is None else f", loss {self._last_loss:.4f}"
                    self.log.info(
                        f"epoch {epoch}/{epochs}: batch {state.batches_done}/{len(loader)}, "
                        f"{self._rate(loader):,.0f} img/s{loss}"
                    )
        finally:  # also when the loop stops early (a stop signal, a diverged loss)
            bar.close()

    def _rate(self, loader: DeviceLoader) -> float:
        return self.state.batches_done * loader.batch_size / max(self.state.epoch_s(), 1e-9)

    def train_point(self, loss: float, lr: float, loader: DeviceLoader) -> None:
        """The mean training loss since the last point, at the log cadence."""
        self._last_loss = loss
        step = self.state.step
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("lr", lr, step)
        if self._bar is not None and not self._bar.disable:
            self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{self._rate(loader):,.0f}")

    # ---- the end of an epoch

    def epoch(self, row: EpochRow, epochs: int) -> None:
        """One row of metrics.csv and TensorBoard, and the epoch's log line."""
        if not self.main:
            return
        write_metrics(self.out_dir / "metrics.csv", self.state.history)
        for key, tag in EPOCH_SCALARS.items():
            if getattr(row, key) is not None:
                self.writer.add_scalar(tag, getattr(row, key), row.step)
        self.writer.flush()
        self.log.info(
            f"epoch {row.epoch}/{epochs}  train loss {row.train_loss:.4f} acc "
            f"{row.train_acc:.4f} | test loss {row.test_loss:.4f} acc {row.test_acc:.4f}"
            f" | lr {row.lr:.3g} | {row.epoch_s:.1f} s, {row.images_per_s:,.0f} img/s"
        )
        chance = 1 / self.num_classes
        if row.test_acc < 1.5 * chance:
            self.log.warning(
                f"test accuracy {row.test_acc:.4f} is at chance level ({chance:.2f} for "
                f"{self.num_classes} classes): the network has learned nothing yet. A sigmoid "
                "network may need more epochs; otherwise try another optimizer.lr (10x smaller "
                "if the loss jumps, 10x larger if it stays flat)"
            )

    def diverged(self, loss: float, step: int, epoch: int, lr: float) -> None:
        self.log.error(
            f"the training loss became {loss} by step {step} (epoch {epoch}); the run stops and "
            "its last checkpoint is kept. A smaller learning rate usually helps, e.g. "
            f"optimizer.lr={lr / 10:g}"
        )

    # ---- the end of the run

    def results(
        self,
        state: TrainState,
        status: str,
        diverged_at: int | None,
        figures: Figures,
        facts: RunFacts,
    ) -> dict:
        """results.json of a run that trained to its end (ok) or diverged."""
        history = state.history
        last = history[-1] if history else {}
        # the first epoch pays for warm-up (allocations, lazy init), so it is left out of the
        # throughput when later epochs exist
        timed = history[1:] or history
        timed_s = sum(r["epoch_s"] for r in timed)
        rate = sum(r["images_per_s"] * r["epoch_s"] for r in timed) / timed_s if timed else None
        results = {
            "status": status,
            "diverged_at_step": diverged_at,
            "model": model_name(self.config),
            "dataset": self.config["dataset"]["name"],
            "init": self.config["model"].get("init", "default"),
            "test_acc": figures.test_acc,
            "test_loss": figures.test_loss,
            "best_test_acc": max([r["test_acc"] for r in history], default=figures.test_acc),
            "best_epoch": state.best_epoch,
            "val_acc": figures.val_acc,
            "val_loss": figures.val_loss,
            "best_val_acc": state.best_acc if figures.val_acc is not None else None,
            "val_size": self.config["dataset"]["val_size"],
            "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"),
            "epochs": self.config["trainer"]["epochs"],
            "epochs_done": len(history),
            "steps": state.step,
            **asdict(facts),
            "train_images_per_s": rate,
            "train_s": sum(r["epoch_s"] for r in history),
            "wall_s": state.run_s(),
            # from the process's start (or train()'s call) to the first training step
            "startup": self.phases.summary(),
            "world_size": distributed.world_size(),
            "torch_version": torch.__version__,
            "cnnbench_version": __version__,
            "python_version": platform.python_version(),
            "run_dir": str(self.out_dir),
            "config": self.config,
        }
        if self.main:
            if status == "ok":  # the HParams tab shows it finished
                self.writer.file_writer.add_summary(hparams_summaries(self.config)[1])
            if figures.test_confusion is not None:  # none: a finished run resumed
                classes = SPECS[self.config["dataset"]["name"]].classes
                table = confusion_csv(figures.test_confusion.tolist(), classes)
                write_text(self.out_dir / CONFUSION_FILE, table)
            write_json(self.out_dir / "results.json", results)
        return results

    @contextmanager
    def records_failure(self) -> Iterator[None]:
        """A crash or a stop still leaves a results.json that says what happened; the error
        goes on."""
        try:
            yield
        except BaseException as err:
            if self.main:
                record_failure(self.out_dir, err, self.config, self.state)
            raise
        finally:
            self.writer.close()


def record_failure(
    out_dir: Path, err: BaseException, config: dict, state: TrainState | None = None
) -> None:
    """results.json of a run that ended early. A full disk may refuse it too: then the error
    already says which file could not be written, and nothing more can be kept."""
    stopped = isinstance(err, Interrupted | KeyboardInterrupt)
    last = out_dir / "last.pt"
    record = {
        "status": "interrupted" if stopped else "error",
        "error": f"{type(err).__name__}: {err}",
        "model": model_name(config),
        "dataset": config["dataset"]["name"],
        "epochs_done": len(state.history) if state else 0,
        "steps": state.step if state else 0,
        "checkpoint": str(last) if last.exists() else None,
        "run_dir": str(out_dir),
        "config": config,
    }
    try:
        write_json(out_dir / "results.json", record)
    except WriteError as write_err:
        print(f"cnnbench: {write_err}", file=sys.stderr)
