"""netsnoop accept: TCP connections returned by accept()/accept4() (bcc tcpaccept)."""

from __future__ import annotations

from typing import Any

import click

from netsnoop import conn
from netsnoop import options as o
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import Tracer

# accept() is missing on some architectures (arm64 has only accept4).
TRACER = Tracer("accept", optional=frozenset({"accept"}), costs={"accept": "connections returned by accept() are not shown"})

COLUMNS = [
    Column("PID", 7), Column("COMM", 12, truncate=True), Column("IP", 2), Column("RADDR", 16),
    Column("RPORT", 5), Column("LADDR", 16), Column("LPORT", 5),
]


@click.command("accept")
@o.output_options(csv=False, wide=False)
@o.pid_option("only trace accepts made by this process ID")
@o.ports_option("-P", "--port", "ports", help="only trace these local ports (e.g. 80,81)")
@o.family_option
@o.cgroup_option
@o.duration_option
def command(out: OutputOptions, pid: int | None, ports: Any, family: int | None, cgroup: int | None,
            duration: float | None) -> None:
    """Trace TCP connections returned by accept(): passive opens that a process took.

    PID/COMM are the accepting process. Connections to a closed port, or ones still
    waiting in a listen backlog, are not accepts and are not shown.
    """
    rodata = conn.filters(pid=pid, family=family, cgroup=cgroup, lports=ports)
    with TRACER.open(rodata) as obj:
        conn.show(obj, COLUMNS, out, duration, "Tracing... Hit Ctrl-C to end.")
