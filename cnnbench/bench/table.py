"""The bench's table: one row per model, the columns and their legend."""

from __future__ import annotations

# header, width, and how a record fills the cell ("~": extrapolated to the whole split)
COLUMNS = [
    ("model", 14, lambda r: r["model"]),
    ("size", 4, lambda r: r["image_size"]),
    ("batch", 5, lambda r: r["batch_size"]),
    ("tb img/s", 9, lambda r: f"{r['textbook_train_images_per_s']:,.0f}"),
    ("cb img/s", 9, lambda r: f"{r['cnnbench_train_images_per_s']:,.0f}"),
    ("plain img/s", 11, lambda r: plain_rate(r)),
    ("speedup", 7, lambda r: f"{r['speedup']:.2f}x"),
    ("tb epoch s", 10, lambda r: f"{'~' * r['epoch_s_extrapolated']}{r['textbook_epoch_s']:.1f}"),
    ("cb epoch s", 10, lambda r: f"{'~' * r['epoch_s_extrapolated']}{r['cnnbench_epoch_s']:.1f}"),
    ("bare img/s", 10, lambda r: f"{r['bare_train_images_per_s']:,.0f}"),
    ("eff", 4, lambda r: f"{r['engine_efficiency']:.2f}"),
    ("tb eval/s", 9, lambda r: f"{r['textbook_eval_images_per_s']:,.0f}"),
    ("cb eval/s", 9, lambda r: f"{r['cnnbench_eval_images_per_s']:,.0f}"),
    ("tb MiB", 6, lambda r: f"{r['textbook_peak_mib']:.0f}"),
    ("cb MiB", 6, lambda r: f"{r['cnnbench_peak_mib']:.0f}"),
    ("warm-up s", 9, lambda r: f"{r['cnnbench_warmup_s']:.1f}"),
    ("% peak", 6, lambda r: f"{100 * r['cnnbench_peak_fraction']:.1f}"),
]
LEGEND = """\
tb: the textbook loop (PIL Dataset, DataLoader, .item() every step); cb: cnnbench's engine
(its step captured in a CUDA graph on a GPU); plain: the engine with trainer.cuda_graph=false;
bare: forward/backward/step on ready batches; eff = cb / bare; ~: extrapolated to the whole
training split; MiB: peak memory while training; warm-up s: the engine's first epoch;
% peak: the engine's training FLOP/s over the matmul peak measured in its compute dtype."""


def plain_rate(record: dict) -> str:
    """The engine's plain step where it captured its step; "-" where it took the plain one."""
    rate = record.get("cnnbench_plain_train_images_per_s")
    return "-" if rate is None else f"{rate:,.0f}"


def table_line(cells: list) -> str:
    first, *rest = (str(c) for c in cells)
    widths = [w for _, w, _ in COLUMNS]
    return f"{first:<{widths[0]}}" + "".join(
        f"  {c:>{w}}" for c, w in zip(rest, widths[1:], strict=True)
    )


def table_row(record: dict) -> str:
    if "error" in record:
        return f"{record['model']:<{COLUMNS[0][1]}}  error: {record['error']}"
    return table_line([cell(record) for _, _, cell in COLUMNS])
