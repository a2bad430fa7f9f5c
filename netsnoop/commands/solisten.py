"""netsnoop solisten: listen() on TCP sockets (bcc solisten)."""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

from netsnoop import options as o
from netsnoop.fmt import addr, comm, ip_version
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import Tracer, stream

TRACER = Tracer("solisten")


def columns(show_netns: bool) -> list[Column]:
    return [
        Column("PID", 6),
        Column("COMM", 12, truncate=True),
        Column("NETNS", 12, text=show_netns),
        Column("PROTO", 6),
        Column("BACKLOG", 8),
        Column("PORT", 5),
        Column("ADDR", 39),
    ]


def row(e: Any) -> tuple[Any, ...]:
    return (
        e.pid, comm(e.comm), e.netns, f"TCPv{ip_version(e.family)}",
        e.backlog, e.lport, addr(e.family, e.laddr),
    )


class NetnsInode(click.IntRange):
    """A network namespace's inode; completes those of the namespaces that exist now
    (named under /run/netns, or holding a process), with their names as the help."""

    def __init__(self) -> None:
        super().__init__(min=1, max=2**32 - 1)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        from netsnoop.netns import namespaces

        return [CompletionItem(str(ns.inode), help=ns.label) for ns in namespaces()
                if str(ns.inode).startswith(incomplete)]


@click.command("solisten")
@o.output_options(csv=False, wide=False)
@o.pid_option()
@click.option("-n", "--netns", type=NetnsInode(), default=None, metavar="ID",
              help="only trace this network namespace (its inode: stat -L -c %i /proc/PID/ns/net)")
@click.option("--show-netns", is_flag=True, help="show the network namespace (useful for containers)")
@o.duration_option
def command(out: OutputOptions, pids: list[int] | None, netns: int | None, show_netns: bool,
            duration: float | None) -> None:
    """Trace listen() on TCP sockets: who listens, on which address and port, with
    which backlog.

    BACKLOG is the accept queue limit the kernel applied (the requested backlog,
    capped by net.core.somaxconn). A listen() that only changes the backlog of a
    socket already listening is shown too; a listen() that fails is not.

    -t adds TIME(s), seconds since the first event, as on every other netsnoop
    tracer (libbpf-tools' solisten -t heads its column TIME(s) too, but prints
    the clock time in it: that is -T here, HH:MM:SS).
    """
    rodata = {"filter_pids": pids, "filter_netns": netns}
    with TRACER.open(rodata) as obj:
        stream(obj, columns(show_netns), row, out, duration)
