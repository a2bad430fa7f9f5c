"""netsnoop retrans: real retransmits, caused by nftables drops inside private netns."""

from __future__ import annotations

import errno
import os
import socket
import urllib.request

import pytest
from helpers import NetnsPair, Trace, assert_verified, free_port, run
from loss_scene import loss_scene, per_netns
from traffic_helpers import (Sink, flush_rules, in_netns, kernel_has_symbol, nft_input_chain,
                             nstat, wait_for)

from netsnoop.loader import BPFObject

pytestmark = pytest.mark.integration


def test_established_connection_retransmits_are_traced_and_counted() -> None:
    with NetnsPair() as net, nft_input_chain(net, net.b) as drop:
        with in_netns(net.b):
            server = Sink(net.addr_b)
        port = str(server.port)
        with Trace(["retrans", "--json", "-s", "-P", port]) as events, \
             Trace(["retrans", "-s", "-P", port]) as text, \
             Trace(["retrans", "-c", "--json", "-P", port], env={"NETSNOOP_HOOKS": "tracepoint"}) as counted:
            with in_netns(net.a):
                client = socket.create_connection((net.addr_b, server.port), timeout=5)
            client.sendall(b"a" * 1000)
            assert wait_for(lambda: server.received == 1000)
            before = nstat(net, net.a, "TcpRetransSegs")["TcpRetransSegs"]
            drop(f"tcp dport {port} drop")  # the next segment and its retransmits are lost
            client.sendall(b"b" * 1000)
            # the RTO is >= 200 ms: wait until the kernel says it retransmitted twice
            assert wait_for(lambda: nstat(net, net.a, "TcpRetransSegs")["TcpRetransSegs"] - before >= 2)
            flush_rules(net, net.b)
            assert wait_for(lambda: server.received == 2000, timeout=5)
            retransmitted = nstat(net, net.a, "TcpRetransSegs")["TcpRetransSegs"] - before
            lport = client.getsockname()[1]
            client.close()
            server.close()

    rows = [r for r in events.records if r["lport"] == lport]
    assert len(rows) == retransmitted, (events.records, retransmitted)
    for r in rows:
        assert (r["ip"], r["laddr"], r["raddr"], r["rport"]) == (4, net.addr_a, net.addr_b, server.port)
        # the owner is this process, which sent the data; a timer sent it again
        assert (r["pid"], r["comm"]) == (os.getpid(), my_comm())
        assert r["kind"] == "R" and r["state"] == "ESTABLISHED" and r["segs"] == 1
    # the lost segment is the one sent again: one sequence number throughout
    assert len({r["seq"] for r in rows}) == 1 and rows[0]["seq"] > 0
    assert events.summary["lost_events"] == 0

    # -c, forced onto the classic tracepoint, counts the same retransmits per flow
    flows = [r for r in counted.records if r["lport"] == lport]
    assert [(f["laddr"], f["raddr"], f["rport"], f["segs"], f["netns"]) for f in flows] == [
        (net.addr_a, net.addr_b, server.port, retransmitted, net.a)]
    assert counted.summary["hooks"]["retransmit"] == "tracepoint"

    header, *lines = text.lines
    assert header.split() == ["TIME", "PID", "IP", "LADDR:LPORT", "T>", "RADDR:RPORT", "STATE", "SEGS", "SEQ"]
    assert header.startswith("TIME     PID     IP LADDR:LPORT          T> RADDR:RPORT          STATE        SEGS SEQ")
    mine = [line.split() for line in lines if f"{net.addr_a}:{lport}" in line]
    assert len(mine) == len(rows)
    assert mine[0][2:] == ["4", f"{net.addr_a}:{lport}", "R>", f"{net.addr_b}:{port}", "ESTABLISHED", "1",
                           str(rows[0]["seq"])]


def my_comm() -> str:
    with open("/proc/self/comm") as f:
        return f.read().strip()


LOSSY_BYTES = 5 << 20


