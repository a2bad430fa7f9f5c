"""A lossy conversation between two container-like processes in two named network
namespaces, for the who-and-where tests of drop, retrans and export: each side's
firewall drops the other's packets for a while, so both sides' sockets see drops
(NETFILTER_DROP, in their own namespace) and retransmit (from timers, in softirq).

A ("dropclient") runs in namespace ``ns.a`` and a docker-style cgroup, B
("dropserver") in ``ns.b`` and a Kubernetes-style one (test_where's cgroups). The
independent records are the firewalls' own counters (named nft counters, which outlive
the rules) and ``nstat`` inside each namespace."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from typing import Any, Iterator

from helpers import NetnsPair
from test_where import Cgroups
from traffic_helpers import nstat, wait_for

# A peer: names itself, waits for a first line (meanwhile it is moved into its cgroup),
# then listens (printing its port) or connects to the port that line gives; then, per
# line, sends 100 bytes ("send") or reads until it has received that many in all
# ("<n>"), and says "ok".
PEER = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
go = sys.stdin.readline()
if sys.argv[2] == "listen":
    srv = socket.create_server((sys.argv[3], 0))
    print(srv.getsockname()[1], flush=True)
    c = srv.accept()[0]
else:
    c = socket.create_connection((sys.argv[3], int(go)), timeout=10)
got = 0
for line in sys.stdin:
    if line == "send\n":
        c.sendall(b"x" * 100)
    else:
        while got < int(line):
            got += len(c.recv(65536))
    print("ok", flush=True)
"""

RETRANS = "TcpRetransSegs"


class LossScene:
    """The peers exist (``a``, ``b``: PIDs for -p) and wait; ``start()`` them once the
    traces run, then ``lose()``; the figures to compare with are then in ``dropped``
    and ``retransmitted`` (per namespace name)."""

    def __init__(self, ns: NetnsPair, cg: Cgroups) -> None:
        self.ns, self.cg = ns, cg
        self.inode = {ns.a: os.stat(f"/run/netns/{ns.a}").st_ino, ns.b: os.stat(f"/run/netns/{ns.b}").st_ino}
        self.port = 0
        self.dropped: dict[str, int] = {}
        self.retransmitted: dict[str, int] = {}
        self.procs: list[subprocess.Popen[str]] = []
        for name in (ns.a, ns.b):
            ns.exec(name, "nft add table inet netsnoop_test")
            ns.exec(name, "nft 'add chain inet netsnoop_test input { type filter hook input priority 0; "
                          "policy accept; }'")
            ns.exec(name, "nft add counter inet netsnoop_test lost")
        self.b = self._peer(ns.b, cg.kube, "dropserver", "listen", ns.addr_b)
        self.a = self._peer(ns.a, cg.docker, "dropclient", "connect", ns.addr_b)

    def _peer(self, name: str, cgroup: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", PEER, *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        Cgroups.move(cgroup, proc.pid)
        return proc

    @staticmethod
    def say(proc: subprocess.Popen[str], line: str, answer: bool = True) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        if answer:
            assert proc.stdout.readline() == "ok\n"

    def start(self) -> None:
        """B listens, A connects; one exchange each way (RTT measured, owners known)."""
        self.say(self.b, "go", answer=False)
        assert self.b.stdout is not None
        self.port = int(self.b.stdout.readline())
        self.say(self.a, str(self.port), answer=False)
        self.say(self.a, "send")
        self.say(self.b, "100")
        self.say(self.b, "send")
        self.say(self.a, "100")

    def _unacked(self, name: str) -> bool:
        return "unacked" in self.ns.exec(name, f"ss -Htni '( sport = :{self.port} or dport = :{self.port} )'").stdout

    def lose(self) -> None:
        """Each firewall drops what the other side sends until both have retransmitted
        twice; then nothing is lost, and both sides get everything acknowledged."""
        ns = self.ns
        before = {n: nstat(ns, n, RETRANS)[RETRANS] for n in (ns.a, ns.b)}
        ns.exec(ns.a, f"nft 'add rule inet netsnoop_test input tcp sport {self.port} counter name lost drop'")
        ns.exec(ns.b, f"nft 'add rule inet netsnoop_test input tcp dport {self.port} counter name lost drop'")
        self.say(self.a, "send")
        self.say(self.b, "send")
        assert wait_for(lambda: all(nstat(ns, n, RETRANS)[RETRANS] - before[n] >= 2 for n in (ns.a, ns.b)),
                        timeout=10)
        for n in (ns.a, ns.b):
            ns.exec(n, "nft flush chain inet netsnoop_test input")
        self.say(self.a, "200")
        self.say(self.b, "200")
        assert wait_for(lambda: not self._unacked(ns.a) and not self._unacked(ns.b), timeout=10)
        for n in (ns.a, ns.b):
            self.retransmitted[n] = nstat(ns, n, RETRANS)[RETRANS] - before[n]
            counter = json.loads(ns.exec(n, "nft -j list counter inet netsnoop_test lost").stdout)
            self.dropped[n] = next(i["counter"]["packets"] for i in counter["nftables"] if "counter" in i)

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def owner(self, name: str) -> tuple[int, str, str]:
        """(pid, comm, container) of the process whose socket lives in namespace ``name``."""
        if name == self.ns.a:
            return self.a.pid, "dropclient", self.cg.docker_label
        return self.b.pid, "dropserver", self.cg.kube_label


@contextlib.contextmanager
def loss_scene() -> Iterator[LossScene]:
    """Namespaces, cgroups and waiting peers, all gone again on exit."""
    with NetnsPair() as ns, Cgroups() as cg:
        scene = LossScene(ns, cg)
        try:
            yield scene
        finally:
            scene.close()


def per_netns(records: list[dict[str, Any]], value: str) -> dict[str, int]:
    """A -c table's ``value`` summed per namespace label."""
    out: dict[str, int] = {}
    for r in records:
        out[r["netns"]] = out.get(r["netns"], 0) + r[value]
    return out
