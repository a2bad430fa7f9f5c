"""netsnoop export: TCP health as Prometheus metrics, served over HTTP until stopped."""

from __future__ import annotations

import socket
import time
from typing import Any

import click

from netsnoop import options as o
from netsnoop.errors import MissingFeature, NetsnoopError
from netsnoop.output import OutputOptions, make_sink
from netsnoop.runner import StopFlag, ready, warn

DEFAULT_LISTEN = "127.0.0.1:9435"
DRAIN_S = 1.0  # how often the kernel's count maps are emptied: they must not fill meanwhile
MAX_PORT_LABELS = 64


class ListenAddress(click.ParamType):
    """``ADDR:PORT``, ``[v6]:PORT`` or ``:PORT`` (all addresses)."""

    name = "ADDR:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        host, sep, port = str(value).rpartition(":")
        if not sep:
            self.fail(f"{value!r} is not ADDR:PORT (e.g. 127.0.0.1:9435, [::1]:9435, :9435)", param, ctx)
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            number = int(port)
        except ValueError:
            self.fail(f"{port!r} is not a port number", param, ctx)
        if not 1 <= number <= 65535:
            self.fail(f"{number} is not a port in 1-65535", param, ctx)
        if host:
            try:
                socket.getaddrinfo(host, number, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
            except socket.gaierror:
                self.fail(f"{host!r} is not an IP address", param, ctx)
        return host or "0.0.0.0", number


class PortLabelList(click.ParamType):
    """``80,443,8000-8002``: the ports that get their own ``port`` label value."""

    name = "PORTS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        ports: list[int] = []
        for part in str(value).split(","):
            lo, _, hi = part.strip().partition("-")
            try:
                first, last = int(lo), int(hi or lo)
            except ValueError:
                self.fail(f"{part.strip()!r} is not a port number", param, ctx)
            if not 1 <= first <= last <= 65535:
                self.fail(f"{part.strip()!r} is not a port in 1-65535", param, ctx)
            ports.extend(range(first, last + 1))
        if len(set(ports)) > MAX_PORT_LABELS:
            self.fail(f"at most {MAX_PORT_LABELS} ports can be labels (each one is a set of series)", param, ctx)
        return ports


class SourceList(click.ParamType):
    name = "LIST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        from netsnoop.metrics import SOURCES

        if isinstance(value, list):
            return value
        names = [n.strip() for n in str(value).split(",") if n.strip()]
        unknown = [n for n in names if n not in SOURCES]
        if unknown or not names:
            self.fail(f"{', '.join(unknown) or repr(value)}: choose from {','.join(SOURCES)}", param, ctx)
        return [s for s in SOURCES if s in names]


class ExportCommand(click.Command):
    """Lists every metric, its type and labels, after the options."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from netsnoop.metrics import METRICS

        with formatter.section("Metrics (type [labels] source)"):
            formatter.write_dl([(m.name, f"{m.type} [{','.join(m.labels)}] {m.source}") for m in METRICS])


@click.command("export", cls=ExportCommand)
@click.option("--listen", type=ListenAddress(), default=DEFAULT_LISTEN, show_default=True,
              help="address and port to serve /metrics on")
@click.option("--metrics", "sources", type=SourceList(), default=None,
              help="only these sources, comma-separated (default: all; see the list below)")
@click.option("--port-labels", "ports", type=PortLabelList(), default=None,
              help="add a port label with these ports (others: \"other\") to connects, accepts, drops, "
                   "retransmits and bytes")
@click.option("--max-netns", type=click.IntRange(min=1), default=64, show_default=True,
              help="network namespaces with their own netns label; the rest are \"other\"")
@click.option("--max-listeners", type=click.IntRange(min=0), default=50, show_default=True,
              help="listeners in the queue gauges (the fullest first)")
@click.option("-d", "--duration", type=o.SECONDS, default=None, metavar="SECONDS",
              help="stop after this many seconds")
def command(listen: tuple[str, int], sources: list[str] | None, ports: list[int] | None, max_netns: int,
            max_listeners: int, duration: float | None) -> None:
    """Serve TCP health as Prometheus metrics on http://ADDR:PORT/metrics (text or
    OpenMetrics, as the scraper asks) until stopped.

    Everything is counted in the kernel and read when Prometheus scrapes: connects by
    outcome and their latency, accepts, resets received, drops by kernel reason,
    retransmits, RTT and accept queue lengths (the BPF programs of connect -c
    --outcome, accept -c, overview's resets, drop -c, retrans -c, rtt and synbl),
    each network namespace's own counters and listeners, and the bytes of its TCP
    sockets (read inside every namespace, as nstat and ss -ti would show them there;
    a socket's final bytes are kept in the kernel when it closes). netsnoop's own health comes
    along: events it could not count, hook runs the kernel skipped, the hook kind of
    each group.

    Labels are bounded: netns (at most --max-netns values, then "other"), outcome and
    reason (kernel enums), listeners' ports (at most --max-listeners listeners), and a
    port on the other metrics only for the ports given to --port-labels. Per-client-port
    or per-process series are never made. Metrics without a netns label cover every
    namespace together.
    """
    try:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.process_collector import ProcessCollector
    except ImportError:
        raise MissingFeature("netsnoop export needs the Python package prometheus_client "
                             "(pip install prometheus_client)") from None

    from netsnoop import metrics

    ctx = metrics.Context(metrics.PortLabels(ports or ()), metrics.NetnsLabels(max_netns), max_listeners)
    exporter = metrics.Exporter(sources or metrics.SOURCES, ctx)
    registry = CollectorRegistry(auto_describe=False)
    exporter.open(warn)
    try:
        registry.register(exporter)
        ProcessCollector(registry=registry)  # process_resident_memory_bytes: flat over days, or not
        host, port = listen
        try:
            started = start_http_server(port, addr=host, registry=registry)
        except OSError as err:
            raise NetsnoopError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
        shown = f"[{host}]" if ":" in host else host
        ready(f"Tracing TCP health, serving metrics on http://{shown}:{port}/metrics ... Hit Ctrl-C to end.")
        run(exporter, duration)
        if isinstance(started, tuple):  # prometheus_client >= 0.17 hands back the server
            started[0].shutdown()
        with exporter.lock:
            make_sink(OutputOptions(), []).summary(exporter.summary())
    finally:
        exporter.close()


def run(exporter: Any, duration: float | None) -> None:
    """Empty the kernel's count maps every second (and at each scrape), until
    SIGINT/SIGTERM or the duration."""
    with StopFlag(duration) as stop:
        while not stop:
            time.sleep(DRAIN_S if stop.deadline is None else min(DRAIN_S, max(0.0, stop.deadline - time.monotonic())))
            exporter.poll()
