"""netsnoop synbl: TCP accept (SYN) backlog length when connections arrive (bcc tcpsynbl)."""

from __future__ import annotations

import struct
from typing import Any

import click

from netsnoop import options as o
from netsnoop.btf import StructDecoder
from netsnoop.hist import EMPTY, Section, read_hists, run_intervals, summary, write_sections
from netsnoop.loader import BPFObject
from netsnoop.output import OutputOptions
from netsnoop.runner import Tracer, ready

# Counting overflows is an addition; the histogram alone is what tcpsynbl shows.
TRACER = Tracer("synbl", optional=frozenset({"overflow"}), max_entries={"events": 4096})
NETSTAT = "/proc/net/netstat"


def listen_overflows(path: str = NETSTAT) -> int | None:
    """The kernel's LINUX_MIB_LISTENOVERFLOWS (TcpExt ListenOverflows) for the network
    namespace netsnoop runs in; None if the kernel does not show it."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            row = dict(zip(head.split()[1:], values.split()[1:]))
            return int(row["ListenOverflows"]) if "ListenOverflows" in row else None
    return None


def pop_overflows(obj: BPFObject) -> dict[int, int]:
    """backlog_max -> final ACKs dropped for a full accept queue since the last call."""
    key = StructDecoder(obj.btf, "synbl_key")
    return {key.decode(k).backlog_max: sum(struct.unpack("=Q", c)[0] for c in v)
            for k, v in obj.map("overflows").pop_all()}


@click.command("synbl")
@o.interval_option
@o.duration_option
@o.output_options(csv=False, wide=False, timestamp=False)
@o.family_option
def command(interval: float | None, duration: float | None, out: OutputOptions, family: int | None) -> None:
    """Show the TCP accept (SYN) backlog length when connections arrive, as one log2
    histogram per backlog limit ("backlog_max", from listen()).

    A sample is taken when a connection is put on a listener's accept queue
    (tracepoint sock:sk_data_ready): the queue length it found, itself not counted.

    Overflows, i.e. connections refused because the accept queue was full, are counted
    in two ways. Under each histogram, "overflows" are final ACKs dropped by listeners
    with that limit (skb:kfree_skb, reason TCP_LISTEN_OVERFLOW; any network
    namespace). A SYN that finds the queue full is dropped with no tracepoint, so the
    complete count comes from the kernel's own counter, "listen_overflows" (TcpExt
    ListenOverflows: SYNs and ACKs, all listeners of the network namespace netsnoop
    runs in, not filtered by -4/-6).
    """
    rodata = {"filter_family": family}
    with TRACER.open(rodata) as obj:
        last = listen_overflows()

        def report() -> None:
            nonlocal last
            drops = pop_overflows(obj)
            hists = dict((k.backlog_max, h) for k, h in read_hists(obj, "backlog", "synbl_key"))
            sections = []
            for limit in sorted(set(hists) | set(drops)):
                extra = {"overflows": drops.get(limit, 0)} if obj.chosen.get("overflow") else {}
                sections.append(Section(hists.get(limit) or EMPTY, {"backlog_max": limit}, extra))
            now = listen_overflows()
            netns = {} if now is None or last is None else {"listen_overflows": now - last}
            last = now
            write_sections(sections, "backlog", out, facts=netns)

        ready("Tracing SYN backlog size. Ctrl-C to end.")
        run_intervals(report, duration, interval)
        summary(out, obj)
