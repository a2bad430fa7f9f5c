"""TCP health as Prometheus metrics (``netsnoop export``): what each metric is, where
its figures come from, and the collector that reads them at scrape time.

Every figure is counted in the kernel. The BPF side is the subcommands' own objects,
loaded in their counting modes (one program per signal, never a second copy), and one
of export's own for the signal no subcommand counts (the bytes of closed sockets):

* ``connect -c --outcome``, ``accept -c``, ``drop -c``, ``retrans -c`` and
  overview's resets count in kernel hash maps (connect also keeps latency histograms),
  which are read and emptied (lookup-and-delete) every second and at each scrape, so
  the maps stay small however many flows and namespaces come and go, and their sums
  live here under bounded labels: nothing per connection or packet crosses over;
* ``rtt`` and ``synbl`` keep log2 histograms per namespace in the kernel, read as they
  are at scrape time (a gone namespace's move here, out of the kernel's map);
* bytes are read off the sockets at scrape time (sock_diag's tcp_info), plus those of
  the sockets closed meanwhile, which export's own sockbytes object keeps: nothing
  runs per send or receive call (see :class:`Bytes`).

The namespace-wide kernel counters (what ``nstat`` shows inside each namespace) and the
listeners' accept queues (sock_diag, what ``ss -lt`` shows) are read at scrape time by
entering each network namespace (:mod:`netsnoop.netns`).

Labels are bounded by design: ``netns`` has at most ``max_netns`` values (then
"other"), ``port`` exists only with ``--port-labels`` and takes only the ports listed
there (every other port is "other"), ``reason`` and ``outcome`` are kernel enums.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, cast

from netsnoop import __version__, conn, netns
from netsnoop.btf import StructDecoder
from netsnoop.errors import NetsnoopError
from netsnoop.hist import Log2Hist, add_cpus, read_hists
from netsnoop.loader import BPFObject
from netsnoop.runner import LoadSpec

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    class Family(Metric):
        """A metric family of any kind: each kind's add_metric takes the label values,
        then what a sample of that kind holds (a value, buckets and a sum, a dict)."""

        def add_metric(self, labels: Sequence[str], value: Any, *more: Any) -> None: ...

OTHER = "other"
# connect's latency histograms between two reads (a second): namespaces x outcomes
# (x labelled ports); more are counted as lost events
LATENCY_KEYS = 4096
# The kernel's log2 slots of connect latency shown as buckets: those ending at 32 us (a
# loopback handshake) up to 33.5 s (the SYN retries of a lost network), doubling; the
# cumulative counts stay exact, the slots outside only fold into their neighbours.
CONNECT_SLOTS = range(4, 25)
REFRESH_S = 1.0  # how stale the list of namespaces may be
HIST_SLOTS = 32  # hist.h


@dataclass(frozen=True)
class MetricDoc:
    """One exported metric: its name as exposed, type, help text and labels (``port``
    only with --port-labels), and which source produces it."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...]
    source: str


