"""netsnoop subnet: TCP bytes sent, summed per destination subnet (bcc tcpsubnet)."""

from __future__ import annotations

import ipaddress
import json as jsonlib
import struct
import sys
import time
from typing import Any, NamedTuple

import click

from netsnoop import options as o
from netsnoop import where
from netsnoop.btf import StructDecoder
from netsnoop.fmt import AF_INET, AF_INET6
from netsnoop.loader import BPFObject
from netsnoop.output import Column, OutputOptions, make_sink
from netsnoop.hist import Writer
from netsnoop.runner import LoadSpec, every_interval

TRACER = LoadSpec("subnet", max_entries={"events": 4096})
MAX_SUBNETS = 32  # subnet.bpf.c
DEFAULT_SUBNETS = "127.0.0.1/32,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,0.0.0.0/0"
# -f: bcc's units (lower case: bits), plus G
UNITS = {"b": (8, 1), "k": (8, 1024), "m": (8, 1024**2), "g": (8, 1024**3),
         "B": (1, 1), "K": (1, 1024), "M": (1, 1024**2), "G": (1, 1024**3)}

COLUMNS = [
    Column("SUBNET", 21),
    Column("SENT", 6, align=">"),  # in the -f unit
    Column("BYTES", text=False),
    Column("DATE", text=False),
    Column("TIME", text=False),
    Column("timestamp", text=False),
    Column("NETNS", text=False),
    Column("NETNS_INODE", text=False),
]


class Subnet(NamedTuple):
    text: str  # as the user wrote it
    network: ipaddress.IPv4Network | ipaddress.IPv6Network


class SubnetList(click.ParamType):
    """``10.0.0.0/8,fd00::/8``: up to 32 CIDR networks, IPv4 or IPv6, in order."""

    name = "SUBNETS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[Subnet]:
        if isinstance(value, list):
            return value
        out = []
        for part in (p.strip() for p in str(value).split(",")):
            try:
                out.append(Subnet(part, ipaddress.ip_network(part, strict=False)))
            except ValueError:
                self.fail(f"{part!r} is not a subnet in CIDR notation (e.g. 10.0.0.0/8)", param, ctx)
        if len(out) > MAX_SUBNETS:
            self.fail(f"at most {MAX_SUBNETS} subnets can be matched in the kernel, got {len(out)}", param, ctx)
        return out


def subnet_filters(subnets: list[Subnet]) -> dict[str, Any]:
    """The subnets as the kernel's read-only tables: 4 words of address and mask each,
    in memory order, so the kernel compares ``daddr & mask`` word by word."""
    addrs: list[int] = []
    masks: list[int] = []
    for s in subnets:
        addrs.extend(struct.unpack("=4I", s.network.network_address.packed.ljust(16, b"\0")))
        masks.extend(struct.unpack("=4I", s.network.netmask.packed.ljust(16, b"\0")))
    families = [AF_INET6 if s.network.version == 6 else AF_INET for s in subnets]
    return {"subnet_count": len(subnets), "subnet_family": families, "subnet_addr": addrs, "subnet_mask": masks}


class Totals:
    """Byte counts per (subnet index, namespace inode) since the previous interval,
    from the kernel's per-CPU running totals (they only grow, so nothing is lost
    between two reads)."""

    def __init__(self, obj: BPFObject) -> None:
        self.map, self.key = obj.map("sent"), StructDecoder(obj.btf, "subnet_key").decode
        self.last: dict[tuple[int, int], int] = {}

    def interval(self) -> dict[tuple[int, int], int]:
        now = {}
        for raw, per_cpu in self.map.items():
            k = self.key(raw)
            now[k.subnet, k.netns] = sum(struct.unpack_from("=Q", v)[0] for v in per_cpu)
        delta = {k: n - self.last.get(k, 0) for k, n in now.items()}
        self.last = now
        return {k: n for k, n in delta.items() if n}


def bcc_value(unit: str) -> Any:
    """bcc's -f conversion, with its types: bytes and bits stay integers, the larger
    units are divided (a float, as Python 3 divides)."""
    bits, divisor = UNITS[unit]
    if divisor == 1:
        return lambda b: b * bits
    return lambda b: b * bits / divisor


