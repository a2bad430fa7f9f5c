"""netsnoop why, for real: each cause reproduced in a veth pair between two private
namespaces (server in ``a``, client in ``b``), with a real server and a real client,
netsnoop run from the root namespace.

All scenarios run at once, one port each, under one ``netsnoop why --json`` (the
slowest cause takes about three seconds; one after another they would take a
minute). Each test then checks its own port's verdict: the name, the namespace, the
port, the owner process where there is one, figures against the kernel's own counters
(``nstat`` inside the namespace) or what the test sent, and that no other flow on
its port was given another verdict (the healthy control flow runs in the same trace).

Client-only verdicts (REFUSED, TIMEOUT, UNREACHABLE) need a server netsnoop does not
see. Every namespace of this host is seen, so the client connects to a port that its
own namespace's nftables NAT rewrites to another one: the server side then happens
on a port netsnoop does not watch, as if it were another host.

Not reproduced here, only in test_verdicts.py: DROPPED (a SYN dropped for a reason no
other verdict names: any cause made on purpose here has its own verdict), NO_ANSWER
(a SYN that nothing on the host answers or drops: in a veth pair the kernel always
says why) and PASSED_ON (a SYN routed on or NATed: needs a third, forwarding
namespace). The accept queue's "time since the last accept()" is what sock_diag shows
over the trace (the queue never shrank), not a hook on accept().
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import subprocess
import threading
import time
from typing import Any, Iterator, TypeVar

import pytest
from helpers import NetnsPair, Trace
from traffic_helpers import in_netns

from netsnoop import verdicts as V

CONNECT_TIMEOUT = 1.5  # with tcp_syn_retries=1: SYNs at 0 s and 1 s, then curl gives up
CLIENT_SYSCTLS = "sysctl -qw net.ipv4.tcp_syn_retries=1"


def nstat(net: NetnsPair, ns: str) -> dict[str, int]:
    out = net.exec(ns, "nstat -az --json").stdout
    return {k: int(v) for k, v in json.loads(out)["kernel"].items()}


def python_server(
    net: NetnsPair, ns: str, bind: str, port: int, backlog: int = 16, accept: bool = False
) -> subprocess.Popen[str]:
    """A Python listener in ``ns``; prints "ready" once listening. Without ``accept`` it
    never calls accept()."""
    code = (
        "import socket,sys,time\n"
        f"s=socket.socket(socket.AF_INET6 if ':' in {bind!r} else socket.AF_INET)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"s.bind(({bind!r},{port}))\ns.listen({backlog})\nprint('ready',flush=True)\n"
        + ("while True:\n c,_=s.accept(); c.close()\n" if accept else "time.sleep(120)\n")
    )
    p = net.popen(ns, ["python3", "-c", code])
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def curl(net: NetnsPair, addr: str, port: int, source: str | None = None) -> subprocess.Popen[str]:
    args = ["curl", "-s", "-o", "/dev/null", "--connect-timeout", str(CONNECT_TIMEOUT), "--max-time", "3"]
    if source:
        args += ["--interface", source]
    return net.popen(net.b, args + [f"http://{addr}:{port}/"])


def mac(net: NetnsPair, ns: str, dev: str) -> str:
    return json.loads(net.exec(ns, f"ip -j link show {dev}").stdout)[0]["address"]


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def spoofed_syn(ns: str, src: str, dst: str, sport: int, dport: int) -> None:
    """A SYN from ``src`` (an address nobody in the pair holds), sent from ``ns`` with a
    raw socket: the server's SYN-ACKs then go where no socket answers them."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, socket.IPPROTO_TCP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with s:
        s.sendto(ip + tcp, (dst, 0))


