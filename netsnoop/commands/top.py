"""netsnoop top: TCP throughput per process and connection, every interval (bcc tcptop)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, NamedTuple

import click

from netsnoop import dns
from netsnoop import options as o
from netsnoop import where
from netsnoop.btf import StructDecoder
from netsnoop.fmt import comm, endpoints, ip_version
from netsnoop.loader import BPFObject
from netsnoop.output import Column, JsonSink, OutputOptions, TextSink, typed_endpoints
from netsnoop.runner import LoadSpec, every_interval

F = Callable[..., Any]

# No ring buffer traffic: the kernel sums bytes in the conns map. With tp_btf hooks
# the bytes wait in a per-CPU cache, which the DRAIN program (and the cache's other
# companions, loaded with send__tp_btf) move to conns: so send and recv use the same
# kind of hook or neither uses tp_btf (see top.bpf.c).
TRACER = LoadSpec("top", max_entries={"events": 4096}, linked=frozenset({"send", "recv"}))
DRAIN = "send__tp_btf__drain"
DRAIN_TRIES = 3  # a CPU whose cache is being rewritten at that instant is asked again


def columns(v6: bool, wide: bool = False, names: bool = False) -> list[Column]:
    """bcc's two tables (IPv6 addresses need wider columns); JSON gets typed fields,
    and the connection's NETNS and the process's CONTAINER (text: with -w); --dns adds
    NAME last."""
    a, suffix = (32, "6") if v6 else (21, "")
    return [
        Column("PID", 6),
        Column("COMM", 12, truncate=True),
        Column("LADDR" + suffix, a, json=False),
        Column("RADDR" + suffix, a, json=False),
        Column("RX_KB", 6, align=">"),
        Column("TX_KB", 6, align=">"),
        Column("IP", text=False),
        *typed_endpoints(),
        Column("RX_BYTES", text=False),
        Column("TX_BYTES", text=False),
        Column("timestamp", text=False),
        *where.columns(wide),
    ] + ([Column("NAME", 24, truncate=True)] if names else [])


TOTALS = {c.header: i for i, c in enumerate(columns(False))}


# -s/--sort: libbpf-tools tcptop's keys (all, sent, received), pid, and the short
# names people also reach for. Every key ends in the same tie-breakers, so equal
# rows keep one order from one interval to the next.
SORT_ALIASES = {"bytes": "all", "tx": "sent", "rx": "received"}
SORT_KEYS = ("all", "sent", "received", "pid", *SORT_ALIASES)
_SORTS = {
    "all": lambda k, v: (-(v.rx + v.tx), k.pid, v.sport, v.dport),
    "sent": lambda k, v: (-v.tx, -(v.rx + v.tx), k.pid, v.sport, v.dport),
    "received": lambda k, v: (-v.rx, -(v.rx + v.tx), k.pid, v.sport, v.dport),
    "pid": lambda k, v: (k.pid, -(v.rx + v.tx), v.sport, v.dport),
}


class Interval(NamedTuple):
    """One interval's rows in sort order (at most -r of them), and what all the
    connections that matched add up to, shown or not."""

    rows: list[tuple[Any, ...]]
    connections: int
    rx: int
    tx: int

    @property
    def ipv4(self) -> list[tuple[Any, ...]]:
        return [r for r in self.rows if r[TOTALS["IP"]] == 4]

    @property
    def ipv6(self) -> list[tuple[Any, ...]]:
        return [r for r in self.rows if r[TOTALS["IP"]] == 6]

    @property
    def hidden(self) -> int:
        return self.connections - len(self.rows)


def drain(obj: BPFObject) -> None:
    """Move every CPU's cached bytes to conns. A CPU caught rewriting its cache (a
    few hundred ns) is tried again; one still busy keeps its bytes for next time."""
    for _ in range(DRAIN_TRIES):
        if not any(obj.run_on_each_cpu(DRAIN)):
            return


def collect(obj: BPFObject, keys: StructDecoder, values: StructDecoder, cached: bool,
            sort: str = "all", rows: int | None = None, name: Callable[[Any], Any] | None = None) -> Interval:
    """Take (read and clear) the interval's counts, in ``sort`` order, the first
    ``rows`` of them; ``name`` gives the NAME cell of a connection (--dns)."""
    now = round(time.time(), 6)
    if cached:
        drain(obj)
    entries = [(keys.decode(k), values.decode(v)) for k, v in obj.map("conns").take_all()]
    entries = [(k, v) for k, v in entries if not v.excluded and (v.rx or v.tx)]
    order = _SORTS[SORT_ALIASES.get(sort, sort)]
    entries.sort(key=lambda kv: order(*kv))
    out = Interval([], len(entries), sum(v.rx for _, v in entries), sum(v.tx for _, v in entries))
    for k, v in entries[:rows]:
        local, remote, *typed = endpoints(v.family, v.saddr, v.sport, v.daddr, v.dport)
        out.rows.append((k.pid, comm(v.comm), local, remote, v.rx // 1024, v.tx // 1024, ip_version(v.family),
                         *typed, v.rx, v.tx, now, *where.values(v.netns, v.cgroup),
                         *((name(v),) if name else ())))
    return out


def loadavg_line() -> str:
    with open("/proc/loadavg") as f:
        return f"{time.strftime('%H:%M:%S'):<8} loadavg: {f.read().strip()}"


class TextView:
    """bcc's scrolling layout: a blank line, the loadavg line, then the tables."""

    def __init__(self, loadavg: bool, wide: bool = False, names: bool = False) -> None:
        self.loadavg = loadavg
        self.sinks = (TextSink(columns(False, wide, names)), TextSink(columns(True, wide, names)))

    def show(self, interval: Interval) -> None:
        out = sys.stdout
        out.write("\n" + (loadavg_line() + "\n\n" if self.loadavg else ""))
        if not (interval.ipv4 or interval.ipv6) and out.isatty():  # bcc shows nothing: say so to people
            self.sinks[0].header()
            out.write("no TCP traffic matched\n")
        for n, (sink, rows) in enumerate(zip(self.sinks, (interval.ipv4, interval.ipv6))):
            if rows:
                if n:
                    out.write("\n")
                sink.header()
                sink.write(rows)
        if interval.hidden and out.isatty():  # pipes get bcc's rows only
            out.write(f"... {interval.hidden} more (-r {len(interval.rows)})\n")
        out.flush()

    def close(self) -> None:
        pass