PORT = "port"
METRICS: list[MetricDoc] = [
    MetricDoc("netsnoop_tcp_connects_total", "counter",
              "Active TCP connects by how the handshake resolved (established, refused, timeout, unreachable, "
              "...), per network namespace of the connecting socket.", ("netns", "outcome", PORT), "connects"),
    MetricDoc("netsnoop_tcp_connect_duration_seconds", "histogram",
              "Time from connect() to the handshake's resolution, by outcome, per network namespace of the "
              "connecting socket (log2 buckets of microseconds).", ("netns", "outcome", PORT), "connects"),
    MetricDoc("netsnoop_tcp_connects_pending", "gauge",
              "Active TCP connects still waiting for an answer (SYN sent, nothing back yet), per network "
              "namespace of the connecting socket: a destination that drops SYNs shows here long before its "
              "connects time out.", ("netns", PORT), "connects"),
    MetricDoc("netsnoop_tcp_accepts_total", "counter",
              "TCP connections returned by accept()/accept4(), per network namespace.", ("netns", PORT), "accepts"),
    MetricDoc("netsnoop_tcp_resets_received_total", "counter",
              "TCP resets received by a socket (tcp:tcp_receive_reset), per network namespace: the kernel keeps "
              "no counter of them (netsnoop_netns_tcp_resets_sent_total counts those sent).", ("netns",), "resets"),
    MetricDoc("netsnoop_tcp_drops_total", "counter",
              "TCP packets the kernel dropped, by its drop reason (enum skb_drop_reason), per network namespace "
              "(the socket's, else the device's).", ("netns", "reason", PORT), "drops"),
    MetricDoc("netsnoop_tcp_retransmits_total", "counter",
              "TCP retransmissions the kernel sent (tcp:tcp_retransmit_skb and SYN-ACK retransmits, as netsnoop "
              "retrans -c counts them), per network namespace of the socket.", ("netns", PORT), "retrans"),
    MetricDoc("netsnoop_tcp_sent_bytes_total", "counter",
              "Payload bytes TCP sockets sent, each byte once however often it was retransmitted (tcp_info's "
              "bytes_sent less bytes_retrans; bytes_acked would add the SYN and FIN), per network namespace of the "
              "socket: live sockets read at scrape time, closed ones as they closed.", ("netns", PORT), "bytes"),
    MetricDoc("netsnoop_tcp_received_bytes_total", "counter",
              "Payload bytes TCP sockets received in order, read by a process or not yet (tcp_info's "
              "bytes_received less the peer's FIN), per network namespace of the socket: live sockets read at "
              "scrape time, closed ones as they closed.", ("netns", PORT), "bytes"),
    MetricDoc("netsnoop_tcp_rtt_seconds", "histogram",
              "Smoothed round-trip time of established TCP sockets, sampled on every segment they receive, "
              "per network namespace (log2 buckets of microseconds).", ("netns",), "rtt"),
    MetricDoc("netsnoop_tcp_accept_queue_length", "histogram",
              "Connections already waiting in a listener's accept queue when a new one joined it, by network "
              "namespace and the listener's backlog limit from listen() (log2 buckets).",
              ("netns", "backlog_limit"), "backlog"),
    MetricDoc("netsnoop_netns_tcp_active_opens_total", "counter",
              "The kernel's TcpActiveOpens (connects that sent a SYN), per network namespace.", ("netns",), "netns"),
    MetricDoc("netsnoop_netns_tcp_passive_opens_total", "counter",
              "The kernel's TcpPassiveOpens (connections a listener accepted a SYN for), per network namespace.",
              ("netns",), "netns"),
    MetricDoc("netsnoop_netns_tcp_attempt_fails_total", "counter",
              "The kernel's TcpAttemptFails (handshakes that failed), per network namespace.", ("netns",), "netns"),
    MetricDoc("netsnoop_netns_tcp_resets_sent_total", "counter",
              "The kernel's TcpOutRsts (TCP resets sent), per network namespace.", ("netns",), "netns"),
    MetricDoc("netsnoop_netns_tcp_established_resets_total", "counter",
              "The kernel's TcpEstabResets (established connections ended by a reset, sent or received), per "
              "network namespace.", ("netns",), "netns"),
    MetricDoc("netsnoop_netns_tcp_retransmitted_segments_total", "counter",
              "The kernel's TcpRetransSegs (segments retransmitted), per network namespace.", ("netns",), "netns"),
    MetricDoc("netsnoop_netns_tcp_listen_overflows_total", "counter",
              "The kernel's TcpExtListenOverflows (SYNs and final ACKs dropped for a full accept queue), per "
              "network namespace.", ("netns",), "netns"),
    MetricDoc("netsnoop_netns_tcp_listen_drops_total", "counter",
              "The kernel's TcpExtListenDrops (connection requests a listener dropped, overflows included), per "
              "network namespace.", ("netns",), "netns"),
    MetricDoc("netsnoop_netns_tcp_established", "gauge",
              "The kernel's TcpCurrEstab (TCP connections now ESTABLISHED or CLOSE_WAIT), per network namespace.",
              ("netns",), "netns"),
    MetricDoc("netsnoop_netns_info", "info",
              "Each network namespace shown: its netns label, inode, and the cgroup v2 path of its first process "
              "(the container or systemd unit it belongs to; empty when no process is in it). Join it on netns.",
              ("netns", "inode", "cgroup"), "netns"),
    MetricDoc("netsnoop_tcp_listener_queue_length", "gauge",
              "Connections waiting in a TCP listener's accept queue (ss -lt Recv-Q), per namespace and port "
              "(the fullest max_listeners listeners).", ("netns", "port"), "listeners"),
    MetricDoc("netsnoop_tcp_listener_queue_limit", "gauge",
              "A TCP listener's accept queue limit, from listen() (ss -lt Send-Q), per namespace and port.",
              ("netns", "port"), "listeners"),
    MetricDoc("netsnoop_tcp_listener_drops_total", "counter",
              "Connection requests a TCP listener dropped itself (its sk_drops, ss -ltm \"d\": SYNs and final "
              "ACKs, accept-queue overflows included), per namespace and port; starts again from 0 when the "
              "listener is made anew.", ("netns", "port"), "listeners"),
    MetricDoc("netsnoop_tcp_listeners_not_shown", "gauge",
              "TCP listeners left out of the listener gauges by max_listeners.", (), "listeners"),
    MetricDoc("netsnoop_up", "gauge", "Always 1: netsnoop export runs and answers scrapes.", (), "health"),
    MetricDoc("netsnoop_build_info", "info", "The netsnoop version, and the kernel and libbpf it runs on.",
              ("version", "kernel", "libbpf"), "health"),
    MetricDoc("netsnoop_source_up", "gauge",
              "Whether a source (a BPF object or a kernel reading) works: 1, or 0 if it could not be loaded.",
              ("source",), "health"),
    MetricDoc("netsnoop_hook_info", "info", "The kind of hook (tp_btf, tracepoint, ...) each BPF hook group runs on.",
              ("source", "group", "kind"), "health"),
    MetricDoc("netsnoop_lost_events_total", "counter",
              "Events a source's BPF side could not hand over or count (ring buffer or kernel map full): what "
              "they would have counted is missing.", ("source",), "health"),
    MetricDoc("netsnoop_skipped_hook_runs_total", "counter",
              "Runs of a source's BPF programs the kernel skipped (a hook firing inside itself on one CPU).",
              ("source",), "health"),
    MetricDoc("netsnoop_netns_not_shown", "gauge",
              "Network namespaces whose figures are folded into netns=\"other\" (or, for the namespace "
              "counters, left out) because max_netns namespaces are shown already.", (), "health"),
    MetricDoc("netsnoop_collect_errors_total", "counter",
              "Scrapes at which reading a source failed (its figures are then missing from that scrape).",
              ("source",), "health"),
]
BY_NAME = {m.name: m for m in METRICS}
SOURCES = ("connects", "accepts", "resets", "drops", "retrans", "bytes", "rtt", "backlog", "netns", "listeners")