class Scenario:
    """One cause: ``setup`` before netsnoop starts, ``traffic`` while it runs (in a
    thread of its own); ``facts`` keeps what the test needs to check afterwards."""

    verdict = ""

    def __init__(self, port: int) -> None:
        self.port = port
        self.net = NetnsPair()
        self.procs: list[subprocess.Popen[str]] = []
        self.socks: list[socket.socket] = []
        self.facts: dict[str, Any] = {}
        self.error: BaseException | None = None

    def __enter__(self) -> "Scenario":
        self.net.__enter__()
        self.net.exec(self.net.b, CLIENT_SYSCTLS)
        self.setup()
        self.before = {ns: nstat(self.net, ns) for ns in (self.net.a, self.net.b)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.socks:
            s.close()
        for p in self.procs:
            p.kill()
            p.wait()
        self.net.__exit__()

    def setup(self) -> None:
        pass

    def traffic(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            self.traffic()
            self.after = {ns: nstat(self.net, ns) for ns in (self.net.a, self.net.b)}
        except BaseException as err:  # reported by the test that owns this scenario
            self.error = err

    def delta(self, ns: str, name: str) -> int:
        return self.after[ns].get(name, 0) - self.before[ns].get(name, 0)

    def server(self, **kw: Any) -> subprocess.Popen[str]:
        p = python_server(self.net, self.net.a, kw.pop("bind", self.net.addr_a), self.port, **kw)
        self.procs.append(p)
        self.facts["server_pid"] = p.pid
        return p

    def curl(self, addr: str | None = None, port: int | None = None, source: str | None = None) -> int:
        p = curl(self.net, addr or self.net.addr_a, port or self.port, source)
        self.facts.setdefault("curl_pids", []).append(p.pid)
        p.wait(10)
        return p.returncode


class Ok(Scenario):
    verdict = "OK"

    def setup(self) -> None:
        p = self.net.popen(self.net.a, ["python3", "-m", "http.server", "--bind", self.net.addr_a, str(self.port)])
        self.procs.append(p)
        self.facts["server_pid"] = p.pid
        deadline = time.monotonic() + 10
        while f":{self.port} " not in self.net.exec(self.net.a, "ss -ltnH").stdout:
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.05)

    def traffic(self) -> None:
        assert self.curl() == 0


class OkTwice(Ok):
    """Two good connections, the first one old enough to be settled while tracing."""

    def traffic(self) -> None:
        assert self.curl() == 0
        time.sleep(1.6)
        assert self.curl() == 0


class NoListener(Scenario):
    verdict = "NO_LISTENER"

    def traffic(self) -> None:
        assert self.curl() == 7  # curl: could not connect (refused)


class OtherAddress(Scenario):
    verdict = "LISTENER_ON_OTHER_ADDRESS"

    def setup(self) -> None:
        self.server(bind="127.0.0.1", accept=True)

    def traffic(self) -> None:
        assert self.curl() == 7


class OtherNamespace(Scenario):
    verdict = "LISTENER_IN_OTHER_NAMESPACE"

    def setup(self) -> None:
        p = python_server(self.net, self.net.b, "0.0.0.0", self.port, accept=True)
        self.procs.append(p)
        self.facts["server_pid"] = p.pid

    def traffic(self) -> None:
        assert self.curl() == 7


class FirewallDrop(Scenario):
    verdict = "FIREWALL_DROP"
    rule = "drop"

    def setup(self) -> None:
        self.server(accept=True)
        self.net.exec(self.net.a, "nft add table inet why_test")
        self.net.exec(
            self.net.a, "nft 'add chain inet why_test input { type filter hook input priority 0; policy accept; }'"
        )
        self.net.exec(self.net.a, f"nft 'add rule inet why_test input tcp dport {self.port} counter {self.rule}'")
        rules = json.loads(self.net.exec(self.net.a, "nft -j list chain inet why_test input").stdout)["nftables"]
        self.facts["handle"] = next(r["rule"]["handle"] for r in rules if "rule" in r)

    def traffic(self) -> None:
        assert self.curl() != 0
        rules = json.loads(self.net.exec(self.net.a, "nft -j list chain inet why_test input").stdout)["nftables"]
        self.facts["rule_packets"] = next(
            e["counter"]["packets"] for r in rules if "rule" in r for e in r["rule"]["expr"] if "counter" in e
        )


class FirewallReject(FirewallDrop):
    verdict = "FIREWALL_REJECT"
    rule = "reject"


class RpFilter(Scenario):
    """The client calls from an address the server has no route back to; strict
    reverse-path filtering in the server's namespace drops the SYN."""

    verdict = "RP_FILTER"
    rp_filter = 1

    def setup(self) -> None:
        n = self.net
        self.source = n.addr_b.replace("10.77.", "10.78.", 1)
        n.exec(n.b, f"ip addr add {self.source}/32 dev {n.dev_b}")
        # the server would not answer ARP from an address it cannot route back to
        n.exec(n.b, f"ip neigh replace {n.addr_a} lladdr {mac(n, n.a, n.dev_a)} dev {n.dev_b} nud permanent")
        for conf in ("all", n.dev_a):
            n.exec(n.a, f"sysctl -qw net.ipv4.conf.{conf}.rp_filter={self.rp_filter}")
        self.server(accept=True)

    def traffic(self) -> None:
        assert self.curl(source=self.source) != 0


class NoRouteBack(RpFilter):
    verdict = "NO_ROUTE_BACK"
    rp_filter = 0


class AcceptQueueFull(Scenario):
    """listen(1) and no accept(): two connections fill the queue before the trace."""

    verdict = "ACCEPT_QUEUE_FULL"

    def setup(self) -> None:
        self.server(backlog=1)
        for _ in range(2):
            with in_netns(self.net.b):
                s = socket.create_connection((self.net.addr_a, self.port), timeout=2)
            self.socks.append(s)
        time.sleep(0.1)

    def traffic(self) -> None:
        assert self.curl() != 0


class NotAccepted(Scenario):
    verdict = "NOT_ACCEPTED"

    def setup(self) -> None:
        self.server(backlog=16)

    def traffic(self) -> None:
        with in_netns(self.net.b):
            s = socket.create_connection((self.net.addr_a, self.port), timeout=2)
        self.socks.append(s)
        self.facts["client_port"] = s.getsockname()[1]
        time.sleep(1.2)  # longer than why's grace: the connection waits unaccepted


class SynackUnanswered(Scenario):
    """A SYN from an address nobody holds; the server's neighbour entry sends the
    SYN-ACKs to the client's namespace, which is not that address and drops them."""

    verdict = "SYNACK_UNANSWERED"

    def setup(self) -> None:
        n = self.net
        self.spoof = n.addr_b.rsplit(".", 1)[0] + ".9"
        n.exec(n.a, f"ip neigh replace {self.spoof} lladdr {mac(n, n.b, n.dev_b)} dev {n.dev_a} nud permanent")
        n.exec(n.a, "sysctl -qw net.ipv4.tcp_synack_retries=1")
        self.server(backlog=16)

    def traffic(self) -> None:
        spoofed_syn(self.net.b, self.spoof, self.net.addr_a, 40000, self.port)
        time.sleep(1.4)  # the first SYN-ACK retransmit comes after 1 s


class SynQueueFull(SynackUnanswered):
    """listen(1), no SYN cookies: three unanswered requests fill the SYN queue and
    the real client's SYN is dropped."""

    verdict = "SYN_QUEUE_FULL"

    def setup(self) -> None:
        n = self.net
        self.spoof = n.addr_b.rsplit(".", 1)[0] + ".9"
        n.exec(n.a, f"ip neigh replace {self.spoof} lladdr {mac(n, n.b, n.dev_b)} dev {n.dev_a} nud permanent")
        n.exec(n.a, "sysctl -qw net.ipv4.tcp_syncookies=0 net.ipv4.tcp_synack_retries=3")
        self.server(backlog=1)
        for sport in (40001, 40002, 40003):
            spoofed_syn(n.b, self.spoof, n.addr_a, sport, self.port)

    def traffic(self) -> None:
        assert self.curl() != 0


class Natted(Scenario):
    """The client calls 10.99.x.1:port; its own namespace's NAT sends that to the server
    on port + 1, which netsnoop does not watch: a server on "another host"."""

    def setup(self) -> None:
        n = self.net
        self.remote = "10.99." + n.addr_a.split(".")[2] + ".1"
        n.exec(n.b, f"ip route add {self.remote}/32 dev {n.dev_b}")
        n.exec(n.b, "nft add table ip why_nat")
        n.exec(n.b, "nft 'add chain ip why_nat out { type nat hook output priority -100; }'")
        n.exec(n.b, f"nft 'add rule ip why_nat out ip daddr {self.remote} tcp dport {self.port} "
                    f"dnat to {n.addr_a}:{self.port + 1}'")
        self.server_side()

    def server_side(self) -> None:
        pass

    def traffic(self) -> None:
        self.facts["curl_rc"] = self.curl(self.remote)


class Refused(Natted):
    verdict = "REFUSED"


class Timeout(Natted):
    verdict = "TIMEOUT"

    def server_side(self) -> None:
        n = self.net
        n.exec(n.a, "nft 'add table ip t; add chain ip t in { type filter hook input priority 0; }; "
                    f"add rule ip t in tcp dport {self.port + 1} drop'")


class Unreachable(Natted):
    verdict = "UNREACHABLE"

    def server_side(self) -> None:
        n = self.net
        n.exec(n.a, f"nft 'add table ip t; add chain ip t in {{ type filter hook input priority 0; }}; "
                    f"add rule ip t in tcp dport {self.port + 1} reject with icmp type host-unreachable'")


class OutputDrop(Scenario):
    """A local output rule on the client drops its own SYNs: TIMEOUT, naming the rule."""

    verdict = "TIMEOUT"

    def setup(self) -> None:
        n = self.net
        self.server(accept=True)
        n.exec(n.b, "nft 'add table inet why_out; add chain inet why_out out { type filter hook output priority 0; }; "
                    f"add rule inet why_out out tcp dport {self.port} drop'")

    def traffic(self) -> None:
        assert self.curl() != 0


class Ok6(Ok):
    """IPv6: http.server on the server's IPv6 address, curl to it."""

    def setup(self) -> None:
        p = self.net.popen(self.net.a, ["python3", "-m", "http.server", "--bind", self.net.addr6_a, str(self.port)])
        self.procs.append(p)
        deadline = time.monotonic() + 10
        while f":{self.port} " not in self.net.exec(self.net.a, "ss -ltnH").stdout:
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.05)

    def traffic(self) -> None:
        assert self.curl(f"[{self.net.addr6_a}]") == 0