class JsonLines:
    """One object per connection per interval, stamped with the interval's end."""

    def __init__(self, names: bool = False) -> None:
        self.sink = JsonSink(columns(False, names=names))

    def show(self, interval: Interval) -> None:
        self.sink.write(interval.rows)

    def close(self) -> None:
        pass


# On a narrow terminal these go first, in this order; addresses and counts stay whole.
LIVE_DROP = ("CONTAINER", "NETNS", "COMM", "LADDR", "LADDR6", "PID")


class Live(TextView):
    """The same tables, redrawn in place on a terminal, with the unit spelled out, a
    totals line, and a line saying so when nothing matched."""

    def __init__(self, loadavg: bool, interval: float, wide: bool = False, names: bool = False) -> None:
        super().__init__(loadavg, wide, names)
        from netsnoop.live import LiveView  # rich: imported once the BPF object is loaded, a smaller peak

        self.unit = f"RX_KB, TX_KB: KiB received and sent in each {interval:g} s interval; q quits"
        self.view = LiveView(drop=LIVE_DROP)

    def show(self, interval: Interval) -> None:
        n = interval.connections
        head = ([loadavg_line()] if self.loadavg else []) + [self.unit]
        limited = f" ({len(interval.rows)} shown: -r {len(interval.rows)})" if interval.hidden else ""
        footer = [f"total: {n} connection{'' if n == 1 else 's'}{limited}, "
                  f"RX_KB {interval.rx // 1024}, TX_KB {interval.tx // 1024}"] if n else []
        tables = [(self.sinks[0].columns, interval.ipv4), (self.sinks[1].columns, interval.ipv6)]
        self.view.show(head, tables, footer,
                       empty="no TCP traffic matched")

    def close(self) -> None:
        self.view.close()


def run(obj: BPFObject, view: Any, json: bool, interval: float, count: int | None, sort: str = "all",
        rows: int | None = None, names: dns.Watcher | None = None) -> int | None:
    """Show every interval until Ctrl-C or ``count``, then the summary; returns the
    intervals shown (None: stdout's reader went away)."""
    keys, values = StructDecoder(obj.btf, "conn_key"), StructDecoder(obj.btf, "conn_bytes")
    cached = obj.loaded_program(DRAIN) is not None
    blank = None if json else ""  # no name: JSON null, an empty text field
    name = (lambda v: names.name_of(v.family, v.daddr, v.netns) or blank) if names else None
    return every_interval(obj, lambda last: view.show(collect(obj, keys, values, cached, sort, rows, name)),
                          OutputOptions(json=json), interval, count,
                          banner=f"Tracing... Output every {interval:g} secs. Hit Ctrl-C to end", finish=view.close,
                          facts=(lambda: {"dns": names.stats()}) if names else None)


