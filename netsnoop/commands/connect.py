"""netsnoop connect: active TCP connects (bcc tcpconnect), failed ones too, with their
outcome (--outcome), or counted in the kernel per destination and namespace (-c)."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable

import click

from netsnoop import conn, dns
from netsnoop import options as o
from netsnoop import where
from netsnoop.btf import StructDecoder
from netsnoop.counts import show_counts
from netsnoop.fmt import addr
from netsnoop.loader import BPFObject
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec

# sys_exit_connect only makes -L rows appear before the handshake resolves (not loaded
# when counting); without sys_enter_getsockopt (so_error), an attempt whose owner took
# its soft error with SO_ERROR before closing shows as ABORTED.
TRACER = LoadSpec("connect", optional=frozenset({"connect_exit", "so_error"}), rows_only=frozenset({"connect_exit"}))
BANNER = "Tracing connect ... Hit Ctrl-C to end"
# enum report_mode in connect.bpf.c; enum count_flags in conn_count.h
ATTEMPT, LPORT, OUTCOME = range(3)
COUNT_ADDRS, COUNT_PORT, COUNT_LATENCY = 1, 2, 4


def count_columns(outcome: bool) -> list[Column]:
    """bcc's -c table, RESULT with --outcome, then the namespace (its inode in JSON)."""
    return [Column("LADDR", 25), Column("RADDR", 25), Column("RPORT", 20),
            *([Column("RESULT", 15)] if outcome else []), Column("CONNECTS", 10), Column("NETNS"),
            Column("NETNS_INODE", text=False)]


# bcc's `tcpconnect -d` traces DNS lookups; here -d is the duration, as everywhere in
# netsnoop. A bare -d (no number after it) is that habit: say so, by name.
BCC_DNS_FLAG = "bcc-dns"


class Duration(click.ParamType):
    """-d SECONDS, finite and positive; a bare -d is bcc's DNS flag, not available."""

    name = "SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if value == BCC_DNS_FLAG:
            self.fail("-d is a duration in netsnoop (-d SECONDS); bcc's DNS mode (tcpconnect -d) is --dns here",
                      param, ctx)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} is not a positive, finite number of seconds", param, ctx)
        return seconds


def columns(uid: bool, lport: bool, outcome: bool, wide: bool = False, json: bool = True) -> list[Column]:
    """bcc's layout; UID is always in JSON, LPORT wherever it is known; -w fits IPv6
    addresses and adds NETNS and CONTAINER (always in JSON)."""
    a = 26 if wide else 16
    cols = [
        Column("UID", 5, text=uid), Column("PID", 6), Column("COMM", 12, truncate=True), Column("IP", 2),
        Column("SADDR", a), Column("LPORT", 6, text=lport, json=lport or outcome), Column("DADDR", a),
        Column("DPORT", 5 if not wide or outcome else 6),
    ]
    if outcome:
        cols += [Column("RESULT", 15), Column("LAT(ms)", 8 if wide else 0, spec=".2f")]
    return cols + where.columns(wide, json)


def count_row(outcome: bool) -> Callable[[Any, int], tuple[Any, ...]]:
    """A row of :func:`count_columns` from a ``conn_count_key`` and its count."""

    def row(k: Any, n: int) -> tuple[Any, ...]:
        result = (conn.outcome(k.state, k.err),) if outcome else ()
        return (addr(k.family, k.laddr), addr(k.family, k.raddr), k.port, *result, n, where.netns_label(k.netns),
                k.netns)

    return row


def pending(obj: BPFObject) -> list[Any]:
    """Attempts still unanswered when tracing stops, as events in SYN_SENT with the
    time waited so far: a SYN that gets no answer is not met with silence."""
    owner, event = StructDecoder(obj.btf, "conn_owner"), obj.decoder("event")
    now = time.monotonic_ns()  # bpf_ktime_get_ns()'s clock
    owners = sorted((owner.decode(raw) for _key, raw in obj.map("conn_owners").items()), key=lambda o: o.start_ns)
    return [
        event.type(ts_ns=now, lat_ns=now - o.start_ns, cgroup=o.cgroup, pid=o.pid, uid=o.uid, netns=o.netns, err=0,
                   family=o.family, sport=0, dport=o.dport, kind=conn.CONNECT, state=conn.TCP_SYN_SENT, saddr=o.saddr,
                   daddr=o.daddr, comm=o.comm)
        for o in owners
    ]


