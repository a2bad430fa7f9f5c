"""netsnoop synbl: listeners that never accept, filled past their backlog by the test.

A listener with backlog 13 takes 14 connections (the kernel refuses a 15th once more
than 13 wait) and each one arrives to a queue of 0, 1, ..., 13: the histogram is
exact. The other 6 SYNs find the queue full: the kernel's ListenOverflows counter
sees them. With TCP_DEFER_ACCEPT on a backlog-0 listener, a final ACK (with data) can
arrive to a full queue: that drop is seen per backlog limit.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Iterator

import pytest
from click.testing import CliRunner
from helpers import Trace

from netsnoop.cli import cli
from netsnoop.commands.synbl import listen_overflows
from netsnoop.loader import BPFObject

BACKLOG, CLIENTS = 13, 20
# queue lengths 0..13 in log2 slots [0,1] [2,3] [4,7] [8,15]
EXPECTED = [{"low": 0, "high": 1, "count": 2}, {"low": 2, "high": 3, "count": 2},
            {"low": 4, "high": 7, "count": 4}, {"low": 8, "high": 15, "count": 6}]


@contextlib.contextmanager
def overflowing_listeners(host: str = "127.0.0.1") -> Iterator[None]:
    """CLIENTS connects to a BACKLOG listener, and one final-ACK overflow on a
    TCP_DEFER_ACCEPT listener with backlog 0; nothing is ever accepted."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        def sock() -> socket.socket:
            return stack.enter_context(socket.socket(family))

        full = sock()
        full.bind((host, 0))
        full.listen(BACKLOG)
        for _ in range(CLIENTS):
            c = sock()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(full.getsockname())
        deferred = sock()
        deferred.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
        deferred.bind((host, 0))
        deferred.listen(0)
        late, first = sock(), sock()
        late.connect(deferred.getsockname())  # its bare ACK waits for data
        first.connect(deferred.getsockname())
        first.send(b"x")  # queued: the queue (limit 0) is now full
        time.sleep(0.1)
        late.send(b"y")  # its ACK now overflows
        time.sleep(0.2)
        yield


def by_limit(records: list[dict]) -> dict[int, dict]:
    return {r["backlog_max"]: r for r in records if "backlog_max" in r}


@pytest.mark.integration
@pytest.mark.parametrize("hooks", ["tp_btf", "tracepoint"])
def test_backlog_histogram_and_overflows(hooks: str) -> None:
    with Trace(["synbl", "--json"], env={"NETSNOOP_PREFER": hooks}) as t, overflowing_listeners():
        pass
    hists = by_limit(t.records)
    assert hists[BACKLOG]["buckets"] == EXPECTED and hists[BACKLOG]["count"] == BACKLOG + 1
    assert hists[0]["buckets"][0]["count"] >= 1  # the deferred listener's one connection
    assert hists[0]["overflows"] >= 1  # the final ACK dropped for the full queue
    (netns,) = [r for r in t.records if "listen_overflows" in r]
    assert netns["listen_overflows"] >= CLIENTS - (BACKLOG + 1) + 1  # 6 SYNs + 1 ACK, at least
    assert t.summary["lost_events"] == 0


@pytest.mark.integration
def test_text_layout() -> None:
    with Trace(["synbl"]) as t, overflowing_listeners():
        pass
    at = t.lines.index(f"backlog_max = {BACKLOG}")
    assert t.lines[at + 1] == "     backlog             : count     distribution"
    assert t.lines[at + 2] == "         0 -> 1          : 2        |*************                           |"
    assert t.lines[at + 5] == "         8 -> 15         : 6        |****************************************|"
    assert t.lines[at + 6].startswith("overflows = ")
    assert any(line.startswith("listen_overflows = ") for line in t.lines)


@pytest.mark.integration
def test_ipv6_only_ignores_ipv4_listeners() -> None:
    with Trace(["synbl", "--json", "-6"]) as t, overflowing_listeners("127.0.0.1"):
        pass
    assert BACKLOG not in by_limit(t.records)


@pytest.mark.integration
def test_ipv6_listeners() -> None:
    with Trace(["synbl", "--json", "-6"]) as t, overflowing_listeners("::1"):
        pass
    assert by_limit(t.records)[BACKLOG]["buckets"] == EXPECTED


@pytest.mark.integration
def test_kprobe_variant_passes_the_verifier() -> None:
    with BPFObject("synbl", variants={"queued": "kprobe", "overflow": "tracepoint"}) as obj:
        obj.load()
        assert obj.chosen == {"queued": "kprobe", "overflow": "tracepoint"}


def test_listen_overflows_reads_tcpext(tmp_path) -> None:  # type: ignore[no-untyped-def]
    netstat = tmp_path / "netstat"
    netstat.write_text(
        "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 42 43\n"
        "IpExt: InNoRoutes\nIpExt: 0\n"
    )
    assert listen_overflows(str(netstat)) == 42
    assert listen_overflows(str(tmp_path / "missing")) is None
    assert isinstance(listen_overflows(), int)  # this kernel's own file


def test_bad_options_are_usage_errors() -> None:
    assert CliRunner().invoke(cli, ["synbl", "-i", "-1"]).exit_code == 2
    assert CliRunner().invoke(cli, ["synbl", "-4", "--bogus"]).exit_code == 2
