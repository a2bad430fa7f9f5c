"""Where, on the interval tools: top's NETNS and CONTAINER, subnet, rtt and synbl per
network namespace, and --netns on them, with processes the test places in named
namespaces and container-like cgroups of its own (test_where's World: A in a
docker-style cgroup in namespace ns.a, B in a pod's in ns.b, talking to each other)."""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from typing import Any

import pytest
from helpers import NetnsPair, Trace
from test_where import World, world  # noqa: F401  (the fixture)
from traffic_helpers import in_netns, nstat, wait_for

pytestmark = pytest.mark.integration


def per_connection(records: list[dict[str, Any]], pid: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(lport, rport) -> (tx, rx) of a process's rows, summed over the intervals."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for r in records:
        if r["pid"] == pid:
            tx, rx = out.get((r["lport"], r["rport"]), (0, 0))
            out[r["lport"], r["rport"]] = (tx + r["tx_bytes"], rx + r["rx_bytes"])
    return out


def test_top_and_subnet_count_in_each_namespace(world: World) -> None:  # noqa: F811
    """Each peer sends 1000 bytes on the connection it makes and 300 on the one it
    accepts: top's rows carry the peer's namespace and container with exactly those
    bytes; --netns ns.a keeps A's rows only (the unfiltered run, the control, has B's
    and this process's too). subnet counts the same bytes per namespace."""
    ns, cg = world.ns, world.cg
    subnet = f"{ns.addr_a.rsplit('.', 1)[0]}.0/24"
    with Trace(["top", "--json", "0.3"]) as everything, Trace(["top", "--json", "0.3", "--netns", ns.a]) as only_a, \
            Trace(["top", "-C", "-w", "0.3", "--netns", ns.a]) as text, \
            Trace(["subnet", "--json", "-i", "0.3", subnet]) as by_subnet, \
            Trace(["subnet", "--json", "-i", "0.3", "--netns", ns.b, subnet]) as subnet_b:
        world.run()
    a, b, me = world.a.pid, world.b.pid, os.getpid()
    for pid, label, inode, name in ((a, cg.docker_label, world.inode_a, ns.a), (b, cg.kube_label, world.inode_b, ns.b)):
        rows = [r for r in everything.records if r["pid"] == pid]
        assert {(r["netns"], r["netns_inode"], r["container"]) for r in rows} == {(name, inode, label)}
        assert sorted(per_connection(rows, pid).values()) == [(300, 1000), (1000, 300)], rows
    assert {r["netns"] for r in everything.records if r["pid"] == me} == {"host"}

    assert {r["pid"] for r in only_a.records} == {a}, only_a.stdout
    assert per_connection(only_a.records, a) == per_connection(everything.records, a)
    header = next(line for line in text.lines if line.startswith("PID"))
    assert header.split()[-2:] == ["NETNS", "CONTAINER"]
    fields = [line.split() for line in text.lines if line.split()[:1] == [str(a)]]
    assert fields and {tuple(f[-2:]) for f in fields} == {(ns.a, cg.docker_label)}, text.stdout

    sent: dict[str, int] = defaultdict(int)
    for r in by_subnet.records:
        sent[r["netns"]] += r["bytes"]
    assert {n: sent[n] for n in (ns.a, ns.b)} == {ns.a: 1300, ns.b: 1300}, by_subnet.records
    assert {(r["netns"], r["netns_inode"]) for r in subnet_b.records} == {(ns.b, world.inode_b)}
    assert sum(r["bytes"] for r in subnet_b.records) == 1300


def test_rtt_per_namespace(world: World) -> None:  # noqa: F811
    """-n: one histogram per namespace, each with the samples taken there (no more than
    the segments that namespace received, nstat's TcpInSegs); --netns ns.b keeps
    exactly ns.b's samples."""
    ns = world.ns
    before = nstat(ns, ns.b, "TcpInSegs")["TcpInSegs"]
    with Trace(["rtt", "--json", "-n"]) as each, Trace(["rtt", "--json", "-n", "--netns", ns.b]) as only_b:
        world.run()
    in_segs = nstat(ns, ns.b, "TcpInSegs")["TcpInSegs"] - before
    counts = {r["netns"]: r["count"] for r in each.records}
    assert counts.get(ns.a, 0) > 0 and 0 < counts.get(ns.b, 0) <= in_segs, (counts, in_segs)
    assert [(r["netns"], r["count"]) for r in only_b.records] == [(ns.b, counts[ns.b])]


def overflow(net: NetnsPair, server_ns: str, addr: str, client_ns: str, clients: int = 6) -> tuple[socket.socket,
                                                                                                  list[socket.socket]]:
    """A listen(1) listener in ``server_ns`` that never accepts, and ``clients``
    connects to it from ``client_ns``: two are queued, the other SYNs overflow."""
    with in_netns(server_ns):
        server = socket.socket()
    server.bind((addr, 0))
    server.listen(1)
    conns = []
    for _ in range(clients):
        with in_netns(client_ns):
            c = socket.socket()
        c.setblocking(False)
        c.connect_ex((addr, server.getsockname()[1]))
        conns.append(c)
    return server, conns


def test_synbl_overflows_and_histograms_in_their_namespace() -> None:
    """Both namespaces' listeners overflow; the unfiltered trace (the control) has
    both, --netns ns.b only ns.b's: its histogram (the two queued connections) and its
    overflows, equal to nstat's ListenOverflows inside ns.b."""
    key = "TcpExtListenOverflows"
    with NetnsPair() as net:
        with Trace(["synbl", "--json"]) as both, Trace(["synbl", "--json", "--netns", net.b]) as only_b:
            before = {n: nstat(net, n, key)[key] for n in (net.a, net.b)}
            made = [overflow(net, net.b, net.addr_b, net.a), overflow(net, net.a, net.addr_a, net.b)]
            assert wait_for(lambda: all(nstat(net, n, key)[key] - before[n] >= 4 for n in (net.a, net.b)))
            for _server, conns in made:
                for c in conns:
                    c.close()  # no more SYN retransmits
            counted = {n: nstat(net, n, key)[key] - before[n] for n in (net.a, net.b)}
            for server, _ in made:
                server.close()
    hists = [(r["netns"], r["backlog_max"], r["count"]) for r in both.records if "backlog_max" in r]
    assert {(net.a, 1, 2), (net.b, 1, 2)} <= set(hists), hists
    assert [(r["netns"], r["backlog_max"], r["count"]) for r in only_b.records if "backlog_max" in r] == [
        (net.b, 1, 2)]
    rows = [r for r in only_b.records if "listener" in r]
    assert [(r["netns"], r["overflows"]) for r in rows] == [(net.b, counted[net.b])], only_b.records
    # the control: both namespaces' listeners (other namespaces' overflows, the host's too, may come with them)
    assert {net.a, net.b} <= {r["netns"] for r in both.records if "listener" in r}
    assert only_b.summary["only"] == {"netns": [net.b]}