def _base(name: str) -> str:
    """The family name prometheus_client wants: without _total (counters) or _info."""
    for suffix in ("_total", "_info"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def labels_of(name: str, with_ports: bool) -> list[str]:
    return [label for label in BY_NAME[name].labels if with_ports or label != PORT or
            BY_NAME[name].source == "listeners"]


def family(name: str, with_ports: bool) -> Family:
    """An empty metric family of ``name``, typed, documented and labelled as METRICS says."""
    # imported here: the metric list (--help, option checks) needs no prometheus_client
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
    )

    doc = BY_NAME[name]
    labels = labels_of(name, with_ports)
    kind = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily,
            "info": InfoMetricFamily}[doc.type]
    # an info metric's labels come with each sample's value
    return cast("Family", kind(_base(name), doc.help, labels=[] if doc.type == "info" else labels))


# ---- bounded labels ------------------------------------------------------------------

class PortLabels:
    """``port`` label values: the ports the user listed, every other port is "other".
    Without a list there is no port label at all (``enabled`` is False)."""

    def __init__(self, ports: Iterable[int] = ()) -> None:
        self.ports = frozenset(ports)

    @property
    def enabled(self) -> bool:
        return bool(self.ports)

    def values(self) -> list[tuple[str, ...]]:
        """Every label tuple there can be: each port and "other" (one empty tuple
        without --port-labels)."""
        if not self.ports:
            return [()]
        ports: list[tuple[str, ...]] = [(str(p),) for p in sorted(self.ports)]
        return ports + [(OTHER,)]

    def of(self, *candidates: int) -> tuple[str, ...]:
        """The label tuple (empty without --port-labels): the first candidate port that
        was listed, else "other"."""
        if not self.ports:
            return ()
        for p in candidates:
            if p in self.ports:
                return (str(p),)
        return (OTHER,)