def pending_counts(obj: BPFObject) -> list[tuple[Any, int]]:
    """-c --outcome: the attempts still unanswered when counting stops, counted as
    PENDING per destination (their count keys, in SYN_SENT)."""
    owner, key = StructDecoder(obj.btf, "conn_owner").decode, StructDecoder(obj.btf, "conn_count_key").type
    waiting: dict[tuple[Any, ...], int] = {}
    for _key, raw in obj.map("conn_owners").items():
        o = owner(raw)
        k = (o.netns, o.family, o.saddr, o.daddr, o.dport)
        waiting[k] = waiting.get(k, 0) + 1
    return [(key(laddr=laddr, raddr=raddr, netns=ino, err=0, port=port, family=family, state=conn.TCP_SYN_SENT,
                 pad=b"\0" * 3), n)
            for (ino, family, laddr, raddr, port), n in waiting.items()]


@click.command("connect")
@o.output_options(csv=False, time=False)
@where.pids_option("only trace connects made by these processes")
@o.ports_option("-P", "--port", "ports", help="only trace these destination ports (e.g. 80,81)")
@click.option("-u", "--uid", type=click.IntRange(0, 0xFFFFFFFE), default=None, help="only trace this UID")
@click.option("-U", "--print-uid", is_flag=True, help="include a UID column")
@click.option("-L", "--lport", is_flag=True, help="include the local port (LPORT)")
@click.option("-c", "--count", is_flag=True,
              help="count connects per source, destination and namespace in the kernel, print on exit "
                   "(with --outcome: per outcome)")
@click.option("--outcome", is_flag=True, help="one row per attempt once it resolves: RESULT and LAT(ms)")
@click.option("--dns", "dns_names", is_flag=True, help="add NAME: the host name last resolved to DADDR (answers seen)")
@o.family_option
@o.cgroup_option
@where.netns_option
@click.option("-d", "--duration", type=Duration(), default=None, is_flag=False, flag_value=BCC_DNS_FLAG,
              metavar="SECONDS", help="stop after this many seconds")
def command(out: OutputOptions, pids: list[int] | None, ports: Any, uid: int | None, print_uid: bool, lport: bool,
            count: bool, outcome: bool, dns_names: bool, family: int | None, cgroup: int | None,
            netns: list[int] | None, duration: float | None) -> None:
    """Trace active TCP connects (connect()), including those that fail.

    PID/COMM/UID are the process that called connect(). Without --outcome a row is
    printed as connect() starts (with -L, once the local port is chosen); with
    --outcome once the handshake resolves: ESTABLISHED, REFUSED, TIMEOUT (the SYN got
    no answer), UNREACHABLE... with the time it took; attempts still unanswered when
    tracing stops are shown then, as PENDING, with the time waited so far.

    RESULT is the error the connecting socket received, soft errors included: an ICMP
    error (a firewall's REJECT) that arrives while connect() runs is kept by the
    kernel as a soft error, and the attempt may end by a timeout or by its owner's
    close after getsockopt(SO_ERROR) handed that error over. ABORTED: the owner
    closed it before any error or answer. `netsnoop connlat` shows the same attempts
    that the peer answered.

    NETNS is the connection's network namespace and CONTAINER the connecting process's
    container, pod or systemd unit (see -w; always in --json).

    -c counts in the kernel, with no row per connect, and prints one table on exit:
    connects per local address, destination and namespace as connect() starts them;
    with --outcome, per outcome once each resolves (PENDING: still unanswered then).

    --dns adds NAME: the host name this machine last resolved to DADDR, learnt from
    the DNS answers local sockets receive (in that namespace) while tracing; no answer
    seen, no name. bcc's -d (DNS) is --dns here: -d is the duration, as everywhere.
    """
    if count and dns_names:
        raise click.UsageError("-c/--count and --dns cannot be combined")
    rodata = {
        **conn.filters(pids=pids, family=family, cgroup=cgroup, uid=uid, netns=netns, rports=ports),
        "report_mode": OUTCOME if outcome else LPORT if lport and not count else ATTEMPT,
        "count_only": count,
    }
    with TRACER.open(rodata) as obj, (dns.Watcher() if dns_names else contextlib.nullcontext()) as names:
        if count:
            show_counts(obj, "conn_count_key", count_columns(outcome), count_row(outcome), out, duration, BANNER,
                        total="connects", at_stop=(lambda: pending_counts(obj)) if outcome else None)
        else:
            at_stop = (lambda: pending(obj)) if outcome else None
            conn.show(obj, columns(print_uid, lport, outcome, out.wide, out.json), out, duration, BANNER, at_stop,
                      names)
