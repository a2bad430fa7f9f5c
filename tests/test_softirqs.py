"""netsnoop softirqs: loopback traffic made by the test is received in the NET_RX soft
IRQ (netif_rx queues it to the sending CPU's backlog), so net_rx must show up, on the
CPU the test pins itself to."""

from __future__ import annotations

import contextlib
import os
import re
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


@pytest.mark.integration
def test_loopback_traffic_runs_net_rx_on_the_traced_cpu() -> None:
    cpu = min(os.sched_getaffinity(0))
    with Trace(["softirqs", "--json", "-C", "-c", str(cpu)]) as t, pinned(cpu):
        loopback_traffic()
    rows = by_name(t.records)
    assert rows["net_rx"]["total_count"] > 0
    assert all(isinstance(r["total_count"], int) and r["total_count"] > 0 for r in rows.values())
    assert t.summary["lost_events"] == 0


@pytest.mark.integration
def test_time_histograms_in_nanoseconds() -> None:
    with Trace(["softirqs", "--json", "-d", "-N"]) as t:
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


@pytest.mark.parametrize("args", [["-C", "-d"], ["-c", "100000"], ["0"], ["1", "0"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    assert CliRunner().invoke(cli, ["softirqs", *args]).exit_code == 2
