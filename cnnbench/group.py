"""Several runs trained together as one pack (packed.py), each into its own directory as
train() writes it: its metrics.csv, TensorBoard events, results.json, last.pt and best.pt.

`train_group` is train() for runs that differ only in what a member may: the optimizer's and
the schedule's settings, the seed, model.init and label smoothing. They share the model's
architecture, the dataset, the batch size, the epochs, the precision and the device, so their
epochs have the same batches, stepped in lockstep: one vmapped forward and backward for all,
then each member's own optimizer, schedule, sums and logging. A member that diverges is
recorded as diverged and stops; the others go on. The pack's step takes the form its members'
steps would (cuda_graph.choose): captured on CUDA, plain on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnbench.build import Engine, Loaders, precision_for
from cnnbench.cuda_graph import CapturedPackedStep, CapturedStep
from cnnbench.packed import Pack, PackedStep, PlainPackedStep, StaticPackedStep
from cnnbench.records import Figures, RunFacts
from cnnbench.runs import NOT_IDENTITY, flatten
from cnnbench.signals import StopSignals
from cnnbench.startup import Phases
from cnnbench.state import TrainState
from cnnbench.step import Runner, StaticStep
from cnnbench.train import Opened, announce, build_run, finish_epoch, last_figures, open_run

# what may differ between the members of a group: the rest of the config must be equal
PER_MEMBER = ("optimizer.", "scheduler.", "trainer.seed", "model.init", "trainer.label_smoothing")
PER_MEMBER += ("dataset.translate", "dataset.flip", *NOT_IDENTITY)
SHARED = ("optimizer._target_", "scheduler._target_")  # one optimizer and schedule class


def groups(configs: list[dict], max_members: int | None = None) -> list[list[int]]:
    """The indices of `configs` (resolved) in groups that can train as one pack, in order of
    their first member; a group of one trains alone."""
    found: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        flat = flatten(cfg)
        shared = {k: v for k, v in flat.items() if k in SHARED or not k.startswith(PER_MEMBER)}
        found.setdefault(repr(sorted(shared.items())), []).append(i)
    size = max_members or max(1, len(configs))
    return [group[k : k + size] for group in found.values() for k in range(0, len(group), size)]


@dataclass
class Member:
    """One run of the group, built as train() builds it."""

    cfg: DictConfig
    out_dir: Path
    opened: Opened
    state: TrainState
    engine: Engine
    loaders: Loaders
    runner: Runner  # the member's own step, whose buffers a static pack fills
    flops: int
    figures: Figures
    status: str = "ok"
    diverged_at: int | None = None
    lr: float = math.nan

    @property
    def training(self) -> bool:
        return self.status == "ok"


def train_group(
    cfgs: list[DictConfig],
    out_dirs: list[Path],
    resumes: list[Path | None] | None = None,
    loggers: list[logging.Logger] | None = None,
) -> list[dict]:
    """Train the runs of `cfgs` as one pack, run i into out_dirs[i] (resuming resumes[i],
    its lines to loggers[i]); return each run's results, as train() returns them."""
    start = time.perf_counter()
    resumes = resumes or [None] * len(cfgs)
    loggers = loggers or [None] * len(cfgs)
    with contextlib.ExitStack() as stack:
        members = []
        for cfg, out_dir, resume, logger in zip(cfgs, out_dirs, resumes, loggers, strict=True):
            members.append(start_member(cfg, out_dir, resume, logger, start, stack))
        if len({m.state.step for m in members}) > 1:
            raise ValueError("the members of a pack must stand at one step to train in lockstep")
        runner = pack_runner(members)
        first, epochs = members[0], cfgs[0].trainer.epochs
        with StopSignals(every=first.cfg.trainer.log_every_n_steps) as stop:
            for epoch in range(first.state.epochs_done + 1, epochs + 1):
                train_one_epoch(members, runner, stop, epoch)
                for m in members:
                    end_epoch(m, epoch)
                if not any(m.training for m in members):
                    break
                if epoch < epochs and stop.requested():  # each last.pt is the epoch's already
                    raise stop.stop(first.out_dir / "last.pt")
        return [results(m, runner.name) for m in members]


def pack_runner(members: list[Member]) -> PlainPackedStep | StaticPackedStep:
    """The pack's step in the form its members' own steps took (cuda_graph.choose): captured
    on CUDA where each member's would be, else plain (on the CPU, static with
    trainer.cuda_graph=true)."""
    runners = [m.runner for m in members]
    # float16's scaler reads its scale on the host (on CUDA, choose() says so already)
    scaled = any(m.engine.scaler.is_enabled() for m in members)
    static = all(isinstance(r, StaticStep) for r in runners) and not scaled
    step = PackedStep(
        Pack([m.state.parts.model for m in members]),
        [m.state.parts.optimizer for m in members],
        [m.cfg.trainer.label_smoothing for m in members],
        autocast=members[0].engine.autocast,
        scalers=[m.engine.scaler for m in members],
        on_device=static,
    )
    if static and all(isinstance(r, CapturedStep) for r in runners):
        return CapturedPackedStep(step, runners, warn=members[0].opened.log.warn)
    if static:
        return StaticPackedStep(step, runners)
    return PlainPackedStep(step, [m.loaders.train for m in members])


