"""netsnoop netqtop: packets per TX/RX queue of one interface, by size (bcc netqtop)."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import click
from click.shell_completion import CompletionItem

from netsnoop import netns as netns_
from netsnoop import options as o
from netsnoop import where
from netsnoop.btf import StructDecoder
from netsnoop.loader import BPFObject
from netsnoop.hist import Writer
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec, every_interval

# No ring buffer events: keep the shared one small.
TRACER = LoadSpec("netqtop", max_entries={"events": 4096})

SIZE_HEADERS = ("[0, 64)", "[64, 512)", "[512, 2K)", "[2K, 16K)", "[16K, 64K)")
SIZE_KEYS = ("size_0_64", "size_64_512", "size_512_2k", "size_2k_16k", "size_16k_64k")
DIRECTIONS = ((0, "TX"), (1, "RX"))  # queue_key.rx


@dataclass(frozen=True)
class Interface:
    name: str
    ifindex: int
    queues: dict[int, int]  # rx flag -> number of queues


class InterfaceName(click.ParamType):
    """The name of a network interface; looked up (with its queue counts) by
    :func:`find_interface`, in the namespace --netns names."""

    name = "NAME"

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        """This network namespace's interfaces (another namespace's, given with
        --netns, are not listed: completion runs before that option is read)."""
        return [CompletionItem(name) for name in interface_names() if name.startswith(incomplete)]


def find_interface(name: str, inode: int | None) -> Interface:
    """Interface ``name`` of the namespace ``inode`` (None: this one), entered to read
    its index and queues; a usage error when it has none of that name."""
    where_ = "this network namespace"
    try:
        if inode is None:
            return Interface(name, socket.if_nametoindex(name), queue_counts(name))
        where_ = f"network namespace {where.printable(where.netns_label(inode))}"
        ns = netns_.by_inode().get(inode)
        if ns is None:
            raise OSError
        with netns_.entered(ns):
            return Interface(name, socket.if_nametoindex(name), queue_counts(name))
    except OSError:
        raise click.BadParameter(f"network interface {where.printable(name)!r} does not exist (in {where_})",
                                 param_hint="'-n' / '--name'") from None


def interface_names() -> list[str]:
    """This network namespace's interfaces, from the kernel (netlink), sorted.
    /sys/class/net would show the namespace sysfs was mounted in, which after a
    setns() without a remount is another one."""
    try:
        return sorted(name for _index, name in socket.if_nameindex())
    except OSError:
        return []


def queue_counts(name: str) -> dict[int, int]:
    """Queues per direction from sysfs (tx-N, rx-N); 1 each when sysfs cannot tell.
    sysfs shows the namespace it was mounted in: another namespace's interface is
    mostly not there (1 each), so the tables grow with the queues seen instead."""
    try:
        entries = os.listdir(f"/sys/class/net/{name}/queues")
    except OSError:
        entries = []
    return {rx: max(1, sum(e.startswith(prefix) for e in entries)) for rx, prefix in ((0, "tx-"), (1, "rx-"))}


def human(n: float) -> str:
    """bcc netqtop's compact numbers: 1.5K, 2.25M."""
    if n > 1_000_000:
        return f"{round(n / (1024 * 1024), 2)}M"
    if n > 1000:
        return f"{round(n / 1024, 2)}K"
    return str(round(n, 2) if isinstance(n, float) else n)


def columns(throughput: bool) -> list[Column]:
    return [
        Column("direction", text=False),
        Column("QueueID", 7, ">", key="queue"),
        Column("avg_size", 10, ">"),
        *[Column(h, 10, ">", key=k) for h, k in zip(SIZE_HEADERS, SIZE_KEYS)],
        Column("BPS", 10, ">", text=throughput),
        Column("PPS", 10, ">", text=throughput),
        Column("packets", text=False),
        Column("bytes", text=False),
        Column("timestamp", text=False),
    ]


class QueueCounters:
    """The kernel keeps cumulative per-CPU counters; each read returns what was added
    since the previous one (never deleting entries, so no increment is lost)."""

    def __init__(self, obj: BPFObject) -> None:
        self.map = obj.map("stats")
        self.key = StructDecoder(obj.btf, "queue_key")
        self.value = StructDecoder(obj.btf, "queue_stats")
        self.last: dict[tuple[int, int], list[int]] = {}

    def _totals(self, per_cpu: list[bytes]) -> list[int]:
        """[bytes, packets, size buckets...] summed over CPUs."""
        rows = [(v.bytes, v.packets, *v.sizes) for v in map(self.value.decode, per_cpu)]
        return [sum(col) for col in zip(*rows)]

    def delta(self) -> dict[tuple[int, int], list[int]]:
        now = {}
        for raw_key, per_cpu in self.map.items():
            k = self.key.decode(raw_key)
            now[(k.rx, k.queue)] = self._totals(per_cpu)
        out = {k: [a - b for a, b in zip(v, self.last.get(k, [0] * len(v)))] for k, v in now.items()}
        self.last = now
        return out