class NoListener6(NoListener):
    def traffic(self) -> None:
        assert self.curl(f"[{self.net.addr6_a}]") == 7


class FirewallDrop6(FirewallDrop):
    def traffic(self) -> None:
        assert self.curl(f"[{self.net.addr6_a}]") != 0


class NoRouteBack6(Scenario):
    """IPv6: the client calls from an address the server has no route back to."""

    verdict = "NO_ROUTE_BACK"

    def setup(self) -> None:
        n = self.net
        self.source = n.addr6_b.replace("fd77:", "fd78:", 1)
        n.exec(n.b, f"ip addr add {self.source}/128 dev {n.dev_b} nodad")
        # the server would not answer neighbour solicitations from an address it cannot route back to
        n.exec(n.b, f"ip neigh replace {n.addr6_a} lladdr {mac(n, n.a, n.dev_a)} dev {n.dev_b} nud permanent")
        p = python_server(n, n.a, n.addr6_a, self.port, accept=True)
        self.procs.append(p)
        self.facts["server_pid"] = p.pid

    def traffic(self) -> None:
        assert self.curl(f"[{self.net.addr6_a}]", source=self.source) != 0


SCENARIOS: list[type[Scenario]] = [Ok, NoListener, OtherAddress, OtherNamespace, FirewallDrop, FirewallReject, RpFilter,
                                   NoRouteBack, AcceptQueueFull, NotAccepted, SynackUnanswered, SynQueueFull, Refused,
                                   Timeout, Unreachable, OutputDrop]


