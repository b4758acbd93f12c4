"""Several models of one architecture trained as one: the mechanism a packed sweep uses.

`Pack` keeps the members' parameters and buffers in stacked tensors, one row per member, and
makes every member's own tensors views of its row. A member so stays an ordinary `nn.Module`:
its optimizer, schedule, evaluation and checkpoint are a solo run's, and its batch norm keeps
its own running statistics (updated in place through the view). One forward and backward,
vmapped over the members (`torch.func.functional_call`, as PyTorch's model-ensembling
tutorial), serves them all: on a GPU a few large kernels instead of N times a few dozen small
ones.

`PackedStep` is `train.Step` for a pack: each member has its own optimizer (its learning rate,
momentum, weight decay) and loss; a member whose loss is NaN or infinite is marked diverged and
updated no more, and the others go on as they would have without it (the members' arithmetic
never mixes: a vmapped convolution is a grouped one).

Equality with solo runs (tests/test_packed.py, float32 on the CPU): the vmapped convolution
and matrix products add in another order, so a member differs from its solo run in the last
bits (after 6 SGD steps: losses within 5e-7, weights and running statistics within 1.6e-6, for
LeNet, LeNet-BN and ResNet-mini); dropout draws one mask for all members
(`randomness="different"`), so a net with dropout follows another random path than its solo
run, as a run with another dropout seed would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap


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
    """One optimizer step of every member still training, on its own batch.

    `optimizers[i]` updates member i; `label_smoothing` as trainer.label_smoothing."""

    def __init__(
        self,
        pack: Pack,
        optimizers: Sequence[torch.optim.Optimizer],
        label_smoothing: Sequence[float] | None = None,
    ):
        self.pack = pack
        self.optimizers = list(optimizers)
        self.label_smoothing = list(label_smoothing or [0.0] * len(pack))
        self.diverged: list[int | None] = [None] * len(pack)  # the step each member diverged at
        self.steps = 0
        self.logits = torch.empty(0)  # the last step's, (members, batch, classes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(members, batch, ...) images and (members, batch) labels; returns each member's
        mean loss of this batch (members, ), as its solo step computes it."""
        logits = self.pack(images)
        losses = torch.stack(
            [
                nn.functional.cross_entropy(logits[i], labels[i], label_smoothing=smoothing)
                for i, smoothing in enumerate(self.label_smoothing)
            ]
        )
        self.logits = logits.detach()
        self.steps += 1
        finite = torch.isfinite(losses.detach()).tolist()
        for i, ok in enumerate(finite):
            if not ok and self.diverged[i] is None:
                self.diverged[i] = self.steps
        training = [i for i, at in enumerate(self.diverged) if at is None]
        self.pack.zero_grad()
        if training:
            # the sum's gradient for member i is its own loss's: the members never mix
            sum(losses[i] for i in training).backward()
            self.pack.hand_out_grads()
            for i in training:
                self.optimizers[i].step()
        return losses.detach()

    def alive(self) -> list[bool]:
        return [at is None for at in self.diverged]
