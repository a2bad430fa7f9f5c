"""netsnoop synbl: TCP accept (SYN) backlog length when connections arrive (bcc tcpsynbl)."""

from __future__ import annotations

import struct

import click

from netsnoop import options as o
from netsnoop.btf import STRUCT, BTF, StructDecoder
from netsnoop.hist import EMPTY, Section, read_hists, summary, write_sections
from netsnoop.loader import BPFObject
from netsnoop.output import OutputOptions
from netsnoop.runner import Tracer, ready, run_intervals

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


class NetnsOverflows:
    """ListenOverflows of this network namespace since the previous reading."""

    def __init__(self) -> None:
        self.last = listen_overflows()

    def since_last(self) -> dict[str, int]:
        now, before = listen_overflows(), self.last
        self.last = now
        return {} if now is None or before is None else {"listen_overflows": now - before}


def ack_overflows_visible() -> bool:
    """Whether this kernel can show final-ACK overflows per listener: kfree_skb must name
    the receiving socket (``rx_sk``) and know the TCP_LISTEN_OVERFLOW reason. Without
    them the overflow hook would load and count nothing, so its zeros are not shown."""
    btf = BTF.vmlinux()
    try:
        tid = btf.find("trace_event_raw_kfree_skb", STRUCT)
        has_sk = bool(tid) and any(name == "rx_sk" for name, _t, _o in btf.members(tid))
        return has_sk and "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW" in btf.enum_values("skb_drop_reason").values()
    finally:
        btf.close()


def pop_overflows(obj: BPFObject) -> dict[int, int]:
    """backlog_max -> final ACKs dropped for a full accept queue since the last call."""
    key = StructDecoder(obj.btf, "synbl_key")
    return {key.decode(k).backlog_max: sum(struct.unpack("=Q", c)[0] for c in v)
            for k, v in obj.map("overflows").pop_all()}


def sections(obj: BPFObject, with_overflows: bool) -> list[Section]:
    """One section per backlog limit seen since the last call: its histogram and, with
    ``with_overflows``, its final-ACK overflows."""
    drops = pop_overflows(obj) if with_overflows else None
    hists = {k.backlog_max: h for k, h in read_hists(obj, "backlog", "synbl_key")}
    return [Section(hists.get(limit, EMPTY), {"backlog_max": limit},
                    {} if drops is None else {"overflows": drops.get(limit, 0)})
            for limit in sorted(set(hists) | set(drops or {}))]


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

    Overflows, i.e. SYNs or final ACKs dropped because the accept queue was full, are
    counted in two ways. Under each histogram, "overflows" are final ACKs dropped by
    listeners with that limit (skb:kfree_skb, reason TCP_LISTEN_OVERFLOW; any network
    namespace; shown where the kernel's kfree_skb names the receiving socket). A SYN
    that finds the queue full is dropped with no tracepoint, so the complete count comes
    from the kernel's own counter, "listen_overflows" (TcpExt ListenOverflows: SYNs and
    ACKs, all listeners of the network namespace netsnoop runs in, not filtered by
    -4/-6).
    """
    with TRACER.open({"filter_family": family}) as obj:
        netns = NetnsOverflows()
        with_overflows = bool(obj.chosen.get("overflow")) and ack_overflows_visible()

        def report() -> None:
            write_sections(sections(obj, with_overflows), "backlog", out, facts=netns.since_last())

        ready("Tracing SYN backlog size. Ctrl-C to end.")
        if run_intervals(report, interval, duration=duration) is not None:
            summary(out, obj)