# Below the ephemeral range, so no client port collides; drawn without replacement,
# because the module's `world` stays up while other tests run their own scenarios
# and `why` reports every namespace's listener on a port.
PORT_BASES = random.sample(range(10000, 32000, 100), 50)


@contextlib.contextmanager
def scenarios_traced(classes: list[type[Scenario]], args: list[str],
                     env: dict[str, str] | None = None) -> Iterator[tuple[dict[type[Scenario], Scenario], Trace]]:
    """Every scenario set up (in parallel), ``netsnoop why ARGS -P <their ports>``
    started, all traffic run in parallel, netsnoop stopped."""
    base = PORT_BASES.pop()
    scenarios = [cls(base + 2 * i) for i, cls in enumerate(classes)]
    entered: list[Scenario] = []
    try:
        threads = [threading.Thread(target=lambda s=s: entered.append(s.__enter__())) for s in scenarios]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(entered) == len(scenarios), "a scenario failed to set up"
        ports = ",".join(str(s.port) for s in scenarios)
        with Trace(["why", *args, "-P", ports], env=env) as trace:
            threads = [threading.Thread(target=s.run) for s in scenarios]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
        yield {type(s): s for s in scenarios}, trace
    finally:
        for s in entered:
            s.__exit__(None, None, None)


@pytest.fixture(scope="module")
def world() -> Any:
    with scenarios_traced(SCENARIOS, ["--json"]) as w:
        yield w


def verdicts_on(trace: Trace, port: int) -> list[dict[str, Any]]:
    return [r for r in trace.records if r.get("type") == "verdict" and r["port"] == port]


ScenarioT = TypeVar("ScenarioT", bound=Scenario)


def only_verdict(world: Any, cls: type[ScenarioT],
                 allowed_extra: tuple[str, ...] = ()) -> tuple[ScenarioT, dict[str, Any]]:
    scenarios, trace = world
    s = scenarios[cls]
    if s.error is not None:
        raise s.error
    found = verdicts_on(trace, s.port)
    mine = [r for r in found if r["verdict"] == cls.verdict]
    if len(mine) != 1:
        pytest.fail(f"expected one {cls.verdict} on port {s.port}, got:\n{json.dumps(found, indent=1)}\n{trace.stderr}")
    others = [r["verdict"] for r in found if r is not mine[0]]
    assert set(others) <= set(allowed_extra), found
    return s, mine[0]


def client(s: Scenario, rec: dict[str, Any], pid: int | None = None) -> None:
    """The client named in the verdict is the process the test ran (curl, unless
    ``pid`` says which)."""
    c = rec["client"]
    assert c["netns"] == s.net.b
    if pid is None:
        assert (c["comm"], c["pid"] in s.facts["curl_pids"]) == ("curl", True)
    else:
        assert c["pid"] == pid


pytestmark = pytest.mark.integration


