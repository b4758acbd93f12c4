"""One run: a composed config in; a trained model, its curves and results.json out.

    python -m cnnbench model=mlp dataset=mnist trainer.epochs=3

`train(cfg, out_dir)` is the whole run, read top to bottom: set up, train epoch by epoch
(`train_one_epoch`, and `Step`, the training step itself, right below it), evaluate after
each, save, return the results. On CUDA the step is recorded once as a CUDA graph and replayed
(step.py, cuda_graph.py).
What is not training sits behind one name each: `build` (model, data, optimizer), `TrainState`
(the position and its checkpoint), `RunLog` (everything written), `StopSignals` and
`distributed` (torchrun). The command line is `cli.py`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from cnnbench import checkpoint, cores, cuda_graph, data, distributed
from cnnbench.build import (
    Engine,
    Loaders,
    build_engine,
    build_loaders,
    build_model,
    build_optimizer,
    build_scheduler,
    check_batches,
    construct_model,
    describe,
    device_loader,
    forward_flops,
    keep_freed_memory,
    load_splits,
    precision_for,
    tune_backend,
)
from cnnbench.config import image_size, resolved, validate
from cnnbench.eval import evaluate
from cnnbench.records import EpochRow, Figures, RunFacts
from cnnbench.rundir import claim
from cnnbench.runlog import RunLog
from cnnbench.seeding import seed_everything
from cnnbench.signals import Interrupted, StopSignals
from cnnbench.startup import Phases
from cnnbench.state import EpochTotals, Trainables, TrainState
from cnnbench.step import PlainStep, Runner, StaticStep

__all__ = ["Interrupted", "train"]


def train(
    cfg: DictConfig,
    out_dir: Path,
    resume: Path | None = None,
    restart: bool = False,
    startup: Phases | None = None,
    jobs: int = 1,
) -> dict:
    """Train and evaluate the configured model; write logs and checkpoints into `out_dir`;
    return the results. With `resume`, continue the run that checkpoint stopped; with
    `restart`, start afresh in a directory a run without a checkpoint left behind. `startup`:
    the command line's start-up phases, which this run goes on marking (None: from now).
    `jobs`: the runs a launcher (joblib) started beside this one, which share the cores."""
    start = time.perf_counter()
    phases = startup or Phases(since=time.time())
    t = cfg.trainer
    opened = open_run(cfg, out_dir, resume, restart, phases, jobs)
    device, log, ckpt = opened.device, opened.log, opened.ckpt
    with log.records_failure():
        state, engine, loaders, runner, flops = build_run(
            cfg, device, opened.config, start, log, phases
        )
        if ckpt:
            state.restore(ckpt, resume)
        distributed.seed_rank(cfg.trainer.seed, state.step)
        log.open(state, resumed=bool(ckpt), restarted=opened.restarted, num_classes=opened.classes)
        announce(log, cfg, state, loaders, device, opened.threads, resume if ckpt else None, runner)

        epochs, figures = t.epochs, last_figures(state, engine, loaders, log)
        status, diverged_at, lr = "ok", None, state.parts.optimizer.param_groups[0]["lr"]
        with StopSignals(every=cfg.trainer.log_every_n_steps) as stop:
            for epoch in range(state.epochs_done + 1, epochs + 1):
                lr, diverged_at = train_one_epoch(
                    state, runner, loaders, log, stop, epoch, cfg, out_dir
                )
                totals = state.totals()  # over all processes
                if diverged_at is not None or not math.isfinite(totals.train_loss):
                    status, diverged_at = "diverged", diverged_at or state.step
                    log.diverged(totals.train_loss, diverged_at, epoch, cfg.optimizer.lr)
                    break

                figures = finish_epoch(state, engine, loaders, log, out_dir, epoch, lr, totals)
                if epoch < epochs and stop.requested():
                    raise stop.stop(out_dir / "last.pt")

        if state.window_steps and status == "ok":  # steps since the last point: short runs
            log.train_point(state.window_loss(), lr, loaders.train)
        facts = RunFacts(
            params=sum(p.numel() for p in state.parts.model.parameters()),
            flops_per_image=flops,
            device=str(device),
            resumed=bool(ckpt),
            threads=opened.threads[0],
            precision=precision_for(t.precision, device),
            step=runner.name,
        )
        return log.results(state, status, diverged_at, figures, facts)


@dataclass
class Opened:
    """A run's start, before anything is built: its device and threads, the checkpoint it
    resumes, whether it took over a directory a run left without one, and its RunLog."""

    device: torch.device
    threads: tuple[int, str]
    config: dict
    ckpt: dict | None
    restarted: bool
    classes: int
    log: RunLog


def open_run(
    cfg: DictConfig,
    out_dir: Path,
    resume: Path | None,
    restart: bool,
    phases: Phases,
    jobs: int,
    logger: logging.Logger | None = None,
) -> Opened:
    """Check the config, choose the device and its threads, load and check the checkpoint to
    resume, and claim the run directory. `logger`: where the run's lines go (RunLog)."""
    validate(cfg)
    t = cfg.trainer
    device = distributed.run_device(t.device)
    threads = tune_backend(device, t.deterministic, t.matmul_precision, t.threads, jobs)
    if device.type != "cuda":
        keep_freed_memory()  # for this process, as a launcher's allocator setting would
    config, spec, size = resolved(cfg), data.SPECS[cfg.dataset.name], image_size(cfg)
    ckpt = checkpoint.load_for_resume(resume, config, size) if resume else None
    restarted = not ckpt and distributed.main_first(lambda: claim(out_dir, restart), others=False)
    log = RunLog(out_dir, config, phases, logger)
    phases.mark("setup")  # validation, the device and its threads, the run directory
    return Opened(device, threads, config, ckpt, bool(restarted), len(spec.classes), log)


