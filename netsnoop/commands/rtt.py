"""netsnoop rtt: histograms of TCP round-trip times (bcc tcprtt)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import click

from netsnoop import options as o
from netsnoop import where
from netsnoop.fmt import addr
from netsnoop.hist import Section, Writer, read_hists
from netsnoop.output import OutputOptions
from netsnoop.runner import LoadSpec, every_interval

# Histograms only: the ring buffer every object carries stays at one page.
TRACER = LoadSpec("rtt", max_entries={"events": 4096})
KEY_NONE, KEY_LADDR, KEY_RADDR = 0, 1, 2


class Address(click.ParamType):
    """An IPv4 or IPv6 address -> (family, 16 bytes as the BPF side compares them)."""

    name = "ADDR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, bytes]:
        if isinstance(value, tuple):
            return value
        try:
            ip = ipaddress.ip_address(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not an IPv4 or IPv6 address", param, ctx)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return family, ip.packed.ljust(16, b"\0")


def netns_name(inode: int) -> str:
    return where.printable(where.netns_label(inode)) if inode else ""


def address_filter(prefix: str, value: tuple[int, bytes] | None) -> dict[str, Any]:
    """The rodata of -a / -A (``filter_laddr*`` / ``filter_raddr*`` in rtt.bpf.c)."""
    if value is None:
        return {}
    return {f"{prefix}_family": value[0], prefix: value[1]}


def no_pid(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """-p is a process ID in netsnoop, but bcc's tcprtt reads it as a local port:
    say which spelling is meant rather than guess."""
    if value is not None:
        raise click.UsageError("rtt has no -p: an RTT sample belongs to no process (it is taken as a segment "
                               "arrives); for local ports use -L/--lport (bcc's tcprtt -p)", ctx)


@click.command("rtt")
@o.interval_option
@o.duration_option
@o.output_options(csv=False, wide=False, timestamp=False)
@click.option("-m", "--milliseconds", is_flag=True, help="histogram in milliseconds (default: microseconds)")
@o.ports_option("-L", "--lport", "--localport", "lports", help="only sockets with these local ports (bcc's -p)")
@o.ports_option("-D", "--rport", "--remoteport", "rports", help="only sockets with these remote ports")
@o.ports_option("-P", "--port", "ports", help="only sockets with these ports at either end (local OR remote)")
@click.option("-p", "pid", is_flag=False, flag_value="", default=None, hidden=True, expose_value=False,
              callback=no_pid)
@click.option("-a", "--laddr", type=Address(), help="only sockets with this local address")
@click.option("-A", "--raddr", type=Address(), help="only sockets with this remote address")
@click.option("-b", "--byladdr", is_flag=True, help="one histogram per local address")
@click.option("-B", "--byraddr", is_flag=True, help="one histogram per remote address")
@click.option("-n", "--bynetns", is_flag=True, help="one histogram per network namespace (with -b/-B: per both)")
@click.option("-e", "--extension", is_flag=True, help="print the average RTT under each histogram")
@o.family_option
@where.netns_option
def command(interval: float | None, duration: float | None, out: OutputOptions, milliseconds: bool,
            lports: Any, rports: Any, ports: Any, laddr: Any, raddr: Any, byladdr: bool, byraddr: bool,
            bynetns: bool, extension: bool, family: int | None, netns: list[int] | None) -> None:
    """Summarize TCP round-trip times as log2 histograms.

    Every segment an established socket receives (tracepoint tcp:tcp_probe, the top of
    tcp_rcv_established) adds one sample: the socket's smoothed RTT (srtt), as the
    kernel keeps it. Sockets without an RTT measurement yet are skipped. Histograms
    are printed and cleared every -i SECONDS, or once at the end. Ports as in every
    netsnoop subcommand: -L local, -D remote, -P either end (bcc's tcprtt -p/-P are
    -L/-D here; -p is a process ID elsewhere, and a sample has no process).
    --netns keeps the sockets of those network namespaces (in the kernel); -n gives
    each namespace its own histogram, labelled netns.
    """
    if byladdr and byraddr:
        raise click.UsageError("-b and -B cannot be combined")
    for opt, value in (("-a", laddr), ("-A", raddr)):
        if value and family and value[0] != family:
            raise click.UsageError(f"{opt} address is not of the family chosen with -4/-6")
    unit, div = ("msecs", 1000) if milliseconds else ("usecs", 1)
    key_by = KEY_LADDR if byladdr else KEY_RADDR if byraddr else KEY_NONE
    label = {KEY_LADDR: "Local Address", KEY_RADDR: "Remote Address"}.get(key_by)
    rodata = {
        **o.port_filters(lports, rports, ports), "filter_family": family, "key_by": key_by, "unit_div": div,
        **address_filter("filter_laddr", laddr), **address_filter("filter_raddr", raddr),
        **where.filters(None, netns), "by_netns": int(bynetns),
    }

    write = Writer(out)
    with TRACER.open(rodata) as obj:

        def report(last: bool) -> None:
            hists = [(netns_name(k.netns), k, h) for k, h in read_hists(obj, "rtts", "rtt_key")]
            hists.sort(key=lambda nkh: (nkh[0], nkh[1].family, nkh[1].addr))
            sections = [Section(h, {**({"netns": name} if bynetns else {}),
                                    **({label: addr(k.family, k.addr)} if label else {})}) for name, k, h in hists]
            write.sections(sections, unit, div=div, averages=extension)

        every_interval(obj, report, out, interval, duration=duration, banner="Tracing TCP RTT... Hit Ctrl-C to end.")
