"""netsnoop retrans: real retransmits, caused by nftables drops inside private netns."""

from __future__ import annotations

import errno
import socket
import time

import pytest
from helpers import NetnsPair, Trace, run
from traffic_helpers import Sink, flush_rules, in_netns, nft_input_chain, wait_for

from netsnoop.commands.retrans import TRACER
from netsnoop.loader import BPFObject

pytestmark = pytest.mark.integration


def test_established_connection_retransmits_are_traced_and_counted() -> None:
    with NetnsPair() as net, nft_input_chain(net, net.b) as drop:
        with in_netns(net.b):
            server = Sink(net.addr_b)
        port = str(server.port)
        with Trace(["retrans", "--json", "-s", "-P", port]) as events, \
             Trace(["retrans", "-s", "-P", port]) as text, \
             Trace(["retrans", "-c", "--json", "-P", port], env={"NETSNOOP_PREFER": "tracepoint"}) as counted:
            with in_netns(net.a):
                client = socket.create_connection((net.addr_b, server.port), timeout=5)
            client.sendall(b"a" * 1000)
            assert wait_for(lambda: server.received == 1000)
            drop(f"tcp dport {port} drop")  # the next segment and its retransmits are lost
            client.sendall(b"b" * 1000)
            time.sleep(0.9)  # the RTO is >= 200 ms: one or two retransmits are lost too
            flush_rules(net, net.b)
            assert wait_for(lambda: server.received == 2000, timeout=5)
            lport = client.getsockname()[1]
            client.close()
            server.close()

    rows = [r for r in events.records if r["lport"] == lport]
    assert rows, events.records
    for r in rows:
        assert (r["ip"], r["laddr"], r["raddr"], r["rport"]) == (4, net.addr_a, net.addr_b, server.port)
        assert r["kind"] == "R" and r["state"] == "ESTABLISHED"
    # the lost segment is the one sent again: one sequence number throughout
    assert len({r["seq"] for r in rows}) == 1 and rows[0]["seq"] > 0
    assert events.summary["lost_events"] == 0

    # -c (through the classic tracepoint here) counts the same retransmits per flow
    flows = [r for r in counted.records if r["lport"] == lport]
    assert [(f["laddr"], f["raddr"], f["rport"], f["retransmits"]) for f in flows] == [
        (net.addr_a, net.addr_b, server.port, len(rows))]

    header, *lines = text.lines
    assert header.split() == ["TIME", "PID", "IP", "LADDR:LPORT", "T>", "RADDR:RPORT", "STATE", "SEQ"]
    assert header.startswith("TIME     PID     IP LADDR:LPORT          T> RADDR:RPORT          STATE        SEQ")
    mine = [line.split() for line in lines if f"{net.addr_a}:{lport}" in line]
    assert len(mine) == len(rows)
    assert mine[0][2:] == ["4", f"{net.addr_a}:{lport}", "R>", f"{net.addr_b}:{port}", "ESTABLISHED", str(rows[0]["seq"])]


def test_syn_and_synack_retransmits() -> None:
    with NetnsPair() as net, nft_input_chain(net, net.b) as drop:
        with in_netns(net.b):
            syn_lost, ack_lost = Sink(net.addr_b), Sink(net.addr_b)
        ports = f"{syn_lost.port},{ack_lost.port}"
        drop(f"tcp dport {syn_lost.port} drop")  # the SYN never arrives
        drop(f"tcp dport {ack_lost.port} tcp flags & (syn | ack) == ack drop")  # the handshake's ACK never arrives
        with Trace(["retrans", "--json", "-P", ports]) as t:
            with in_netns(net.a):
                c1 = socket.socket()
                c2 = socket.socket()
            c1.setblocking(False)
            assert c1.connect_ex((net.addr_b, syn_lost.port)) == errno.EINPROGRESS
            c2.settimeout(5)
            c2.connect((net.addr_b, ack_lost.port))  # the client side completes at once
            time.sleep(1.5)  # the initial RTO (SYN, SYN-ACK) is 1 s
            c1.close()
            c2.close()
        syn_lost.close()
        ack_lost.close()

    syn = [r for r in t.records if r["rport"] == syn_lost.port]
    synack = [r for r in t.records if r["lport"] == ack_lost.port]
    assert syn and all(r["state"] == "SYN_SENT" and r["laddr"] == net.addr_a for r in syn), t.records
    assert synack, t.records
    assert all(r["state"] == "NEW_SYN_RECV" and r["laddr"] == net.addr_b and r["raddr"] == net.addr_a for r in synack)


def test_lossprobe_says_whether_the_kernel_has_a_hook() -> None:
    available = TRACER.probe().get("tlp") is not None
    done = run(["retrans", "-l", "-d", "0.3"])
    assert done.returncode == 0, done.stderr
    assert ("no hook for tail loss probes" in done.stderr) is not available


def test_kprobe_fallbacks_pass_the_verifier() -> None:
    # load only: kprobes cannot attach on a kernel without CONFIG_KPROBES
    with BPFObject("retrans", variants={"retransmit": "kprobe", "synack": "kprobe", "tlp": "kprobe"}) as obj:
        obj.load()
        assert obj.chosen == {"retransmit": "kprobe", "synack": "kprobe", "tlp": "kprobe"}


@pytest.mark.parametrize("args", [["-P", "0"], ["-4", "-x"], ["--port", "1,a"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    done = run(["retrans", *args])
    assert done.returncode == 2 and "Traceback" not in done.stderr
