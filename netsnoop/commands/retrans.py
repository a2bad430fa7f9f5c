"""netsnoop retrans: TCP retransmits, SYN and SYN-ACK included (bcc tcpretrans)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from netsnoop import options as o
from netsnoop import where
from netsnoop.counts import show_counts
from netsnoop.fmt import endpoints, ip_version, tcp_state
from netsnoop.output import Column, OutputOptions, typed_endpoints
from netsnoop.owner import OWNER_GROUPS, owner
from netsnoop.runner import LoadSpec, stream

# SYN-ACK retransmits and tail loss probes are extras: without their hooks, data
# and SYN retransmits are still traced. Loss probes need a kprobe (no tracepoint).
TRACER = LoadSpec("retrans", optional=frozenset({"synack", "tlp", *OWNER_GROUPS}), costs={"tlp": None},
                 rows_only=OWNER_GROUPS)  # -l says it
TYPES = {1: "R", 2: "L"}
BANNER = "Tracing retransmits ... Hit Ctrl-C to end"
NO_TLP = ("netsnoop: -l: this kernel offers no hook for tail loss probes (a kprobe or fentry on "
          "tcp_send_loss_probe is needed and is not available here); showing retransmits only. "
          "Probes that resend data still appear as R rows.")


def columns(sequence: bool, wide: bool = False, json: bool = True) -> list[Column]:
    """bcc's layout; -w adds NETNS and CONTAINER (always in JSON)."""
    return [
        Column("PID", 7, json=False),
        Column("IP", 2),
        Column("LADDR:LPORT", 20, json=False),
        Column("T>", 2, json=False),
        Column("RADDR:RPORT", 20, json=False),
        Column("STATE", 12),
        Column("SEGS", 4 if sequence or wide else 0, align=">"),
        Column("SEQ", 10 if wide else 0, text=sequence, json=sequence),
        Column("KIND", text=False),  # R or L, as in T
        *typed_endpoints(),
        Column("PID", text=False),
        Column("COMM", text=False),
        *where.columns(wide, json),
    ]


COUNT_COLUMNS = [
    Column("LADDR:LPORT", 25, json=False),
    Column("RADDR:RPORT", 25, json=False),
    Column("SEGS", 11, align=">"),
    Column("NETNS"),
    Column("IP", text=False),
    *typed_endpoints(),
    Column("NETNS_INODE", text=False),
]


def count_row(k: Any, n: int) -> tuple[Any, ...]:
    local, remote, *typed = endpoints(k.family, k.laddr, k.lport, k.raddr, k.rport)
    return (local, remote, n, where.printable(where.netns_label(k.netns)), ip_version(k.family), *typed, k.netns)


@click.command("retrans")
@o.output_options(csv=False, time=False)
@o.count_option("count retransmitted segments per network namespace and flow, print a table on exit")
@click.option("-l", "--lossprobe", is_flag=True, help="include tail loss probe attempts (needs a kprobe)")
@click.option("-s", "--sequence", is_flag=True, help="display TCP sequence numbers (SEQ column)")
@o.ports_option("-P", "--port", "ports", help="only trace these ports at either end (e.g. 80,443)")
@where.pids_option("only retransmits of sockets these processes own")
@o.family_option
@o.cgroup_option
@where.netns_option
@o.duration_option
def command(out: OutputOptions, count: bool, lossprobe: bool, sequence: bool, ports: Any, pids: list[int] | None,
            family: int | None, cgroup: int | None, netns: list[int] | None, duration: float | None) -> None:
    """Trace TCP retransmits: one row per buffer the kernel sent again.

    One row is one retransmitted buffer (skb): a SYN, a SYN-ACK, or data. Under GSO/TSO
    one buffer holds many segments; SEGS says how many (tcp_skb_pcount), and -c counts
    segments. T is R for a retransmit and L for a tail loss probe (-l, where the kernel
    lets a kprobe reach tcp_send_loss_probe; an L row sends nothing itself: SEGS 0, and
    a probe that resends data is also an R row). PID is the socket's owner: the process
    that connected it, made it listen (SYN-ACKs) or last sent on or received from it
    while netsnoop ran ("-" when none did), not whoever was on the CPU: retransmits
    mostly come from timers.

    NETNS is the socket's network namespace, CONTAINER the container, pod or systemd
    unit of its owner (both with -w; always in --json). -p and --cgroup keep the
    retransmits of sockets whose owner is among those processes or in that cgroup (a
    socket with no known owner is left out then); --netns judges the socket. All three
    filters run in the kernel. -c counts per namespace and flow.

    \b
    The segments add up to the kernel's TcpRetransSegs (nstat) of the namespaces
    traced, except that:
    - a retransmit that fails to leave (TcpExtTCPRetransFail, e.g. dropped by a local
      output rule) is in TcpRetransSegs but is not shown: it was not sent;
    - TcpRetransSegs is per network namespace (nstat shows the one it runs in), while
      netsnoop sees every namespace: a SYN-ACK retransmit counts in the listener's.
    SYN and SYN-ACK retransmits are in both (also in TcpExtTCPSynRetrans).
    """
    with_owner = not count or bool(pids or cgroup)  # -c: only -p and --cgroup need owners
    rodata = {**o.port_filters(ports=ports), "filter_family": family, **where.filters(pids, netns),
              "filter_cgroup": cgroup, "count_only": count, "with_tlp": lossprobe, "with_owner": with_owner}
    tracer = replace(TRACER, rows_only=frozenset()) if count and with_owner else TRACER
    with tracer.open(rodata) as obj:
        if lossprobe and not obj.chosen.get("tlp"):
            click.echo(NO_TLP, err=True)
        if count:
            show_counts(obj, "flow_key", COUNT_COLUMNS, count_row, out, duration, BANNER)
            return

        named = where.values if out.wide or out.json else None  # as where.columns()

        def row(e: Any) -> tuple[Any, ...]:
            local, remote, *typed = endpoints(e.family, e.saddr, e.sport, e.daddr, e.dport)
            kind = TYPES.get(e.type, "?")
            pid, name = owner(e)
            r = (pid or "-", ip_version(e.family), local, kind + ">", remote, tcp_state(e.state), e.segs, e.seq,
                 kind, *typed, pid, name)
            return r + named(e.netns, e.cgroup) if named else r

        out.time = True  # bcc always shows TIME
        stream(obj, columns(sequence, out.wide, out.json), row, out, duration, banner=BANNER)
