"""netsnoop drop: TCP packets the kernel drops, why, and where (bcc tcpdrop, plus the
kernel's own drop reason)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import click

from netsnoop import options as o
from netsnoop import where
from netsnoop.btf import BTF
from netsnoop.errors import NetsnoopError
from netsnoop.counts import show_counts
from netsnoop.fmt import endpoints, ip_version, tcp_flags, tcp_state
from netsnoop.ksyms import kernel_symbols
from netsnoop.output import Column, OutputOptions, typed_endpoints
from netsnoop.owner import OWNER_GROUPS, owner
from netsnoop.runner import LoadSpec, stream

TRACER = LoadSpec("drop", optional=OWNER_GROUPS, rows_only=OWNER_GROUPS)
MAX_REASONS = 16  # drop.bpf.c, for each of the include and the exclude list
BANNER = "Tracing TCP drops ... Hit Ctrl-C to end."
# Reasons the kernel's own documentation of enum skb_drop_reason
# (include/net/dropreason-core.h) describes as the end of a queue or a socket, not as a
# packet refused: QUEUE_PURGE "bulk free" (a whole queue freed at once, e.g. the data of
# a connection nobody accepted when its listener closes) and SOCKET_CLOSE "socket is
# closed". Every ordinary close can produce them.
NORMAL_REASONS = ("QUEUE_PURGE", "SOCKET_CLOSE")
NORMAL_LABEL = " (normal)"


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


def is_normal(value: int) -> bool:
    return drop_reasons().get(value) in NORMAL_REASONS


@dataclass(frozen=True)
class ReasonFilter:
    """Reasons to show only (empty: all) and reasons never to show, as enum values."""

    only: tuple[int, ...] = ()
    excluded: tuple[int, ...] = ()


class ReasonList(click.ParamType):
    """``NO_SOCKET,NETFILTER_DROP``: names this kernel's BTF knows (any case, prefix
    optional); a name prefixed with ``!`` is excluded instead (``!QUEUE_PURGE``)."""

    name = "NAMES"

    def __init__(self, negated: bool = False) -> None:
        self.negated = negated  # --exclude-reason: every name is an exclusion

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> ReasonFilter:
        if isinstance(value, ReasonFilter):
            return value
        by_name = {n: v for v, n in drop_reasons().items()}
        if not by_name:
            self.fail("this kernel's BTF has no enum skb_drop_reason: it reports no drop reasons", param, ctx)
        only: list[int] = []
        excluded: list[int] = []
        for part in str(value).split(","):
            text = part.strip()
            negate = self.negated or text.startswith("!")
            name = text.lstrip("!").strip().upper().removeprefix("SKB_DROP_REASON_")
            if name not in by_name:
                close = difflib.get_close_matches(name, by_name, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                self.fail(f"{text!r} is not a drop reason this kernel knows{hint}", param, ctx)
            (excluded if negate else only).append(by_name[name])
        for names in (only, excluded):
            if len(names) > MAX_REASONS:
                self.fail(f"at most {MAX_REASONS} reasons can be filtered in the kernel", param, ctx)
        return ReasonFilter(tuple(only), tuple(excluded))

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        """The running kernel's reason names for the last item of the list, keeping
        its ``!`` (none where the kernel's BTF cannot be read)."""
        from click.shell_completion import CompletionItem

        head, _, last = incomplete.rpartition(",")
        bang = "!" if last.startswith("!") else ""
        typed = last[len(bang):].upper().removeprefix("SKB_DROP_REASON_")
        try:
            names = sorted(set(drop_reasons().values()) - {"CONSUMED"})
        except NetsnoopError:
            return []
        prefix = (head + "," if head else "") + bang
        return [CompletionItem(prefix + n) for n in names if n.startswith(typed)]


def kernel_filter(reasons: ReasonFilter | None, excluded: ReasonFilter | None, normal: bool) -> dict[str, list[int]]:
    """The in-kernel lists: what --reason keeps, and what is excluded: the "!" names, the
    --exclude-reason ones, and the normal reasons unless --normal or --reason names them."""
    only = list(reasons.only) if reasons else []
    out = [*(reasons.excluded if reasons else ()), *(excluded.excluded if excluded else ())]
    if not normal:
        by_name = {n: v for v, n in drop_reasons().items()}
        out += [by_name[n] for n in NORMAL_REASONS if n in by_name and by_name[n] not in only]
    out = list(dict.fromkeys(out))
    if len(out) > MAX_REASONS:
        raise click.UsageError(f"at most {MAX_REASONS} reasons can be excluded in the kernel")
    return {"filter_reasons": only, "exclude_reasons": out}


# CONTAINER cannot be the last text column here (the stack lines follow REASON): padded
# to fit a runtime's name and 12 hex digits
CONTAINER_WIDTH = 23


def where_columns(wide: bool, json: bool) -> list[Column]:
    """where.columns() for a place before REASON, in the same order."""
    return [replace(c, width=CONTAINER_WIDTH) if c.header == "CONTAINER" else c for c in where.columns(wide, json)]


def columns(wide: bool = False, json: bool = True) -> list[Column]:
    """NETNS and CONTAINER come before REASON: in text its stack lines end the row."""
    return [
        Column("PID", 7, json=False),
        Column("IP", 2),
        Column("SADDR:SPORT", 20, json=False),
        Column(">", 1, json=False),
        Column("DADDR:DPORT", 20, json=False),
        Column("STATE (FLAGS)", 26, json=False),
        *where_columns(wide, json),
        Column("REASON", json=False, lines=True),  # in text, followed by the stack lines
        *typed_endpoints("S", "D"),
        Column("STATE", text=False),
        Column("FLAGS", text=False),
        Column("REASON", text=False),
        Column("NORMAL", text=False),
        Column("LOCATION", text=False),
        Column("STACK", text=False),
        Column("PID", text=False),
        Column("COMM", text=False),
    ]


COUNT_COLUMNS = [
    Column("REASON", 24, json=False),
    Column("SADDR:SPORT", 25, json=False),
    Column("DADDR:DPORT", 25, json=False),
    Column("DROPS", 6, align=">"),
    Column("NETNS"),
    Column("REASON", text=False),
    Column("NORMAL", text=False),
    Column("IP", text=False),
    *typed_endpoints("S", "D"),
    Column("NETNS_INODE", text=False),
]


def row(e: Any, named: Any = None) -> tuple[Any, ...]:
    """Text gets the stack as tab-indented lines after REASON (and a blank line, as
    bcc prints it); JSON gets it as a list. No socket: STATE "-", JSON null.
    ``named``: where.values, when where.columns() are shown."""
    src, dst, *typed = endpoints(e.family, e.saddr, e.sport, e.daddr, e.dport)
    state = tcp_state(e.state) if e.state else None
    flags, reason, normal = tcp_flags(e.tcpflags), reason_name(e.reason), is_normal(e.reason)
    frames = kernel_symbols().stack(e.stack[: max(0, e.stack_bytes) // 8])
    text_reason = reason + (NORMAL_LABEL if normal else "") + "".join(f"\n\t{f}" for f in frames) \
        + ("\n" if frames else "")
    pid, name = owner(e)
    return (pid or "-", ip_version(e.family), src, ">", dst, f"{state or '-'} ({flags})",
            *(named(e.netns, e.cgroup) if named else ()), text_reason, *typed,
            state, flags, reason, normal, kernel_symbols().format(e.location), frames, pid, name)


def count_row(k: Any, n: int) -> tuple[Any, ...]:
    src, dst, *typed = endpoints(k.family, k.saddr, k.sport, k.daddr, k.dport)
    normal = is_normal(k.reason)
    reason = reason_name(k.reason)
    return (reason + (NORMAL_LABEL if normal else ""), src, dst, n, where.printable(where.netns_label(k.netns)),
            reason, normal, ip_version(k.family), *typed, k.netns)


@click.command("drop")
@o.output_options(csv=False, time=False)
@click.option("--reason", "reasons", type=ReasonList(), default=None,
              help="only these drop reasons, as the kernel names them (e.g. NO_SOCKET,NETFILTER_DROP); "
                   "'!NAME' excludes one instead (e.g. '!NO_SOCKET')")
@click.option("--exclude-reason", "excluded", type=ReasonList(negated=True), default=None,
              help="never these drop reasons (e.g. NO_SOCKET,TCP_CLOSE)")
@click.option("--normal", is_flag=True,
              help=f"also show the reasons of normal operation ({', '.join(NORMAL_REASONS)}), labelled (normal)")
@click.option("--no-stack", is_flag=True, help="don't capture and print the kernel stack of each drop")
@o.count_option("count drops per reason, network namespace and 4-tuple, print a table on exit")
@o.ports_option("-P", "--port", "ports", help="only trace these ports at either end (e.g. 80,443)")
@where.pids_option("only drops of sockets these processes own")
@o.family_option
@o.cgroup_option
@where.netns_option
@o.duration_option
def command(out: OutputOptions, reasons: ReasonFilter | None, excluded: ReasonFilter | None, normal: bool,
            no_stack: bool, count: bool, ports: Any, pids: list[int] | None, family: int | None,
            cgroup: int | None, netns: list[int] | None, duration: float | None) -> None:
    """Trace TCP packets the kernel drops, with the reason and the kernel stack.

    SADDR:SPORT > DADDR:DPORT are the packet's own addresses (for a received packet
    the source is the peer). STATE is the socket's, "-" when no socket took the
    packet. REASON is the kernel's enum skb_drop_reason, named from the running
    kernel's BTF: it says why, e.g. NO_SOCKET (nothing listens), NETFILTER_DROP (a
    firewall rule), TCP_CSUM. PID is the owner of the socket that had the packet: the
    process that connected it or last sent on or received from it while netsnoop ran
    ("-" when none did, or no socket took the packet).

    NETNS is the network namespace of the drop: the socket's, else that of the device
    the packet came in or went out by. CONTAINER is the container, pod or systemd
    unit of the socket's owner (both with -w; always in --json). -p and --cgroup keep
    the drops of sockets whose owner is among those processes or in that cgroup (a
    drop no known owner's socket had is left out then); --netns judges NETNS. All
    three filters run in the kernel. -c counts per reason, namespace and 4-tuple.

    Some reasons are normal operation, not a packet refused: the kernel's own
    documentation of enum skb_drop_reason calls QUEUE_PURGE a "bulk free" (a queue
    freed whole, e.g. the data of a connection nobody accepted when its listener
    closes) and SOCKET_CLOSE "socket is closed". Ordinary closes produce them, so they
    are left out unless --normal is given or --reason names them; shown, they are
    labelled "(normal)" (JSON: "normal": true).
    """
    with_owner = not count or bool(pids or cgroup)  # -c: only -p and --cgroup need owners
    rodata = {**o.port_filters(ports=ports), "filter_family": family, **kernel_filter(reasons, excluded, normal),
              **where.filters(pids, netns), "filter_cgroup": cgroup,
              "count_only": count, "with_stack": not no_stack, "with_owner": with_owner}
    tracer = replace(TRACER, rows_only=frozenset()) if count and with_owner else TRACER
    with tracer.open(rodata) as obj:
        if count:
            show_counts(obj, "drop_key", COUNT_COLUMNS, count_row, out, duration, BANNER)
            return
        out.time = True  # bcc always shows TIME
        named = where.values if out.wide or out.json else None  # as where.columns()
        stream(obj, columns(out.wide, out.json), lambda e: row(e, named), out, duration, banner=BANNER)