def test_lossy_transfer_counts_segments_like_the_kernel() -> None:
    """5 % random loss on a veth with GSO on: a retransmitted buffer holds many segments,
    and the segments shown add up to the sender namespace's TcpRetransSegs delta (less
    TCPRetransFail, retransmits that never left: 0 here)."""
    with NetnsPair() as net, nft_input_chain(net, net.b) as drop:
        gso = net.exec(net.a, f"ethtool -k {net.dev_a}", check=False).stdout
        assert "generic-segmentation-offload: on" in gso or not gso, gso
        with in_netns(net.b):
            server = Sink(net.addr_b)
        port = str(server.port)
        drop(f"tcp dport {port} numgen random mod 100 < 5 drop")
        names = ("TcpRetransSegs", "TcpExtTCPRetransFail")
        with Trace(["retrans", "--json", "-P", port]) as events, \
             Trace(["retrans", "-c", "--json", "-P", port], env={"NETSNOOP_HOOKS": "tracepoint"}) as counted:
            before = nstat(net, net.a, *names)
            with in_netns(net.a):
                client = socket.create_connection((net.addr_b, server.port), timeout=30)
            lport = client.getsockname()[1]
            sent = 0
            # the loss is random: go on until the kernel has retransmitted a few segments
            while sent < LOSSY_BYTES or nstat(net, net.a, *names)["TcpRetransSegs"] - before["TcpRetransSegs"] < 10:
                assert sent < 20 * LOSSY_BYTES
                client.sendall(b"x" * (1 << 20))
                sent += 1 << 20
            client.shutdown(socket.SHUT_WR)
            # the server's FIN acknowledges everything the client sent: nothing of ours
            # is left to retransmit once it arrives
            assert client.recv(1) == b""
            after = nstat(net, net.a, *names)
            client.close()
        server.close()
    assert server.received == sent
    expected = (after["TcpRetransSegs"] - before["TcpRetransSegs"]
                - (after["TcpExtTCPRetransFail"] - before["TcpExtTCPRetransFail"]))
    assert expected > 0

    rows = [r for r in events.records if r["lport"] == lport and r["laddr"] == net.addr_a]
    assert sum(r["segs"] for r in rows) == expected, rows
    assert all(r["segs"] >= 1 for r in rows)
    assert len(rows) < expected  # buffers of several segments were retransmitted
    assert events.summary["hooks"]["retransmit"] == "tp_btf"

    # A classic tracepoint's program is skipped when it interrupts another tracing
    # program on its CPU (anyone's): the kernel counts that, and so must the summary.
    flows = [r for r in counted.records if r["lport"] == lport and r["laddr"] == net.addr_a]
    if counted.summary["skipped_hook_runs"] == 0:
        assert [f["segs"] for f in flows] == [expected], counted.records
    else:
        assert len(flows) == 1 and 0 < flows[0]["segs"] < expected, (counted.records, counted.summary)
    assert counted.summary["hooks"]["retransmit"] == "tracepoint"
    assert counted.summary["lost_events"] == events.summary["lost_events"] == 0


def test_failed_retransmits_are_the_difference_from_retranssegs() -> None:
    """What --help says differs: a retransmit dropped by the sender's own output rule
    is in TcpRetransSegs and TCPRetransFail, and is not shown (it never left)."""
    names = ("TcpRetransSegs", "TcpExtTCPRetransFail")
    with NetnsPair() as net, nft_input_chain(net, net.b) as drop_in:
        with in_netns(net.b):
            server = Sink(net.addr_b)
        port = str(server.port)
        net.exec(net.a, "nft add table inet netsnoop_out")
        net.exec(
            net.a, "nft 'add chain inet netsnoop_out output { type filter hook output priority 0; policy accept; }'"
        )
        with Trace(["retrans", "--json", "-P", port]) as t:
            with in_netns(net.a):
                client = socket.create_connection((net.addr_b, server.port), timeout=5)
            client.sendall(b"a" * 100)
            assert wait_for(lambda: server.received == 100)
            before = nstat(net, net.a, *names)
            drop_in(f"tcp dport {port} drop")  # the segment leaves and is lost on the way in
            client.sendall(b"b" * 100)
            assert wait_for(lambda: nstat(net, net.a, *names)["TcpRetransSegs"] > before["TcpRetransSegs"])
            net.exec(net.a, f"nft 'add rule inet netsnoop_out output tcp dport {port} drop'")  # retransmits fail
            assert wait_for(lambda: nstat(net, net.a, *names)["TcpExtTCPRetransFail"] > before["TcpExtTCPRetransFail"])
            net.exec(net.a, "nft delete table inet netsnoop_out")
            flush_rules(net, net.b)
            assert wait_for(lambda: server.received == 200, timeout=10)
            after = nstat(net, net.a, *names)
            lport = client.getsockname()[1]
            client.close()
        server.close()
    failed = after["TcpExtTCPRetransFail"] - before["TcpExtTCPRetransFail"]
    counted = after["TcpRetransSegs"] - before["TcpRetransSegs"]
    shown = sum(r["segs"] for r in t.records if r["lport"] == lport)
    assert failed >= 1 and shown == counted - failed, (counted, failed, t.records)


