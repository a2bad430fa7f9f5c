"""netsnoop.netns reads other namespaces' state as tools run in them see it: listeners
as ``ss -ltn`` shows them there, counters as ``nstat`` there, interfaces as
``/proc/net/dev`` there."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from helpers import NetnsPair
from netsnoop import netns

SERVER = """
import socket, sys, time
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
time.sleep(60)
"""


def test_counters_are_named_as_nstat_names_them() -> None:
    text = "Tcp: RtoAlgorithm ActiveOpens\nTcp: 1 7\nIpExt: InOctets\nIpExt: 12\n"
    assert netns.parse_counters(text) == {"TcpRtoAlgorithm": 1, "TcpActiveOpens": 7, "IpExtInOctets": 12}


def test_dev_lines_give_each_interface_its_columns() -> None:
    text = ("Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes ...\n"
            "  lo: 10 2 0 1 0 0 0 0 20 3 0 4 0 0 0 0\n")
    assert netns.parse_dev(text) == [netns.Interface("lo", 10, 2, 0, 1, 20, 3, 0, 4)]


def nstat(ns: str, name: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-az", name], capture_output=True, text=True,
                         check=True).stdout
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith(name)))


@pytest.mark.integration
def test_listener_queue_owner_and_counters_of_another_namespace() -> None:
    with NetnsPair() as pair:
        server = pair.popen(pair.b, [sys.executable, "-c", SERVER, pair.addr_b, "8123"])
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "listening"
            # listen(1) holds two connections; the ones after overflow the queue
            clients = []
            from traffic_helpers import in_netns

            with in_netns(pair.a):
                for _ in range(4):
                    c = socket.socket()
                    c.setblocking(False)
                    c.connect_ex((pair.addr_b, 8123))
                    clients.append(c)
            deadline = time.monotonic() + 5
            while nstat(pair.b, "TcpExtListenOverflows") == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            spaces = {n.name: n for n in netns.namespaces()}
            assert pair.a in spaces and pair.b in spaces
            ns_b = spaces[pair.b]
            mine = [listener for listener in netns.listeners(ns_b) if listener.port == 8123]
            ss = pair.exec(pair.b, "ss -ltnH sport = :8123").stdout.split()
            assert len(mine) == 1, mine
            assert (mine[0].addr, mine[0].queue, mine[0].backlog) == (pair.addr_b, int(ss[1]), int(ss[2]))
            assert mine[0].queue == 2 and mine[0].backlog == 1
            assert netns.socket_owners({mine[0].inode})[mine[0].inode].pid in _pids_of(server.pid)
            assert not [listener for listener in netns.listeners(spaces[pair.a]) if listener.port == 8123]

            counters = netns.counters(ns_b)
            assert counters["TcpExtListenOverflows"] == nstat(pair.b, "TcpExtListenOverflows") > 0
            dev = {i.name: i for i in netns.interfaces(ns_b)}
            assert pair.dev_b in dev and "lo" in dev
            for c in clients:
                c.close()
        finally:
            server.kill()
            server.wait()


def _pids_of(parent: int) -> set[int]:
    """``ip netns exec`` execs the command, so the server is ``parent`` itself; its
    children are accepted too in case a wrapper stays."""
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return {parent, *(int(p) for p in out.split())}
