"""netsnoop synbl: TCP accept (SYN) backlog length when connections arrive (bcc tcpsynbl),
and which listener, in which network namespace, overflowed its accept queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from netsnoop import netns
from netsnoop import options as o
from netsnoop import where
from netsnoop.hist import Section, Writer, read_hists
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec, every_interval, warn

TRACER = LoadSpec("synbl", max_entries={"events": 4096})
ANY = "*"  # the LISTENER of a namespace's total that no single listener can be given


def overflow_columns() -> list[Column]:
    return [
        Column("NETNS", 16, truncate=True),
        Column("LISTENER", 24),
        Column("PID", 7, json=False),
        Column("COMM", 16, truncate=True),
        Column("QUEUE", 5, align=">"),
        Column("MAX", 5, align=">"),
        Column("DROPS", 6, align=">"),
        Column("OVERFLOWS", 9, align=">", json=False),
        Column("NETNS_INODE", text=False),
        Column("ADDR", text=False),
        Column("PORT", text=False),
        Column("PID", text=False),
        Column("OVERFLOWS", text=False),
    ]


@dataclass
class Reading:
    """Absolute counts at one moment: ListenOverflows per namespace (inode) and each
    listener's own drop count per (namespace inode, socket inode)."""

    overflows: dict[int, int]
    drops: dict[tuple[int, int], int]
    listeners: dict[tuple[int, int], netns.Listener]


class Overflows:
    """Accept-queue overflows since the previous call, per network namespace, given to
    the listener that overflowed.

    The kernel counts overflows (TcpExt ListenOverflows) per namespace only, so each
    namespace is entered to read its own counter. Every overflow also adds one to the
    overflowing listener's own drop count (sk_drops, read with sock_diag): when exactly
    one listener of a namespace dropped anything, the namespace's overflows are all its
    own. When several did, the split is unknown and the total is shown under "*".
    """

    def __init__(self, family: int | None, only: list[int] | None = None) -> None:
        self.family = family
        self.only = set(only) if only else None
        self.unreadable: set[str] = set()
        self.last = self._read()

    def _read(self) -> Reading:
        reading = Reading({}, {}, {})
        for ns in netns.namespaces():
            if self.only is not None and ns.inode not in self.only:
                continue
            try:
                count = netns.counters(ns).get("TcpExtListenOverflows")
                drops = netns.listener_drops(ns)
                listeners = netns.listeners(ns)
            except OSError as err:
                if ns.label not in self.unreadable:
                    self.unreadable.add(ns.label)
                    warn(f"cannot read network namespace {ns.label} ({err.strerror}): its overflows are not shown")
                continue
            if count is not None:
                reading.overflows[ns.inode] = count
            for listener in listeners:
                key = (ns.inode, listener.inode)
                reading.listeners[key] = listener
                reading.drops[key] = drops.get(listener.inode, 0)
        return reading

    def since_last(self) -> tuple[int, list[tuple[Any, ...]]]:
        """(overflows in every namespace read, rows in overflow_columns() order)."""
        now, before = self._read(), self.last
        self.last = now
        # a namespace or a listener seen for the first time started from zero
        overflows = {ino: n - before.overflows.get(ino, 0) for ino, n in now.overflows.items()}
        dropped: dict[int, list[tuple[netns.Listener, int]]] = {}
        for key, n in now.drops.items():
            delta = n - before.drops.get(key, 0)
            if delta > 0:
                dropped.setdefault(key[0], []).append((now.listeners[key], delta))
        owners = netns.socket_owners({lst.inode for found in dropped.values() for lst, _ in found})
        rows: list[tuple[Any, ...]] = []
        for ino in sorted(set(dropped) | {i for i, n in overflows.items() if n > 0}):
            label = where.printable(where.netns_label(ino))
            found = dropped.get(ino, [])
            total = overflows.get(ino, 0)
            single = len(found) == 1
            for listener, drops in found:
                if self.family is not None and listener.family != self.family:
                    continue
                owner = owners.get(listener.inode)
                rows.append((label, listener.endpoint, owner.pid if owner else "-", owner.comm if owner else "-",
                             listener.queue, listener.backlog, drops, total if single else "?", ino,
                             listener.addr, listener.port, owner.pid if owner else None, total if single else None))
            if not single and total:
                rows.append((label, ANY, "-", "-", "-", "-", "-", total, ino, None, None, None, total))
        return sum(overflows.values()), rows


@click.command("synbl")
@o.interval_option
@o.duration_option
@o.output_options(csv=False, wide=False, timestamp=False)
@o.family_option
@where.netns_option
def command(interval: float | None, duration: float | None, out: OutputOptions, family: int | None,
            netns: list[int] | None) -> None:
    """Show the TCP accept (SYN) backlog length when connections arrive, as one log2
    histogram per backlog limit ("backlog_max", from listen()), and the listeners whose
    accept queue overflowed.

    A sample is taken when a connection is put on a listener's accept queue
    (tracepoint sock:sk_data_ready, every network namespace): the queue length it
    found, itself not counted.

    \b
    Overflows are SYNs and final ACKs a listener dropped because its accept queue was
    full. After the histograms, one row per listener that dropped any:
      NETNS      the network namespace (ip netns name, "host", its container, or
                 netns:<inode>)
      LISTENER   its address:port; PID, COMM: the process holding it
      QUEUE/MAX  connections waiting for accept() now, and the limit listen() set
      DROPS      the listener's own drop count (ss -m's "d"): overflows and other drops
      OVERFLOWS  TcpExt ListenOverflows of that namespace, read inside it; when several
                 listeners of a namespace dropped, the kernel does not say whose they
                 were: "?" on each, and the total on a row for listener "*"
    "listen_overflows_all_netns" adds up every namespace netsnoop could enter
    (namespaces with a name under /run/netns or a process in them). -4/-6 select the
    listeners shown; the namespace counters cover both families.

    Each histogram is one namespace's ("netns"). --netns keeps those namespaces only:
    samples in the kernel, overflows and listen_overflows_all_netns here.
    """
    with TRACER.open({"filter_family": family, **where.filters(None, netns)}) as obj:
        overflows = Overflows(family, netns)
        write = Writer(out)

        def report(last: bool) -> None:
            total, rows = overflows.since_last()
            hists = [(where.printable(where.netns_label(k.netns)), k.backlog_max, h)
                     for k, h in read_hists(obj, "backlog", "synbl_key")]
            sections = [Section(h, {"netns": name, "backlog_max": limit})
                        for name, limit, h in sorted(hists, key=lambda nlh: nlh[:2])]
            write.sections(sections, "backlog", facts={"listen_overflows_all_netns": total})
            if rows:
                write.table(overflow_columns(), rows)

        only = {"only": {"netns": [where.printable(where.netns_label(i)) for i in netns]}} if netns else {}
        every_interval(obj, report, out, interval, duration=duration, banner="Tracing SYN backlog size. Ctrl-C to end.",
                       facts=lambda: only)
