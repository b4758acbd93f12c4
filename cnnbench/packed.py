"""Several models of one architecture trained as one: the mechanism a packed sweep uses.

`Pack` keeps the members' parameters and buffers in stacked tensors, one row per member, and
makes every member's own tensors views of its row. A member so stays an ordinary `nn.Module`:
its optimizer, schedule, evaluation and checkpoint are a solo run's, and its batch norm keeps
its own running statistics (updated in place through the view). One forward and backward,
vmapped over the members (`torch.func.functional_call`, as PyTorch's model-ensembling
tutorial), serves them all: on a GPU a few large kernels instead of N times a few dozen small
ones.

`PackedStep` is `train.Step` for a pack: each member has its own optimizer (its learning rate,
momentum, weight decay), loss and, in float16, gradient scaler; the forward pass runs under the
members' autocast. A member whose loss is NaN or infinite is marked diverged and updated no
more, and the others go on as they would have without it (the members' arithmetic never mixes:
a vmapped convolution is a grouped one). The group's loop calls it in one of three forms, as a
solo run calls train.Step (step.py, cuda_graph.py): `PlainPackedStep` gathers the batches and
steps; `StaticPackedStep` steps on fixed buffers with nothing read on the host, and
`cuda_graph.CapturedPackedStep` records that once and replays it.

Equality with solo runs (tests/test_packed.py, on the CPU): the vmapped convolution and matrix
products add in another order, so a member differs from its solo run in the last bits (float32,
after 6 SGD steps: losses within 5e-7, weights and running statistics within 1.6e-6, for LeNet,
LeNet-BN and ResNet-mini; bfloat16 and float16, after 8: losses within 5e-4 and 2e-4,
relative). Dropout draws one mask for all members (`randomness="different"`), so a net with
dropout follows another random path than its solo run, as a run with another dropout seed
would: measured on MNIST, an MLP with dropout 0.5 over 2 epochs ended within 0.31 points of its
solo run's test accuracy (docs/performance.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from cnnbench.data import Batch, DeviceLoader
from cnnbench.step import StaticStep, tensor_lrs


class Pack:
    """`members`: models of one architecture, built (lazy layers sized) on one device."""

    def __init__(self, members: Sequence[nn.Module]):
        self.members = list(members)
        self.template = self.members[0]  # the structure functional_call runs
        self.params = _stack(m.named_parameters() for m in self.members)
        self.buffers = _stack(m.named_buffers() for m in self.members)
        for param in self.params.values():
            param.requires_grad_()
        for i, member in enumerate(self.members):
            _bind(member, i, self.params, self.buffers)

    def __len__(self) -> int:
        return len(self.members)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(members, batch, C, H, W) images -> (members, batch, classes) logits."""

        def one(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (params, buffers), (x,))

        return vmap(one, randomness="different")(self.params, self.buffers, images)

    def train(self, mode: bool = True) -> None:
        for member in self.members:
            member.train(mode)

    def hand_out_grads(self) -> None:
        """Give each member's parameters their rows of the stacked gradients (views)."""
        for i, member in enumerate(self.members):
            for name, param in member.named_parameters():
                grad = self.params[name].grad
                param.grad = None if grad is None else grad[i]

    def zero_grad(self) -> None:
        for param in self.params.values():
            param.grad = None

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's state as its own tensors: a view would save every member's storage."""
        return {k: v.clone() for k, v in self.members[i].state_dict().items()}


def _stack(named: Sequence) -> dict[str, torch.Tensor]:
    by_name: dict[str, list[torch.Tensor]] = {}
    for tensors in named:
        for name, tensor in tensors:
            by_name.setdefault(name, []).append(tensor.detach())
    return {name: torch.stack(rows) for name, rows in by_name.items()}


def _bind(member: nn.Module, i: int, params: dict, buffers: dict) -> None:
    """Make member's parameters and buffers views of row i of the stacked tensors."""
    for name, param in member.named_parameters():
        param.data = params[name].data[i]
    for name, _ in list(member.named_buffers()):
        owner, _, attr = name.rpartition(".")
        member.get_submodule(owner).register_buffer(attr, buffers[name][i])


