"""netsnoop life: TCP sessions as they close (bcc tcplife), owned by the right process."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import click

from netsnoop import dns
from netsnoop import options as o
from netsnoop import where
from netsnoop.conn import row_of
from netsnoop.fmt import addresses, comm, ip_version
from netsnoop.output import Column, OutputOptions
from netsnoop.loader import BPFObject
from netsnoop.runner import LoadSpec, stream, warn

# The owner hooks (send/recv in process context) are an improvement, not a requirement.
# destroy: rows for sessions whose CLOSE never reached the hook (see life.bpf.c).
TRACER = LoadSpec("life", optional=frozenset({"send", "recv", "destroy"}))


# Each column's value, from an event ``e`` (names from _SCOPE; ``a`` is the address
# lookup of the event's family, bound by LADDR, which comes before RADDR), compiled
# into one row function by conn.row_of.
FIELDS: dict[str, str] = {
    "PID": "e.pid",
    "COMM": 'comm(e.comm) if e.pid else "?"',
    "IP": "ip_version(e.family)",
    "LADDR": "(a := addresses(e.family))(e.saddr)",
    "LPORT": "e.sport",
    "RADDR": "a(e.daddr)",
    "RPORT": "e.dport",
    "TX_KB": "e.tx_bytes // 1024",
    "RX_KB": "e.rx_bytes // 1024",
    "MS": "e.span_ns / 1e6",
    "TX_BYTES": "e.tx_bytes",
    "RX_BYTES": "e.rx_bytes",
}
_SCOPE = {"comm": comm, "ip_version": ip_version, "addresses": addresses}


def ends_not_seen(obj: BPFObject) -> int:
    """Sessions whose end no hook saw, so that their rows are missing: those counted when
    a new socket took their address, and those the exit check finds now (their socket
    is gone from this namespace's TCP tables, their entry is not). The hooks stay
    attached meanwhile, so a session that ends during the check is not miscounted."""
    obj.iterate("mark_alive")
    obj.run_once("count_unseen_ends")
    return obj.counter("ends_not_seen")


def columns(wide: bool, json: bool = True, names: bool = False) -> list[Column]:
    """bcc's layout; --dns adds NAME before the where columns (-w; always in JSON)."""
    a, kb = (26, 6) if wide else (15, 5)
    return [
        Column("PID", 5 if not wide else 7),
        Column("COMM", 16 if wide else 10, truncate=True),
        Column("IP", 2, text=wide, csv=True),
        Column("LADDR", a),
        Column("LPORT", 5),
        Column("RADDR", a),
        Column("RPORT", 5),
        Column("TX_KB", kb, align=">"),
        Column("RX_KB", kb, align=">"),
        Column("MS", 10 if wide else 0, spec=".2f"),
        Column("TX_BYTES", text=False),
        Column("RX_BYTES", text=False),
        *([Column("NAME", 24, truncate=True)] if names else []),
        *where.columns(wide, json),
    ]


@click.command("life")
@o.output_options()
@where.pids_option("only trace sessions owned by these processes")
@o.ports_option("-L", "--localport", "lports", help="only trace these local ports (e.g. 80,81)")
@o.ports_option("-D", "--remoteport", "rports", help="only trace these remote ports")
@o.ports_option("-P", "--port", "ports", help="only trace these ports at either end (local OR remote)")
@o.family_option
@o.cgroup_option
@where.netns_option
@click.option("--dns", "dns_names", is_flag=True, help="add NAME: the host name last resolved to RADDR (answers seen)")
@o.duration_option
def command(out: OutputOptions, pids: list[int] | None, lports: Any, rports: Any, ports: Any, family: int | None,
            cgroup: int | None, netns: list[int] | None, dns_names: bool, duration: float | None) -> None:
    """Trace the lifespan of TCP sessions: one line per session when it closes.

    PID/COMM are the process that used the socket (connect, send, recv or close in its
    own context), not whichever task happened to be on the CPU. TX_KB/RX_KB (and the
    exact tx_bytes/rx_bytes in --json) are payload bytes: acked by the peer, and
    received, from the socket's own counters without the SYN and FIN they also count.
    -L and -D must both match; -P matches a port at either end.

    Sessions that close without their start having been seen (begun before tracing)
    have no row; the summary counts them (closes_without_start; not with -p or --cgroup,
    since whose they were is unknown). Sessions
    whose end the kernel did not let any hook see have no row either; the summary
    counts them too (ends_not_seen), and a warning says so.

    NETNS is the session's network namespace, CONTAINER its owner's container, pod or
    systemd unit (-w; always in --json); -p and --cgroup judge the owner.

    --dns adds NAME: the host name this machine last resolved to RADDR, learnt from
    the DNS answers local sockets receive (in that namespace) while tracing; no answer
    seen, no name.
    """
    same = sorted(set(lports or ()) & set(rports or ()))
    if same:
        both = ",".join(map(str, same))
        warn(f"-L and -D must both match: a session shows only if its local port is in -L and its remote "
             f"port in -D; -P {both} matches {both} at either end")
    rodata = {**o.port_filters(lports, rports, ports), **where.filters(pids, netns), "filter_family": family,
              "filter_cgroup": cgroup,
              "own_netns": os.stat("/proc/self/ns/net").st_ino}

    cols = columns(out.wide, out.json, dns_names)
    if not (out.json or out.csv):  # text: the rows hold only what it shows (see conn.row_of)
        cols = [c for c in cols if c.text]
    blank = None if out.json else ""  # no name: JSON null, an empty text field

    with TRACER.open(rodata) as obj, (dns.Watcher() if dns_names else contextlib.nullcontext()) as names:
        def facts() -> dict[str, Any]:
            unseen = ends_not_seen(obj)
            if unseen:
                warn(f"{unseen} session{'s' if unseen > 1 else ''} ended without the kernel running the hooks "
                     "that see an end; their rows are missing (ends_not_seen in the summary)")
            more = {"dns": names.stats()} if names is not None else {}
            return {"closes_without_start": obj.counter("closes_without_start"), "ends_not_seen": unseen, **more}

        extra = None
        if names is not None:
            extra = {"NAME": lambda e: names.name_of(e.family, e.daddr, e.netns or None) or blank}
        stream(obj, cols, row_of(cols, extra, FIELDS, _SCOPE, obj.decoder().names), out, duration, facts=facts)
