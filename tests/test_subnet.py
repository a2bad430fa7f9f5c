"""netsnoop subnet: bytes sent to addresses only this test uses, by subnet.

IPv4 uses a /24 inside 127.0.0.0/8 picked per run (all of it is local on Linux, no
configuration needed); IPv6 runs in a private netns pair. So no other traffic on the
machine can land in the subnets asserted on.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time

import click
import pytest
from helpers import NetnsPair, Trace, assert_verified, run
from traffic_helpers import Sink, in_netns

from netsnoop.commands.subnet import SubnetList, subnet_filters
from netsnoop.loader import BPFObject

MIB = 1024 * 1024
NET = f"127.{os.getpid() % 200 + 20}.{os.getpid() // 200 % 250 + 1}"


def send(server: Sink, client_host: str, server_host: str, size: int, reply: int) -> None:
    """``size`` bytes client -> server, then ``reply`` bytes back, then close."""
    server.expect, server.reply = size, reply
    family = socket.AF_INET6 if ":" in server_host else socket.AF_INET
    c = socket.socket(family)
    c.bind((client_host, 0))
    c.connect((server_host, server.port))
    c.sendall(b"s" * size)
    got = 0
    while got < reply:
        got += len(c.recv(65536))
    c.close()


def sums(records: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r["subnet"]] = out.get(r["subnet"], 0) + r["bytes"]
    return out


@pytest.mark.integration
def test_bytes_by_subnet_and_first_match_wins() -> None:
    server_ip, client_ip = f"{NET}.1", f"{NET}.2"
    server = Sink(server_ip)
    try:
        with (
            Trace(["subnet", "--json", "-i", "0.2", f"{server_ip}/32,{NET}.0/24,0.0.0.0/0"]) as narrow_first,
            Trace(["subnet", "--json", "-i", "0.2", f"{NET}.0/24,{server_ip}/32"]) as wide_first,
            # one interval, ended by Ctrl-C: the traces start one after another, and the
            # rows below are one interval's (a busy machine's start-ups may take seconds)
            Trace(["subnet", "-f", "K", "-i", "60", f"{server_ip}/32,{client_ip}/32"]) as text,
            Trace(
                ["subnet", "--json", "-i", "0.2", f"{server_ip}/32,{NET}.0/24"], env={"NETSNOOP_HOOKS": "tracepoint"}
            ) as classic,
        ):
            send(server, client_ip, server_ip, 3 * MIB, MIB)
    finally:
        server.close()
    assert sums(classic.records) == {f"{server_ip}/32": 3 * MIB, f"{NET}.0/24": MIB}
    assert classic.summary["hooks"] == {"send": "tracepoint"} and narrow_first.summary["hooks"] == {"send": "tp_btf"}
    got = sums(narrow_first.records)
    assert got[f"{server_ip}/32"] == 3 * MIB  # client -> server
    assert got[f"{NET}.0/24"] == MIB  # server -> client: not the /32, so the /24
    assert sums(wide_first.records).get(f"{NET}.0/24") == 4 * MIB
    assert f"{server_ip}/32" not in sums(wide_first.records)  # listed after the /24 that matched first
    assert all(r["sent"] == r["bytes"] and isinstance(r["timestamp"], float) for r in narrow_first.records)

    # text: bcc's "[date time]" line per interval, then "SUBNET  value" in the -f unit
    stamp, *rows = text.lines
    assert stamp.startswith("[") and stamp.endswith("]") and len(stamp.split()) == 2
    assert rows == [f"{server_ip + '/32':<21} {3072:>6}", f"{client_ip + '/32':<21} {1024:>6}"]


def bcc_entries(lines: list[str]) -> tuple[list[dict], dict[str, float]]:
    """The -J objects, checked line by line against bcc's layout, and their entries
    summed over the intervals."""
    objects: list[dict] = []
    total: dict[str, float] = {}
    for line in lines:
        obj = json.loads(line)
        assert list(obj) == ["date", "time", "entries"], line
        assert json.dumps(obj) == line, line  # bcc's json.dumps: ", " and ": ", keys in bcc's order
        assert re.fullmatch(r"\d\d:\d\d:\d\d", obj["time"]), line
        values = list(obj["entries"].values())
        assert values == sorted(values, reverse=True), line  # busiest subnet first
        objects.append(obj)
        for subnet, sent in obj["entries"].items():
            total[subnet] = total.get(subnet, 0) + sent
    return objects, total


@pytest.mark.integration
def test_bcc_json_layout() -> None:
    """-J prints what bcc's tcpsubnet -J prints: one object per interval with its
    date and time (%x, %X) and the subnets' values in the -f unit, integers for
    bytes, Python 3's quotient for K; --json keeps netsnoop's per-subnet objects."""
    server_ip, client_ip = f"{NET}.1", f"{NET}.2"
    subnets = f"{server_ip}/32,{NET}.0/24"
    server = Sink(server_ip)
    days = {time.strftime("%x")}
    try:
        with Trace(["subnet", "-J", "-i", "5", subnets]) as bcc, \
             Trace(["subnet", "-J", "-f", "K", "-i", "5", subnets]) as kib, \
             Trace(["subnet", "--json", "-i", "5", subnets]) as ours:
            send(server, client_ip, server_ip, 3 * MIB + 100, MIB)
    finally:
        server.close()
    days.add(time.strftime("%x"))
    objects, got = bcc_entries(bcc.lines)
    assert objects and {o["date"] for o in objects} <= days
    assert got == {f"{server_ip}/32": 3 * MIB + 100, f"{NET}.0/24": MIB}
    assert all(isinstance(v, int) for o in objects for v in o["entries"].values())
    _, kib_sums = bcc_entries(kib.lines)
    assert kib_sums == {f"{server_ip}/32": (3 * MIB + 100) / 1024, f"{NET}.0/24": 1024.0}
    assert isinstance(kib_sums[f"{NET}.0/24"], float)
    assert "intervals" in bcc.stderr and not any('"summary"' in line for line in bcc.lines)  # summary on stderr
    assert sums(ours.records) == got and "entries" not in ours.records[0]  # --json: netsnoop's layout


@pytest.mark.integration
def test_ipv6_subnets_in_a_private_namespace() -> None:
    with NetnsPair() as net:
        with in_netns(net.b):
            server = Sink(net.addr6_b)
        subnets = f"{net.addr6_b}/128,{net.addr6_a}/128,::/0"
        with Trace(["subnet", "--json", "-f", "b", "-i", "60", subnets]) as t:  # one interval, ended by Ctrl-C
            with in_netns(net.a):
                send(server, net.addr6_a, net.addr6_b, 100_000, 50_000)
        server.close()
    rows = {r["subnet"]: r for r in t.records}
    assert rows[f"{net.addr6_b}/128"]["bytes"] == 100_000 and rows[f"{net.addr6_b}/128"]["sent"] == 800_000
    assert rows[f"{net.addr6_a}/128"]["bytes"] == 50_000


@pytest.mark.integration
@pytest.mark.parametrize("args", [["10.0.0.0/33"], ["10.0.0.256/8"], ["not-a-net"], ["-f", "X"], ["-i", "0"],
                                  [",".join(f"10.{i}.0.0/16" for i in range(33))],
                                  ["-J", "--json"]])
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    done = run(["subnet", *args])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


@pytest.mark.integration
def test_verbose_shows_the_kernel_table() -> None:
    done = run(["subnet", "-v", "-d", "0.2", "10.1.2.3/8,fd00::/8"])
    assert done.returncode == 0, done.stderr
    assert "subnet 0: 10.1.2.3/8 = 10.0.0.0 mask 255.0.0.0" in done.stderr
    assert "subnet 1: fd00::/8 = fd00:: mask ff00::" in done.stderr


@pytest.mark.integration
def test_kprobe_fallback_passes_the_verifier() -> None:
    with BPFObject("subnet", variants={"send": "kprobe"}) as obj:
        obj.load()
        assert_verified(obj, "send", "kprobe")


def test_subnets_become_kernel_tables() -> None:
    subnets = SubnetList().convert("10.1.2.3/8, fd00::/8", None, None)
    assert [s.text for s in subnets] == ["10.1.2.3/8", "fd00::/8"]  # as written, host bits allowed as in bcc
    tables = subnet_filters(subnets)
    assert tables["subnet_count"] == 2 and tables["subnet_family"] == [socket.AF_INET, socket.AF_INET6]
    words = lambda packed: list(int.from_bytes(packed[i:i + 4], sys.byteorder) for i in range(0, 16, 4))  # noqa: E731
    assert tables["subnet_addr"][:4] == words(bytes([10, 0, 0, 0]) + bytes(12))
    assert tables["subnet_mask"][:4] == words(bytes([255, 0, 0, 0]) + bytes(12))
    assert tables["subnet_mask"][4:] == words(bytes([255]) + bytes(15))
    with pytest.raises(click.BadParameter):
        SubnetList().convert("10.0.0.0/8,bogus", None, None)
