"""Unit tests: option parsing, formatting, output sinks, BTF-derived layouts."""

from __future__ import annotations

import io
import json
import socket
from typing import Any

import click
import pytest
from click.testing import CliRunner

from netsnoop.btf import Field, _format
from netsnoop.cli import cli
from netsnoop.fmt import Clock, addr, comm, ip_version, tcp_state
from netsnoop.options import PORTS
from netsnoop.runner import run_intervals
from netsnoop.output import Column, CsvSink, JsonSink, OutputOptions, TextSink, snake, time_columns


def test_port_list_parses_lists_and_ranges() -> None:
    assert PORTS.convert("80", None, None) == [80]
    assert PORTS.convert("80,443", None, None) == [80, 443]
    assert PORTS.convert("8000-8002,22", None, None) == [8000, 8001, 8002, 22]


@pytest.mark.parametrize("bad", ["70000", "0", "abc", "80,", "-5", "1-20", "80-", "-80", "80-79", "1-2-3", ""])
def test_port_list_rejects_bad_values(bad: str) -> None:
    with pytest.raises(click.BadParameter):
        PORTS.convert(bad, None, None)


def test_port_list_is_counted_before_it_is_expanded() -> None:
    """1,000 copies of 1-65535 would be 65 million ports: refused from the numbers,
    without building the list (which took gigabytes and died with MemoryError)."""
    import tracemalloc

    value = ",".join(["1-65535"] * 1000)
    tracemalloc.start()
    try:
        with pytest.raises(click.BadParameter, match="at most 16 ports"):
            PORTS.convert(value, None, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    with pytest.raises(click.BadParameter, match="at most 16 ports"):
        PORTS.convert(",".join(["80"] * 17), None, None)
    assert PORTS.convert(",".join(["80"] * 16), None, None) == [80] * 16


def test_snake_case_keys() -> None:
    assert snake("C-PID") == "c_pid"
    assert snake("TIME(s)") == "time_s"
    assert snake("LAT(ms)") == "lat_ms"
    assert snake("TX_KB") == "tx_kb"


def test_addresses_and_states() -> None:
    v4 = socket.inet_aton("10.1.2.3") + bytes(12)
    assert addr(socket.AF_INET, v4) == "10.1.2.3"
    assert addr(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "::1")) == "::1"
    assert tcp_state(1) == "ESTABLISHED" and tcp_state(12) == "NEW_SYN_RECV" and tcp_state(99) == "99"
    assert tcp_state(0) == "0" and tcp_state(99) == "99"  # asked twice: a number stays a number
    assert ip_version(socket.AF_INET) == 4 and ip_version(socket.AF_INET6) == 6 and ip_version(0) == 4
    assert comm(b"curl\0\0garbage") == "curl" and comm(b"curl\0\0garbage") == "curl"
    assert comm(b"nc\0") == "nc" and comm(b"\xffx\0") == "\\xffx"


def test_clock_relative_seconds() -> None:
    clock = Clock()
    assert clock.since_first(5_000_000_000) == 0.0
    assert clock.since_first(6_500_000_000) == 1.5
    assert len(clock.hms(5_000_000_000)) == 8


def test_json_timestamps_are_the_microsecond_nearest_the_stamp() -> None:
    """Decimal arithmetic is the oracle: the printed stamp is the wall time rounded
    half up to the microsecond, six decimals, for stamps where float rounding is not."""
    from decimal import ROUND_HALF_UP, Decimal

    clock = Clock()
    clock.offset_ns = 1_764_560_000_123_456_789 - 5_000_000_000
    for ktime in (5_000_000_000, 5_000_000_211, 5_000_000_711, 5_000_000_500 - 456_789 + 456_000, 7_123_456_789):
        want = (Decimal(ktime + clock.offset_ns) / Decimal(10**9)).quantize(Decimal("0.000001"), ROUND_HALF_UP)
        got = clock.wall_us(ktime)
        assert repr(got) == str(want).rstrip("0").rstrip("."), (ktime, got, want)