class Report:
    """Prints one interval: the time, then the TX and RX tables (bcc's layout)."""

    def __init__(self, out: OutputOptions, iface: Interface, throughput: bool, counters: QueueCounters) -> None:
        self.out, self.iface, self.throughput, self.counters = out, iface, throughput, counters
        self.write = Writer(out)
        self.cols = columns(throughput)
        self.show: Callable[[Any], Any] = (lambda v: round(v, 2) if isinstance(v, float) else v) if out.json else human
        self.since = time.monotonic()

    def _rows(
        self, delta: dict[tuple[int, int], list[int]], rx: int, elapsed: float, wall: float
    ) -> list[tuple[Any, ...]]:
        """One direction: every queue, busy or not, then (in text) bcc's Total line."""
        last = max([self.iface.queues[rx] - 1, *(q for (r, q) in delta if r == rx)])
        per_queue: list[tuple[Any, list[int]]] = [
            (q, delta.get((rx, q)) or [0] * (2 + len(SIZE_KEYS))) for q in range(last + 1)
        ]
        if not self.out.json:
            per_queue.append(("Total", [sum(col) for col in zip(*(c for _q, c in per_queue))]))
        show, rows = self.show, []
        for queue, (nbytes, packets, *sizes) in per_queue:
            avg = nbytes // packets if packets else 0
            rows.append((DIRECTIONS[rx][1], queue, show(avg), *map(show, sizes), show(nbytes / elapsed),
                         show(packets / elapsed), packets, nbytes, wall))
        return rows

    def __call__(self, final: bool = False) -> bool:
        """One interval; ``final`` (at exit) prints only if packets came since the last
        (False: it did not)."""
        now = time.monotonic()
        elapsed, self.since = max(now - self.since, 1e-9), now
        delta = self.counters.delta()
        if final and not any(c[1] for c in delta.values()):
            return False
        wall = round(time.time(), 6)
        self.write.heading(time.asctime())
        for rx, label in DIRECTIONS:
            self.write.heading(("\n" if rx else "") + label)
            self.write.table(self.cols, self._rows(delta, rx, elapsed, wall))
        self.write.heading("-" * (95 if self.throughput else 76))
        return True


@click.command("netqtop")
@o.output_options(csv=False, wide=False, time=False, timestamp=False)
@click.option("-n", "--name", "iface", type=InterfaceName(), required=True,
              help="the network interface to watch (in this network namespace, or the one --netns names)")
@click.option("-N", "--netns", "netns", type=where.NETNS, default=None, metavar="NETNS",
              help="the network namespace of the interface: an `ip netns` name, a PID (its namespace), "
                   "an inode, or host")
@click.option("-i", "--interval", type=o.SECONDS, default=1.0, show_default=True,
              metavar="SECONDS", help="print every this many seconds")
@click.option("-t", "--throughput", is_flag=True, help="add BPS and PPS columns (bytes and packets per second)")
@o.duration_option
def command(out: OutputOptions, iface: str, netns: list[int] | None, interval: float, throughput: bool,
            duration: float | None) -> None:
    """Show packets per TX and RX queue of one network interface, by packet size.

    Every interval: for each queue, the average packet size and the number of
    packets in bcc's size ranges (packets of 64K and more count in the last one).
    TX is what the stack hands to the driver (net_dev_start_xmit), RX what the
    driver hands to the stack (netif_receive_skb). Sizes are the packet's length
    there: TX includes the link-layer header, RX no longer does (on Ethernet, RX
    bytes are 14 a packet below /proc/net/dev's). On exit, what arrived since the
    last interval is printed too. --json gives one object per queue and interval
    (with exact packets and bytes, and no Total line).

    An interface lives in one network namespace: this one, or the one --netns
    names (netsnoop stays where it is; the kernel matches the device's namespace).
    """
    if netns and len(netns) > 1:
        raise click.BadParameter("one network namespace: the interface's", param_hint="'-N' / '--netns'")
    inode = netns[0] if netns else os.stat("/proc/self/ns/net").st_ino
    interface = find_interface(iface, netns[0] if netns else None)
    rodata = {"filter_ifindex": interface.ifindex, "filter_netns": inode}
    with TRACER.open(rodata) as obj:
        report = Report(out, interface, throughput, QueueCounters(obj))
        place = f" in {where.printable(where.netns_label(inode))}" if netns else ""
        every_interval(obj, report, out, interval, duration=duration,
                       banner=f"Tracing {interface.name}{place}... Hit Ctrl-C to end.")
