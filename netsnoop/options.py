"""Command-line options shared by the subcommands, each defined once.

Flags keep bcc's letters (``-p``, ``-L``, ``-D``, ``-t``, ``-T``, ``-w``, ``-s``...);
values are validated by click, so ``-L 70000`` or ``-p abc`` is a usage error (exit 2)
naming the option, never a traceback.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import click

from netsnoop.fmt import printable
from netsnoop.output import OutputOptions

MAX_PORTS = 16  # netsnoop.h: MAX_PORTS
MAX_PIDS = 16  # netsnoop.h: MAX_PIDS
PID_MAX = 4194304  # the kernel's highest PID limit
AF_INET, AF_INET6 = 2, 10
MAX_SECONDS = 1_000_000_000  # about 31 years: far beyond any trace, well inside what timers and sleeps take

F = Callable[..., Any]


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange without inf and nan (``inf``, ``nan``, ``1e309``): a range
    check lets them through (every comparison with nan is false), and a duration of
    inf or nan would never end or fail deep inside the run."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = 0.0  # not a number at all: click's own message says so
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(value, param, ctx)


SECONDS = FiniteFloatRange(min=0, min_open=True, max=MAX_SECONDS)


class PortList(click.ParamType):
    """``80`` or ``80,443,8000-8002``: up to 16 ports, each 1-65535."""

    name = "PORTS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        ranges: list[tuple[int, int]] = []
        total = 0
        for part in str(value).split(","):
            part = part.strip()
            lo, dash, hi = part.partition("-")
            try:
                first, last = int(lo), int(hi if dash else lo)
            except ValueError:
                self.fail(f"{part!r} is not a port number or a range like 8000-8002", param, ctx)
            if not (1 <= first <= last <= 65535):
                self.fail(f"{part!r} is not a port in 1-65535", param, ctx)
            total += last - first + 1  # counted before anything is expanded
            if total > MAX_PORTS:
                self.fail(f"at most {MAX_PORTS} ports can be filtered in the kernel; {_clip(str(value))} names more",
                          param, ctx)
            ranges.append((first, last))
        return [p for first, last in ranges for p in range(first, last + 1)]


def _clip(text: str, limit: int = 40) -> str:
    """A user's value quoted in a message, shortened when it is very long."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class PidList(click.ParamType):
    """``1234`` or ``1234,5678``: up to 16 process IDs for the kernel's ``filter_pids``."""

    name = "PIDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        pids: list[int] = []
        for part in (p.strip() for p in str(value).split(",")):
            if not part.isdigit() or not 1 <= int(part) <= PID_MAX:
                self.fail(f"{printable(part)!r} is not a process ID (1-{PID_MAX})", param, ctx)
            if int(part) not in pids:
                pids.append(int(part))
        if len(pids) > MAX_PIDS:
            self.fail(f"at most {MAX_PIDS} process IDs can be filtered in the kernel, got {len(pids)}", param, ctx)
        return pids


PORTS = PortList()
PID = click.IntRange(min=1, max=PID_MAX)
PIDS = PidList()


def pid_option(help: str = "only trace these process IDs") -> Callable[[F], F]:
    """-p/--pid PID[,PID...] -> ``pids`` (a list, or None), for every tool's
    ``filter_pids`` (netsnoop.h)."""
    return click.option("-p", "--pid", "pids", type=PIDS, default=None, metavar="PIDS",
                        help=help + " (a comma list of up to 16)")


def ports_option(*decls: str, help: str) -> Callable[[F], F]:
    return click.option(*decls, type=PORTS, default=None, metavar="PORTS", help=help)


def family_option(f: F) -> F:
    """-4/-6 folded into one ``family`` argument (AF_INET, AF_INET6 or None); both
    together are a usage error rather than the last one silently winning."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kw: Any) -> Any:
        ipv4, ipv6 = kw.pop("ipv4", False), kw.pop("ipv6", False)
        if ipv4 and ipv6:
            raise click.UsageError("-4/--ipv4 and -6/--ipv6 cannot be combined (give neither to trace both)")
        return f(*args, family=AF_INET if ipv4 else AF_INET6 if ipv6 else None, **kw)

    wrapper = click.option("-6", "--ipv6", is_flag=True, help="only trace IPv6")(wrapper)
    wrapper = click.option("-4", "--ipv4", is_flag=True, help="only trace IPv4")(wrapper)
    return wrapper


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
        if not str(value).strip():
            self.fail("must name a cgroup v2 directory (an empty path is not the root cgroup)", param, ctx)
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


def interval_count_arguments(default_interval: float | None = 1.0) -> Callable[[F], F]:
    """bcc's positional ``[interval] [count]`` for the summarising tools."""

    def decorate(f: F) -> F:
        f = click.argument("count", type=click.IntRange(min=1), required=False)(f)
        f = click.argument("interval", type=SECONDS, default=default_interval, required=False)(f)
        return f

    return decorate


def duration_option(f: F) -> F:
    return click.option(
        "-d", "--duration", type=SECONDS, default=None, metavar="SECONDS",
        help="stop after this many seconds",
    )(f)


def count_option(help: str) -> Callable[[F], F]:
    """-c/--count for the tools that can count in the kernel instead of streaming rows
    (one table on exit: :func:`netsnoop.counts.show_counts`)."""
    return click.option("-c", "--count", "count", is_flag=True, help=help)


def interval_option(f: F) -> F:
    """-i SECONDS for the histogram tools (tcprtt, tcpsynbl): print and clear every
    interval; without it, once at the end (Ctrl-C or -d)."""
    return click.option(
        "-i", "--interval", type=SECONDS, default=None, metavar="SECONDS",
        help="print a summary every SECONDS (default: once, at the end)",
    )(f)


def output_options(
    *, csv: bool = True, wide: bool = True, time: bool = True, timestamp: bool = True
) -> Callable[[F], F]:
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
            opts.append(
                click.option("-t", "--timestamp", is_flag=True, help="include TIME(s): seconds since the first event")
            )
        if wide:
            opts.append(click.option("-w", "--wide", is_flag=True, help="wide columns (fit IPv6 addresses)"))
        if csv:
            opts.append(click.option("-s", "--csv", is_flag=True, help="comma-separated values"))
        opts.append(click.option("--json", is_flag=True, help="one JSON object per line (typed fields)"))
        for o in reversed(opts):
            wrapper = o(wrapper)
        return wrapper

    return decorate


def port_filters(
    lports: list[int] | None = None, rports: list[int] | None = None, ports: list[int] | None = None
) -> dict[str, Any]:
    """The common kernel filters (netsnoop.h) as read-only globals."""
    return {"filter_lports": lports, "filter_rports": rports, "filter_ports": ports}