class NetnsLabels:
    """``netns`` label values for namespace inodes: at most ``limit`` inodes get their
    own label (the ``ip netns`` name, ``host``, or ``netns:<inode>``); a new inode beyond
    that takes the place of one that no longer exists (whose series go, from every
    tracked sum), or else is "other" (inode 0). So a host where containers come and go
    keeps a bounded set of series, and bounded memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted: set[int] = set()
        self.names: dict[int, str] = {}
        self.not_shown = 0
        self.sums: list[dict[Any, Any]] = []
        self.live: dict[int, netns.Netns] = {}
        self.refreshed = -REFRESH_S

    def track(self, sums: dict[Any, Any]) -> dict[Any, Any]:
        """Register a dict whose keys start with an inode: evictions clean it too."""
        self.sums.append(sums)
        return sums

    def refresh(self) -> dict[int, netns.Netns]:
        """The namespaces alive now (a walk of /proc: at most once a second, however
        many events come from namespaces without a label). A counted namespace keeps
        the name it had while it lived, so its series keep their labels after it is
        gone."""
        now = time.monotonic()
        if now - self.refreshed < REFRESH_S:
            return self.live
        self.refreshed = now
        self.live = netns.by_inode()
        kept = {ino: name for ino, name in self.names.items() if ino in self.admitted}
        self.names = {**kept, **{ino: ns.label for ino, ns in self.live.items()}}
        return self.live

    def key(self, inode: int) -> int:
        """The inode under which to count (0 = "other")."""
        if inode in self.admitted:
            return inode
        if len(self.admitted) >= self.limit:
            live = self.refresh()
            for gone in [i for i in self.admitted if i not in live]:
                self.admitted.discard(gone)
                for sums in self.sums:
                    for k in [k for k in sums if k[0] == gone]:
                        del sums[k]
            if len(self.admitted) >= self.limit:
                return 0
        self.admitted.add(inode)
        return inode

    def label(self, inode: int) -> str:
        if inode == 0:
            return OTHER
        if inode not in self.names:
            self.refresh()
        if inode not in self.names:
            return "host" if inode == netns.HOST_NETNS_INODE else f"netns:{inode}"
        return self.names[inode]


# ---- histograms ----------------------------------------------------------------------

def _le(bound: float) -> str:
    return repr(float(bound))


def log2_buckets(slots: tuple[int, ...], count: int, per_unit: float = 1, div: int = 1) -> list[tuple[str, float]]:
    """hist.h's log2 slots of integer values (slot 0: 0 and 1, slot i: 2**i up to
    2**(i+1) - 1) as cumulative buckets whose upper bounds are those largest values,
    divided by ``per_unit`` (1e6: microseconds -> seconds); the last slot also holds
    everything larger, so it is +Inf. ``div``: the values were divided by it before
    their slot was chosen (hist_add_scaled), so slot i ends at (2**(i+1)) * div - 1."""
    out: list[tuple[str, float]] = []
    running = 0
    slots = tuple(slots) + (0,) * (HIST_SLOTS - len(slots))
    for i, n in enumerate(slots[: HIST_SLOTS - 1]):
        running += n
        out.append((_le(((1 << (i + 1)) * div - 1) / per_unit), running))
    out.append(("+Inf", count))
    return out


# ---- sources -------------------------------------------------------------------------

class Source:
    """One origin of figures: opened once, ``poll``ed by the main loop, read at scrape
    time by ``families``. ``obj`` is its BPF object (None for kernel readings)."""

    name = ""
    tracer: LoadSpec | None = None

    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.obj: BPFObject | None = None
        self.error: str | None = None

    def rodata(self) -> dict[str, Any]:
        return {}

    def open(self) -> None:
        if self.tracer is not None:
            self.obj = self.tracer.open(self.rodata())

    def poll(self) -> None:
        """Move what the kernel gathered into our sums (main loop and scrape)."""

    def families(self) -> Iterator[Metric]:
        return iter(())

    def close(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None


@dataclass
class Context:
    ports: PortLabels
    netns: NetnsLabels
    max_listeners: int


def _tracer(module: str) -> LoadSpec:
    import importlib

    return importlib.import_module(f"netsnoop.commands.{module}").TRACER


class MapSource(Source):
    """A source whose object counts per flow in a kernel hash map (``counts`` or
    ``conns``), emptied into our bounded sums at every poll."""

    def taken(self, map_name: str, key_struct: str) -> Iterator[tuple[Any, bytes]]:
        assert self.obj is not None
        decode = StructDecoder(self.obj.btf, key_struct).decode
        for k, v in self.obj.map(map_name).take_all():
            yield decode(k), v

    def add_counts(self, sums: dict[Any, int], map_name: str, key_struct: str,
                   key_of: Callable[[Any], tuple[Any, ...]]) -> None:
        """Empty the kernel's u64 counts of ``map_name`` into ``sums``, each under
        ``key_of(its decoded key)``."""
        for k, v in self.taken(map_name, key_struct):
            key = key_of(k)
            sums[key] = sums.get(key, 0) + struct.unpack_from("=Q", v)[0]

    def netns_family(self, name: str, sums: dict[Any, int], ports: bool | None = None) -> Metric:
        """The family ``name`` of sums keyed (netns, *other labels), the namespace
        written as its label; a port label where --port-labels asks (``ports``)."""
        f = family(name, self.ctx.ports.enabled if ports is None else ports)
        for (ino, *rest), n in sorted(sums.items(), key=str):
            f.add_metric([self.ctx.netns.label(ino), *rest], n)
        return f


def take_hists(obj: BPFObject, map_name: str, key_struct: str) -> list[tuple[Any, Log2Hist]]:
    """Every histogram of a per-CPU hist map (hist.h) with its decoded key, each entry
    read and deleted in one step (so a sample counted meanwhile lands in the next
    read), the CPUs added up."""
    from netsnoop.errors import LoadError
    from netsnoop.libbpf import errno_message, last_errno, lib

    m = obj.map(map_name)
    fn = lib().bpf_map_lookup_and_delete_elem
    keys, hist = StructDecoder(obj.btf, key_struct).decode, StructDecoder(obj.btf, "hist").decode
    stride = (m.value_size + 7) // 8 * 8  # the kernel's per-CPU value layout
    out = []
    for raw_key in list(m.keys()):
        buf = ctypes.create_string_buffer(stride * m.ncpus)
        rc = fn(m.fd, raw_key, buf)
        if rc != 0:
            err = -rc if rc < 0 else last_errno()
            if err == errno.ENOENT:  # gone meanwhile
                continue
            raise LoadError(f"reading map {m.name} failed: {errno_message(err)}")
        raw = buf.raw
        out.append((keys(raw_key), add_cpus(hist(raw[i * stride:]) for i in range(m.ncpus))))
    return out


class Connects(MapSource):
    """connect's outcome count mode: a counter and a latency histogram per namespace,
    outcome (and port with --port-labels), in the kernel; nothing per connect crosses
    over."""

    name = "connects"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.tracer = _tracer("connect")
        self.counts: dict[tuple[Any, ...], int] = ctx.netns.track({})
        self.latency: dict[tuple[Any, ...], Log2Hist] = ctx.netns.track({})
        self.waiting: dict[tuple[Any, ...], int] = ctx.netns.track({})

    def open(self) -> None:
        assert self.tracer is not None
        self.obj = self.tracer.open(self.rodata(), max_entries={"latency": LATENCY_KEYS})

    def rodata(self) -> dict[str, Any]:
        from netsnoop.commands.connect import COUNT_LATENCY, COUNT_PORT, OUTCOME

        return {"report_mode": OUTCOME, "count_only": 1,
                "count_flags": COUNT_LATENCY | (COUNT_PORT if self.ctx.ports.enabled else 0)}

    def _key(self, k: Any) -> tuple[Any, ...]:
        return (self.ctx.netns.key(k.netns), conn.outcome(k.state, k.err).lower(), *self.ctx.ports.of(k.port))

    def poll(self) -> None:
        assert self.obj is not None
        self.add_counts(self.counts, "counts", "conn_count_key", self._key)
        for k, h in take_hists(self.obj, "latency", "conn_count_key"):
            key = self._key(k)
            was = self.latency.get(key)
            self.latency[key] = h if was is None else Log2Hist(
                tuple(a + b for a, b in zip(was.slots, h.slots)), was.count + h.count, was.total + h.total)

    def families(self) -> Iterator[Metric]:
        label = self.ctx.netns.label
        with_ports = self.ctx.ports.enabled
        yield self.netns_family("netsnoop_tcp_connects_total", self.counts)
        h = family("netsnoop_tcp_connect_duration_seconds", with_ports)
        for (ino, outcome, *port), hist in sorted(self.latency.items(), key=str):
            # slots of microseconds (ns / 1000), the sum in nanoseconds
            buckets = log2_buckets(hist.slots, hist.count, 1e9, div=1000)
            h.add_metric([label(ino), outcome, *port], [buckets[i] for i in CONNECT_SLOTS] + buckets[-1:],
                         hist.total / 1e9)
        yield h
        yield self.pending()

    def pending(self) -> Metric:
        """The attempts the object remembers until they resolve (conn_owners: bounded,
        LRU), per namespace and destination port. A gauge: a series once shown stays,
        at 0 when nothing waits there (until its namespace's label goes)."""
        assert self.obj is not None
        owner = StructDecoder(self.obj.btf, "conn_owner").decode
        waiting = dict.fromkeys(self.waiting, 0)
        for _key, raw in self.obj.map("conn_owners").items():
            o = owner(raw)
            key = (self.ctx.netns.key(o.netns), *self.ctx.ports.of(o.dport))
            waiting[key] = waiting.get(key, 0) + 1
        self.waiting.update(waiting)
        return self.netns_family("netsnoop_tcp_connects_pending", waiting)


class Accepts(MapSource):
    """accept's count mode: a counter per namespace (and local port with
    --port-labels) in the kernel."""

    name = "accepts"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.tracer = _tracer("accept")
        self.counts: dict[tuple[Any, ...], int] = ctx.netns.track({})

    def rodata(self) -> dict[str, Any]:
        from netsnoop.commands.connect import COUNT_PORT

        return {"count_only": 1, "count_flags": COUNT_PORT if self.ctx.ports.enabled else 0}

    def poll(self) -> None:
        self.add_counts(self.counts, "counts", "conn_count_key",
                        lambda k: (self.ctx.netns.key(k.netns), *self.ctx.ports.of(k.port)))

    def families(self) -> Iterator[Metric]:
        yield self.netns_family("netsnoop_tcp_accepts_total", self.counts)


class Resets(MapSource):
    """Resets received, per namespace: overview's resets object (the kernel has no
    counter of them; TcpOutRsts counts only those it sends)."""

    name = "resets"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        from netsnoop.commands.overview import RESETS

        self.tracer = RESETS
        self.counts: dict[tuple[int], int] = ctx.netns.track({})

    def poll(self) -> None:
        assert self.obj is not None
        for k, v in self.obj.map("received").take_all():
            key = (self.ctx.netns.key(struct.unpack_from("=I", k)[0]),)
            self.counts[key] = self.counts.get(key, 0) + struct.unpack_from("=Q", v)[0]

    def families(self) -> Iterator[Metric]:
        yield self.netns_family("netsnoop_tcp_resets_received_total", self.counts, ports=False)


class Drops(MapSource):
    name = "drops"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.tracer = _tracer("drop")
        self.counts: dict[tuple[Any, ...], int] = ctx.netns.track({})

    def rodata(self) -> dict[str, Any]:
        return {"count_only": 1, "with_stack": 0}

    def poll(self) -> None:
        from netsnoop.commands.drop import reason_name

        def key_of(k: Any) -> tuple[Any, ...]:
            reason = reason_name(k.reason) if k.reason else "unknown"  # a kernel without drop reasons
            return (self.ctx.netns.key(k.netns), reason, *self.ctx.ports.of(k.dport, k.sport))

        self.add_counts(self.counts, "counts", "drop_key", key_of)

    def families(self) -> Iterator[Metric]:
        yield self.netns_family("netsnoop_tcp_drops_total", self.counts)


class Retransmits(MapSource):
    name = "retrans"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.tracer = _tracer("retrans")
        self.counts: dict[tuple[Any, ...], int] = ctx.netns.track({})

    def rodata(self) -> dict[str, Any]:
        return {"count_only": 1}

    def poll(self) -> None:
        self.add_counts(self.counts, "counts", "flow_key",
                        lambda k: (self.ctx.netns.key(k.netns), *self.ctx.ports.of(k.lport, k.rport)))

    def families(self) -> Iterator[Metric]:
        yield self.netns_family("netsnoop_tcp_retransmits_total", self.counts)


SOCKBYTES = LoadSpec("sockbytes")
TCP_TIME_WAIT, TCP_LISTEN = 6, 10
# sockets with tcp_info's byte counts: every state but LISTEN and TIME_WAIT (whose
# sockets are no full sockets: their bytes were taken when they closed)
BYTES_STATES = netns.ALL_STATES & ~(1 << TCP_LISTEN) & ~(1 << TCP_TIME_WAIT)
# CLOSE_WAIT, LAST_ACK, CLOSING: the peer's FIN is in, one in tcp_info's bytes_received
FIN_RECEIVED_STATES = frozenset({8, 9, 11})


class Bytes(Source):
    """Payload bytes per namespace, read off the sockets rather than off every send and
    receive call (those hooks cost a bulk transfer more than export may).

    A counter is the bytes of the sockets that closed (taken from the kernel) plus
    those of the sockets alive at the scrape (sock_diag's tcp_info, in every
    namespace). sockbytes.bpf.c keeps each closing socket's final counts in a table by
    its cookie until a poll or scrape takes them (lookup-and-delete) into ``sent`` /
    ``received``. A scrape first lists the live sockets, then takes the table: a socket
    that closed in between is in both, and counts only by its final figures (its
    cookie is among those just taken). So each socket counts live (never less than
    before: tcp_info's counts only grow) until the scrape that takes its final counts,
    and by those alone from then on: the sum never goes back. The cookies of the take
    before are checked too, for a socket whose close straddled a take. A socket made
    anew from the same one (connect() after a disconnect: same cookie, counts from 0)
    therefore counts live only from the scrape after.

    What is left: the kernel takes a closing socket out of the tables a moment before
    it stores (and the hook sees) the new state, and reads tcp_info's state apart from
    its byte counts (a FIN arriving right then reads one byte high once). Either can
    make one scrape read a little low or high, for that scrape only; the counters shown
    never go below what they showed (``shown``), so neither is ever a counter reset.
    Sockets of a namespace that neither a process nor an ``ip netns`` name holds are
    not listed: they count when they close.
    """

    name = "bytes"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.tracer = SOCKBYTES
        self.sent: dict[tuple[Any, ...], int] = ctx.netns.track({})
        self.received: dict[tuple[Any, ...], int] = ctx.netns.track({})
        self.shown: dict[tuple[str, tuple[Any, ...]], int] = {}
        self.taken_before: set[int] = set()
        self.taken_now: set[int] = set()
        self.keys: dict[int, int] = {}  # namespace inode -> its netns key, fixed while it lives
        self.overlaps = 0  # sockets a scrape found both live and just closed (counted once)

    def open(self) -> None:
        super().open()
        assert self.obj is not None
        self.closed_key = StructDecoder(self.obj.btf, "closed_key").decode
        self.closed_bytes = StructDecoder(self.obj.btf, "closed_bytes").decode

    def _key(self, inode: int, lport: int, rport: int) -> tuple[Any, ...]:
        """A namespace keeps the key it first got while it lives (a live socket's bytes
        and its final ones land under one label, whatever labels free up meanwhile)."""
        k = self.keys.get(inode)
        if k is None or (k and k not in self.ctx.netns.admitted):  # new, or gone and its label freed
            k = self.keys[inode] = self.ctx.netns.key(inode)
        return (k, *self.ctx.ports.of(lport, rport))

    def poll(self) -> None:
        """Take the final counts of the sockets closed since the last take."""
        assert self.obj is not None
        self.taken_before, self.taken_now = self.taken_now, set()
        for raw_key, raw in self.obj.map("closed").take_all():
            k, v = self.closed_key(raw_key), self.closed_bytes(raw)
            key = self._key(k.netns, k.lport, k.rport)
            self.sent[key] = self.sent.get(key, 0) + v.sent
            self.received[key] = self.received.get(key, 0) + v.received
            if k.cookie:
                self.taken_now.add(k.cookie)

    def live(self) -> list[tuple[int, list[netns.DiagSocket]]]:
        """The sockets of every namespace with their tcp_info (one gone meanwhile has
        none)."""
        out = []
        for ns in netns.namespaces():
            try:
                out.append((ns.inode, netns.tcp_sockets_one_walk(ns, BYTES_STATES, info=True)))
            except OSError:
                continue
        return out

    def read(self, after_listing: Callable[[], None] | None = None) -> tuple[dict[Any, int], dict[Any, int]]:
        """(sent, received) by key: the closed sockets' and the live ones', each socket
        once. ``after_listing`` runs between the listing and the take (a test closes a
        listed socket there)."""
        listed = self.live()
        if after_listing is not None:
            after_listing()
        self.poll()
        sent, received = dict(self.sent), dict(self.received)
        done = self.taken_now | self.taken_before
        for inode, socks in listed:
            for s in socks:
                if s.bytes_sent is None or s.bytes_received is None:
                    continue  # a kernel before 4.19: no bytes_sent in tcp_info
                if s.cookie in done:
                    self.overlaps += 1
                    continue
                out = s.bytes_sent - (s.bytes_retrans or 0)
                into = s.bytes_received - (1 if s.state in FIN_RECEIVED_STATES and s.bytes_received else 0)
                if not out and not into:
                    continue
                key = self._key(inode, s.lport, s.rport)
                sent[key] = sent.get(key, 0) + out
                received[key] = received.get(key, 0) + into
        alive = {inode for inode, _socks in listed}
        self.keys = {i: k for i, k in self.keys.items() if i in alive}
        return sent, received

    def families(self) -> Iterator[Metric]:
        sent, received = self.read()
        labelled = set(self.ctx.netns.admitted) | {0}
        for name, sums in (("netsnoop_tcp_sent_bytes_total", sent), ("netsnoop_tcp_received_bytes_total", received)):
            f = family(name, self.ctx.ports.enabled)
            # a series shown before stays, even if what it counted is gone meanwhile
            # (a socket that closed when the kernel's table was full: a lost event)
            keys = set(sums) | {key for shown_name, key in self.shown if shown_name == name}
            for key in sorted(keys, key=str):
                if key[0] not in labelled:
                    continue  # its namespace lost its label (gone): its series went with it
                n = max(sums.get(key, 0), self.shown.get((name, key), 0))
                self.shown[(name, key)] = n
                f.add_metric([self.ctx.netns.label(key[0]), *key[1:]], n)
            yield f
        self.shown = {k: v for k, v in self.shown.items() if k[1][0] in labelled}


class NetnsHists:
    """Log2 histograms the kernel keeps per namespace (and more: ``extra`` of the key),
    cumulative, read at scrape time under bounded ``netns`` labels. A namespace that is
    gone gets no more samples: its histograms move here (and out of the kernel's map,
    which so stays as small as the live namespaces), still counted under its label."""

    def __init__(self, source: Source, map_name: str, key_struct: str,
                 extra: Callable[[Any], tuple[Any, ...]]) -> None:
        self.source, self.map_name, self.key_struct, self.extra = source, map_name, key_struct, extra
        self.retired: dict[tuple[Any, ...], list[int]] = source.ctx.netns.track({})

    def read(self) -> dict[tuple[Any, ...], list[int]]:
        """(netns key, *extra) -> [count, sum, slot 0, slot 1, ...]."""
        obj, names = self.source.obj, self.source.ctx.netns
        assert obj is not None
        live = names.refresh()
        out = {k: list(v) for k, v in self.retired.items()}
        gone = []
        for key, hist in read_hists(obj, self.map_name, self.key_struct, clear=False):
            sums = [hist.count, hist.total, *hist.slots]
            label_key = (names.key(key.netns), *self.extra(key))
            if key.netns not in live:
                gone.append((key, label_key, sums))
            had = out.get(label_key)
            out[label_key] = [a + b for a, b in zip(had, sums)] if had else sums
        m, encode = obj.map(self.map_name), StructDecoder(obj.btf, self.key_struct).encode
        for key, label_key, sums in gone:
            had = self.retired.get(label_key)
            self.retired[label_key] = [a + b for a, b in zip(had, sums)] if had else sums
            m.delete(encode(**key._asdict()))
        return out


class Rtt(Source):
    name = "rtt"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.tracer = _tracer("rtt")

    def rodata(self) -> dict[str, Any]:
        return {"key_by": 0, "unit_div": 1, "by_netns": 1}

    def open(self) -> None:
        super().open()
        self.hists = NetnsHists(self, "rtts", "rtt_key", lambda k: ())

    def families(self) -> Iterator[Metric]:
        h = family("netsnoop_tcp_rtt_seconds", False)
        for (ino,), (count, total, *slots) in sorted(self.hists.read().items()):
            h.add_metric([self.ctx.netns.label(ino)], log2_buckets(tuple(slots), count, 1e6), total / 1e6)
        yield h


class Backlog(Source):
    """synbl's histograms of the accept queue length, one per backlog limit (a handful
    of values on any host: what programs pass to listen())."""

    name = "backlog"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.tracer = _tracer("synbl")

    def open(self) -> None:
        super().open()
        self.hists = NetnsHists(self, "backlog", "synbl_key", lambda k: (k.backlog_max,))

    def families(self) -> Iterator[Metric]:
        h = family("netsnoop_tcp_accept_queue_length", False)
        for (ino, limit), (count, total, *slots) in sorted(self.hists.read().items()):
            h.add_metric([self.ctx.netns.label(ino), str(limit)], log2_buckets(tuple(slots), count), total)
        yield h


# nstat name -> metric, for the namespace counters
NSTAT = {
    "netsnoop_netns_tcp_active_opens_total": "TcpActiveOpens",
    "netsnoop_netns_tcp_passive_opens_total": "TcpPassiveOpens",
    "netsnoop_netns_tcp_attempt_fails_total": "TcpAttemptFails",
    "netsnoop_netns_tcp_resets_sent_total": "TcpOutRsts",
    "netsnoop_netns_tcp_established_resets_total": "TcpEstabResets",
    "netsnoop_netns_tcp_retransmitted_segments_total": "TcpRetransSegs",
    "netsnoop_netns_tcp_listen_overflows_total": "TcpExtListenOverflows",
    "netsnoop_netns_tcp_listen_drops_total": "TcpExtListenDrops",
    "netsnoop_netns_tcp_established": "TcpCurrEstab",
}


class NetnsCounters(Source):
    """Each namespace's own counters, read inside it at scrape time (the first
    ``max_netns`` namespaces: the host's, named ones, then the rest)."""

    name = "netns"

    def families(self) -> Iterator[Metric]:
        spaces = netns.namespaces()
        limit = self.ctx.netns.limit
        self.ctx.netns.not_shown = max(0, len(spaces) - limit)
        readings = []
        for ns in spaces[:limit]:
            try:
                readings.append((ns.label, netns.counters(ns)))
            except OSError:
                continue  # gone meanwhile
        for name, key in NSTAT.items():
            f = family(name, False)
            for label, values in readings:
                if key in values:
                    f.add_metric([label], values[key])
            yield f
        info = family("netsnoop_netns_info", False)
        cgroups = cgroup_of_namespaces()
        for ns in spaces[:limit]:
            info.add_metric([], {"netns": ns.label, "inode": str(ns.inode), "cgroup": cgroups.get(ns.inode, "")})
        yield info


def cgroup_of_namespaces() -> dict[int, str]:
    """Namespace inode -> the cgroup v2 path of its first process (lowest PID): the
    container (kubepods.slice/...pod<uid>..., docker-<id>.scope) or systemd unit
    (nginx.service) it belongs to. A namespace with no process has none."""
    out: dict[int, str] = {}
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            if ino in out:
                continue
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            continue  # gone, or not ours to read
        out[ino] = next((line[3:] for line in lines if line.startswith("0::")), "")
    return out


class Listeners(Source):
    """The accept queues and own drop counts of the ``max_listeners`` listeners that
    need attention most (fullest queue, then most drops), per namespace and port (two
    listeners on one port, e.g. IPv4 and IPv6, are added up)."""

    name = "listeners"

    def families(self) -> Iterator[Metric]:
        found: dict[tuple[str, str], list[int]] = {}
        for ns in netns.namespaces()[: self.ctx.netns.limit]:
            try:
                listening = netns.listeners(ns)
                drops = netns.listener_drops(ns)
            except OSError:
                continue  # gone meanwhile
            for li in listening:
                q = found.setdefault((ns.label, str(li.port)), [0, 0, 0])
                q[0] += li.queue
                q[1] += li.backlog
                q[2] += drops.get(li.inode, 0)
        ranked = sorted(found.items(), key=lambda kv: (-kv[1][0] / max(kv[1][1], 1), -kv[1][2], kv[0]))
        shown = ranked[: self.ctx.max_listeners]
        length = family("netsnoop_tcp_listener_queue_length", True)
        limit = family("netsnoop_tcp_listener_queue_limit", True)
        dropped = family("netsnoop_tcp_listener_drops_total", True)
        for (label, port), (queue, backlog, drops_) in sorted(shown):
            length.add_metric([label, port], queue)
            limit.add_metric([label, port], backlog)
            dropped.add_metric([label, port], drops_)
        hidden = family("netsnoop_tcp_listeners_not_shown", False)
        hidden.add_metric([], len(ranked) - len(shown))
        return iter([length, limit, dropped, hidden])


SOURCE_CLASSES: dict[str, Callable[[Context], Source]] = {
    "connects": Connects, "accepts": Accepts, "resets": Resets, "drops": Drops, "retrans": Retransmits, "bytes": Bytes,
    "rtt": Rtt, "backlog": Backlog, "netns": NetnsCounters, "listeners": Listeners,
}


# ---- the collector -------------------------------------------------------------------

class Exporter:
    """All sources and the lock between the main loop (``poll``) and the HTTP server's
    threads (``collect``, prometheus_client's custom-collector interface)."""

    def __init__(self, names: Iterable[str], ctx: Context) -> None:
        self.ctx = ctx
        self.sources = [SOURCE_CLASSES[n](ctx) for n in names]
        self.lock = threading.Lock()
        self.errors: dict[str, int] = {s.name: 0 for s in self.sources}
        self.scrapes = 0

    def open(self, warn: Callable[[str], None]) -> None:
        """Open every source; one that cannot load is reported and marked down, the
        others run. None at all is an error."""
        for s in self.sources:
            try:
                s.open()
            except NetsnoopError as err:
                s.error = str(err)
                s.close()
                warn(f"{s.name}: {err}")
        if all(s.error for s in self.sources):
            raise NetsnoopError("no source could be loaded: " + "; ".join(f"{s.name}: {s.error}" for s in self.sources))

    def close(self) -> None:
        """Detach everything; a scrape still being answered finishes first (the lock),
        and one after finds every source closed, not a freed object."""
        with self.lock:
            for s in self.sources:
                s.close()
                s.error = s.error or "closed"

    def poll(self) -> None:
        with self.lock:
            for s in self.sources:
                if not s.error:
                    self._guarded(s, s.poll)

    def _guarded(self, s: Source, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (OSError, NetsnoopError) as err:
            self.errors[s.name] += 1
            print(f"netsnoop: warning: reading {s.name} failed: {err}", file=sys.stderr, flush=True)
            return None

    def _families(self, s: Source) -> list[Metric] | None:
        return self._guarded(s, lambda: list(s.families()))

    def describe(self) -> list[Metric]:
        return []  # families are only known at collect time (labels depend on the options)

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            self.scrapes += 1
            out: list[Metric] = []
            for s in self.sources:
                if s.error:
                    continue
                self._guarded(s, s.poll)
                out.extend(self._families(s) or [])
            out.extend(self.health())
        return iter(out)

    def summary(self) -> dict[str, Any]:
        """What the run ends with on stderr, as the other subcommands' summaries: the
        scrapes served, and per source what it lost, what the kernel skipped, and the
        hook kind of each group."""
        health = {s.name: s.obj.health() for s in self.sources if s.obj is not None}
        return {
            "scrapes": self.scrapes,
            "lost_events": sum(h["lost_events"] for h in health.values()),
            "skipped_hook_runs": sum(h["skipped_hook_runs"] for h in health.values()),
            "hooks": {f"{name}.{group}": kind for name, h in health.items() for group, kind in h["hooks"].items()},
        }

    def health(self) -> list[Metric]:
        from netsnoop.libbpf import lib

        up = family("netsnoop_up", False)
        up.add_metric([], 1)
        build = family("netsnoop_build_info", False)
        try:
            libbpf = lib().version
        except Exception:  # libbpf missing: the sources already said so
            libbpf = "unknown"
        build.add_metric([], {"version": __version__, "kernel": platform.release(), "libbpf": libbpf})
        source_up = family("netsnoop_source_up", False)
        hooks = family("netsnoop_hook_info", False)
        lost = family("netsnoop_lost_events_total", False)
        skipped = family("netsnoop_skipped_hook_runs_total", False)
        errors = family("netsnoop_collect_errors_total", False)
        for s in self.sources:
            source_up.add_metric([s.name], 0 if s.error else 1)
            errors.add_metric([s.name], self.errors[s.name])
            if s.obj is None:
                continue
            h = s.obj.health()
            lost.add_metric([s.name], h["lost_events"])
            skipped.add_metric([s.name], h["skipped_hook_runs"])
            for group, kind in sorted(h["hooks"].items()):
                hooks.add_metric([], {"source": s.name, "group": group, "kind": kind or "none"})
        not_shown = family("netsnoop_netns_not_shown", False)
        not_shown.add_metric([], self.ctx.netns.not_shown)
        return [up, build, source_up, hooks, lost, skipped, errors, not_shown]
