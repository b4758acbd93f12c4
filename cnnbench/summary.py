"""Print a network layer by layer, like the textbooks' "print every layer's output shape" cells:
each layer's output shape, parameters and FLOPs, then the totals. It composes the same config
as training (so the model's input size and any dataset.resize apply) and reads no data.

    python -m cnnbench.summary model=alexnet dataset=fashion_mnist
    python -m cnnbench.summary model=resnet dataset.resize=96 --depth 2
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnbench import data
from cnnbench.build import build_model
from cnnbench.config import compose, image_size, validate
from cnnbench.errors import ConfigError, fail


@dataclass
class Layer:
    name: str
    type: str
    shape: tuple[int, ...]  # one image's output, without the batch dimension
    params: int
    flops: int


@dataclass
class Summary:
    model: str
    input_shape: tuple[int, int, int]
    layers: list[Layer]
    params: int
    trainable: int
    flops: int  # forward, one image
    activations: int  # elements in the outputs of every leaf module, one image


def summarize(model: nn.Module, input_shape: tuple[int, int, int], depth: int = 1) -> Summary:
    """Run one image through `model`, recording the modules `depth` levels down (and
    shallower ones with no children) in the order they run."""
    shown = {
        name: module
        for name, module in model.named_modules()
        if name
        and (name.count(".") == depth - 1 or (name.count(".") < depth and not [*module.children()]))
    }
    rows: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    activations = 0

    def record(name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            rows.append((name, module, tuple(output.shape[1:])))

        return hook

    def count(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal activations
        activations += output[0].numel()

    handles = [m.register_forward_hook(record(n)) for n, m in shown.items()]
    handles += [m.register_forward_hook(count) for m in model.modules() if not [*m.children()]]
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    flops = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    layers = [
        Layer(
            name,
            type(module).__name__,
            shape,
            sum(p.numel() for p in module.parameters()),
            flops.get(f"{root}.{name}", 0),
        )
        for name, module, shape in rows
    ]
    return Summary(
        model=root,
        input_shape=input_shape,
        layers=layers,
        params=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops=counter.get_total_flops(),
        activations=activations,
    )


def human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}".rstrip()
        n /= 1000
    return f"{n:.3g} P"


def render(s: Summary, title: str) -> str:
    header = ("layer", "type", "output shape", "params", "FLOPs")
    body = [
        (r.name, r.type, " x ".join(map(str, r.shape)), f"{r.params:,}", human(r.flops))
        for r in s.layers
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    align = ["<", "<", ">", ">", ">"]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths, strict=True))

    rule = "-" * len(line(header))
    return "\n".join(
        [
            title,
            "",
            line(header),
            rule,
            *map(line, body),
            rule,
            f"parameters            {s.params:,}"
            + ("" if s.trainable == s.params else f" ({s.trainable:,} trainable)"),
            f"forward FLOPs/image   {human(s.flops)} ({s.flops:,}; convolutions and matrix "
            "products, a multiply-add counts 2)",
            f"activations/image     {s.activations:,} values, "
            f"{s.activations * 4 / 2**20:.2f} MiB in float32 (every layer's output)",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cnnbench.summary",
        description="Print a model layer by layer (output shapes, parameters, FLOPs) for the "
        "config that training would compose. No data is read.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=alexnet")
    parser.add_argument(
        "--depth", type=int, default=1, help="how many levels of submodules to list (default 1)"
    )
    args = parser.parse_args(argv)
    if args.depth < 1:
        parser.error(f"--depth {args.depth}: give 1 or more")
    try:
        cfg = compose(args.overrides)
        validate(cfg)
        spec = data.SPECS[cfg.dataset.name]
        size = image_size(cfg)
        model = build_model(cfg, torch.device("cpu"))
    except ConfigError as err:
        fail("cnnbench.summary", err)
    s = summarize(model, (spec.channels, size, size), args.depth)
    resized = f", resized from {spec.size}x{spec.size}" if size != spec.size else ""
    title = (
        f"{s.model} for {spec.title}: input {spec.channels}x{size}x{size}{resized}, "
        f"{len(spec.classes)} classes"
    )
    print(render(s, title))


if __name__ == "__main__":
    main()
