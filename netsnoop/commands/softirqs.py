"""netsnoop softirqs: time spent in each soft IRQ type (bcc softirqs)."""

from __future__ import annotations

import os
import time
from functools import lru_cache

import click

from netsnoop import options as o
from netsnoop.btf import BTF
from netsnoop.hist import Log2Hist, Section, interval_heading, read_hists, summary, write_sections
from netsnoop.output import Column, OutputOptions, write_table
from netsnoop.runner import Tracer, ready, run_intervals

TRACER = Tracer("softirqs", max_entries={"events": 4096})


@lru_cache(maxsize=1)
def vector_names() -> dict[int, str]:
    """Vector number -> bcc's name (``net_rx``), from the kernel's own enum (an
    anonymous one: found by its ``NET_RX_SOFTIRQ`` enumerator)."""
    btf = BTF.vmlinux()
    try:
        values = btf.enum_containing("NET_RX_SOFTIRQ")
    finally:
        btf.close()
    return {v: n.removesuffix("_SOFTIRQ").lower() for v, n in values.items() if n.endswith("_SOFTIRQ")}


def vector_name(vec: int) -> str:
    return vector_names().get(vec, str(vec))


def table_columns(label: str) -> list[Column]:
    return [Column("SOFTIRQ", 16), Column(f"TOTAL_{label}", 11, align=">"), Column("timestamp", text=False)]


def write_totals(out: OutputOptions, hists: list[tuple[str, Log2Hist]], events: bool, label: str, div: int) -> None:
    """bcc's table: per vector the time (in the display unit) or the number of events,
    smallest first; JSON rows carry the time they were taken."""
    rows = sorted(((name, h.count if events else h.total // div) for name, h in hists), key=lambda r: r[1])
    if not out.json:
        click.echo("\n".join(interval_heading(out)))
    now = round(time.time(), 6)
    write_table(out, table_columns("count" if events else label), [(*r, now) for r in rows])


@click.command("softirqs")
@o.output_options(csv=False, wide=False, timestamp=False)
@click.option("-N", "--nanoseconds", is_flag=True, help="output in nanoseconds (default: microseconds)")
@click.option("-C", "--events", is_flag=True, help="show the number of soft IRQ events instead of time")
@click.option("-d", "--dist", is_flag=True, help="show distributions as histograms")
@click.option("-c", "--cpu", type=click.IntRange(min=0, max=os.cpu_count() or 1 << 16, max_open=True),
              default=None, help="trace this CPU only")
@o.interval_count_arguments(default_interval=None)  # type: ignore[arg-type]
def command(out: OutputOptions, nanoseconds: bool, events: bool, dist: bool, cpu: int | None,
            interval: float | None, count: int | None) -> None:
    """Summarize the time spent in each soft IRQ type (net_rx, net_tx, timer, ...).

    Times run from irq:softirq_entry to irq:softirq_exit on each CPU. Without an
    INTERVAL the summary is printed once, on Ctrl-C; with one, every INTERVAL seconds
    (COUNT times), each covering only its own interval.
    """
    if events and dist:
        raise click.UsageError("-C and -d cannot be combined")
    label, div = ("nsecs", 1) if nanoseconds else ("usecs", 1000)
    with TRACER.open({"unit_div": div, "filter_cpu": cpu}) as obj:

        def report() -> None:
            keyed = read_hists(obj, "softirqs", "softirq_key")
            hists = sorted(((vector_name(k.vec), h) for k, h in keyed), key=lambda nh: nh[0])
            if dist:
                write_sections([Section(h, {"softirq": name}) for name, h in hists], label, out, div=div)
            else:
                write_totals(out, hists, events, label, div)

        ready("Tracing soft irq event time... Hit Ctrl-C to end.")
        if run_intervals(report, interval, count) is not None:
            summary(out, obj)