COLS = [Column("PID", 5), Column("COMM", 10, truncate=True), Column("MS", spec=".2f"), Column("TX_BYTES", text=False)]


def test_text_sink_keeps_bcc_widths() -> None:
    buf = io.StringIO()
    sink = TextSink(COLS, buf)
    sink.header()
    sink.write([(42, "averyverylongcomm", 1.234, 99)])
    header, line = buf.getvalue().splitlines()
    assert header == "PID   COMM       MS"
    assert line == "42    averyveryl 1.23"


def test_csv_and_json_sinks() -> None:
    buf = io.StringIO()
    sink = CsvSink(COLS, buf)
    sink.header()
    sink.write([(1, "a", 0.5, 7)])
    assert buf.getvalue().splitlines() == ["PID,COMM,MS", "1,a,0.50"]
    buf = io.StringIO()
    JsonSink(COLS, buf).write([(1, "a", 0.5, 7)])
    assert json.loads(buf.getvalue()) == {"pid": 1, "comm": "a", "ms": 0.5, "tx_bytes": 7}


def test_time_columns_order() -> None:
    cols = time_columns(OutputOptions(time=True, timestamp=True))
    assert [c.header for c in cols] == ["TIME", "TIME(s)"]


def test_struct_format_pads_from_btf_offsets() -> None:
    fields = [Field("a", 0, 8, "Q", 1), Field("b", 8, 4, "I", 1), Field("c", 16, 16, "s", 16)]
    fmt, names = _format(40, fields)
    assert fmt == "=QI4x16s8x" and names == ["a", "b", "c"]


def test_help_lists_subcommands_without_importing_them() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from netsnoop.cli import cli;"
        "r = CliRunner().invoke(cli, ['--help']); print(r.output);"
        "print(sorted(m for m in sys.modules if m.startswith(('netsnoop.commands.', 'netsnoop.loader', 'rich'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "states" in out and "life" in out and "check" in out
    assert out.strip().splitlines()[-1] == "[]"


def test_version() -> None:
    from netsnoop import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize(
    "args",
    [["states", "-L", "70000"], ["states", "-p", "-5"], ["life", "-p", "abc"], ["life", "-D", "x"],
     ["states", "-d", "0"]],
)
def test_bad_option_values_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_run_intervals_reports_count_times_then_stops() -> None:
    calls: list[int] = []
    run_intervals(lambda: calls.append(1), duration=None, interval=0.02, count=3)
    assert len(calls) == 3


def test_run_intervals_reports_the_cut_short_interval() -> None:
    calls: list[int] = []
    run_intervals(lambda: calls.append(1), duration=0.05, interval=None)
    assert len(calls) == 1


def test_cgroup_paths_must_be_cgroup_v2() -> None:
    import os

    from netsnoop.options import CgroupPath, cgroup2_mounts

    mounts = cgroup2_mounts()
    assert mounts, "no cgroup v2 mount on this host: --cgroup cannot work here"

    assert CgroupPath().convert(mounts[0], None, None) == os.stat(mounts[0]).st_ino
    assert CgroupPath().convert(".", None, None) == os.stat(mounts[0]).st_ino  # relative to the mount
    with pytest.raises(click.BadParameter):
        CgroupPath().convert("/etc", None, None)
    for empty in ("", "  "):  # not the root cgroup, silently
        with pytest.raises(click.BadParameter, match="empty"):
            CgroupPath().convert(empty, None, None)