def bcc_line(date: str, hms: str, entries: dict[str, Any]) -> str:
    """One interval as bcc's tcpsubnet -J prints it (json.dumps' default separators)."""
    return jsonlib.dumps({"date": date, "time": hms, "entries": entries}) + "\n"


@click.command("subnet")
@click.argument("subnets", type=SubnetList(), default=DEFAULT_SUBNETS, required=False)
@click.option("-f", "--format", "unit", type=click.Choice(list(UNITS)), default="B", show_default=True,
              help="unit: B K M G bytes, or b k m g bits")
@click.option("-i", "--interval", type=o.SECONDS, default=1.0, show_default=True,
              help="output interval, in seconds")
@click.option("-J", "bcc_json", is_flag=True,
              help='bcc tcpsubnet\'s JSON: one object per interval, {"date": ..., "time": ..., '
                   '"entries": {SUBNET: SENT, ...}}, SENT in the -f unit')
@click.option("--json", is_flag=True,
              help="one JSON object per subnet per interval (exact bytes, the -f value, a timestamp)")
@click.option("-v", "--verbose", is_flag=True, help="print the subnet table given to the kernel")
@where.netns_option
@o.duration_option
def command(subnets: list[Subnet], unit: str, interval: float, bcc_json: bool, json: bool, verbose: bool,
            netns: list[int] | None, duration: float | None) -> None:
    """Summarise TCP bytes sent, by destination subnet.

    SUBNETS is a comma-separated list of CIDR networks (IPv4 or IPv6); each send is
    counted in the first one that contains its destination, so put narrow subnets
    before wide ones. Only subnets that received bytes in an interval are listed.

    -J writes what bcc's tcpsubnet -J writes, so its consumers keep working: one
    line per interval, busiest subnet first, values as bcc computes them (whole
    numbers for B and b, fractions for the larger units); the summary goes to
    stderr. --json is netsnoop's own layout, one typed object per subnet and
    network namespace (netns, netns_inode); the text and -J add the namespaces up.
    --netns counts only those namespaces (in the kernel).
    """
    if bcc_json and json:
        raise click.UsageError("-J (bcc's JSON layout) and --json (one object per subnet) cannot be combined")
    if verbose:
        for i, s in enumerate(subnets):
            click.echo(f"subnet {i}: {s.text} = {s.network.network_address} mask {s.network.netmask}", err=True)
    bits, divisor = UNITS[unit]
    out = OutputOptions(json=json)
    sink, write = make_sink(out, COLUMNS), Writer(out)
    as_bcc = bcc_value(unit)

    def show(totals: Totals) -> None:
        now = time.time()
        stamp = time.localtime(now)
        date, hms = time.strftime("%x", stamp), time.strftime("%X", stamp)
        delta = totals.interval()
        if json:
            rows = sorted(delta.items(), key=lambda kb: (-kb[1], kb[0]))
            sink.write([(subnets[i].text, int(b * bits / divisor), b, date, hms, round(now, 6),
                         where.printable(where.netns_label(ino)), ino) for (i, ino), b in rows])
            sys.stdout.flush()
            return
        per_subnet = [0] * len(subnets)
        for (i, _ino), b in delta.items():
            per_subnet[i] += b
        sent = sorted(((b, s) for b, s in zip(per_subnet, subnets) if b), key=lambda bs: -bs[0])
        if bcc_json:
            sys.stdout.write(bcc_line(date, hms, {s.text: as_bcc(b) for b, s in sent}))
            sys.stdout.flush()
            return
        write.heading(f"[{date} {hms}]")
        sink.write([(s.text, int(b * bits / divisor), b, date, hms, round(now, 6), "", 0) for b, s in sent])
        sys.stdout.flush()

    with TRACER.open({**subnet_filters(subnets), **where.filters(None, netns)}) as obj:
        totals = Totals(obj)
        every_interval(obj, lambda last: show(totals), out, interval, duration=duration,
                       banner=f"Tracing... Output every {interval:g} secs. Hit Ctrl-C to end")
