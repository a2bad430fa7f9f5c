"""netsnoop drop: real drops (a SYN nobody listens for, an nftables rule in a private
netns), their kernel reasons from BTF, stacks from /proc/kallsyms."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest
from driver import parse_summary_text
from helpers import NetnsPair, Trace, closed_port, refused_connect, run
from loss_scene import loss_scene, per_netns
from traffic_helpers import Sink, flush_rules, in_netns, nft_input_chain, nft_rule_packets, wait_for

from netsnoop.commands.drop import drop_reasons
from netsnoop.ksyms import KernelSymbols
from netsnoop.netns import HOST_NETNS_INODE
from netsnoop.fmt import tcp_flags

HAVE_BTF = os.path.exists("/sys/kernel/btf/vmlinux")


def dropped(records: list[dict], dport: int) -> list[dict]:
    return [r for r in records if r["dport"] == dport]


@pytest.mark.integration
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_syn_to_a_closed_port_is_dropped_with_no_socket(host: str) -> None:
    port = closed_port(host)
    with Trace(["drop", "--json", "-P", str(port)]) as t, Trace(["drop", "-P", str(port)]) as text, \
         Trace(["drop", "--json", "-P", str(port)], env={"NETSNOOP_HOOKS": "tracepoint"}) as classic, \
         Trace(["drop", "--json", "-4", "-P", str(port)]) as only4, \
         Trace(["drop", "--json", "-6", "-P", str(port)]) as only6:
        refused_connect(host, port)
    # this kernel answers with a RST and frees the SYN as dropped: NO_SOCKET
    for trace in (t, classic):
        (r,) = dropped(trace.records, port)
        assert (r["ip"], r["daddr"], r["saddr"], r["flags"], r["state"]) == \
            (6 if ":" in host else 4, host, host, "SYN", None)
        assert r["reason"] == "NO_SOCKET"
        # no socket took it: the namespace is the device's (loopback's: the host's)
        assert (r["netns"], r["netns_inode"], r["pid"], r["container"]) == ("host", HOST_NETNS_INODE, None, "-")
        assert r["location"].startswith(("tcp_v4_rcv+", "tcp_v6_rcv+"))
        assert r["stack"][0].startswith(("kfree_skb", "sk_skb_reason_drop")), r["stack"]
        assert any(f.startswith(("tcp_v4_rcv+", "tcp_v6_rcv+")) for f in r["stack"])
        assert not any(f.startswith("bpf_") for f in r["stack"])  # tracing frames are cut
    assert t.summary["lost_events"] == 0
    assert (t.summary["hooks"]["drop"], classic.summary["hooks"]["drop"]) == ("tp_btf", "tracepoint")
    # -4 and -6 in the same run: the one of the drop's family is the positive control
    assert (len(only4.records), len(only6.records)) == ((0, 1) if ":" in host else (1, 0))

    header, row, *stack = text.lines
    assert header == "TIME     PID     IP SADDR:SPORT          > DADDR:DPORT          STATE (FLAGS)              REASON"
    assert row.split()[3:] == [f"{host}:{t.records[0]['sport']}", ">", f"{host}:{port}", "-", "(SYN)", "NO_SOCKET"]
    assert stack[-1] == "" and all(line.startswith("\t") for line in stack[:-1])
    assert [line.strip() for line in stack[:-1]] == t.records[0]["stack"]  # the same drop, the same frames


def syn_until_dropped(net: NetnsPair, port: int, rule: str) -> socket.socket:
    """A SYN from namespace A to ``port`` in B, which B's firewall drops: returns once
    the rule has counted one (the caller closes the socket)."""
    with in_netns(net.a):
        c = socket.socket()
    c.setblocking(False)
    assert c.connect_ex((net.addr_b, port)) == errno.EINPROGRESS
    assert wait_for(lambda: nft_rule_packets(net, net.b, rule) >= 1)
    return c


@pytest.mark.integration
def test_netfilter_drops_reason_filter_and_counts() -> None:
    with NetnsPair() as net, nft_input_chain(net, net.b) as drop:
        fw_port, closed = closed_port(), closed_port()
        drop(f'tcp dport {fw_port} counter drop comment "fw"')
        ports = f"{fw_port},{closed}"
        with Trace(["drop", "--json", "-P", ports]) as everything, \
             Trace(["drop", "--json", "--reason", "netfilter_drop", "--no-stack", "-P", ports]) as only_fw, \
             Trace(["drop", "-c", "--json", "-P", ports]) as counted:
            c = syn_until_dropped(net, fw_port, "fw")
            refused_connect("127.0.0.1", closed)
            c.close()  # no more SYNs
            firewall = nft_rule_packets(net, net.b, "fw")

    fw = dropped(everything.records, fw_port)
    assert len(fw) == firewall and all(r["reason"] == "NETFILTER_DROP" for r in fw), everything.records
    assert all((r["saddr"], r["daddr"], r["flags"], r["normal"]) == (net.addr_a, net.addr_b, "SYN", False) for r in fw)
    assert any(f.startswith("nf_hook_slow") for f in fw[0]["stack"]), fw[0]["stack"]
    assert [r["reason"] for r in dropped(everything.records, closed)] == ["NO_SOCKET"]

    # --reason keeps only the firewall's drops; --no-stack leaves the stack out
    assert [r["dport"] for r in only_fw.records] == [fw_port] * firewall
    assert all(r["stack"] == [] for r in only_fw.records)

    table = {(r["reason"], r["daddr"], r["dport"]): r["drops"] for r in counted.records}
    assert table == {("NETFILTER_DROP", net.addr_b, fw_port): firewall, ("NO_SOCKET", "127.0.0.1", closed): 1}


@pytest.mark.integration
def test_normal_reasons_are_left_out_and_reasons_can_be_excluded() -> None:
    """Ordinary closes make QUEUE_PURGE drops: two connections nobody accepted, whose
    data is freed when their listener closes. A firewall drop is the positive control:
    seen, exactly as often as the rule counted, while the closes' noise is left out."""
    with NetnsPair() as net, nft_input_chain(net, net.b) as drop:
        fw_port = closed_port()
        drop(f'tcp dport {fw_port} counter drop comment "fw"')
        with in_netns(net.b):
            unaccepted = socket.create_server((net.addr_b, 0))
        purge_port = unaccepted.getsockname()[1]
        ports = ["-P", f"{fw_port},{purge_port}"]
        with (
            Trace(["drop", "--json", *ports]) as default,
            Trace(["drop", "--json", "--normal", "--no-stack", *ports]) as normal,
            Trace(["drop", "--json", "--normal", "--reason", "!QUEUE_PURGE", *ports]) as not_purge,
            Trace(["drop", "--json", "--exclude-reason", "netfilter_drop", "--reason", "QUEUE_PURGE", *ports]) as purge,
            Trace(["drop", "-c", "--json", "--normal", *ports]) as counted,
        ):
            c = syn_until_dropped(net, fw_port, "fw")
            for _ in range(2):
                with in_netns(net.a):
                    client = socket.create_connection((net.addr_b, purge_port), timeout=5)
                client.sendall(b"data nobody reads")
                client.close()
            c.close()
            unaccepted.close()  # the two queued connections and their data are freed
            firewall = nft_rule_packets(net, net.b, "fw")

    def reasons(t: Trace) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in t.records:
            out[r["reason"]] = out.get(r["reason"], 0) + 1
        return out

    shown = reasons(normal)
    assert shown.get("QUEUE_PURGE", 0) >= 2 and shown["NETFILTER_DROP"] == firewall, normal.records
    assert all(r["normal"] == (r["reason"] == "QUEUE_PURGE") for r in normal.records)
    assert all(r["dport"] == purge_port for r in normal.records if r["reason"] == "QUEUE_PURGE")
    assert reasons(default).get("NETFILTER_DROP") == firewall and "QUEUE_PURGE" not in reasons(default)
    assert reasons(not_purge).get("NETFILTER_DROP") == firewall and "QUEUE_PURGE" not in reasons(not_purge)
    assert reasons(purge) == {"QUEUE_PURGE": shown["QUEUE_PURGE"]}
    table: dict[tuple[str, bool], int] = {}
    for r in counted.records:
        table[r["reason"], r["normal"]] = table.get((r["reason"], r["normal"]), 0) + r["drops"]
    assert table == {("NETFILTER_DROP", False): firewall, ("QUEUE_PURGE", True): shown["QUEUE_PURGE"]}