def usage_error(args: list[str], *needles: str) -> str:
    """Run the CLI in-process; assert a usage error (exit 2): one line, naming
    ``needles``. Returns that line."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, (args, result.output, result.exception)
    errors = result.output.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("Error:"), result.output  # one line, nothing else
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


NON_FINITE = ["inf", "nan", "1e309", "-inf", "NaN", "Infinity"]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    "args", [["states", "-d"], ["life", "--duration"], ["synbl", "-i"], ["rtt", "-i"], ["top"], ["softirqs"]]
)
def test_non_finite_numbers_are_usage_errors(args: list[str], value: str) -> None:
    positional = not args[-1].startswith("-")
    usage_error([*args, *(["--"] if positional else []), value], "finite")


def test_huge_durations_are_usage_errors() -> None:
    usage_error(["states", "-d", "1e308"], "-d")  # finite, but beyond any timer
    usage_error(["top", "1", "1e400"], "COUNT")


@pytest.mark.parametrize("cmd", ["states", "life", "connect", "drop", "top", "rtt"])
def test_ipv4_and_ipv6_together_are_a_usage_error(cmd: str) -> None:
    usage_error([cmd, "-4", "-6"], "-4", "-6")
    usage_error([cmd, "--ipv6", "--ipv4"], "-4", "-6")


def test_family_flags_still_choose_one_family() -> None:
    from netsnoop.options import AF_INET, AF_INET6, family_option

    seen: list[int | None] = []

    @click.command()
    @family_option
    def probe(family: int | None) -> None:
        seen.append(family)

    for args in ([], ["-4"], ["-6"], ["--ipv4"]):
        assert CliRunner().invoke(probe, args).exit_code == 0
    assert seen == [None, AF_INET, AF_INET6, AF_INET]


def test_empty_cgroup_is_a_usage_error() -> None:
    usage_error(["connect", "--cgroup", ""], "--cgroup")


@pytest.mark.parametrize("size", ["4G", "8G", "4096M", "1T"])
def test_ringbuf_beyond_the_kernel_limit_is_a_usage_error(size: str) -> None:
    usage_error(["--ringbuf", size, "states"], "--ringbuf")
    usage_error(["life", "--ringbuf", size], "--ringbuf")


def test_ringbuf_sizes_up_to_the_kernel_limit_parse() -> None:
    from netsnoop.cli import RingSize

    assert RingSize().convert("2G", None, None) == 1 << 31  # the largest power of two in a u32
    assert RingSize().convert("4K", None, None) == 4096
    error = usage_error(["--ringbuf", "4G", "states"])
    assert "2G" in error


BCC_NAMES = {
    "tcplife": "life", "tcpstates": "states", "tcpconnect": "connect", "tcpaccept": "accept",
    "tcptracer": "tracer", "tcpconnlat": "connlat", "tcptop": "top", "tcpretrans": "retrans",
    "tcpdrop": "drop", "tcpsubnet": "subnet", "sofdsnoop": "fdsnoop", "tcprtt": "rtt", "tcpsynbl": "synbl",
    "solisten": "solisten", "netqtop": "netqtop", "softirqs": "softirqs",
}


@pytest.mark.parametrize("bcc,ours", sorted(BCC_NAMES.items()))
def test_bcc_names_run_the_subcommands(bcc: str, ours: str) -> None:
    ctx = click.Context(cli)
    assert cli.get_command(ctx, bcc) is cli.get_command(ctx, ours) is not None
    result = CliRunner().invoke(cli, [bcc, "--help"])
    assert result.exit_code == 0 and f"Usage: cli {bcc} [OPTIONS]" in result.output


def test_help_lists_each_subcommand_once() -> None:
    from netsnoop.commands import COMMANDS

    out = CliRunner().invoke(cli, ["--help"]).output
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == list(COMMANDS)
    for bcc in set(BCC_NAMES) - set(COMMANDS):
        assert bcc not in listed


@pytest.mark.parametrize(
    "typo,meant", [("tcpstate", "states"), ("lif", "life"), ("tcplfie", "life"), ("conect", "connect")]
)
def test_unknown_names_suggest_the_closest(typo: str, meant: str) -> None:
    usage_error([typo], f"No such command '{typo}'", f"Did you mean '{meant}'?")


def test_global_options_after_the_subcommand() -> None:
    """``life --ringbuf 16K -v`` sets what ``--ringbuf 16K -v life`` sets (parsed only:
    the command itself is stopped at its first line)."""
    from unittest import mock

    from netsnoop.runner import ring_bytes

    seen: dict[str, object] = {}

    def fake_open(self: object, *args: object, **kw: object) -> None:
        ctx = click.get_current_context()
        seen.update(ringbuf=ring_bytes(), verbose=ctx.find_root().obj["verbose"])
        raise click.exceptions.Exit(0)

    with mock.patch("netsnoop.runner.LoadSpec.open", fake_open):
        for args, ring, verbose in [
            (["life", "--ringbuf", "16K", "-v"], 16384, True),
            (["--ringbuf", "64K", "-v", "life"], 65536, True),
            (["life"], 8 << 20, False),
            (["--ringbuf", "64K", "states", "--ringbuf", "32K"], 32768, False),  # the later one wins
        ]:
            seen.clear()
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, (args, result.output)
            assert seen == {"ringbuf": ring, "verbose": verbose}, args
    # tracer's own -v (bcc's verbose columns) keeps its meaning
    assert any(p.name == "verbose" and p.expose_value for p in cli.get_command(click.Context(cli), "tracer").params)


def test_a_stdout_that_cannot_encode_a_name_gets_an_escape() -> None:
    """Everything printed after netsnoop starts (sinks, tables, messages) survives an
    ASCII stdout (PYTHONIOENCODING=ascii, or LANG=C on older Pythons)."""
    import os
    import subprocess
    import sys

    code = (
        "from netsnoop.cli import cli; cli.main(['states', '--help'], standalone_mode=False);"
        "print('name: caf\\u00e9')"
    )
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == b"name: caf\\xe9"


def test_the_heap_of_start_up_is_frozen_once_a_subcommand_is_chosen() -> None:
    """What importing a subcommand made is out of the collector's way, and the
    collector runs less often, from then on (the event path allocates thousands of
    short-lived rows per batch)."""
    import gc

    from netsnoop import cli as cli_module

    threshold = gc.get_threshold()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)  # Python's own, as a fresh process has it
    try:
        assert gc.get_freeze_count() == 0
        result = CliRunner().invoke(cli, ["states", "--help"])
        assert result.exit_code == 0 and "state changes" in result.output
        assert gc.get_freeze_count() > 1000 and gc.get_threshold() == cli_module.GC_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_conn_rows_are_the_columns_in_order_with_extras_and_where_last() -> None:
    """row_of compiles one function per column list: every getter in its place, an
    unknown event kind named by its number, an extra column's callable given the event,
    and the where columns last, in one piece."""
    from types import SimpleNamespace

    from netsnoop import where
    from netsnoop.conn import row_of

    v4 = socket.inet_aton("10.1.2.3") + bytes(12)
    e = SimpleNamespace(kind=9, pid=7, uid=0, comm=b"nc\0", family=socket.AF_INET, saddr=v4, daddr=bytes(16),
                        sport=1, dport=2, state=7, err=111, lat_ns=1_500_000, netns=0, cgroup=0)
    cols = [Column(h) for h in ("T", "TYPE", "PID", "COMM", "IP", "LADDR", "RADDR", "LPORT", "RPORT", "RESULT",
                                "LAT(ms)", "NAME")]
    seen: list[Any] = []

    def name(ev: Any) -> str:
        seen.append(ev)
        return "peer"

    row = row_of(cols + where.columns(True, True), {"NAME": name})
    got = row(e)
    assert got[:12] == ("?", "9", 7, "nc", 4, "10.1.2.3", "0.0.0.0", 1, 2, "REFUSED", 1.5, "peer") and seen == [e]
    assert len(got) == 12 + len(where.columns(True, True))
    assert row_of(cols[:2])(SimpleNamespace(kind=3)) == ("X", "close")
