"""netsnoop tracer: connect (C), accept (A) and close (X) of established TCP
connections (bcc tcptracer), each charged to the process that did it."""

from __future__ import annotations

import contextlib

import click

from netsnoop import conn, dns
from netsnoop import options as o
from netsnoop import where
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec

# Without an accept hook, C and X rows still work.
TRACER = LoadSpec("tracer", optional=frozenset({"accept4", "accept"}),
                costs={g: f"connections returned by {g}() have no A row" for g in ("accept4", "accept")})


def columns(verbose: bool, wide: bool = False, json: bool = True, uid: bool = False) -> list[Column]:
    """bcc's layout; -U puts UID first (as bcc); -v swaps T for long TYPE names and adds
    NETNS (as bcc) and CONTAINER; -w fits IPv6 addresses and adds NETNS and CONTAINER
    (UID, NETNS and CONTAINER are always in JSON)."""
    a = 26 if wide else 16
    return [
        Column("UID", 6, text=uid),
        Column("T", 2, text=not verbose, json=False), Column("TYPE", 12, text=verbose),
        Column("PID", 6), Column("COMM", 16, truncate=True), Column("IP", 2), Column("SADDR", a),
        Column("DADDR", a), Column("SPORT", 6), Column("DPORT", 6), *where.columns(verbose or wide, json),
    ]


@click.command("tracer")
@o.output_options(csv=False, time=False)
@click.option("-v", "--verbose", is_flag=True, help="long event type names, NETNS and CONTAINER columns")
@where.pids_option("only trace events made by these processes")
@click.option("-u", "--uid", type=click.IntRange(0, 0xFFFFFFFE), default=None, metavar="UID",
              help="only trace events made by processes of this UID")
@click.option("-U", "--print-uid", is_flag=True, help="include a UID column")
@where.netns_option
@o.family_option
@o.cgroup_option
@click.option("--dns", "dns_names", is_flag=True, help="add NAME: the host name last resolved to DADDR (answers seen)")
@o.duration_option
def command(out: OutputOptions, verbose: bool, pids: list[int] | None, uid: int | None, print_uid: bool,
            netns: list[int] | None, family: int | None,
            cgroup: int | None, dns_names: bool, duration: float | None) -> None:
    """Trace TCP established connections: connect (C), accept (A) and close (X).

    C is printed when a connect() seen starting completes its handshake, A when
    accept() returns the connection, X when the connection is first closed: PID is
    the process that called close()/shutdown() (for a reset from the peer, the
    process that opened or accepted it). A connection its peer reset while it waited
    in the accept queue gets its X right after its A, with the time of the reset.
    Closes by the peer of connections opened before tracing began are not shown.

    UID (-U; always in --json) is that process's real user ID as the host sees it
    (a container's root in a user namespace shows its host UID), as bcc's; -u keeps
    only the events of one UID, judged in the kernel like -p.

    NETNS is the connection's network namespace (its `ip netns` name, the container
    that owns it, host, or netns:INODE); CONTAINER the process's container, pod or
    systemd unit, else its cgroup path. --dns adds NAME: the host name this machine
    last resolved to DADDR, from DNS answers seen while tracing (none seen, no name).
    """
    rodata = conn.filters(pids=pids, family=family, cgroup=cgroup, uid=uid, netns=netns)
    with TRACER.open(rodata) as obj, (dns.Watcher() if dns_names else contextlib.nullcontext()) as names:
        conn.show(obj, columns(verbose, out.wide, out.json, print_uid), out, duration,
                  "Tracing TCP established connections. Ctrl-C to end.", names=names)