CLIENT = """
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"dropclient", 0, 0, 0)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
for line in sys.stdin:  # one send per line, in the test's rhythm
    c.sendall(b"x" * 100)
    print("sent", flush=True)
"""


@pytest.mark.integration
def test_drops_name_the_socket_owner() -> None:
    """The client (another process, named dropclient) loses the server's ACKs to a
    firewall and sends again; the server, this process, drops the data it already
    has. Each drop names its socket's owner, not whoever was on the CPU."""
    with NetnsPair() as net, nft_input_chain(net, net.a) as drop_a:
        with in_netns(net.b):
            server = Sink(net.addr_b)
        port = server.port
        with Trace(["drop", "--json", "-P", str(port)]) as t:
            # ip netns exec enters the namespace and execs python: one process, one PID
            client = subprocess.Popen(["ip", "netns", "exec", net.a, sys.executable, "-c", CLIENT, net.addr_b,
                                       str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert client.stdin is not None and client.stdout is not None
            try:
                client.stdin.write("1\n")
                client.stdin.flush()
                assert client.stdout.readline() == "sent\n" and wait_for(lambda: server.received == 100)
                drop_a(f'tcp sport {port} counter drop comment "acks"')  # the server's ACKs never arrive
                client.stdin.write("2\n")
                client.stdin.flush()
                assert client.stdout.readline() == "sent\n" and wait_for(lambda: server.received == 200)
                assert wait_for(lambda: nft_rule_packets(net, net.a, "acks") >= 2)  # an ACK of the resent data too
                flush_rules(net, net.a)
            finally:
                client.stdin.close()
                client.wait(10)
        server.close()
    firewall = [r for r in t.records if r["reason"] == "NETFILTER_DROP"]
    old = [r for r in t.records if r["reason"] == "TCP_OLD_DATA"]
    assert firewall and all((r["pid"], r["comm"]) == (client.pid, "dropclient") for r in firewall), t.records
    with open("/proc/self/comm") as f:
        me = f.read().strip()
    assert old and all((r["pid"], r["comm"], r["dport"]) == (os.getpid(), me, port) for r in old), t.records


@pytest.mark.integration
@pytest.mark.parametrize("args, message", [
    (["--reason", "NOT_A_REASON"], "not a drop reason"),
    (["--reason", "NO_SOCKE"], "did you mean NO_SOCKET"),
    (["-P", "70000"], "not a port"),
    (["--netns", "no-such-netns-here"], "no network namespace named 'no-such-netns-here'"),
    (["--cgroup", "/nonexistent"], "is not a cgroup v2 directory"),
    (["-p", "x"], "'x' is not a process ID"),
])
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    done = run(["drop", *args])
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(not HAVE_BTF, reason="needs kernel BTF")
def test_reason_names_come_from_kernel_btf() -> None:
    names = drop_reasons()
    assert names[1] == "CONSUMED" and "NO_SOCKET" in names.values() and "NETFILTER_DROP" in names.values()
    assert not any(n.startswith("SKB_") for n in names.values())


def test_kernel_symbols_bisect(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(str(tmp_path), "kallsyms")
    with open(path, "w") as f:
        f.write("ffffffff81000000 T _stext\nffffffff81000100 t tcp_v4_rcv\nffffffff81000200 D some_data\n"
                "ffffffff81000300 T ext4_thing\t[ext4]\n")
    syms = KernelSymbols(path)
    assert syms.format(0xFFFFFFFF81000150) == "tcp_v4_rcv+0x50"
    assert syms.format(0xFFFFFFFF81000250) == "tcp_v4_rcv+0x150"  # data symbols are skipped
    assert syms.format(0xFFFFFFFF81000301) == "ext4_thing+0x1 [ext4]"
    assert syms.format(0x10) == "0x10"
    assert syms.stack([0xFFFFFFFF81000000]) == ["_stext+0x0"]


def test_tcp_flags_in_bcc_order() -> None:
    assert tcp_flags(0x02) == "SYN"
    assert tcp_flags(0x12) == "SYN|ACK"
    assert tcp_flags(0x19) == "FIN|PSH|ACK"
    assert tcp_flags(0) == ""


@pytest.mark.integration
def test_counting_attaches_no_owner_hooks() -> None:
    """-c shows no owner, so the owner hooks (send, recv, state changes, destroy) are not
    loaded at all: the kernel holds one attached program for drop -c, five for drop."""
    with Trace(["drop", "-c", "--json"]) as counting, Trace(["drop", "--json"]) as rows:
        pass
    assert len(counting.links) == 1 and len(rows.links) == 5, (counting.links, rows.links)
    assert {g for g, k in counting.summary["hooks"].items() if k} == {"drop"}


@pytest.mark.integration
def test_who_and_where_of_drops() -> None:
    """Two container-like processes in two namespaces lose each other's packets to
    their namespaces' firewalls. Each drop names its namespace, the owner of the socket
    that had the packet (not whoever was on the CPU) and that owner's container; the
    filters keep one side each; -c counts per namespace what each firewall counted.
    The unfiltered trace is the control for every absence."""
    for _ in range(3):
        with loss_scene() as scene:
            ns, cg, a, b = scene.ns, scene.cg, scene.a.pid, scene.b.pid
            fw = ["--reason", "NETFILTER_DROP", "--no-stack"]
            with Trace(["drop", "--json", *fw]) as everything, \
                 Trace(["drop", "-w", *fw, "--netns", ns.a]) as by_ns, \
                 Trace(["drop", "--json", "-w", *fw, "--cgroup", cg.kube]) as by_cgroup, \
                 Trace(["drop", "--json", *fw, "-p", f"{a},{os.getpid()}"]) as by_pid, \
                 Trace(["drop", "-c", "--json", *fw]) as counted, \
                 Trace(["drop", "-c", "--json", *fw, "--cgroup", cg.docker]) as counted_docker:
                scene.start()
                scene.lose()
        # six traces on kfree_skb at once: a run in which one of them reports a drop it
        # could not see (a hook run the kernel skipped, an event lost) proves nothing
        # about exact counts, so the scene is played again
        summaries = [t.summary for t in (everything, by_cgroup, by_pid, counted, counted_docker)]
        summaries.append(parse_summary_text(by_ns.stderr) or {})
        if all(sm.get("lost_events", 0) == 0 and sm.get("skipped_hook_runs", 0) == 0 for sm in summaries):
            break
    dropped = scene.dropped
    assert dropped[ns.a] > 0 and dropped[ns.b] > 0

    for name in (ns.a, ns.b):
        rows = [r for r in everything.records if r["netns"] == name]
        assert len(rows) == dropped[name], (name, everything.records, dropped, summaries)
        pid, comm, container = scene.owner(name)
        assert {(r["pid"], r["comm"], r["container"], r["netns_inode"]) for r in rows} == {
            (pid, comm, container, scene.inode[name])}

    # --netns, text -w: NETNS and CONTAINER before REASON; A's drops only
    header, *lines = by_ns.lines
    assert header.split()[-3:] == ["NETNS", "CONTAINER", "REASON"], header
    fields = [line.split() for line in lines]
    assert len(fields) == dropped[ns.a], by_ns.stdout
    assert {(f[1], f[-3], f[-2]) for f in fields} == {(str(a), ns.a, cg.docker_label)}

    # --cgroup: B's drops only, with its cgroup path
    assert len(by_cgroup.records) == dropped[ns.b], by_cgroup.records
    assert {(r["pid"], r["netns"], r["cgroup"]) for r in by_cgroup.records} == {(b, ns.b, cg.rel(cg.kube))}

    # -p: A's drops (this process owns no socket that drops), none of B's
    assert len(by_pid.records) == dropped[ns.a] and {r["pid"] for r in by_pid.records} == {a}, by_pid.records

    # -c: per namespace, what each firewall counted; with --cgroup only A's namespace
    assert {k: v for k, v in per_netns(counted.records, "drops").items() if k in dropped} == dropped
    assert {r["netns_inode"] for r in counted.records if r["netns"] == ns.b} == {scene.inode[ns.b]}
    assert per_netns(counted_docker.records, "drops") == {ns.a: dropped[ns.a]}, counted_docker.records
