"""netsnoop overview: a small scene in private namespaces (a healthy flow, a lossy flow, a
refused connect, a listener whose queue is full, a firewall drop); each finding names
the right namespace and owner, with the figures the kernel counted there."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from helpers import NETSNOOP, ROOT, NetnsPair
from netsnoop.commands.overview import Evidence, Snapshot, build_report, render
from netsnoop import netns
from traffic_helpers import nft_input_chain

SAMPLE = 8  # seconds: the scene must end inside overview's sample, with room under load

SERVER = r"""
import socket, sys, threading
host = sys.argv[1]
def serve(port, backlog, reply):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(backlog)
    if reply is None:
        return s  # never accepts
    def loop():
        while True:
            c, _ = s.accept()
            with c:
                while c.recv(65536):
                    pass
                c.sendall(b"r" * reply)
    threading.Thread(target=loop, daemon=True).start()
    return s
keep = [serve(8001, 16, 1000), serve(8002, 16, 1000), serve(8003, 1, None)]
print("ready", flush=True)
sys.stdin.read()
"""

CLIENT = r"""
import socket, sys
host, scene = sys.argv[1], sys.argv[2].split(",")
def transfer(port, size):
    with socket.create_connection((host, port), timeout=20) as c:
        c.sendall(b"x" * size); c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
held = []
# the quick parts first, the lossy transfer last: everything must happen inside the sample
if "queue" in scene:
    for _ in range(4):
        c = socket.socket(); c.setblocking(False); c.connect_ex((host, 8003)); held.append(c)
if "refused" in scene:
    for _ in range(3):
        try:
            socket.create_connection((host, 8009), timeout=5)
        except ConnectionRefusedError:
            pass
if "firewall" in scene:
    c = socket.socket(); c.settimeout(0.3); held.append(c)
    try:
        c.connect((host, 8004))
    except OSError:
        pass
if "healthy" in scene:
    transfer(8001, 100_000)
if "lossy" in scene:
    transfer(8002, 600_000)