def cgroup_spelling(given: str) -> Callable[[F], F]:
    """libbpf-tools' tcptop -c PATH and bcc's --cgroupmap are --cgroup PATH here: a
    hidden ``given`` that says so, rather than "no such option"."""

    def refuse(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None:
            raise click.UsageError(f"top has no {given}: to trace one cgroup use --cgroup PATH "
                                   "(a cgroup v2 directory, as libbpf-tools' tcptop -c takes)", ctx)

    return click.option(given, f"_{given.lstrip('-')}", is_flag=False, flag_value="", default=None, hidden=True,
                        expose_value=False, callback=refuse)


@click.command("top")
@click.option("-C", "--noclear", is_flag=True, help="don't clear the screen (scroll plain text)")
@click.option("-S", "--nosummary", is_flag=True, help="skip the system summary (loadavg) line")
@where.pids_option("only count these processes")
@o.ports_option("-P", "--port", "ports", help="only count these ports at either end (e.g. 80,443)")
@o.family_option
@o.cgroup_option
@where.netns_option
@click.option("-w", "--wide", is_flag=True, help="add NETNS and CONTAINER columns (always in --json)")
@cgroup_spelling("-c")
@cgroup_spelling("--cgroupmap")
@click.option("-s", "--sort", type=click.Choice(SORT_KEYS), default="all", show_default=True,
              help="order of the rows: all (bytes sent and received), sent, received, pid; "
                   "bytes, tx, rx are other names for all, sent, received")
@click.option("-r", "--rows", type=click.IntRange(min=1), default=None, metavar="ROWS",
              help="show at most ROWS connections an interval, the first in --sort order (default: all)")
@click.option("--json", is_flag=True, help="one JSON object per connection per interval")
@click.option("--dns", "dns_names", is_flag=True, help="add NAME: the host name last resolved to RADDR (answers seen)")
@o.interval_count_arguments()
def command(noclear: bool, nosummary: bool, pids: list[int] | None, ports: Any, family: int | None,
            cgroup: int | None, netns: list[int] | None, wide: bool, sort: str, rows: int | None, json: bool,
            dns_names: bool, interval: float, count: int | None) -> None:
    """Summarise TCP send/receive throughput by process and connection.

    Every INTERVAL seconds (default 1), COUNT times (default: until Ctrl-C). Bytes are
    counted in the kernel as sendmsg/recvmsg return them, in the calling process's
    context, so PID/COMM are the socket's user. RX_KB/TX_KB are the interval's KiB;
    --json adds exact rx_bytes/tx_bytes. On a terminal the view is redrawn in place
    unless -C: it fits the terminal (COMM, then LADDR, then PID give way before a
    number is cut; rows that do not fit are counted), ends with the interval's
    totals, and q quits.

    Rows come busiest first (-s all); -s sent, -s received or -s pid order them
    otherwise (IPv4 and IPv6 keep their own tables, each in that order; --json
    gives all rows in that order). -r keeps the first ROWS connections of each
    interval; the live view's totals line still counts them all.

    NETNS is the connection's network namespace, CONTAINER the process's container,
    pod or systemd unit (-w; always in --json); --netns and --cgroup filter on them in
    the kernel.

    --dns adds NAME: the host name this machine last resolved to RADDR, learnt from
    the DNS answers local sockets receive while tracing; no answer seen, no name.
    """
    rodata = {**o.port_filters(ports=ports), **where.filters(pids, netns), "filter_family": family,
              "filter_cgroup": cgroup}
    with TRACER.open(rodata) as obj, (dns.Watcher() if dns_names else contextlib.nullcontext()) as names:
        from netsnoop.live import use_live  # rich: after the load, so its memory is not under libbpf's peak

        view: Any = (
            JsonLines(dns_names)
            if json
            else Live(not nosummary, interval, wide, dns_names)
            if use_live(noclear, json)
            else TextView(not nosummary, wide, dns_names)
        )
        run(obj, view, json, interval, count, sort, rows, names)