def test_syn_and_synack_retransmits() -> None:
    with NetnsPair() as net, nft_input_chain(net, net.b) as drop:
        with in_netns(net.b):
            syn_lost, ack_lost = socket.socket(), socket.socket()
        syn_lost.bind((net.addr_b, 0))  # its port only: the firewall drops every SYN to it
        ack_lost.bind((net.addr_b, 0))
        syn_port, ack_port = syn_lost.getsockname()[1], ack_lost.getsockname()[1]
        drop(f"tcp dport {syn_port} drop")  # the SYN never arrives
        drop(f"tcp dport {ack_port} tcp flags & (syn | ack) == ack drop")  # the handshake's ACK never arrives
        syn_retrans = ("TcpExtTCPSynRetrans",)
        with Trace(["retrans", "--json", "-P", f"{syn_port},{ack_port}"]) as t:
            ack_lost.listen(16)  # while netsnoop watches: it learns the listener's owner
            before_a, before_b = nstat(net, net.a, *syn_retrans), nstat(net, net.b, *syn_retrans)
            with in_netns(net.a):
                c1 = socket.socket()
                c2 = socket.socket()
            c1.setblocking(False)
            assert c1.connect_ex(syn_lost.getsockname()) == errno.EINPROGRESS
            c2.settimeout(5)
            c2.connect(ack_lost.getsockname())  # the client side completes at once

            def resent(ns: str, before: dict[str, int]) -> int:
                return nstat(net, ns, *syn_retrans)["TcpExtTCPSynRetrans"] - before["TcpExtTCPSynRetrans"]

            # the initial RTO of a SYN and of a SYN-ACK is 1 s: wait for the kernel's count
            assert wait_for(lambda: resent(net.a, before_a) >= 1 and resent(net.b, before_b) >= 1, timeout=5)
            c1.close()  # a socket in SYN_SENT closes silently: no more SYN retransmits
            syns = resent(net.a, before_a)
            c2.close()
            ack_lost.close()  # the listener's pending SYN-ACK goes with it
            synacks = resent(net.b, before_b)
        syn_lost.close()

    syn = [r for r in t.records if r["rport"] == syn_port]
    synack = [r for r in t.records if r["lport"] == ack_port]
    assert len(syn) == syns and all(r["state"] == "SYN_SENT" and r["laddr"] == net.addr_a for r in syn), t.records
    assert len(synack) == synacks, (t.records, synacks)
    assert all(r["state"] == "NEW_SYN_RECV" and r["laddr"] == net.addr_b and r["raddr"] == net.addr_a for r in synack)
    assert all(r["segs"] == 1 for r in syn + synack)
    # connect() and listen() ran here: both sockets' owner is this process
    assert all((r["pid"], r["comm"]) == (os.getpid(), my_comm()) for r in syn + synack), t.records


def kprobes_reach(symbol: str) -> bool:
    """Whether a kprobe could attach to ``symbol`` here, from the kernel itself: the
    kprobe perf PMU (what libbpf attaches through; CONFIG_KPROBE_EVENTS) must exist
    and /proc/kallsyms must list the function."""
    return os.path.exists("/sys/bus/event_source/devices/kprobe/type") and kernel_has_symbol(symbol)


def test_lossprobe_says_whether_the_kernel_has_a_hook() -> None:
    available = kprobes_reach("tcp_send_loss_probe")
    done = run(["retrans", "-l", "-d", "0.3"])
    assert done.returncode == 0, done.stderr
    assert ("no hook for tail loss probes" in done.stderr) is not available


def test_kprobe_fallbacks_pass_the_verifier() -> None:
    """Loaded only: kprobes cannot attach on a kernel without CONFIG_KPROBES. The
    verifier accepted each program (it has a descriptor) and the function each one
    would attach to exists in this kernel."""
    with BPFObject("retrans", variants={"retransmit": "kprobe", "synack": "kprobe", "tlp": "kprobe"}) as obj:
        obj.load()
        for group in ("retransmit", "synack", "tlp"):
            assert_verified(obj, group, "kprobe")