def start_member(
    cfg: DictConfig,
    out_dir: Path,
    resume: Path | None,
    logger: logging.Logger | None,
    start: float,
    stack: contextlib.ExitStack,
) -> Member:
    phases = Phases(since=time.time())
    # restart: a sweep's job run again takes over the directory it claimed without a checkpoint
    opened = open_run(cfg, out_dir, resume, True, phases, jobs=1, logger=logger)
    log = opened.log
    stack.enter_context(log.records_failure())
    state, engine, loaders, runner, flops = build_run(
        cfg, opened.device, opened.config, start, log, phases
    )
    if opened.ckpt:
        state.restore(opened.ckpt, resume)
    log.open(
        state, resumed=bool(opened.ckpt), restarted=opened.restarted, num_classes=opened.classes
    )
    announce(
        log,
        cfg,
        state,
        loaders,
        opened.device,
        opened.threads,
        resume if opened.ckpt else None,
        runner,
    )
    figures = last_figures(state, engine, loaders, log)
    lr = state.parts.optimizer.param_groups[0]["lr"]
    return Member(cfg, out_dir, opened, state, engine, loaders, runner, flops, figures, lr=lr)


def train_one_epoch(
    members: list[Member], step: PlainPackedStep | StaticPackedStep, stop: StopSignals, epoch: int
) -> None:
    """One pass over the training batches of the members still training, in lockstep."""
    epochs = members[0].cfg.trainer.epochs
    live = {i: m for i, m in enumerate(members) if m.training}
    for m in live.values():
        m.state.parts.model.train()
        m.loaders.train.set_epoch(epoch, start=m.state.batches_done)
        m.state.begin_epoch()
    epochs_batches = [m.opened.log.batches(m.loaders.train, epoch, epochs) for m in live.values()]
    for group in zip(*epochs_batches, strict=True):
        batches = dict(zip(live, group, strict=True))
        losses, logits, labels = step(batches)
        for i, batch in batches.items():
            if live[i].training:  # not once it diverged: its last good checkpoint stays
                after_step(live[i], losses[i], logits[i], labels[i], len(batch.index), epoch)
        first = next(iter(live.values()))
        if first.state.batches_done < len(first.loaders.train) and stop.requested(first.state.step):
            for m in members:
                if m.training:
                    m.state.save(m.out_dir / "last.pt")  # mid-epoch, with the epoch's sums
            raise stop.stop(first.out_dir / "last.pt")


def after_step(
    m: Member, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, n: int, epoch: int
) -> None:
    """What train_one_epoch does after a step, for one member: its sums, its schedule, its
    position and, at the log cadence, its training-loss point, or its divergence."""
    optimizer, scheduler = m.state.parts.optimizer, m.state.parts.scheduler
    m.lr = optimizer.param_groups[0]["lr"]
    m.state.add(loss, loss, logits, y)
    scheduler.step()
    m.state.advance(n)
    if m.state.step % m.cfg.trainer.log_every_n_steps == 0:
        mean_loss = m.state.window_loss()
        if math.isfinite(mean_loss):
            m.opened.log.train_point(mean_loss, m.lr, m.loaders.train)
        else:
            diverged(m, mean_loss, epoch)


def end_epoch(m: Member, epoch: int) -> None:
    """The epoch's end for a member still training, as train() ends one: its evaluation,
    metrics row and checkpoints, unless its epoch's loss is not finite."""
    if not m.training:
        return
    totals = m.state.totals()
    if not math.isfinite(totals.train_loss):
        diverged(m, totals.train_loss, epoch)
        return
    log = m.opened.log
    m.figures = finish_epoch(m.state, m.engine, m.loaders, log, m.out_dir, epoch, m.lr, totals)


def diverged(m: Member, loss: float, epoch: int) -> None:
    """The member stops here (PackedStep updates it no more once its loss is not finite)."""
    m.status, m.diverged_at = "diverged", m.state.step
    m.opened.log.diverged(loss, m.diverged_at, epoch, m.cfg.optimizer.lr)


def results(m: Member, step: str) -> dict:
    if m.state.window_steps and m.training:  # steps since the last point: short runs
        m.opened.log.train_point(m.state.window_loss(), m.lr, m.loaders.train)
    device = m.opened.device
    facts = RunFacts(
        params=sum(p.numel() for p in m.state.parts.model.parameters()),
        flops_per_image=m.flops,
        device=str(device),
        resumed=bool(m.opened.ckpt),
        threads=m.opened.threads[0],
        precision=precision_for(m.cfg.trainer.precision, device),
        step=step,
    )
    return m.opened.log.results(m.state, m.status, m.diverged_at, m.figures, facts)
