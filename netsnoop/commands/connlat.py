"""netsnoop connlat: latency from connect() to the peer's answer (bcc tcpconnlat)."""

from __future__ import annotations

import click

from netsnoop import conn
from netsnoop import options as o
from netsnoop import where
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec

TRACER = LoadSpec("connlat")


def columns(lport: bool, wide: bool = False, json: bool = True) -> list[Column]:
    """bcc's layout; -w fits IPv6 addresses and adds NETNS and CONTAINER (always in JSON)."""
    a = 26 if wide else 16
    return [
        Column("PID", 6), Column("COMM", 12, truncate=True), Column("IP", 2), Column("SADDR", a),
        Column("LPORT", 6, text=lport, json=lport), Column("DADDR", a), Column("DPORT", 5),
        Column("LAT(ms)", 7 if wide else 0, spec=".2f"), Column("RESULT", text=False), *where.columns(wide, json),
    ]


@click.command("connlat")
@o.output_options(csv=False, time=False)
@click.argument("min_ms", type=o.FiniteFloatRange(min=0), required=False, metavar="[MIN_MS]")
@where.pids_option("only trace connects made by these processes")
@click.option("-L", "--lport", is_flag=True, help="include the local port (LPORT)")
@o.family_option
@o.cgroup_option
@where.netns_option
@o.duration_option
def command(out: OutputOptions, min_ms: float | None, pids: list[int] | None, lport: bool, family: int | None,
            cgroup: int | None, netns: list[int] | None, duration: float | None) -> None:
    """Trace TCP connect latency: connect() to the peer's answer, per attempt.

    An attempt is what `netsnoop connect --outcome` shows, with the same latency;
    connlat shows those the peer answered, as bcc's tcpconnlat does: with a SYN-ACK
    (ESTABLISHED) or a reset (REFUSED; --json has the result). Attempts that got no
    answer (TIMEOUT), an ICMP error (UNREACHABLE...) or were closed first are not
    shown: see `netsnoop connect --outcome`.

    MIN_MS shows only connects slower than that many milliseconds (e.g. 0.5); the
    filter runs in the kernel.

    NETNS is the connection's network namespace and CONTAINER the connecting process's
    container, pod or systemd unit (see -w; always in --json).
    """
    rodata = {
        **conn.filters(pids=pids, family=family, cgroup=cgroup, netns=netns),
        "min_lat_ns": int(min_ms * 1e6) if min_ms else None,
    }
    with TRACER.open(rodata) as obj:
        conn.show(obj, columns(lport, out.wide, out.json), out, duration, "Tracing... Hit Ctrl-C to end.")
