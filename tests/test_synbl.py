"""netsnoop synbl: listeners that never accept, filled past their backlog by the test.

A listener with backlog 13 takes 14 connections (the kernel refuses a 15th once more
than 13 wait) and each one arrives to a queue of 0, 1, ..., 13: the histogram is
exact. Overflows are checked against the kernel's own ListenOverflows counter of the
listener's namespace (nstat run inside it), with netsnoop running in the root one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from typing import Iterator

import pytest
from click.testing import CliRunner
from helpers import NetnsPair, Trace, assert_verified
from traffic_helpers import in_netns, nstat, wait_for

from netsnoop import netns
from netsnoop.cli import cli

BACKLOG, CLIENTS = 13, 20
# queue lengths 0..13 in log2 slots [0,1] [2,3] [4,7] [8,15]
EXPECTED = [{"low": 0, "high": 1, "count": 2}, {"low": 2, "high": 3, "count": 2},
            {"low": 4, "high": 7, "count": 4}, {"low": 8, "high": 15, "count": 6}]
OVERFLOWS = "TcpExtListenOverflows"


@contextlib.contextmanager
def full_listener(host: str, backlog: int = BACKLOG, clients: int = CLIENTS) -> Iterator[socket.socket]:
    """``clients`` non-blocking connects to a listener with ``backlog``, which never
    accepts: it takes backlog + 1, the other SYNs overflow. Yields once every queued
    connection has been sampled (the listener says so: its queue is full)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        full = stack.enter_context(socket.socket(family))
        full.bind((host, 0))
        full.listen(backlog)
        for _ in range(clients):
            c = stack.enter_context(socket.socket(family))
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(full.getsockname())
        port = full.getsockname()[1]
        here = next(n for n in netns.namespaces() if n.inode == os.stat("/proc/thread-self/ns/net").st_ino)
        assert wait_for(lambda: any(lst.port == port and lst.queue == backlog + 1 for lst in netns.listeners(here)))
        yield full


def by_limit(records: list[dict]) -> dict[int, dict]:
    return {r["backlog_max"]: r for r in records if "backlog_max" in r}


@pytest.mark.integration
@pytest.mark.parametrize("hooks", ["tp_btf", "tracepoint"])
def test_backlog_histogram(hooks: str) -> None:
    with Trace(["synbl", "--json"], env={"NETSNOOP_HOOKS": hooks}) as t, full_listener("127.0.0.1"):
        pass
    hists = by_limit(t.records)
    assert hists[BACKLOG]["buckets"] == EXPECTED and hists[BACKLOG]["count"] == BACKLOG + 1
    assert t.summary["hooks"] == {"queued": hooks}
    assert t.summary["lost_events"] == 0


@pytest.mark.integration
def test_overflows_are_given_to_the_listener_in_its_namespace() -> None:
    """The issue's case: listen(1) never accepting in namespace B, 10 clients from A,
    netsnoop in the root namespace."""
    with NetnsPair() as net:
        with in_netns(net.b):
            server = socket.socket()
        server.bind((net.addr_b, 0))
        server.listen(1)
        port = server.getsockname()[1]
        with Trace(["synbl", "--json"]) as t, Trace(["synbl"]) as text:
            before = nstat(net, net.b, OVERFLOWS)[OVERFLOWS]
            clients = []
            for _ in range(10):
                with in_netns(net.a):
                    c = socket.socket()
                c.setblocking(False)
                c.connect_ex((net.addr_b, port))
                clients.append(c)
            # two fit (listen(1) holds two); each of the other eight SYNs overflows
            assert wait_for(lambda: nstat(net, net.b, OVERFLOWS)[OVERFLOWS] - before >= 8)
            for c in clients:
                c.close()  # no more SYN retransmits
            overflowed = nstat(net, net.b, OVERFLOWS)[OVERFLOWS] - before
        server.close()

    rows = [r for r in t.records if r.get("netns") == net.b and "listener" in r]
    assert [(r["listener"], r["addr"], r["port"], r["pid"], r["overflows"]) for r in rows] == [
        (f"{net.addr_b}:{port}", net.addr_b, port, os.getpid(), overflowed)], t.records
    assert rows[0]["queue"] == 2 and rows[0]["max"] == 1 and rows[0]["drops"] >= overflowed
    (total,) = [r["listen_overflows_all_netns"] for r in t.records if "listen_overflows_all_netns" in r]
    assert total >= overflowed
    # the two queued connections, sampled in B (another namespace may have a listen(1) busy meanwhile)
    assert by_limit([r for r in t.records if r.get("netns") == net.b])[1]["count"] == 2

    header = next(line for line in text.lines if line.startswith("NETNS"))
    assert header.split() == ["NETNS", "LISTENER", "PID", "COMM", "QUEUE", "MAX", "DROPS", "OVERFLOWS"]
    (row,) = [line.split() for line in text.lines if line.startswith(net.b)]
    assert row[:3] == [net.b, f"{net.addr_b}:{port}", str(os.getpid())] and row[-1] == str(overflowed)