def test_ok_has_the_connect_latency_and_no_failure(world: Any) -> None:
    s, rec = only_verdict(world, Ok)
    assert (rec["netns"], rec["address"], rec["port"], rec["attempts"], rec["clients"]) == \
        (s.net.a, s.net.addr_a, s.port, 1, [s.net.addr_b])
    assert 0 < rec["latency_ms"]["median"] < 1000
    client(s, rec)
    assert rec["syns"] == 1 + s.delta(s.net.b, "TcpExtTCPSynRetrans") == 1


def test_no_listener(world: Any) -> None:
    s, rec = only_verdict(world, NoListener)
    assert (rec["netns"], rec["address"], rec["port"]) == (s.net.a, s.net.addr_a, s.port)
    assert rec["drop_reason"] == "NO_SOCKET"
    assert rec["client"]["error"] == "ECONNREFUSED"
    client(s, rec)
    assert rec["syns"] == 1 + s.delta(s.net.b, "TcpExtTCPSynRetrans")


def test_listener_on_other_address(world: Any) -> None:
    s, rec = only_verdict(world, OtherAddress)
    assert (rec["netns"], rec["address"], rec["port"]) == (s.net.a, s.net.addr_a, s.port)
    (lst,) = rec["listeners"]
    assert (lst["netns"], lst["address"], lst["port"], lst["pid"], lst["comm"]) == \
        (s.net.a, "127.0.0.1", s.port, s.facts["server_pid"], "python3")
    assert "127.0.0.1" in rec["why"]
    client(s, rec)


def test_listener_in_other_namespace(world: Any) -> None:
    s, rec = only_verdict(world, OtherNamespace)
    assert (rec["netns"], rec["address"], rec["port"]) == (s.net.a, s.net.addr_a, s.port)
    (lst,) = rec["listeners"]
    assert (lst["netns"], lst["address"], lst["pid"], lst["comm"]) == \
        (s.net.b, "0.0.0.0", s.facts["server_pid"], "python3")
    client(s, rec)


def test_firewall_drop_names_the_rule(world: Any) -> None:
    s, rec = only_verdict(world, FirewallDrop)
    assert (rec["netns"], rec["address"], rec["port"]) == (s.net.a, s.net.addr_a, s.port)
    rule = rec["rule"]
    assert (rule["family"], rule["table"], rule["chain"], rule["handle"], rule["verdict"]) == \
        ("inet", "why_test", "input", s.facts["handle"], "drop")
    assert rule["packets"] == s.facts["rule_packets"] == rec["syns"]  # nft's own counter
    assert rec["syns"] == 1 + s.delta(s.net.b, "TcpExtTCPSynRetrans") == 2
    assert any("tcpdump" in e for e in rec["evidence"])
    assert (rec["client"]["error"], rec["client"]["gave_up"]) == (None, True)  # curl's --connect-timeout
    client(s, rec)


def test_firewall_reject(world: Any) -> None:
    s, rec = only_verdict(world, FirewallReject)
    assert (rec["netns"], rec["port"], rec["rule"]["handle"], rec["rule"]["verdict"]) == \
        (s.net.a, s.port, s.facts["handle"], "reject")
    assert rec["icmp"] == {"type": 3, "code": 3}  # nft's reject: port unreachable
    assert rec["client"]["icmp_error"] is True
    client(s, rec)


def test_rp_filter(world: Any) -> None:
    s, rec = only_verdict(world, RpFilter)
    assert (rec["netns"], rec["address"], rec["port"], rec["clients"]) == (s.net.a, s.net.addr_a, s.port, [s.source])
    assert (rec["device"], rec["rp_filter"]) == (s.net.dev_a, 1)
    assert rec["ip_reverse_path_filter"] == s.delta(s.net.a, "TcpExtIPReversePathFilter") == rec["syns"] == 2
    client(s, rec)


def test_no_route_back(world: Any) -> None:
    s, rec = only_verdict(world, NoRouteBack)
    assert (rec["netns"], rec["address"], rec["port"], rec["clients"]) == (s.net.a, s.net.addr_a, s.port, [s.source])
    assert rec["ip_out_no_routes"] == s.delta(s.net.a, "IpOutNoRoutes") > 0
    assert rec["syns"] == 1 + s.delta(s.net.b, "TcpExtTCPSynRetrans") == 2
    assert "unreachable" in (rec["route_back"] or "").lower()
    client(s, rec)


def test_accept_queue_full(world: Any) -> None:
    s, rec = only_verdict(world, AcceptQueueFull)
    assert (rec["netns"], rec["address"], rec["port"]) == (s.net.a, s.net.addr_a, s.port)
    lst = rec["listener"]
    assert (lst["pid"], lst["comm"], lst["queue"], lst["backlog"]) == (s.facts["server_pid"], "python3", 2, 1)
    assert rec["listen_overflows"] == s.delta(s.net.a, "TcpExtListenOverflows") == rec["syns"] == 2
    assert rec["netns_counters"]["TcpExtListenDrops"] == s.delta(s.net.a, "TcpExtListenDrops")
    assert rec["no_accept_s"] > 0.5
    client(s, rec)