def preflight(cfg: DictConfig, resume: str | Path | None) -> Path | None:
    """What train() would refuse before it trains, checked without training: the values, the
    device, the checkpoint to resume (a file or run directory; returned as the file), the data
    and its batches, and the arguments of the model's, optimizer's and schedule's classes.
    hooks.StartRun calls it before Hydra makes the run's directory; the data it reads is cached
    for the run."""
    validate(cfg)
    distributed.run_device(cfg.trainer.device)
    path = checkpoint.find(resume) if resume else None
    if path:
        checkpoint.load_for_resume(path, resolved(cfg), image_size(cfg))
    train_set, _, _ = load_splits(cfg)
    check_batches(cfg, device_loader(cfg, train_set, torch.device("cpu"), train=True))
    with torch.device("meta"):  # the constructors' checks, without allocating the weights
        model = construct_model(cfg)
    build_scheduler(cfg, build_optimizer(cfg, model), total_steps=1)
    return path


def finish_epoch(
    state: TrainState,
    engine: Engine,
    loaders: Loaders,
    log: RunLog,
    out_dir: Path,
    epoch: int,
    lr: float,
    totals: EpochTotals,
) -> Figures:
    """After an epoch's training (`totals`: its sums over all processes, read already): the
    evaluation, the epoch's row of metrics.csv, last.pt, and best.pt when the tracked accuracy
    improved. Returns the evaluation's figures."""
    epoch_s = state.epoch_s()  # after totals.train_loss's .item(): the device is done
    epochs = state.parts.config["trainer"]["epochs"]
    figures = evaluate_all(engine, loaders, state.parts.num_classes, last=epoch == epochs)
    row = EpochRow(
        epoch=epoch,
        step=state.step,
        lr=lr,
        train_loss=totals.train_loss,
        train_acc=totals.train_acc,
        test_loss=figures.test_loss,
        test_acc=figures.test_acc,
        best_test_acc=max([r["test_acc"] for r in state.history] + [figures.test_acc]),
        val_loss=figures.val_loss,
        val_acc=figures.val_acc,
        epoch_s=epoch_s,
        images_per_s=totals.seen / epoch_s,
    )
    improved = state.end_epoch(asdict(row), figures.tracked)
    log.epoch(row, epochs)
    state.save(out_dir / "last.pt")
    if improved:  # the same checkpoint, linked rather than written twice
        state.copy(out_dir / "last.pt", out_dir / "best.pt")
    return figures


@dataclass
class Step:
    """One optimizer step. `fraction`: this process's part of the global batch (1 alone)."""

    engine: Engine
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    state: TrainState
    world: int = 1

    def __call__(self, x: torch.Tensor, y: torch.Tensor, fraction: float) -> None:
        with self.engine.autocast:
            logits = self.engine.forward(x)
            loss = self.loss_fn(logits, y)
        # this process's part of the global batch's mean loss (all of it on one process);
        # DDP averages the processes' gradients, hence the factor world
        share = loss * fraction
        self.optimizer.zero_grad(set_to_none=True)
        self.engine.scaler.scale(share * self.world).backward()
        self.engine.scaler.step(self.optimizer)
        self.engine.scaler.update()
        self.state.add(loss, share, logits, y)


def train_one_epoch(
    state: TrainState,
    step: Runner,
    loaders: Loaders,
    log: RunLog,
    stop: StopSignals,
    epoch: int,
    cfg: DictConfig,
    out_dir: Path,
) -> tuple[float, int | None]:
    """One pass over the training batches, from where `state` stands. Returns the learning
    rate of the last step, and the step at which the logged mean loss stopped being finite
    (None while it is). A stop signal saves the position mid-epoch and raises. `step` is the
    training step itself (step.py: forward, loss, backward, update), plain or captured."""
    optimizer, scheduler = state.parts.optimizer, state.parts.scheduler
    lr = optimizer.param_groups[0]["lr"]
    state.parts.model.train()
    loaders.train.set_epoch(epoch, start=state.batches_done)
    state.begin_epoch()
    for batch in log.batches(loaders.train, epoch, cfg.trainer.epochs):
        lr = optimizer.param_groups[0]["lr"]
        step(batch)
        scheduler.step()
        state.advance(len(batch.index))

        if state.step % cfg.trainer.log_every_n_steps == 0:
            mean_loss = state.window_loss()
            if not math.isfinite(mean_loss):
                return lr, state.step
            log.train_point(mean_loss, lr, loaders.train)
        if state.batches_done < len(loaders.train) and stop.requested(state.step):
            state.save(out_dir / "last.pt")  # mid-epoch, with the epoch's sums
            raise stop.stop(out_dir / "last.pt")
    return lr, None


