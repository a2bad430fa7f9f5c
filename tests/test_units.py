"""Unit tests: option parsing, formatting, output sinks, BTF-derived layouts."""

from __future__ import annotations

import io
import json
import socket

import click
import pytest
from click.testing import CliRunner

from netsnoop.btf import Field, _format
from netsnoop.cli import cli
from netsnoop.fmt import Clock, addr, comm, tcp_state
from netsnoop.options import PORTS
from netsnoop.runner import run_intervals
from netsnoop.output import Column, CsvSink, JsonSink, OutputOptions, TextSink, snake, time_columns


def test_port_list_parses_lists_and_ranges() -> None:
    assert PORTS.convert("80", None, None) == [80]
    assert PORTS.convert("80,443", None, None) == [80, 443]
    assert PORTS.convert("8000-8002,22", None, None) == [8000, 8001, 8002, 22]


@pytest.mark.parametrize("bad", ["70000", "0", "abc", "80,", "-5", "1-20"])
def test_port_list_rejects_bad_values(bad: str) -> None:
    with pytest.raises(click.BadParameter):
        PORTS.convert(bad, None, None)


def test_snake_case_keys() -> None:
    assert snake("C-PID") == "c_pid"
    assert snake("TIME(s)") == "time_s"
    assert snake("LAT(ms)") == "lat_ms"
    assert snake("TX_KB") == "tx_kb"


def test_addresses_and_states() -> None:
    v4 = socket.inet_aton("10.1.2.3") + bytes(12)
    assert addr(socket.AF_INET, v4) == "10.1.2.3"
    assert addr(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "::1")) == "::1"
    assert tcp_state(1) == "ESTABLISHED" and tcp_state(99) == "99"
    assert comm(b"curl\0\0garbage") == "curl"


def test_clock_relative_seconds() -> None:
    clock = Clock()
    assert clock.since_first(5_000_000_000) == 0.0
    assert clock.since_first(6_500_000_000) == 1.5
    assert len(clock.hms(5_000_000_000)) == 8


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
    [["states", "-L", "70000"], ["states", "-p", "-5"], ["life", "-p", "abc"], ["life", "-D", "x"], ["states", "-d", "0"]],
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
    from netsnoop.options import CgroupPath, cgroup2_mounts

    mounts = cgroup2_mounts()
    if not mounts:
        pytest.skip("no cgroup v2 mount on this host")
    import os

    assert CgroupPath().convert(mounts[0], None, None) == os.stat(mounts[0]).st_ino
    assert CgroupPath().convert(".", None, None) == os.stat(mounts[0]).st_ino  # relative to the mount
    with pytest.raises(click.BadParameter):
        CgroupPath().convert("/etc", None, None)
