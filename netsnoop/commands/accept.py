"""netsnoop accept: TCP connections returned by accept()/accept4() (bcc tcpaccept)."""

from __future__ import annotations

from typing import Any

import click

from netsnoop import conn
from netsnoop import options as o
from netsnoop import where
from netsnoop.counts import show_counts
from netsnoop.fmt import addr
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec

# accept() is missing on some architectures (arm64 has only accept4).
TRACER = LoadSpec(
    "accept", optional=frozenset({"accept"}), costs={"accept": "connections returned by accept() are not shown"}
)
BANNER = "Tracing... Hit Ctrl-C to end."

# -c: per local address, port and namespace (the listener's), then the namespace's inode in JSON
COUNT_COLUMNS = [Column("LADDR", 25), Column("LPORT", 6), Column("ACCEPTS", 10), Column("NETNS"),
                 Column("NETNS_INODE", text=False)]


def count_row(k: Any, n: int) -> tuple[Any, ...]:
    return addr(k.family, k.laddr), k.port, n, where.netns_label(k.netns), k.netns


def columns(wide: bool, json: bool = True) -> list[Column]:
    """bcc's layout; -w fits IPv6 addresses and adds NETNS and CONTAINER (always in JSON)."""
    a = 26 if wide else 16
    return [
        Column("PID", 7), Column("COMM", 12, truncate=True), Column("IP", 2), Column("RADDR", a),
        Column("RPORT", 5), Column("LADDR", a), Column("LPORT", 5), *where.columns(wide, json),
    ]


@click.command("accept")
@o.output_options(csv=False)
@where.pids_option("only trace accepts made by these processes")
@o.ports_option("-P", "--port", "ports", help="only trace these local ports (e.g. 80,81)")
@o.count_option("count accepts per local address, port and namespace in the kernel, print on exit")
@o.family_option
@o.cgroup_option
@where.netns_option
@o.duration_option
def command(out: OutputOptions, pids: list[int] | None, ports: Any, count: bool, family: int | None,
            cgroup: int | None, netns: list[int] | None, duration: float | None) -> None:
    """Trace TCP connections returned by accept(): passive opens that a process took.

    PID/COMM are the accepting process. Connections to a closed port, or ones still
    waiting in a listen backlog, are not accepts and are not shown.

    NETNS is the connection's network namespace and CONTAINER the acceptor's
    container, pod or systemd unit (see -w; always in --json).

    -c counts in the kernel, with no row per accept, and prints one table on exit.
    """
    rodata = {**conn.filters(pids=pids, family=family, cgroup=cgroup, netns=netns, lports=ports), "count_only": count}
    with TRACER.open(rodata) as obj:
        if count:
            show_counts(obj, "conn_count_key", COUNT_COLUMNS, count_row, out, duration, BANNER, total="accepts")
        else:
            conn.show(obj, columns(out.wide, out.json), out, duration, BANNER)
