"""netsnoop export's byte counters, read off the sockets (sock_diag's tcp_info) at
scrape time plus the final counts of sockets that closed meanwhile, kept in the kernel:
each connection's bytes count exactly once, the counters never go back when a socket
closes, and no program runs per send or receive call."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from typing import Any

import pytest
from helpers import NetnsPair, Trace, free_port
from traffic_helpers import Sink, in_netns, wait_for

from netsnoop import metrics
from netsnoop.btf import StructDecoder
from netsnoop.runner import LoadSpec, warn

pytestmark = pytest.mark.integration


def scrape(target: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def ss_bytes(net: NetnsPair, ns: str, port: int) -> list[dict[str, int]]:
    """``ss -ti`` inside ``ns`` for the connections of ``port``: the kernel's own
    figures (bytes_acked, bytes_received, ...) as ss prints them."""
    out = net.exec(ns, f"ss -Htin state established '( sport = :{port} or dport = :{port} )'").stdout
    rows = []
    for line in out.splitlines():
        fields = dict(f.split(":", 1) for f in line.split() if f.startswith("bytes_"))
        if fields or line.startswith("\t") or line.startswith(" "):
            rows.append({k: int(v) for k, v in fields.items()})
    return [r for r in rows if r]


def prog_names(pid: int) -> set[str]:
    """The names of the BPF programs a process holds, from its fds (fdinfo's prog_id)
    and the kernel's record of each program (bpftool)."""
    from driver import bpf_fds

    names = set()
    for prog_id in {i["prog_id"] for i in bpf_fds(pid) if "prog_id" in i}:
        done = subprocess.run(["bpftool", "prog", "show", "id", prog_id, "-j"], capture_output=True, text=True)
        if done.returncode == 0:
            names.add(json.loads(done.stdout)["name"])
    return names


def test_a_connection_counts_live_then_once_when_closed_without_send_recv_hooks() -> None:
    """A connection's bytes show while it lives (what the test sent, and ss -ti's
    bytes_acked less the SYN), then after it closed exactly once, scrape after scrape;
    the exporter holds the close hook and no program on the send/recv tracepoints."""
    first, more = 300_000, 123_457
    with NetnsPair() as net:
        with in_netns(net.b):
            sink = Sink(net.addr_b)
        port = str(sink.port)
        target = f"127.0.0.1:{free_port()}"
        sent = ("netsnoop_tcp_sent_bytes_total", (("netns", net.a), ("port", port)))
        received = ("netsnoop_tcp_received_bytes_total", (("netns", net.b), ("port", port)))
        with Trace(["export", "--listen", target, "--metrics", "bytes", "--port-labels", port]) as t:
            names = prog_names(t.proc.pid)
            # the programs it holds are the close hook's; none counts per call
            assert any(n.startswith("set_state__") for n in names), names
            assert not [n for n in names if n.startswith(("send__", "recv__"))], names
            assert sent not in scrape(target)  # nothing moved yet in these namespaces

            with in_netns(net.a):
                c = socket.create_connection((net.addr_b, sink.port), timeout=10)
            c.sendall(b"a" * first)
            assert wait_for(lambda: sink.received == first, timeout=10)
            live = ss_bytes(net, net.a, sink.port)
            assert wait_for(lambda: scrape(target).get(sent) == first, timeout=10), scrape(target).get(sent)
            assert scrape(target).get(received) == first
            # the kernel's own record agrees: bytes_acked counts the SYN as one
            assert [r["bytes_acked"] - 1 for r in live] == [first], live

            c.sendall(b"b" * more)
            c.close()
            assert wait_for(lambda: sink.received == first + more, timeout=10)
            # both ends gone from the tables sock_diag reads (the client's in TIME_WAIT)
            assert wait_for(lambda: not ss_bytes(net, net.a, sink.port) and not ss_bytes(net, net.b, sink.port)
                            and "LAST-ACK" not in net.exec(net.b, "ss -Htan").stdout, timeout=10)
            for _ in range(3):  # closed, then scraped again and again: once
                got = scrape(target)
                assert (got.get(sent), got.get(received)) == (first + more, first + more)
            sink.close()
        # and its summary names that hook group alone
        assert list(t.hooks) == ["bytes.set_state"] and t.hooks["bytes.set_state"], t.hooks


def closed_entries(src: metrics.Bytes, inodes: set[int]) -> int:
    """Entries of the kernel's table of closed sockets from these namespaces."""
    assert src.obj is not None
    decode = StructDecoder(src.obj.btf, "closed_key").decode
    return sum(1 for k in src.obj.map("closed").keys() if decode(k).netns in inodes)


def test_a_socket_listed_live_and_closed_in_one_scrape_counts_once_and_the_sum_never_goes_back() -> None:
    """The race the cookies guard against, made on purpose: a scrape lists a
    connection live, then both its ends close before the scrape takes the kernel's
    table. Positive control: the listing held them with all their bytes (ss -ti in
    there, before the close) and the take then held their final counts (so counting
    both would give twice the bytes). The sums read before, at and after the close
    (unclamped, as read) never go back, and equal what the test sent."""
    size = 200_000
    with NetnsPair() as net:
        ino = {ns: os.stat(f"/run/netns/{ns}").st_ino for ns in (net.a, net.b)}
        ctx = metrics.Context(metrics.PortLabels(), metrics.NetnsLabels(64), 10)
        exp = metrics.Exporter(["bytes"], ctx)
        exp.open(warn)
        try:
            src = exp.sources[0]
            assert isinstance(src, metrics.Bytes) and src.obj is not None
            with in_netns(net.b):
                listener = socket.socket()
                listener.bind((net.addr_b, 0))
                listener.listen(1)
            with in_netns(net.a):
                c = socket.create_connection((net.addr_b, listener.getsockname()[1]), timeout=10)
            s, _ = listener.accept()
            listener.close()
            c.sendall(b"x" * size)
            got = 0
            while got < size:
                got += len(s.recv(1 << 16))

            def ours(sums: tuple[dict[Any, int], dict[Any, int]]) -> tuple[int, int]:
                sent, received = sums
                return sent.get((ino[net.a],), 0), received.get((ino[net.b],), 0)

            history = [ours(src.read())]
            listed: list[dict[str, int]] = []

            def close_both() -> None:
                listed.extend(ss_bytes(net, net.b, s.getsockname()[1]))  # still live, as listed
                c.close()
                s.close()
                assert wait_for(lambda: closed_entries(src, set(ino.values())) == 2, timeout=10)

            overlaps = src.overlaps
            history.append(ours(src.read(after_listing=close_both)))
            history.append(ours(src.read()))
        finally:
            exp.close()
    assert history == [(size, size)] * 3, history
    # positive control: listed live with every byte, then taken closed in the same read
    # (both ends), so counting both would have given twice the bytes
    assert [r["bytes_received"] for r in listed] == [size], listed
    assert src.overlaps - overlaps == 2


def test_closed_sockets_a_full_table_cannot_take_are_counted_as_lost() -> None:
    """With room for two closed sockets, eight that closed with bytes before a poll
    leave at most two counted and the rest in lost_events; the same closes, seen by a
    table of the usual size in the same run, all count (positive control)."""
    conns, size = 4, 1000
    with NetnsPair() as net:
        ino = {ns: os.stat(f"/run/netns/{ns}").st_ino for ns in (net.a, net.b)}
        ctx = metrics.Context(metrics.PortLabels(), metrics.NetnsLabels(64), 10)
        small, usual = metrics.Bytes(ctx), metrics.Bytes(ctx)
        small.tracer = LoadSpec("sockbytes", max_entries={"closed": 2})
        try:
            small.open()
            usual.open()
            with in_netns(net.b):
                listener = socket.socket()
                listener.bind((net.addr_b, 0))
                listener.listen(conns)
            for _ in range(conns):
                with in_netns(net.a):
                    c = socket.create_connection((net.addr_b, listener.getsockname()[1]), timeout=10)
                s, _ = listener.accept()
                c.sendall(b"y" * size)
                assert len(s.recv(size, socket.MSG_WAITALL)) == size
                c.close()
                s.close()
            listener.close()
            assert wait_for(lambda: closed_entries(usual, set(ino.values())) == 2 * conns, timeout=10)
            for src in (small, usual):
                src.poll()
            assert small.obj is not None
            lost = small.obj.health()["lost_events"]
        finally:
            small.close()
            usual.close()
    assert (usual.sent.get((ino[net.a],)), usual.received.get((ino[net.b],))) == (conns * size, conns * size)
    taken = (small.sent.get((ino[net.a],), 0) + small.received.get((ino[net.b],), 0)) // size
    assert taken <= 2 and lost >= 2 * conns - taken, (taken, lost)


def test_live_sockets_of_both_families_count() -> None:
    """One IPv4 and one IPv6 connection, alive, listed in one request for both
    families: each namespace's sums are what the test sent over the two."""
    with NetnsPair() as net:
        ino = {ns: os.stat(f"/run/netns/{ns}").st_ino for ns in (net.a, net.b)}
        src = metrics.Bytes(metrics.Context(metrics.PortLabels(), metrics.NetnsLabels(64), 10))
        held = []
        try:
            src.open()
            for family, addr, size in ((socket.AF_INET, net.addr_b, 70_000), (socket.AF_INET6, net.addr6_b, 50_000)):
                with in_netns(net.b):
                    listener = socket.socket(family)
                    listener.bind((addr, 0))
                    listener.listen(1)
                with in_netns(net.a):
                    c = socket.create_connection((addr, listener.getsockname()[1]), timeout=10)
                s, _ = listener.accept()
                listener.close()
                c.sendall(b"v" * size)
                assert len(s.recv(size, socket.MSG_WAITALL)) == size
                held += [c, s]
            sent, received = src.read()
            families = {sock.family for sock in held}
        finally:
            for sock in held:
                sock.close()
            src.close()
    assert families == {socket.AF_INET, socket.AF_INET6}
    assert (sent.get((ino[net.a],)), received.get((ino[net.b],))) == (120_000, 120_000), (sent, received)