def test_not_accepted(world: Any) -> None:
    s, rec = only_verdict(world, NotAccepted)
    assert (rec["netns"], rec["address"], rec["port"]) == (s.net.a, s.net.addr_a, s.port)
    assert rec["flows"] == [{"client": f"{s.net.addr_b}:{s.facts['client_port']}", "syns": 1}]
    lst = rec["listener"]
    assert (lst["pid"], lst["comm"], lst["backlog"]) == (s.facts["server_pid"], "python3", 16)
    assert lst["queue"] == 1 and rec["unaccepted_s"] >= 1.0
    client(s, rec, pid=os.getpid())


def test_synack_unanswered(world: Any) -> None:
    s, rec = only_verdict(world, SynackUnanswered)
    assert (rec["netns"], rec["address"], rec["port"], rec["clients"]) == (s.net.a, s.net.addr_a, s.port, [s.spoof])
    assert rec["synack_retransmits"] == s.delta(s.net.a, "TcpExtTCPSynRetrans") >= 1
    assert rec["listener"]["pid"] == s.facts["server_pid"]
    assert rec["route_back"].startswith(f"{s.spoof} dev {s.net.dev_a} ")  # `ip route get` in the server's netns


def test_syn_queue_full(world: Any) -> None:
    s, rec = only_verdict(world, SynQueueFull, allowed_extra=("SYNACK_UNANSWERED",))
    assert (rec["netns"], rec["address"], rec["port"]) == (s.net.a, s.net.addr_a, s.port)
    assert s.net.addr_b in rec["clients"]
    assert rec["reqq_full"] == s.delta(s.net.a, "TcpExtTCPReqQFullDrop") > 0
    assert rec["listener"]["pid"] == s.facts["server_pid"]


def test_client_refused(world: Any) -> None:
    s, rec = only_verdict(world, Refused)
    assert (rec["netns"], rec["address"], rec["port"]) == (s.net.b, s.remote, s.port)
    assert s.facts["curl_rc"] == 7 and rec["client"]["error"] == "ECONNREFUSED"
    client(s, rec)


def test_client_timeout(world: Any) -> None:
    s, rec = only_verdict(world, Timeout)
    assert (rec["netns"], rec["address"], rec["port"]) == (s.net.b, s.remote, s.port)
    assert s.facts["curl_rc"] == 28
    assert rec["syns"] == 1 + s.delta(s.net.b, "TcpExtTCPSynRetrans") == 2
    client(s, rec)


def test_client_unreachable(world: Any) -> None:
    s, rec = only_verdict(world, Unreachable)
    assert (rec["netns"], rec["address"], rec["port"]) == (s.net.b, s.remote, s.port)
    # the socket's errno (EHOSTUNREACH) is consumed by the woken connect() before a
    # hook can read it; the error report while still SYN_SENT is what shows the ICMP
    assert rec["client"]["icmp_error"] is True and rec["client"]["error"] in (None, "EHOSTUNREACH")
    client(s, rec)


def test_client_output_rule_drops_its_syns(world: Any) -> None:
    s, rec = only_verdict(world, OutputDrop)
    assert (rec["netns"], rec["port"]) == (s.net.b, s.port)
    assert (rec["rule"]["table"], rec["rule"]["chain"], rec["rule"]["hook"]) == ("why_out", "out", "output")
    assert rec["syns"] == 2
    client(s, rec)


def test_summary_counts_every_attempt(world: Any) -> None:
    scenarios, trace = world
    verdicts = [r for r in trace.records if r.get("type") == "verdict"]
    assert trace.summary["attempts"] == sum(r["attempts"] for r in verdicts)
    assert trace.summary["failed"] == sum(r["attempts"] for r in verdicts if r["verdict"] != "OK")
    assert trace.summary["lost_events"] == 0
    assert trace.returncode == 1  # failures were found


def test_healthy_host_says_so_in_one_line_and_exits_0() -> None:
    with scenarios_traced([OkTwice], []) as (scenarios, trace):
        pass
    s = scenarios[OkTwice]
    assert s.error is None
    assert trace.returncode == 0, trace.stdout + trace.stderr
    lines = trace.lines
    assert lines[0] == f"Listening on port {s.port}:"
    assert lines[2].split()[:4] == [s.net.a, f"{s.net.addr_a}:{s.port}", "0/5", "python3"]
    assert lines[2].endswith(f"(pid {s.facts['server_pid']})")
    ok = [line for line in lines if line.startswith("OK:")]
    assert len(ok) == 1 and ok[0].startswith(
        f"OK: 2 connection attempts to port {s.port}, all connected (median connect "
    )
    assert not any(name in trace.stdout for name in V.FAILED)