class PackedStep:
    """One optimizer step of every member still training, on its own batch: what train.Step
    is for one model. `optimizers[i]`, `label_smoothing[i]` and `scalers[i]` (float16's
    gradient scaler, a no-op otherwise) are member i's; `autocast` is the members' precision.

    A member whose loss is not finite is marked diverged (`diverged[i]`: the step) and updated
    no more. `on_device`: that check stays on the device (no host sync, as a CUDA graph needs):
    the member's fused optimizer skips the update through its `found_inf` flag, as a gradient
    scaler would make it, and `alive()` reads the flags when asked."""

    def __init__(
        self,
        pack: Pack,
        optimizers: Sequence[torch.optim.Optimizer],
        label_smoothing: Sequence[float] | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
        scalers: Sequence[torch.amp.GradScaler] | None = None,
        on_device: bool = False,
    ):
        self.pack = pack
        self.optimizers = list(optimizers)
        self.label_smoothing = list(label_smoothing or [0.0] * len(pack))
        self.autocast = autocast or contextlib.nullcontext()
        self.scalers = list(scalers or [None] * len(pack))
        self.steps = 0
        self.logits = torch.empty(0)  # the last step's, (members, batch, classes)
        self.diverged: list[int | None] = [None] * len(pack)  # the step each diverged at
        self.on_device = on_device
        if on_device and any(s is not None and s.is_enabled() for s in self.scalers):
            raise ValueError("float16's gradient scaler reads its loss scale on the host")
        if on_device:
            device = next(iter(pack.params.values())).device
            self.skip = torch.zeros(len(pack), device=device)  # 1: diverged
            for optimizer, skip in zip(self.optimizers, self.skip, strict=True):
                optimizer.found_inf = skip  # read by torch's fused update, which then skips

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(members, batch, ...) images and (members, batch) labels; returns each member's
        mean loss of this batch (members, ), as its solo step computes it."""
        with self.autocast:
            logits = self.pack(images)
            losses = torch.stack(
                [
                    nn.functional.cross_entropy(logits[i], labels[i], label_smoothing=smoothing)
                    for i, smoothing in enumerate(self.label_smoothing)
                ]
            )
        self.logits = logits.detach()
        self.steps += 1
        self.pack.zero_grad()
        if self.on_device:
            self.update_on_device(losses)
        else:
            self.update(losses)
        return losses.detach()

    def update(self, losses: torch.Tensor) -> None:
        finite = torch.isfinite(losses.detach()).tolist()
        for i, ok in enumerate(finite):
            if not ok and self.diverged[i] is None:
                self.diverged[i] = self.steps
        training = [i for i, at in enumerate(self.diverged) if at is None]
        if not training:
            return
        # the sum's gradient for member i is its own loss's: the members never mix
        sum(self.scale(i, losses[i]) for i in training).backward()
        self.pack.hand_out_grads()
        for i in training:
            self.optimizer_step(i)

    def update_on_device(self, losses: torch.Tensor) -> None:
        self.skip.copy_(torch.maximum(self.skip, (~torch.isfinite(losses.detach())).float()))
        # a diverged member's loss does not reach the backward pass; its rows of the gradient
        # are its own, and its update is skipped
        kept = torch.where(self.skip.bool(), torch.zeros_like(losses), losses)
        kept.sum().backward()
        self.pack.hand_out_grads()
        for optimizer in self.optimizers:
            optimizer.step()

    def scale(self, i: int, loss: torch.Tensor) -> torch.Tensor:
        scaler = self.scalers[i]
        return loss if scaler is None else scaler.scale(loss)

    def optimizer_step(self, i: int) -> None:
        scaler = self.scalers[i]
        if scaler is None:
            self.optimizers[i].step()
        else:
            scaler.step(self.optimizers[i])
            scaler.update()

    def alive(self) -> list[bool]:
        """Whether each member still trains (on the device: a host sync)."""
        if self.on_device:
            return [not flag for flag in self.skip.tolist()]
        return [at is None for at in self.diverged]


Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # losses, logits, labels


def stacked(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The members' (images, labels) as (members, batch, ...) images and (members, batch) labels."""
    return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


class PlainPackedStep:
    """Gather each member's batch, then step the pack: what the group's loop calls, uncaptured.
    `batches` holds the members still training; a diverged one is handed another's batch (the
    pack runs every member, and its results are not used)."""

    name = "packed"

    def __init__(self, step: PackedStep, loaders: Sequence[DeviceLoader]) -> None:
        self.step, self.loaders = step, list(loaders)

    def __call__(self, batches: dict[int, Batch]) -> Outputs:
        gathered = {i: self.loaders[i].gather(batch) for i, batch in batches.items()}
        filler = next(iter(gathered.values()))
        images, labels = stacked([gathered.get(i, filler) for i in range(len(self.loaders))])
        losses = self.step(images, labels)
        return losses, self.step.logits, labels


class StaticPackedStep:
    """The pack's step on fixed buffers, as step.StaticStep is a model's: each member's batch,
    augmentation draws and learning rates are copied into that member's StaticStep buffers,
    the step reads them, checks divergence on the device and writes its outputs into buffers
    of its own. `cuda_graph.CapturedPackedStep` records `run`. A partial last batch takes the
    plain form. The members' optimizers must be fused (build.build_optimizer, static=True)."""

    name = "packed-static"

    def __init__(self, step: PackedStep, members: Sequence[StaticStep]) -> None:
        self.step, self.members = step, list(members)
        self.plain = PlainPackedStep(step, [m.loader for m in self.members])
        self.outputs: Outputs | None = None

    def __call__(self, batches: dict[int, Batch]) -> Outputs:
        if any(len(b.index) != len(self.members[i].index) for i, b in batches.items()):
            return self.plain(batches)
        for i, batch in batches.items():
            self.members[i].load(batch)
        self.run()
        return self.outputs

    def run(self) -> None:
        """The step on what the buffers hold: what a CUDA graph records."""
        images, labels = stacked(
            [m.loader.gather(Batch(-1, m.index, m.draws)) for m in self.members]
        )
        with contextlib.ExitStack() as stack:
            for m in self.members:
                stack.enter_context(tensor_lrs(m.step.optimizer, m.lrs))
            losses = self.step(images, labels)
        outputs = (losses, self.step.logits, labels)
        if self.outputs is None:  # the first (eager) step allocates them
            self.outputs = tuple(t.clone() for t in outputs)
        else:
            for buffer, t in zip(self.outputs, outputs, strict=True):
                buffer.copy_(t)
