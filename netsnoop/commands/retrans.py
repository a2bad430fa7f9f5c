"""netsnoop retrans: TCP retransmits, SYN and SYN-ACK included (bcc tcpretrans)."""

from __future__ import annotations

from typing import Any

import click

from netsnoop import options as o
from netsnoop.fmt import ip_version, tcp_state
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import Tracer, stream
from netsnoop.traffic import count_option, endpoints, show_counts, typed_endpoints

# SYN-ACK retransmits and tail loss probes are extras: without their hooks, data
# and SYN retransmits are still traced. Loss probes need a kprobe (no tracepoint).
TRACER = Tracer("retrans", optional=frozenset({"synack", "tlp"}), costs={"tlp": None})  # -l says it
TYPES = {1: "R", 2: "L"}
BANNER = "Tracing retransmits ... Hit Ctrl-C to end"
NO_TLP = ("netsnoop: -l: this kernel offers no hook for tail loss probes (a kprobe or fentry on "
          "tcp_send_loss_probe is needed and is not available here); showing retransmits only. "
          "Probes that resend data still appear as R rows.")


def columns(sequence: bool) -> list[Column]:
    return [
        Column("PID", 7),
        Column("IP", 2),
        Column("LADDR:LPORT", 20, json=False),
        Column("T>", 2, json=False),
        Column("RADDR:RPORT", 20, json=False),
        Column("STATE", 12 if sequence else 0),
        Column("SEQ", text=sequence, json=sequence),
        Column("KIND", text=False),  # R or L, as in T
        *typed_endpoints(),
    ]


COUNT_COLUMNS = [
    Column("LADDR:LPORT", 25, json=False),
    Column("RADDR:RPORT", 25, json=False),
    Column("RETRANSMITS", 11, align=">"),
    Column("IP", text=False),
    *typed_endpoints(),
]


def flow(e: Any) -> tuple[Any, ...]:
    """An event's or a count key's two ends, as text and typed (same field names)."""
    return endpoints(e.family, e.laddr, e.lport, e.raddr, e.rport)


def count_row(k: Any, n: int) -> tuple[Any, ...]:
    local, remote, *typed = flow(k)
    return (local, remote, n, ip_version(k.family), *typed)


@click.command("retrans")
@o.output_options(csv=False, wide=False, time=False)
@count_option("count retransmits per flow, print a table on exit")
@click.option("-l", "--lossprobe", is_flag=True, help="include tail loss probe attempts (needs a kprobe)")
@click.option("-s", "--sequence", is_flag=True, help="display TCP sequence numbers (SEQ column)")
@o.ports_option("-P", "--port", "ports", help="only trace these ports at either end (e.g. 80,443)")
@o.family_option
@o.duration_option
def command(out: OutputOptions, count: bool, lossprobe: bool, sequence: bool, ports: Any, family: int | None,
            duration: float | None) -> None:
    """Trace TCP retransmits: one line per segment sent again.

    T is R for a retransmit (data, SYN or SYN-ACK) and L for a tail loss probe (-l,
    where the kernel lets a kprobe reach tcp_send_loss_probe). PID is whoever was on
    the CPU, usually 0: retransmits mostly come from timers.
    """
    rodata = {**o.port_filters(ports=ports), "filter_family": family, "count_only": count, "with_tlp": lossprobe}
    with TRACER.open(rodata) as obj:
        if lossprobe and not obj.chosen.get("tlp"):
            click.echo(NO_TLP, err=True)
        if count:
            show_counts(obj, "flow_key", COUNT_COLUMNS, count_row, out, duration, BANNER)
            return

        def row(e: Any) -> tuple[Any, ...]:
            local, remote, *typed = flow(e)
            kind = TYPES.get(e.type, "?")
            return (e.pid, ip_version(e.family), local, kind + ">", remote, tcp_state(e.state), e.seq, kind, *typed)

        out.time = True  # bcc always shows TIME
        stream(obj, columns(sequence), row, out, duration, banner=BANNER)
