"""Command-line options shared by the subcommands, each defined once.

Flags keep bcc's letters (``-p``, ``-L``, ``-D``, ``-t``, ``-T``, ``-w``, ``-s``...);
values are validated by click, so ``-L 70000`` or ``-p abc`` is a usage error (exit 2)
naming the option, never a traceback.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from netsnoop.output import OutputOptions

MAX_PORTS = 16  # netsnoop.h: MAX_PORTS
AF_INET, AF_INET6 = 2, 10

F = Callable[..., Any]


class PortList(click.ParamType):
    """``80`` or ``80,443,8000-8002``: up to 16 ports, each 1-65535."""

    name = "PORTS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        ports: list[int] = []
        for part in str(value).split(","):
            part = part.strip()
            lo, _, hi = part.partition("-")
            try:
                first, last = int(lo), int(hi or lo)
            except ValueError:
                self.fail(f"{part!r} is not a port number", param, ctx)
            if not (1 <= first <= last <= 65535):
                self.fail(f"{part!r} is not a port in 1-65535", param, ctx)
            ports.extend(range(first, last + 1))
        if len(ports) > MAX_PORTS:
            self.fail(f"at most {MAX_PORTS} ports can be filtered in the kernel, got {len(ports)}", param, ctx)
        return ports


PORTS = PortList()
PID = click.IntRange(min=1, max=4194304)


def pid_option(help: str = "only trace this process ID") -> Callable[[F], F]:
    return click.option("-p", "--pid", type=PID, default=None, help=help)


def ports_option(*decls: str, help: str) -> Callable[[F], F]:
    return click.option(*decls, type=PORTS, default=None, metavar="PORTS", help=help)


def family_option(f: F) -> F:
    """-4/-6 folded into one ``family`` argument (AF_INET, AF_INET6 or None)."""
    f = click.option("-6", "--ipv6", "family", flag_value=AF_INET6, help="only trace IPv6")(f)
    f = click.option("-4", "--ipv4", "family", flag_value=AF_INET, help="only trace IPv4")(f)
    return f


def cgroup2_mounts() -> list[str]:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup``, or ``.../unified`` on hybrid hosts)."""
    try:
        with open("/proc/self/mounts") as f:
            return [line.split()[1] for line in f if line.split()[2:3] == ["cgroup2"]]
    except OSError:
        return []


class CgroupPath(click.ParamType):
    """A cgroup v2 directory, turned into the id the kernel reports for it (its inode).

    A relative path is taken from the cgroup v2 mount; an absolute one must lie in it,
    since a v1 directory's inode would never match and the filter would show nothing.
    """

    name = "PATH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        import os

        if isinstance(value, int):
            return value
        mounts = cgroup2_mounts()
        if not mounts:
            self.fail("no cgroup v2 hierarchy is mounted on this host", param, ctx)
        path = os.path.realpath(value if os.path.isabs(value) else os.path.join(mounts[0], value))
        inside = any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)
        if not inside or not os.path.isdir(path):
            self.fail(f"{value!r} is not a cgroup v2 directory (cgroup v2 is at {', '.join(mounts)})", param, ctx)
        return os.stat(path).st_ino


def cgroup_option(f: F) -> F:
    """--cgroup PATH -> ``cgroup`` (an id for the ``filter_cgroup`` global)."""
    return click.option(
        "--cgroup", type=CgroupPath(), default=None,
        help="only trace processes in this cgroup v2 directory (e.g. /sys/fs/cgroup/system.slice)",
    )(f)


def interval_count_arguments(default_interval: float = 1.0) -> Callable[[F], F]:
    """bcc's positional ``[interval] [count]`` for the summarising tools."""

    def decorate(f: F) -> F:
        f = click.argument("count", type=click.IntRange(min=1), required=False)(f)
        f = click.argument("interval", type=click.FloatRange(min=0, min_open=True), default=default_interval, required=False)(f)
        return f

    return decorate


def duration_option(f: F) -> F:
    return click.option(
        "-d", "--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
        help="stop after this many seconds",
    )(f)


def interval_option(f: F) -> F:
    """-i SECONDS for the histogram tools (tcprtt, tcpsynbl): print and clear every
    interval; without it, once at the end (Ctrl-C or -d)."""
    return click.option(
        "-i", "--interval", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
        help="print a summary every SECONDS (default: once, at the end)",
    )(f)


def output_options(*, csv: bool = True, wide: bool = True, time: bool = True, timestamp: bool = True) -> Callable[[F], F]:
    """Add the output flags a tool supports; the command receives them as ``out``."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            out = OutputOptions(
                timestamp=kw.pop("timestamp", False),
                time=kw.pop("time", False),
                wide=kw.pop("wide", False),
                csv=kw.pop("csv", False),
                json=kw.pop("json", False),
            )
            if out.csv and out.json:
                raise click.UsageError("--csv and --json cannot be combined")
            return f(*args, out=out, **kw)

        opts = []
        if time:
            opts.append(click.option("-T", "--time", is_flag=True, help="include a TIME column (HH:MM:SS)"))
        if timestamp:
            opts.append(click.option("-t", "--timestamp", is_flag=True, help="include TIME(s): seconds since the first event"))
        if wide:
            opts.append(click.option("-w", "--wide", is_flag=True, help="wide columns (fit IPv6 addresses)"))
        if csv:
            opts.append(click.option("-s", "--csv", is_flag=True, help="comma-separated values"))
        opts.append(click.option("--json", is_flag=True, help="one JSON object per line (typed fields)"))
        for o in reversed(opts):
            wrapper = o(wrapper)
        return wrapper

    return decorate


def port_filters(lports: list[int] | None = None, rports: list[int] | None = None, ports: list[int] | None = None) -> dict[str, Any]:
    """The common kernel filters (netsnoop.h) as read-only globals."""
    return {"filter_lports": lports, "filter_rports": rports, "filter_ports": ports}