@pytest.mark.integration
def test_final_ack_overflow_is_given_to_its_listener() -> None:
    """With TCP_DEFER_ACCEPT on a backlog-0 listener, a final ACK (with data) arrives
    to a full queue: an overflow the SYN path never sees."""
    with NetnsPair() as net:
        with in_netns(net.b):
            deferred = socket.socket()
        deferred.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
        deferred.bind((net.addr_b, 0))
        deferred.listen(0)
        with Trace(["synbl", "--json"]) as t:
            before = nstat(net, net.b, OVERFLOWS)[OVERFLOWS]
            with in_netns(net.a):
                late, first = socket.socket(), socket.socket()
            late.connect(deferred.getsockname())  # its bare ACK waits for data
            first.connect(deferred.getsockname())
            first.send(b"x")  # queued: the queue (limit 0) is now full
            ns_b = next(n for n in netns.namespaces() if n.name == net.b)
            assert wait_for(lambda: any(lst.queue == 1 for lst in netns.listeners(ns_b)))
            late.send(b"y")  # its ACK now overflows
            assert wait_for(lambda: nstat(net, net.b, OVERFLOWS)[OVERFLOWS] > before)
            for c in (late, first):  # a reset ends the retransmits of "y" (no overflow)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            overflowed = nstat(net, net.b, OVERFLOWS)[OVERFLOWS] - before
        port = deferred.getsockname()[1]
        deferred.close()
    rows = [r for r in t.records if r.get("netns") == net.b and "listener" in r]
    assert [(r["port"], r["overflows"]) for r in rows] == [(port, overflowed)], t.records


@pytest.mark.integration
def test_ipv6_only_ignores_ipv4_listeners() -> None:
    # the IPv6 listener (backlog 11) is the positive control, in the same run
    with Trace(["synbl", "--json", "-6"]) as t, full_listener("127.0.0.1"), full_listener("::1", backlog=11):
        pass
    hists = by_limit(t.records)
    assert BACKLOG not in hists
    assert hists[11]["count"] == 12


@pytest.mark.integration
def test_ipv6_listeners() -> None:
    with Trace(["synbl", "--json", "-6"]) as t, full_listener("::1"):
        pass
    assert by_limit(t.records)[BACKLOG]["buckets"] == EXPECTED


@pytest.mark.integration
def test_kprobe_variant_passes_the_verifier() -> None:
    from netsnoop.loader import BPFObject

    with BPFObject("synbl", variants={"queued": "kprobe"}) as obj:
        obj.load()
        assert_verified(obj, "queued", "kprobe")


@pytest.mark.integration
def test_listener_drops_are_ss_drops() -> None:
    """netns.listener_drops reads what ``ss -ltm`` shows as d (sk_drops) in the namespace."""
    with NetnsPair() as net:
        with in_netns(net.b):
            server = socket.socket()
        server.bind((net.addr_b, 0))
        server.listen(0)
        port = server.getsockname()[1]
        clients = []
        for _ in range(4):
            with in_netns(net.a):
                c = socket.socket()
            c.setblocking(False)
            c.connect_ex((net.addr_b, port))
            clients.append(c)
        assert wait_for(lambda: nstat(net, net.b, OVERFLOWS)[OVERFLOWS] >= 2)
        for c in clients:
            c.close()
        ns_b = next(n for n in netns.namespaces() if n.name == net.b)
        (listener,) = netns.listeners(ns_b)
        ss = net.exec(net.b, f"ss -ltnmH sport = :{port}").stdout
        drops = int(ss.split(",d")[-1].rstrip(")\n \t").split(")")[0])
        assert netns.listener_drops(ns_b) == {listener.inode: drops} and drops >= 2
        server.close()


def test_bad_options_are_usage_errors() -> None:
    assert CliRunner().invoke(cli, ["synbl", "-i", "-1"]).exit_code == 2
    assert CliRunner().invoke(cli, ["synbl", "-4", "--bogus"]).exit_code == 2