def test_text_screen_names_cause_evidence_and_next_step() -> None:
    with scenarios_traced([FirewallDrop, Ok], []) as (scenarios, trace):
        pass
    fw, ok = scenarios[FirewallDrop], scenarios[Ok]
    assert fw.error is None and ok.error is None
    assert trace.returncode == 1  # a failure was found
    text = trace.stdout
    print(text)
    head = f"FIREWALL_DROP  {fw.net.addr_a}:{fw.port} in netns {fw.net.a} (x1 client, 1 attempt, 2 SYNs)"
    assert head in trace.lines
    block = text[text.rindex(head):]
    assert f"inet why_test input handle {fw.facts['handle']}" in block
    assert "tcpdump on the server still shows these SYNs" in block
    assert f"next: ip netns exec {fw.net.a} nft -a list chain inet why_test input" in block
    assert "OK: also 1 connection attempt to port" in block
    report = text[text.index("\n\n"):]  # after the live lines: one block per failing group
    assert [line.split()[0] for line in report.splitlines() if line[:1].isupper()] == ["FIREWALL_DROP", "OK:"]


def test_classic_tracepoints_reach_the_same_verdicts() -> None:
    """Forced onto classic tracepoints (what a kernel without tp_btf offers), the hooks
    that have one still tell these causes apart; the ICMP and error-report hooks exist
    only as typed tracepoints and are reported as unavailable."""
    classes: list[type[Scenario]] = [Ok, NoListener, FirewallDrop, NoRouteBack, NoRouteBack6, SynackUnanswered]
    with scenarios_traced(classes, ["--json"], env={"NETSNOOP_HOOKS": "tracepoint"}) as (scenarios, trace):
        pass
    assert trace.summary["hooks"] == {"receive": "tracepoint", "drop": "tracepoint", "synack": "tracepoint",
                                      "fib": "tracepoint", "fib6": "tracepoint", "icmp": None,
                                      "set_state": "tracepoint", "error": None}
    for cls, s in scenarios.items():
        assert s.error is None
        found = [(r["verdict"], r["netns"]) for r in verdicts_on(trace, s.port)]
        assert found == [(cls.verdict, s.net.a)], (cls.verdict, found)


def test_ipv6_attempts_get_the_same_verdicts() -> None:
    with scenarios_traced([Ok6, NoListener6, FirewallDrop6, NoRouteBack6], ["--json"]) as (scenarios, trace):
        pass
    for cls, s in scenarios.items():
        assert s.error is None
        (rec,) = verdicts_on(trace, s.port)
        client = getattr(s, "source", s.net.addr6_b)
        assert (rec["verdict"], rec["netns"], rec["address"], rec["clients"]) == \
            (cls.verdict, s.net.a, s.net.addr6_a, [client])
        assert rec["client"]["pid"] in s.facts["curl_pids"]
    nr = scenarios[NoRouteBack6]
    (rec,) = verdicts_on(trace, nr.port)
    assert rec["ip_out_no_routes"] == nr.delta(nr.net.a, "Ip6OutNoRoutes") > 0
    assert rec["listener"]["pid"] == nr.facts["server_pid"]
    fw = scenarios[FirewallDrop6]
    (rec,) = verdicts_on(trace, fw.port)
    assert rec["rule"]["handle"] == fw.facts["handle"] and rec["syns"] == 2


def test_every_connection_counts_even_on_one_reused_client_port() -> None:
    """200 connections from one client port (closed with a reset, so the next one may
    reuse it at once): 200 attempts, each its own flow, all OK."""
    n = 200
    with NetnsPair() as net, Trace(["why", "--json", "-P", "17"]) as trace:
        with in_netns(net.a):
            srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((net.addr_a, 17))
        srv.listen(n)
        for _ in range(n):
            with in_netns(net.b):
                c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.bind((net.addr_b, 40017))
            c.connect((net.addr_a, 17))
            conn, _ = srv.accept()
            c.close()
            conn.close()
        srv.close()
        before = nstat(net, net.b)["TcpActiveOpens"]
    (rec,) = [r for r in trace.records if r.get("type") == "verdict" and r["address"] == net.addr_a]
    assert (rec["verdict"], rec["attempts"], rec["syns"], rec["clients"]) == ("OK", n, n, [net.addr_b])
    assert before == n  # the kernel's own count of connects in the client's namespace
    assert trace.returncode == 0


