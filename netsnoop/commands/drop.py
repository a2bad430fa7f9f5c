"""netsnoop drop: TCP packets the kernel drops, why, and where (bcc tcpdrop, plus the
kernel's own drop reason)."""

from __future__ import annotations

import difflib
from functools import lru_cache
from typing import Any

import click

from netsnoop import options as o
from netsnoop.btf import BTF
from netsnoop.fmt import ip_version, tcp_state
from netsnoop.ksyms import kernel_symbols
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import Tracer, stream
from netsnoop.traffic import count_option, endpoints, show_counts, tcp_flags, typed_endpoints

TRACER = Tracer("drop")
MAX_REASONS = 16  # drop.bpf.c
BANNER = "Tracing TCP drops ... Hit Ctrl-C to end."


@lru_cache(maxsize=None)
def drop_reasons() -> dict[int, str]:
    """The running kernel's ``enum skb_drop_reason``, short names (``NO_SOCKET``)."""
    btf = BTF.vmlinux()
    try:
        raw = btf.enum_values("skb_drop_reason")
    finally:
        btf.close()
    return {v: n.removeprefix("SKB_DROP_REASON_").removeprefix("SKB_") for v, n in raw.items()}


def reason_name(value: int) -> str:
    return drop_reasons().get(value, str(value)) if value else "-"


class ReasonList(click.ParamType):
    """``NO_SOCKET,NETFILTER_DROP``: names this kernel's BTF knows (any case, prefix optional)."""

    name = "NAMES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        by_name = {n: v for v, n in drop_reasons().items()}
        if not by_name:
            self.fail("this kernel's BTF has no enum skb_drop_reason: it reports no drop reasons", param, ctx)
        out = []
        for part in str(value).split(","):
            name = part.strip().upper().removeprefix("SKB_DROP_REASON_")
            if name not in by_name:
                close = difflib.get_close_matches(name, by_name, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                self.fail(f"{part.strip()!r} is not a drop reason this kernel knows{hint}", param, ctx)
            out.append(by_name[name])
        if len(out) > MAX_REASONS:
            self.fail(f"at most {MAX_REASONS} reasons can be filtered in the kernel", param, ctx)
        return out


def columns() -> list[Column]:
    return [
        Column("PID", 7),
        Column("IP", 2),
        Column("SADDR:SPORT", 20, json=False),
        Column(">", 1, json=False),
        Column("DADDR:DPORT", 20, json=False),
        Column("STATE (FLAGS)", 26, json=False),
        Column("REASON", json=False),  # in text, followed by the stack lines
        *typed_endpoints("S", "D"),
        Column("STATE", text=False),
        Column("FLAGS", text=False),
        Column("REASON", text=False),
        Column("LOCATION", text=False),
        Column("STACK", text=False),
    ]


COUNT_COLUMNS = [
    Column("REASON", 24),
    Column("SADDR:SPORT", 25, json=False),
    Column("DADDR:DPORT", 25, json=False),
    Column("DROPS", 6, align=">"),
    Column("IP", text=False),
    *typed_endpoints("S", "D"),
]


def row(e: Any) -> tuple[Any, ...]:
    """Text gets the stack as tab-indented lines after REASON (and a blank line, as
    bcc prints it); JSON gets it as a list. No socket: STATE "-", JSON null."""
    src, dst, *typed = endpoints(e.family, e.saddr, e.sport, e.daddr, e.dport)
    state = tcp_state(e.state) if e.state else None
    flags, reason = tcp_flags(e.tcpflags), reason_name(e.reason)
    frames = kernel_symbols().stack(e.stack[: max(0, e.stack_bytes) // 8])
    text_reason = reason + "".join(f"\n\t{f}" for f in frames) + ("\n" if frames else "")
    return (e.pid, ip_version(e.family), src, ">", dst, f"{state or '-'} ({flags})", text_reason, *typed,
            state, flags, reason, kernel_symbols().format(e.location), frames)


def count_row(k: Any, n: int) -> tuple[Any, ...]:
    src, dst, *typed = endpoints(k.family, k.saddr, k.sport, k.daddr, k.dport)
    return (reason_name(k.reason), src, dst, n, ip_version(k.family), *typed)


@click.command("drop")
@o.output_options(csv=False, wide=False, time=False)
@click.option("--reason", "reasons", type=ReasonList(), default=None,
              help="only these drop reasons, as the kernel names them (e.g. NO_SOCKET,NETFILTER_DROP)")
@click.option("--no-stack", is_flag=True, help="don't capture and print the kernel stack of each drop")
@count_option("count drops per reason and 4-tuple, print a table on exit")
@o.ports_option("-P", "--port", "ports", help="only trace these ports at either end (e.g. 80,443)")
@o.family_option
@o.duration_option
def command(out: OutputOptions, reasons: list[int] | None, no_stack: bool, count: bool, ports: Any,
            family: int | None, duration: float | None) -> None:
    """Trace TCP packets the kernel drops, with the reason and the kernel stack.

    SADDR:SPORT > DADDR:DPORT are the packet's own addresses (for a received packet
    the source is the peer). STATE is the socket's, "-" when no socket took the
    packet. REASON is the kernel's enum skb_drop_reason, named from the running
    kernel's BTF: it says why, e.g. NO_SOCKET (nothing listens), NETFILTER_DROP (a
    firewall rule), TCP_CSUM. PID is whoever was on the CPU.
    """
    rodata = {**o.port_filters(ports=ports), "filter_family": family, "filter_reasons": reasons,
              "count_only": count, "with_stack": not no_stack}
    with TRACER.open(rodata) as obj:
        if count:
            show_counts(obj, "drop_key", COUNT_COLUMNS, count_row, out, duration, BANNER)
            return
        out.time = True  # bcc always shows TIME
        stream(obj, columns(), row, out, duration, banner=BANNER)
