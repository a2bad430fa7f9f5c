"""netsnoop softirqs: loopback traffic made by the test is received in the NET_RX soft
IRQ (netif_rx queues it to the sending CPU's backlog), so net_rx must show up, on the
CPU the test pins itself to."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from helpers import PayloadServer, Trace, fetch, run

from netsnoop.cli import cli
from netsnoop.commands.softirqs import vector_names

SIZE = 4 * 1024 * 1024


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Run this thread (and threads it starts) on one CPU only."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def loopback_traffic(rounds: int = 3) -> None:
    with PayloadServer(size=SIZE) as server:
        for _ in range(rounds):
            assert fetch("127.0.0.1", server.port)[1] == SIZE


def by_name(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["softirq"]: r for r in records}


@pytest.mark.integration
def test_vector_names_come_from_the_kernels_enum() -> None:
    names = vector_names()
    assert names[0] == "hi" and names[1] == "timer" and names[2] == "net_tx" and names[3] == "net_rx"
    assert {"tasklet", "sched", "rcu"} <= set(names.values())
    assert "nr" not in names.values()  # NR_SOFTIRQS is a count, not a vector


def proc_softirqs() -> dict[str, list[int]]:
    """The kernel's own count of soft IRQ runs (/proc/softirqs): vector -> per CPU.
    It is incremented right before irq:softirq_entry fires, once per run."""
    with open("/proc/softirqs") as f:
        ncpu = len(f.readline().split())
        return {name.rstrip(":").lower(): [int(v) for v in values[:ncpu]] for name, *values in map(str.split, f)}


def delta(before: dict[str, list[int]], after: dict[str, list[int]], cpu: int) -> dict[str, int]:
    return {name: after[name][cpu] - before[name][cpu] for name in before}


def ping_pong(rounds: int) -> None:
    """One-byte round trips on loopback from this thread: every send runs the NET_RX
    soft IRQ on this CPU (loopback queues to the sender's CPU's backlog)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as client, listener.accept()[0] as server:
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(rounds):
                client.sendall(b"p")
                server.recv(1)
                server.sendall(b"q")
                client.recv(1)


@pytest.mark.integration
def test_counts_match_proc_softirqs_of_the_traced_cpu_only() -> None:
    """Every vector's count lies between the kernel's own counts for that CPU over the
    time the trace surely ran (inner) and over a time that surely covers it (outer).
    Heavy NET_RX on the other CPU meanwhile would push a count that ignored -c above
    the outer bound."""
    cpu, other = sorted(os.sched_getaffinity(0))[:2]
    outer0 = proc_softirqs()
    with Trace(["softirqs", "--json", "-C", "-c", str(cpu)], env={"NETSNOOP_HOOKS": "tp_btf"}) as t:
        inner0 = proc_softirqs()
        with pinned(cpu):
            ping_pong(1000)
        with pinned(other):
            ping_pong(20000)
        inner1 = proc_softirqs()
        t.stop(settle=0)
    outer1 = proc_softirqs()
    inner, outer = delta(inner0, inner1, cpu), delta(outer0, outer1, cpu)
    traced = {r["softirq"]: r["total_count"] for r in t.records}
    assert set(traced) <= set(outer)
    for name in outer:
        assert inner[name] <= traced.get(name, 0) <= outer[name], (name, inner[name], traced.get(name), outer[name])
    assert inner["net_rx"] > 0  # our own round trips, on the traced CPU (batched when ksoftirqd runs them)
    assert delta(inner0, inner1, other)["net_rx"] > outer["net_rx"] - inner["net_rx"]  # the test can tell
    assert t.summary["lost_events"] == 0 and t.summary["hooks"] == {"entry": "tp_btf", "exit": "tp_btf"}
    assert t.summary["only"] == {"cpu": cpu} and f"on CPU {cpu} only" in t.stderr  # a part of the system, said so


@pytest.mark.integration
def test_classic_tracepoints_count_the_same() -> None:
    before = proc_softirqs()
    with Trace(["softirqs", "--json", "-C"], env={"NETSNOOP_HOOKS": "tracepoint"}) as t:
        inner0 = proc_softirqs()
        ping_pong(1000)
        inner1 = proc_softirqs()
        t.stop(settle=0)
    after = proc_softirqs()
    traced = {r["softirq"]: r["total_count"] for r in t.records}
    cpus = range(len(before["net_rx"]))
    for name in before:
        inner = sum(inner1[name][c] - inner0[name][c] for c in cpus)
        outer = sum(after[name][c] - before[name][c] for c in cpus)
        assert inner <= traced.get(name, 0) <= outer, (name, inner, traced.get(name), outer)
    assert traced["net_rx"] > 0 and t.summary["hooks"] == {"entry": "tracepoint", "exit": "tracepoint"}


@pytest.mark.integration
def test_time_histograms_in_nanoseconds() -> None:
    with Trace(["softirqs", "--json", "--dist", "-N"]) as t:
        loopback_traffic(rounds=2)
    net_rx = by_name(t.records)["net_rx"]
    assert net_rx["unit"] == "nsecs" and net_rx["count"] > 0
    assert sum(b["count"] for b in net_rx["buckets"]) == net_rx["count"]
    used = [b for b in net_rx["buckets"] if b["count"]]
    assert used[0]["low"] <= net_rx["avg"] <= used[-1]["high"] + 1
    assert net_rx["sum"] >= net_rx["count"]  # every run takes at least a nanosecond


@pytest.mark.integration
def test_total_time_table_in_text() -> None:
    with Trace(["softirqs"]) as t:
        loopback_traffic(rounds=1)
    at = t.lines.index("SOFTIRQ          TOTAL_usecs")
    rows = {line.split()[0]: int(line.split()[1]) for line in t.lines[at + 1:] if line.strip()}
    assert "net_rx" in rows
    assert list(rows.values()) == sorted(rows.values())  # smallest first, as bcc


@pytest.mark.integration
def test_interval_and_count_stop_by_themselves() -> None:
    done = run(["softirqs", "-T", "0.3", "2"], timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("SOFTIRQ          TOTAL_usecs") == 2
    assert len([line for line in done.stdout.splitlines() if re.fullmatch(r"\d\d:\d\d:\d\d", line)]) == 2  # -T
    assert "lost events" in done.stderr


@pytest.mark.integration
def test_d_is_a_duration() -> None:
    started = time.monotonic()
    done = run(["softirqs", "-C", "--json", "-d", "0.5"], timeout=30)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 0.5  # it traced that long, then stopped by itself
    last = json.loads(done.stdout.splitlines()[-1])
    assert last["type"] == "summary" and any(r.get("total_count") for r in map(json.loads, done.stdout.splitlines()))


@pytest.mark.parametrize("args", [["-d"], ["-d", "-N"], ["-N", "-d"]])
def test_d_without_seconds_names_the_histogram_flag(args: list[str]) -> None:
    """bcc's softirqs -d (histograms) is --dist here: the error says so."""
    result = CliRunner().invoke(cli, ["softirqs", *args])
    assert result.exit_code == 2 and "--dist" in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("args", [["-C", "--dist"], ["-c", "100000"], ["0"], ["1", "0"], ["-d", "inf"], ["-d", "nan"],
                                  ["-d", "0"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    assert CliRunner().invoke(cli, ["softirqs", *args]).exit_code == 2