@pytest.mark.parametrize("args", [["-P", "0"], ["-4", "-x"], ["--port", "1,a"], ["--netns", "no-such-netns-here"],
                                  ["--cgroup", "/nonexistent"], ["-p", "0"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    done = run(["retrans", *args])
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_who_and_where_of_retransmits() -> None:
    """Two container-like processes in two namespaces retransmit what each other's
    firewall dropped. Each retransmit names its namespace, the socket's owner (a
    timer sent it, not the process) and the owner's container; the filters keep one
    side each, in the kernel; -c counts per namespace what nstat counts there. The
    unfiltered trace is the control for every absence."""
    with loss_scene() as scene:
        ns, cg, a, b = scene.ns, scene.cg, scene.a.pid, scene.b.pid
        with Trace(["retrans", "--json"]) as everything, \
             Trace(["retrans", "-w", "--netns", ns.b]) as by_ns, \
             Trace(["retrans", "--json", "--cgroup", cg.docker]) as by_cgroup, \
             Trace(["retrans", "--json", "-p", f"{b},{os.getpid()}"]) as by_pid, \
             Trace(["retrans", "-c", "--json"]) as counted:
            scene.start()
            scene.lose()
    resent = scene.retransmitted
    assert resent[ns.a] >= 2 and resent[ns.b] >= 2

    for name in (ns.a, ns.b):
        rows = [r for r in everything.records if r["netns"] == name]
        assert sum(r["segs"] for r in rows) == resent[name], (name, everything.records, resent)
        pid, comm, container = scene.owner(name)
        assert {(r["pid"], r["comm"], r["container"], r["netns_inode"]) for r in rows} == {
            (pid, comm, container, scene.inode[name])}

    # --netns, text -w: the last two columns are NETNS and CONTAINER; B's side only
    header, *lines = by_ns.lines
    assert header.split()[-2:] == ["NETNS", "CONTAINER"], header
    fields = [line.split() for line in lines]
    assert sum(int(f[7]) for f in fields) == resent[ns.b], by_ns.stdout
    assert {(f[1], f[-2], f[-1]) for f in fields} == {(str(b), ns.b, cg.kube_label)}

    # --cgroup: A's retransmits only; -p: B's (this process owns none of them)
    assert {(r["pid"], r["netns"]) for r in by_cgroup.records} == {(a, ns.a)}, by_cgroup.records
    assert sum(r["segs"] for r in by_cgroup.records) == resent[ns.a]
    assert {(r["pid"], r["netns"]) for r in by_pid.records} == {(b, ns.b)}, by_pid.records
    assert sum(r["segs"] for r in by_pid.records) == resent[ns.b]

    # -c: per namespace, what nstat counts inside each
    assert {k: v for k, v in per_netns(counted.records, "segs").items() if k in resent} == resent
    assert {r["netns_inode"] for r in counted.records if r["netns"] == ns.a} == {scene.inode[ns.a]}


def test_export_labels_drops_and_retransmits_by_namespace() -> None:
    """netsnoop export's drop and retransmit series carry the namespace: each equals
    what that namespace's firewall (drops) and nstat (retransmits) counted."""
    from prometheus_client.parser import text_string_to_metric_families

    target = f"127.0.0.1:{free_port()}"
    # every namespace its own label: past --max-netns (64) a namespace counts as "other", and a
    # busy host (other tests' namespaces dropping and retransmitting) can fill the 64 first
    with loss_scene() as scene, Trace(["export", "--listen", target, "--metrics", "drops,retrans",
                                       "--max-netns", "100000"]):
        scene.start()
        scene.lose()

        def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as r:
                text = r.read().decode()
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in text_string_to_metric_families(text) for s in f.samples}

        want: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for name in (scene.ns.a, scene.ns.b):
            want["netsnoop_tcp_drops_total", (("netns", name), ("reason", "NETFILTER_DROP"))] = scene.dropped[name]
            want["netsnoop_tcp_retransmits_total", (("netns", name),)] = scene.retransmitted[name]
        # the exporter empties the kernel's maps every second: wait for the poll
        if not wait_for(lambda: all(samples().get(k) == v for k, v in want.items()), timeout=10):
            got = samples()  # only the series that differ: short enough to survive pytest's cut
            raise AssertionError({f"{k[0]}{dict(k[1])}": (v, got.get(k)) for k, v in want.items() if got.get(k) != v})
