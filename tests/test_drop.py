"""netsnoop drop: real drops (a SYN nobody listens for, an nftables rule in a private
netns), their kernel reasons from BTF, stacks from /proc/kallsyms."""

from __future__ import annotations

import errno
import os
import socket
import time

import pytest
from helpers import NetnsPair, Trace, closed_port, refused_connect, run
from traffic_helpers import in_netns, nft_input_chain

from netsnoop.commands.drop import drop_reasons
from netsnoop.ksyms import KernelSymbols
from netsnoop.traffic import tcp_flags

HAVE_BTF = os.path.exists("/sys/kernel/btf/vmlinux")


def dropped(records: list[dict], dport: int) -> list[dict]:
    return [r for r in records if r["dport"] == dport]


@pytest.mark.integration
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_syn_to_a_closed_port_is_dropped_with_no_socket(host: str) -> None:
    port = closed_port(host)
    with Trace(["drop", "--json", "-P", str(port)]) as t, Trace(["drop", "-P", str(port)]) as text, \
         Trace(["drop", "--json", "-P", str(port)], env={"NETSNOOP_PREFER": "tracepoint"}) as classic, \
         Trace(["drop", "--json", "-4", "-P", str(port)]) as only4:
        refused_connect(host, port)
    # this kernel answers with a RST and frees the SYN as dropped: NO_SOCKET
    for trace in (t, classic):
        (r,) = dropped(trace.records, port)
        assert (r["ip"], r["daddr"], r["saddr"], r["flags"], r["state"]) == (6 if ":" in host else 4, host, host, "SYN", None)
        assert r["reason"] == "NO_SOCKET"
        assert r["location"].startswith(("tcp_v4_rcv+", "tcp_v6_rcv+"))
        assert r["stack"][0].startswith(("kfree_skb", "sk_skb_reason_drop")), r["stack"]
        assert any(f.startswith(("tcp_v4_rcv+", "tcp_v6_rcv+")) for f in r["stack"])
        assert not any(f.startswith("bpf_") for f in r["stack"])  # tracing frames are cut
    assert t.summary["lost_events"] == 0
    assert len(only4.records) == (0 if ":" in host else 1)  # -4

    header, row, *stack = text.lines
    assert header == "TIME     PID     IP SADDR:SPORT          > DADDR:DPORT          STATE (FLAGS)              REASON"
    assert row.split()[3:] == [f"{host}:{t.records[0]['sport']}", ">", f"{host}:{port}", "-", "(SYN)", "NO_SOCKET"]
    assert stack[-1] == "" and all(line.startswith("\t") for line in stack[:-1])
    assert [line.strip() for line in stack[:-1]] == t.records[0]["stack"]  # the same drop, the same frames


@pytest.mark.integration
def test_netfilter_drops_reason_filter_and_counts() -> None:
    with NetnsPair() as net, nft_input_chain(net, net.b) as drop:
        fw_port, closed = closed_port(), closed_port()
        drop(f"tcp dport {fw_port} drop")
        ports = f"{fw_port},{closed}"
        with Trace(["drop", "--json", "-P", ports]) as everything, \
             Trace(["drop", "--json", "--reason", "netfilter_drop", "--no-stack", "-P", ports]) as only_fw, \
             Trace(["drop", "-c", "--json", "-P", ports]) as counted:
            with in_netns(net.a):
                c = socket.socket()
            c.setblocking(False)
            assert c.connect_ex((net.addr_b, fw_port)) == errno.EINPROGRESS
            refused_connect("127.0.0.1", closed)
            time.sleep(0.2)
            c.close()

    fw = dropped(everything.records, fw_port)
    assert fw and all(r["reason"] == "NETFILTER_DROP" for r in fw), everything.records
    assert all((r["saddr"], r["daddr"], r["flags"]) == (net.addr_a, net.addr_b, "SYN") for r in fw)
    assert any(f.startswith("nf_hook_slow") for f in fw[0]["stack"]), fw[0]["stack"]
    assert [r["reason"] for r in dropped(everything.records, closed)] == ["NO_SOCKET"]

    # --reason keeps only the firewall's drops; --no-stack leaves the stack out
    assert [r["dport"] for r in only_fw.records] == [fw_port] * len(fw)
    assert all(r["stack"] == [] for r in only_fw.records)

    table = {(r["reason"], r["daddr"], r["dport"]): r["drops"] for r in counted.records}
    assert table == {("NETFILTER_DROP", net.addr_b, fw_port): len(fw), ("NO_SOCKET", "127.0.0.1", closed): 1}


@pytest.mark.integration
@pytest.mark.parametrize("args, message", [
    (["--reason", "NOT_A_REASON"], "not a drop reason"),
    (["--reason", "NO_SOCKE"], "did you mean NO_SOCKET"),
    (["-P", "70000"], "not a port"),
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