print("done", flush=True)
sys.stdin.read()
"""


def nstat(pair: NetnsPair, ns: str, *names: str) -> dict[str, int]:
    out = pair.exec(ns, "nstat -az " + " ".join(names)).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:] if line.split()}


def nft_counter(pair: NetnsPair, ns: str, port: int) -> int:
    ruleset = json.loads(pair.exec(ns, "nft -j list ruleset").stdout)
    for item in ruleset["nftables"]:
        rule = item.get("rule")
        if rule and f'"right": {port}' in json.dumps(rule):
            return next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    raise AssertionError(f"no rule for port {port}")


def run_scene(pair: NetnsPair, scene: str) -> tuple[dict, dict, dict, int, int]:
    """Start the server, run overview, make the scene's traffic inside its sample, wait
    for it to end; returns (report, counters before, counters after, server pid, client pid)."""
    names = ("TcpActiveOpens", "TcpRetransSegs", "TcpExtListenOverflows", "TcpAttemptFails")
    server = subprocess.Popen(["ip", "netns", "exec", pair.b, sys.executable, "-c", SERVER, pair.addr_b],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        before = {ns: nstat(pair, ns, *names) for ns in (pair.a, pair.b)}
        view = subprocess.Popen(NETSNOOP + ["overview", "--json", "-d", str(SAMPLE)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert view.stderr is not None
        line = view.stderr.readline()
        started = time.monotonic()
        assert line.startswith("Sampling"), line + view.stderr.read()
        client = subprocess.Popen(["ip", "netns", "exec", pair.a, sys.executable, "-c", CLIENT, pair.addr_b, scene],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdout.readline().strip() == "done"
        took = time.monotonic() - started
        assert took < SAMPLE - 1, f"the scene took {took:.1f} s: it must end inside the {SAMPLE} s sample"
        out, err = view.communicate(timeout=30)
        assert view.returncode in (0, 1), err
        after = {ns: nstat(pair, ns, *names) for ns in (pair.a, pair.b)}
        assert client.stdin is not None
        client.stdin.close()
        client.wait(10)
        return json.loads(out), before, after, server.pid, client.pid
    finally:
        server.kill()
        server.wait()


@pytest.mark.integration
def test_each_problem_is_found_with_its_owner_namespace_and_the_kernels_figure() -> None:
    with NetnsPair() as pair, nft_input_chain(pair, pair.b) as add:
        add("tcp dport 8004 counter drop")
        add("tcp dport 8002 numgen random mod 100 < 5 counter drop")
        pair.exec(pair.a, "sysctl -qw net.ipv4.tcp_syn_retries=1")
        report, before, after, server_pid, client_pid = run_scene(pair, "healthy,lossy,refused,queue,firewall")
        delta = {ns: {k: after[ns][k] - before[ns][k] for k in after[ns]} for ns in after}
        found = report["findings"]

        queue = [f for f in found if f["kind"] == "accept_queue_full" and f["netns"] == pair.b]
        assert [(f["port"], f["pid"], f["queue"], f["limit"]) for f in queue] == [(8003, server_pid, 2, 1)]
        assert queue[0]["listen_overflows"] == delta[pair.b]["TcpExtListenOverflows"] > 0

        failed = {(f["remote"], f.get("outcome")): f for f in found if f["kind"] == "connect_failed"
                  and f["netns"] in (pair.a, pair.b)}
        refused = failed[(f"{pair.addr_b}:8009", "REFUSED")]
        assert (refused["netns"], refused["count"], refused["pid"]) == (pair.a, 3, client_pid)
        # the SYN the firewall drops goes unanswered until the kernel gives up (syn_retries 1)
        timeout = failed[(f"{pair.addr_b}:8004", "TIMEOUT")]
        assert (timeout["netns"], timeout["count"], timeout["pid"]) == (pair.a, 1, client_pid)

        retrans = [f for f in found if f["kind"] == "retransmits" and f["netns"] == pair.a]
        assert retrans and retrans[0]["retransmitted_segments"] == delta[pair.a]["TcpRetransSegs"] > 0

        tcp = {t["netns"]: t for t in report["tcp"]}
        assert tcp[pair.a]["active_opens"] == delta[pair.a]["TcpActiveOpens"]
        assert tcp[pair.a]["failed_connects"] == delta[pair.a]["TcpAttemptFails"]
        # resets received (no kernel counter): one per refused connect, the only resets the scene makes there
        assert tcp[pair.a]["resets_received"] == 3

        # drops are counted per namespace: exactly what the two rules there counted
        fw = [(d["netns"], d["count"]) for d in report["drops"] if d["reason"] == "NETFILTER_DROP"]
        assert (pair.b, nft_counter(pair, pair.b, 8004) + nft_counter(pair, pair.b, 8002)) in fw, fw
        assert nft_counter(pair, pair.b, 8004) > 0 and pair.a not in {ns for ns, _n in fw}
        assert any(f["kind"] == "drops" and f["reason"] == "NETFILTER_DROP" and f["netns"] == pair.b for f in found)
        # the healthy flow is not a finding
        assert not [f for f in found if "8001" in f["text"]]


@pytest.mark.integration
def test_a_healthy_scene_has_no_finding_in_its_namespaces() -> None:
    with NetnsPair() as pair:
        report, before, after, _server, client_pid = run_scene(pair, "healthy")
        ours = {pair.a, pair.b}
        mine = [f for f in report["findings"] if f.get("netns") in ours]
        resent = {ns: after[ns]["TcpRetransSegs"] - before[ns]["TcpRetransSegs"] for ns in ours}
        if not any(resent.values()):
            assert mine == []
        else:
            # a starved machine can hold an ACK past the sender's timer: the kernel sent data
            # again (nstat says so), and the copy the receiver already had is dropped as old.
            # The scene was not healthy; each finding must be that, and no more than it.
            peer = {pair.a: pair.b, pair.b: pair.a}
            for f in mine:
                if f["kind"] == "retransmits":
                    assert f["retransmitted_segments"] == resent[f["netns"]], (f, resent)
                else:
                    assert (f["kind"], f["reason"]) == ("drops", "TCP_OLD_DATA"), (f, resent)
                    assert 0 < f["count"] <= resent[peer[f["netns"]]], (f, resent)
        # positive control: the healthy connect was seen, established, with its owner
        seen = [c for c in report["connects"] if c["netns"] == pair.a]
        assert [(c["remote"], c["attempts"], c["failures"], c["pid"]) for c in seen] == [
            (f"{pair.addr_b}:8001", 1, {}, client_pid)], (report["lost_events"], len(report["connects"]))
        assert {t["netns"]: t["active_opens"] for t in report["tcp"]}[pair.a] == (
            after[pair.a]["TcpActiveOpens"] - before[pair.a]["TcpActiveOpens"] == 1)


def snapshot(at: float, sockets: list[netns.DiagSocket], overflows: int) -> Snapshot:
    ns = netns.Netns(7, "/run/netns/x", "x")
    return Snapshot(at, {7: ns}, {7: {"TcpExtListenOverflows": overflows}}, {7: []}, {7: sockets})


def test_a_full_queue_is_the_kernels_full_not_a_busy_one() -> None:
    full = netns.DiagSocket(2, 10, "10.0.0.1", 80, "0.0.0.0", 0, 3, 2, 0, 11)
    busy = netns.DiagSocket(2, 10, "10.0.0.1", 81, "0.0.0.0", 0, 2, 2, 0, 12)
    report = build_report(snapshot(0, [], 5), snapshot(2, [full, busy], 9), Evidence(), {11: netns.Owner(42, "srv")})
    found = [(f["kind"], f["port"], f["pid"], f["listen_overflows"]) for f in report["findings"]]
    assert found == [("accept_queue_full", 80, 42, 4)]


def test_a_flow_open_at_both_ends_gets_its_bytes_owner_and_rtt_quantiles() -> None:
    from netsnoop.hist import Log2Hist

    def sock(acked: int, received: int) -> netns.DiagSocket:
        return netns.DiagSocket(2, 1, "10.0.0.1", 5000, "10.0.0.2", 80, 0, 0, 0, 21, rtt_us=300,
                                bytes_acked=acked, bytes_received=received)

    # RTT samples in its namespace (7): 60 in slot 4 (16-31 us), 39 in slot 7 (128-255), 1 in
    # slot 9 (512-1023); another namespace's samples to the same address (slot 12) are not its
    slots = tuple([0] * 4 + [60, 0, 0, 39, 0, 1])
    evidence = Evidence(rtt={(7, "10.0.0.2"): Log2Hist(slots, count=100, total=0),
                             (8, "10.0.0.2"): Log2Hist(tuple([0] * 12 + [500]), count=500, total=0)})
    report = build_report(snapshot(0, [sock(1000, 50)], 0), snapshot(2, [sock(9000, 250)], 0), evidence,
                          {21: netns.Owner(7, "client")})
    (flow,) = report["flows"]
    assert (flow["bytes_sent"], flow["bytes_received"], flow["pid"], flow["comm"]) == (8000, 200, 7, "client")
    assert (flow["rtt_p50_us_at_most"], flow["rtt_p99_us_at_most"]) == (31, 255)
    assert "name" not in flow  # no --dns, no name key


def test_dns_names_go_with_flows_destinations_and_findings_only_where_resolved() -> None:
    def sock(raddr: str, acked: int) -> netns.DiagSocket:
        return netns.DiagSocket(2, 1, "10.0.0.1", 5000, raddr, 80, 0, 0, 0, 21, rtt_us=300,
                                bytes_acked=acked, bytes_received=0)

    def attempt(remote: str, outcome: str, name: str | None) -> dict:
        return {"netns": "x", "remote": remote, "name": name, "outcome": outcome, "latency_ms": 0.1,
                "pid": 5, "comm": "curl"}

    evidence = Evidence(
        connects=[attempt("10.0.0.2:80", "REFUSED", "api.test"), attempt("10.0.0.3:80", "REFUSED", None)],
        names={(7, "10.0.0.2"): "api.test", (7, "10.0.0.3"): None})
    report = build_report(snapshot(0, [sock("10.0.0.2", 0), sock("10.0.0.3", 0)], 0),
                          snapshot(2, [sock("10.0.0.2", 10), sock("10.0.0.3", 20)], 0), evidence, {})
    assert {f["remote"]: f["name"] for f in report["flows"]} == {"10.0.0.2:80": "api.test", "10.0.0.3:80": None}
    assert {c["remote"]: c["name"] for c in report["connects"]} == {"10.0.0.2:80": "api.test", "10.0.0.3:80": None}
    texts = sorted(f["text"] for f in report["findings"] if f["kind"] == "connect_failed")
    assert texts == ["1 connect to 10.0.0.2:80 (api.test) REFUSED in x (curl, pid 5)",
                     "1 connect to 10.0.0.3:80 REFUSED in x (curl, pid 5)"]
    screen = "\n".join(render(report))
    assert "x 10.0.0.2:80 (api.test)" in screen and "10.0.0.3:80 (" not in screen


def test_a_namespace_whose_inode_was_reused_meanwhile_gives_no_deltas() -> None:
    report = build_report(snapshot(0, [], 9), snapshot(2, [], 4), Evidence(), {})
    assert report["tcp"] == [] and report["namespaces"] == 0


PING_PONG = r"""
import select, socket, sys, threading, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
def serve():
    c, _ = s.accept()
    while b := c.recv(1):
        c.sendall(b)
threading.Thread(target=serve, daemon=True).start()
c = socket.create_connection(s.getsockname())
c.sendall(b"x"); c.recv(1)
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0.005)[0]:  # until told to stop
    c.sendall(b"x"); c.recv(1)
"""


@pytest.mark.integration
def test_rtt_samples_are_kept_per_namespace() -> None:
    """Loopback traffic in one namespace gives that namespace RTT samples to 127.0.0.1;
    the other namespace, where nothing talks, gets none for the same address."""
    from netsnoop.commands.overview import gather

    with NetnsPair() as pair:
        busy = subprocess.Popen(["ip", "netns", "exec", pair.a, sys.executable, "-c", PING_PONG],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert busy.stdout is not None and busy.stdout.readline().strip() == "ready"
            _before, after, evidence = gather(1.0, lambda elapsed: None)
        finally:
            assert busy.stdin is not None
            busy.stdin.close()
            busy.wait(10)
        inode = {ns.label: ino for ino, ns in after.spaces.items()}
        assert "rtt" not in evidence.unavailable
        assert evidence.rtt[(inode[pair.a], "127.0.0.1")].count > 0
        assert (inode[pair.b], "127.0.0.1") not in evidence.rtt
