"""Constants the Python side restates from C, held to the C: each is read from the
compiled objects' BTF (array lengths of the filter globals, enums kept there by
EXPORT_ENUM) or from the kernel's, so changing one side alone fails here. No root
needed: nothing is loaded."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from helpers import ROOT
from netsnoop import conn, fmt, verdicts, where
from netsnoop import dns as dns_mod
from netsnoop import options as o
from netsnoop.btf import BTF
from netsnoop.commands import connect, drop, fdsnoop, netqtop, retrans, rtt, subnet

BPF = os.path.join(ROOT, "netsnoop", "bpf")


def objects() -> list[str]:
    names = sorted(f.removesuffix(".bpf.c") for f in os.listdir(BPF) if f.endswith(".bpf.c"))
    missing = [n for n in names if not os.path.exists(os.path.join(BPF, f"{n}.bpf.o"))]
    if missing:
        pytest.skip(f"BPF objects not built (make bpf): {', '.join(missing)}")
    return names


def btf_of(name: str) -> BTF:
    return BTF.parse(os.path.join(BPF, f"{name}.bpf.o"))


def rodata_lengths(name: str) -> dict[str, int]:
    """Element count of each read-only global of object ``name``."""
    with btf_of(name) as btf:
        return {v.name: v.count if v.code != "s" else v.size for v in btf.datasec(".rodata")}


def enum(obj: str, name: str) -> dict[str, int]:
    with btf_of(obj) as btf:
        values = btf.enumerators(name)
    assert values, f"enum {name} is not in {obj}.bpf.o's BTF (EXPORT_ENUM({name}) keeps it there)"
    return values


def each_object_with(variable: str) -> Iterator[tuple[str, int]]:
    for name in objects():
        length = rodata_lengths(name).get(variable)
        if length is not None:
            yield name, length


def test_max_ports_is_the_port_filters_length_in_every_object() -> None:
    found = {(name, var): n for var in ("filter_lports", "filter_rports", "filter_ports")
             for name, n in each_object_with(var)}
    assert len(found) > 30  # nearly every tool filters ports
    assert set(found.values()) == {o.MAX_PORTS}, found


def test_max_netns_and_max_pids_are_the_where_filters_lengths() -> None:
    """netsnoop.h declares the process list (every object has it), where.h the
    namespace list."""
    pids = dict(each_object_with("filter_pids"))
    netns = dict(each_object_with("filter_netns"))
    assert netns.pop("netqtop") == 1  # its one interface's namespace: a scalar of its own
    assert set(pids) >= {"states", "life", "tracer", "top", "drop"} and set(netns) >= {"states", "drop", "top"}
    assert set(netns.values()) == {where.MAX_NETNS} and set(pids.values()) == {where.MAX_PIDS}


def test_drop_max_reasons_is_each_reason_lists_length() -> None:
    lengths = rodata_lengths("drop")
    assert (lengths["filter_reasons"], lengths["exclude_reasons"]) == (drop.MAX_REASONS, drop.MAX_REASONS)


def test_subnet_max_subnets_is_the_subnet_tables_length() -> None:
    lengths = rodata_lengths("subnet")
    assert lengths["subnet_family"] == subnet.MAX_SUBNETS
    assert lengths["subnet_addr"] == lengths["subnet_mask"] == 4 * subnet.MAX_SUBNETS


def test_fdsnoop_comm_filter_fits_the_kernels_comm() -> None:
    assert rodata_lengths("fdsnoop")["filter_comm"] == fdsnoop.TASK_COMM_LEN


def test_netqtop_size_columns_are_the_kernels_size_buckets() -> None:
    with btf_of("netqtop") as btf:
        _size, fields = btf.struct_fields("queue_stats")
    buckets = next(f.count for f in fields if f.name == "sizes")
    assert len(netqtop.SIZE_HEADERS) == len(netqtop.SIZE_KEYS) == buckets


def test_connect_report_modes() -> None:
    assert enum("connect", "report_mode") == {"REPORT_ATTEMPT": connect.ATTEMPT, "REPORT_LPORT": connect.LPORT,
                                              "REPORT_OUTCOME": connect.OUTCOME}


def test_connect_and_accept_count_keys() -> None:
    want = {"COUNT_ADDRS": connect.COUNT_ADDRS, "COUNT_PORT": connect.COUNT_PORT,
            "COUNT_LATENCY": connect.COUNT_LATENCY}
    assert enum("connect", "count_flags") == enum("accept", "count_flags") == want


def test_rtt_key_kinds() -> None:
    assert enum("rtt", "rtt_key_by") == {"KEY_NONE": rtt.KEY_NONE, "KEY_LADDR": rtt.KEY_LADDR,
                                         "KEY_RADDR": rtt.KEY_RADDR}


def test_retrans_types() -> None:
    types = enum("retrans", "retrans_type")
    assert retrans.TYPES == {types["RETRANSMIT"]: "R", types["TLP"]: "L"}


def test_fdsnoop_actions() -> None:
    actions = enum("fdsnoop", "action")
    assert {name.removeprefix("ACTION_"): value for name, value in actions.items()} == {
        name: i for i, name in enumerate(fdsnoop.ACTIONS)}


@pytest.mark.parametrize("obj", ["connect", "accept", "tracer", "connlat"])
def test_connection_row_kinds(obj: str) -> None:
    kinds = {name.removeprefix("CONN_").lower(): value for name, value in enum(obj, "conn_kind").items()}
    assert kinds["connect"] == conn.CONNECT
    assert {value: conn.KINDS[value][1] for value in kinds.values()} == {v: k for k, v in kinds.items()}


@pytest.mark.parametrize("obj", ["dns", "dns_sock"])
def test_dns_record_kinds(obj: str) -> None:
    assert enum(obj, "dns_kind") == {"DNS_SENT": dns_mod.SENT, "DNS_RECEIVED": dns_mod.RECEIVED}


def test_why_record_kinds() -> None:
    assert enum("why", "why_kind") == {
        "WHY_SYN_IN": verdicts.SYN_IN, "WHY_DROP": verdicts.DROP, "WHY_SYNACK_RETRANS": verdicts.SYNACK_RETRANS,
        "WHY_FIB_FAIL": verdicts.FIB_FAIL, "WHY_STATE": verdicts.STATE, "WHY_ICMP_SEND": verdicts.ICMP_SEND,
        "WHY_SK_ERROR": verdicts.SK_ERROR}


def test_tcp_states_are_the_kernels() -> None:
    """The state names and numbers shown everywhere, from the kernel's own BTF."""
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no kernel BTF")
    btf = BTF.parse("/sys/kernel/btf/vmlinux")
    with btf:
        states = {name: value for value, name in btf.enum_containing("TCP_ESTABLISHED").items()}
    assert {f"TCP_{name}": value for value, name in fmt.TCP_STATES.items()}.items() <= states.items()
    assert (conn.TCP_ESTABLISHED, conn.TCP_SYN_SENT, conn.TCP_CLOSE) == (
        states["TCP_ESTABLISHED"], states["TCP_SYN_SENT"], states["TCP_CLOSE"])
    assert (verdicts.ESTABLISHED, verdicts.SYN_SENT, verdicts.SYN_RECV, verdicts.CLOSE) == (
        states["TCP_ESTABLISHED"], states["TCP_SYN_SENT"], states["TCP_SYN_RECV"], states["TCP_CLOSE"])
