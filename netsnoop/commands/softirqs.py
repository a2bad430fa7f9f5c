"""netsnoop softirqs: time spent in each soft IRQ type (bcc softirqs)."""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any

import click

from netsnoop import options as o
from netsnoop.btf import BTF
from netsnoop.hist import Log2Hist, Section, Writer, read_hists
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec, every_interval

TRACER = LoadSpec("softirqs", max_entries={"events": 4096})


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


def write_totals(write: Writer, hists: list[tuple[str, Log2Hist]], events: bool, label: str, div: int) -> None:
    """bcc's table: per vector the time (in the display unit) or the number of events,
    smallest first; JSON rows carry the time they were taken."""
    rows = sorted(((name, h.count if events else h.total // div) for name, h in hists), key=lambda r: r[1])
    write.heading()
    now = round(time.time(), 6)
    write.table(table_columns("count" if events else label), [(*r, now) for r in rows])


NO_SECONDS = "no seconds"  # what -d gives when no number follows it (bcc's habit)


class Seconds(o.FiniteFloatRange):
    """-d's value: a finite number of seconds, or NO_SECONDS when -d stands alone."""

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True, max=o.MAX_SECONDS)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == NO_SECONDS:
            raise click.UsageError("-d takes SECONDS (a duration, as in every netsnoop subcommand); "
                                   "bcc's -d (distributions as histograms) is --dist here", ctx)
        return super().convert(value, param, ctx)


@click.command("softirqs")
@o.output_options(csv=False, wide=False, timestamp=False)
@click.option("-N", "--nanoseconds", is_flag=True, help="output in nanoseconds (default: microseconds)")
@click.option("-C", "--events", is_flag=True, help="show the number of soft IRQ events instead of time")
@click.option("--dist", is_flag=True, help="show distributions as histograms (bcc's -d)")
@click.option("-d", "--duration", type=Seconds(), is_flag=False, flag_value=NO_SECONDS, default=None,
              metavar="SECONDS", help="stop after this many seconds")
@click.option("-c", "--cpu", type=click.IntRange(min=0, max=os.cpu_count() or 1 << 16, max_open=True),
              default=None, help="trace this CPU only")
@o.interval_count_arguments(default_interval=None)
def command(out: OutputOptions, nanoseconds: bool, events: bool, dist: bool, duration: float | None,
            cpu: int | None, interval: float | None, count: int | None) -> None:
    """Summarize the time spent in each soft IRQ type (net_rx, net_tx, timer, ...).

    Times run from irq:softirq_entry to irq:softirq_exit on each CPU. Without an
    INTERVAL the summary is printed once, at Ctrl-C or after -d SECONDS; with one,
    every INTERVAL seconds (COUNT times), each covering only its own interval.
    With -c the figures are that CPU's only. -d is a duration, as everywhere in
    netsnoop: bcc's -d (histograms) is --dist here.
    """
    if events and dist:
        raise click.UsageError("-C and --dist cannot be combined")
    label, div = ("nsecs", 1) if nanoseconds else ("usecs", 1000)
    write = Writer(out)
    with TRACER.open({"unit_div": div, "filter_cpu": cpu}) as obj:

        def report(last: bool) -> None:
            keyed = read_hists(obj, "softirqs", "softirq_key")
            hists = sorted(((vector_name(k.vec), h) for k, h in keyed), key=lambda nh: nh[0])
            if dist:
                write.sections([Section(h, {"softirq": name}) for name, h in hists], label, div=div)
            else:
                write_totals(write, hists, events, label, div)

        where = f" on CPU {cpu} only" if cpu is not None else ""
        only = {"only": {"cpu": cpu}} if cpu is not None else {}
        every_interval(obj, report, out, interval, count, duration,
                       banner=f"Tracing soft irq event time{where}... Hit Ctrl-C to end.", facts=lambda: only)