def announce(
    log: RunLog,
    cfg: DictConfig,
    state: TrainState,
    loaders: Loaders,
    device: torch.device,
    threads: tuple[int, str],
    resumed_from: Path | None,
    step: Runner,
) -> None:
    """The start lines: the model, data, device and threads; a busy machine; the processes;
    a captured step; where a resumed run picks up."""
    log.say(describe(cfg, state.parts.model, loaders, device, threads))
    log.warn(cores.busy_note(threads[0]))
    log.say(distributed.describe(device, cfg.dataset.batch_size))
    log.warn(step.why)
    if step.name == "captured":
        log.say(
            "the training step is captured in a CUDA graph and replayed for every full "
            "batch (trainer.cuda_graph=false: the plain step)"
        )
    if resumed_from:
        log.say(
            f"resuming {resumed_from} at step {state.step} (epoch {state.epochs_done + 1}, "
            f"batch {state.batches_done})"
        )


def build_run(
    cfg: DictConfig,
    device: torch.device,
    config: dict,
    started: float,
    log: RunLog,
    phases: Phases,
) -> tuple[TrainState, Engine, Loaders, Runner, int]:
    """Everything the loop needs, in the order start-up is timed: the data on the device, the
    model, its FLOPs, the engine and optimizer, the schedule, the loss, the position, and the
    step (plain or captured: cuda_graph.choose)."""
    spec, size = data.SPECS[cfg.dataset.name], image_size(cfg)
    seed_everything(cfg.trainer.seed)
    loaders = build_loaders(cfg, device)
    phases.mark("data")
    model = build_model(cfg, device)
    phases.mark("model")
    flops = forward_flops(model, (spec.channels, size, size))
    phases.mark("flops")  # the FLOP counter's first use imports torch._dynamo
    kind, why = cuda_graph.choose(cfg, device, distributed.world_size())
    engine = build_engine(cfg, model, device, captured=kind == "captured")
    optimizer = build_optimizer(cfg, model, device, static=kind != "plain")
    phases.mark("engine_and_optimizer")
    steps = max(1, cfg.trainer.epochs * len(loaders.train))
    scheduler = build_scheduler(cfg, optimizer, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    parts = Trainables(
        model, optimizer, scheduler, engine.scaler, config, spec.channels, len(spec.classes), size
    )
    state = TrainState(parts, device, started=started)
    step = Step(engine, optimizer, loss_fn, state, distributed.world_size())
    if kind == "captured":
        return (
            state,
            engine,
            loaders,
            cuda_graph.CapturedStep(step, loaders.train, warn=log.warn),
            flops,
        )
    runner = {"plain": PlainStep, "static": StaticStep}[kind](step, loaders.train, why)
    return state, engine, loaders, runner, flops


def evaluate_all(engine: Engine, loaders: Loaders, classes: int, last: bool = True) -> Figures:
    """Test (and validation) loss and accuracy, as the run computes (autocast included), and
    the test confusion matrix (RunLog.results writes the last one). The `last` evaluation of
    a run with trainer.tta averages over the views (once: it costs a forward pass per view,
    as airbench evaluates only at its end)."""
    forward = engine.evaluate if last else engine.forward
    with engine.autocast:
        test = evaluate(forward, loaders.test, classes)
        val = evaluate(forward, loaders.val, classes) if loaders.val else None
    return Figures(
        test_loss=test.loss,
        test_acc=test.acc,
        val_loss=val.loss if val else None,
        val_acc=val.acc if val else None,
        test_confusion=test.confusion,
    )


def last_figures(state: TrainState, engine: Engine, loaders: Loaders, log: RunLog) -> Figures:
    """The figures the results report before any epoch of this process: the last epoch's of
    a resumed run; for trainer.epochs=0, what the untrained model does."""
    if state.history:
        last = state.history[-1]
        return Figures(last["test_loss"], last["test_acc"], last["val_loss"], last["val_acc"])
    if state.parts.config["trainer"]["epochs"] > 0:
        return Figures(test_loss=math.nan, test_acc=math.nan)
    figures = evaluate_all(engine, loaders, state.parts.num_classes)
    state.best_acc = figures.tracked
    log.untrained(figures)
    return figures
