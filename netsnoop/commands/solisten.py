"""netsnoop solisten: listen() on TCP sockets (bcc solisten)."""

from __future__ import annotations

from typing import Any

import click

from netsnoop import options as o
from netsnoop import where
from netsnoop.fmt import addr, comm, ip_version
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec, stream

TRACER = LoadSpec("solisten")


def columns(wide: bool, json: bool = True) -> list[Column]:
    return [
        Column("PID", 6),
        Column("COMM", 12, truncate=True),
        Column("PROTO", 6),
        Column("BACKLOG", 8),
        Column("PORT", 5),
        Column("ADDR", 39),
        *where.columns(wide, json),
    ]


def row(e: Any) -> tuple[Any, ...]:
    return (
        e.pid, comm(e.comm), f"TCPv{ip_version(e.family)}",
        e.backlog, e.lport, addr(e.family, e.laddr),
    )


@click.command("solisten")
@o.output_options(csv=False)
@o.pid_option()
@click.option("-n", "-N", "--netns", "netns", type=where.NETNS, default=None, metavar="NETNS",
              help="only trace these network namespaces: an `ip netns` name, a PID (its namespace), "
                   "an inode (bcc's -n), or host; a comma list of up to 8")
@click.option("--show-netns", is_flag=True, help="show the NETNS and CONTAINER columns (as -w)")
@o.cgroup_option
@o.duration_option
def command(out: OutputOptions, pids: list[int] | None, netns: list[int] | None, show_netns: bool,
            cgroup: int | None, duration: float | None) -> None:
    """Trace listen() on TCP sockets: who listens, on which address and port, with
    which backlog.

    NETNS is the socket's network namespace, CONTAINER the container, pod or systemd
    unit of the listening process (-w or --show-netns; always in --json). -n and
    --cgroup filter on them in the kernel.

    BACKLOG is the accept queue limit the kernel applied (the requested backlog,
    capped by net.core.somaxconn). A listen() that only changes the backlog of a
    socket already listening is shown too; a listen() that fails is not.

    -t adds TIME(s), seconds since the first event, as on every other netsnoop
    tracer (libbpf-tools' solisten -t heads its column TIME(s) too, but prints
    the clock time in it: that is -T here, HH:MM:SS).
    """
    rodata = {**where.filters(pids, netns), "filter_cgroup": cgroup}
    wide = out.wide or show_netns
    named = wide or out.json  # as where.columns(): no names looked up for rows that show none

    def full_row(e: Any) -> tuple[Any, ...]:
        return row(e) + where.values(e.netns, e.cgroup) if named else row(e)

    with TRACER.open(rodata) as obj:
        stream(obj, columns(wide, out.json), full_row, out, duration)