class Storm(Scenario):
    """Many good connections one after another (closed with a reset, as a storm's
    clients do), each accept()ed before the next starts (whatever the machine's load,
    the accept queue never holds what the bound must then hold)."""

    verdict = "OK"
    connections = 1500

    def setup(self) -> None:
        self.server(accept=True, backlog=self.connections)

    def traffic(self) -> None:
        done = 0
        for _ in range(self.connections):
            with in_netns(self.net.b):
                c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.connect((self.net.addr_a, self.port))
            c.settimeout(5)
            assert c.recv(1) == b""  # the server accept()ed and closed it: the queue never grows
            c.close()
            done += 1
        self.facts["connected"] = done


def test_a_storm_holds_bounded_state_and_a_failure_still_gets_its_verdict() -> None:
    """1500 good connections under --max-flows 256, a refused one beside them: every
    good one counted (against the server namespace's own count of passive opens),
    never more than 256 attempts held, none let go, two events per good connection,
    and the refused one judged."""
    bound = 256
    with scenarios_traced([Storm, NoListener], ["--json", "--max-flows", str(bound)]) as (scenarios, trace):
        pass
    storm, refused = scenarios[Storm], scenarios[NoListener]
    for s in (storm, refused):
        if s.error is not None:
            raise s.error
    (ok,) = verdicts_on(trace, storm.port)
    passive = storm.delta(storm.net.a, "TcpPassiveOpens")
    assert (ok["verdict"], ok["attempts"], ok["clients"]) == ("OK", Storm.connections, [storm.net.addr_b]), \
        trace.summary
    assert storm.facts["connected"] == passive == Storm.connections
    # the bound held, without letting anything go: the state did not grow with the storm
    assert 0 < trace.summary["attempts_held_peak"] <= bound < Storm.connections
    assert trace.summary["attempts_evicted"] == 0
    # a good connection costs two events (the client's outcome, the server's
    # handshake carrying its SYN); the refused one four (its SYN, its drop, the client's
    # error report and close)
    assert trace.summary["kernel_events"] == 2 * Storm.connections + 4
    assert trace.summary["attempts"] == Storm.connections + 1 and trace.summary["failed"] == 1
    (rec,) = verdicts_on(trace, refused.port)
    assert (rec["verdict"], rec["netns"], rec["address"], rec["drop_reason"]) == \
        ("NO_LISTENER", refused.net.a, refused.net.addr_a, "NO_SOCKET")
    assert rec["client"]["error"] == "ECONNREFUSED"


def test_past_the_bound_attempts_are_let_go_and_counted() -> None:
    """The negative side of the bound: a server that never accept()s keeps every
    child waiting (nothing may be folded), so with --max-flows 16 the oldest of 40
    are let go, and the summary and a warning say how many."""
    bound, n = 16, 40
    with NetnsPair() as net:
        srv = python_server(net, net.a, net.addr_a, 18, backlog=n)
        try:
            with Trace(["why", "--json", "--max-flows", str(bound), "-P", "18"]) as trace:
                socks = []
                for _ in range(n):
                    with in_netns(net.b):
                        c = socket.socket()
                    c.connect((net.addr_a, 18))
                    socks.append(c)
            for c in socks:
                c.close()
        finally:
            srv.kill()
            srv.wait()
    held = sum(r["attempts"] for r in trace.records if r.get("type") == "verdict" and r["port"] == 18)
    assert trace.summary["attempts_held_peak"] == bound
    assert trace.summary["attempts_evicted"] == n - held > 0
    assert f"{n - held} attempts were let go unjudged" in trace.stderr


def test_a_connect_still_waiting_at_the_end_is_named_with_its_process() -> None:
    """A connect() whose SYN never gets out (its neighbour does not answer ARP) is
    under way when the trace ends: its start, kept in the kernel until an outcome
    that never came, still names it: TIMEOUT, this process, its namespace."""
    with NetnsPair() as net:
        silent = net.addr_a.rsplit(".", 1)[0] + ".3"  # in the pair's subnet, held by nobody
        with Trace(["why", "--json", "-P", "19"]) as trace:
            with in_netns(net.b):
                c = socket.socket()
            c.setblocking(False)
            assert c.connect_ex((silent, 19)) == 115  # EINPROGRESS: in SYN_SENT now
            try:
                deadline = time.monotonic() + 5
                while f"{silent}:19" not in net.exec(net.b, "ss -tnH state syn-sent").stdout:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                trace.stop()
            finally:
                c.close()
    (rec,) = [r for r in trace.records if r.get("type") == "verdict" and r["port"] == 19]
    with open("/proc/self/comm") as f:
        me = f.read().strip()
    assert (rec["verdict"], rec["address"], rec["netns"]) == ("TIMEOUT", silent, net.b)
    assert (rec["client"]["pid"], rec["client"]["comm"], rec["client"]["syns_sent"]) == (os.getpid(), me, None)
    assert "yet when the trace ended" in rec["why"]
