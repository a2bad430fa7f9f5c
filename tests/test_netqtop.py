"""netsnoop netqtop on a veth pair in private namespaces, with UDP traffic the test makes."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterator

import helpers
import pytest
from click.testing import CliRunner
from helpers import NETSNOOP, ROOT, NetnsPair, Trace, sh

from netsnoop.cli import cli

integration = pytest.mark.integration
COUNT, PAYLOAD = 5, 1000  # 1000-byte UDP payloads: 1028-byte IP packets, in [512, 2K)

ECHO_SERVER = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999)); print('up', flush=True)\n"
    "while True:\n"
    "    data, peer = s.recvfrom(65536); s.sendto(data, peer)\n"
)
# COUNT echoes over the veth, then as many large datagrams over the namespace's own
# loopback (another interface, which must not be counted)
CLIENT = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10)\n"
    f"for _ in range({COUNT}):\n"
    f"    s.sendto(b'x' * {PAYLOAD}, (sys.argv[1], 9999)); s.recvfrom(65536)\n"
    f"    s.sendto(b'y' * {PAYLOAD}, ('127.0.0.1', 9))\n"
)


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetnsPair]:
    """A veth pair with a UDP echo server on side B; netsnoop runs inside side A
    (interface names are looked up in the tool's own namespace)."""
    with NetnsPair() as p:
        # IPv6 off on the link: no router solicitations or MLD reports at odd moments,
        # so the interface carries only the test's packets (and their ARP)
        for ns, dev in ((p.a, p.dev_a), (p.b, p.dev_b)):
            p.exec(ns, f"sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1")
        server = p.popen(p.b, [sys.executable, "-c", ECHO_SERVER])
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        monkeypatch.setattr(helpers, "NETSNOOP", ["ip", "netns", "exec", p.a, *helpers.NETSNOOP])
        try:
            yield p
        finally:
            server.kill()
            server.communicate()


def echo_traffic(p: NetnsPair) -> None:
    p.exec(p.a, f"{sys.executable} -c \"{CLIENT}\" {p.addr_b}")


def totals(records: list[dict], direction: str) -> dict[str, int]:
    """Sum of every interval's per-queue counters in one direction."""
    rows = [r for r in records if r["direction"] == direction]
    keys = ("packets", "bytes", "size_0_64", "size_64_512", "size_512_2k", "size_2k_16k", "size_16k_64k")
    return {k: sum(r[k] for r in rows) for k in keys}


def dev_counters(p: NetnsPair) -> dict[str, int]:
    """The kernel's own counters of side A's veth (/proc/net/dev inside namespace A)."""
    for line in p.exec(p.a, "cat /proc/net/dev").stdout.splitlines():
        name, _, values = line.partition(":")
        if name.strip() == p.dev_a:
            v = list(map(int, values.split()))
            return {"rx_bytes": v[0], "rx_packets": v[1], "tx_bytes": v[8], "tx_packets": v[9]}
    raise AssertionError(f"{p.dev_a} not in /proc/net/dev")


@integration
@pytest.mark.parametrize("kind", ["tp_btf", "tracepoint"])
def test_counts_per_queue_and_size_on_the_veth(pair: NetnsPair, kind: str) -> None:
    """Packets and bytes equal the interface's own counters over the same time (the
    link carries nothing else). RX sizes are what the driver hands up, after the
    14-byte Ethernet header is removed; TX sizes include it."""
    with Trace(["netqtop", "-n", pair.dev_a, "-i", "0.5", "--json"], env={"NETSNOOP_HOOKS": kind}) as t:
        before = dev_counters(pair)
        echo_traffic(pair)
        after = dev_counters(pair)
    kernel = {k: after[k] - before[k] for k in before}
    tx, rx = totals(t.records, "TX"), totals(t.records, "RX")
    assert (tx["packets"], tx["bytes"]) == (kernel["tx_packets"], kernel["tx_bytes"])
    assert (rx["packets"], rx["bytes"] + 14 * rx["packets"]) == (kernel["rx_packets"], kernel["rx_bytes"])
    # exactly our echoes in [512, 2K): not the loopback datagrams, and not the peer's
    # same-ifindex veth in the other namespace (which would double both counts)
    assert tx["size_512_2k"] == COUNT and rx["size_512_2k"] == COUNT
    assert {r["queue"] for r in t.records} == {0}  # veth: one queue each way
    busy = [r for r in t.records if r["packets"]]
    assert all(r["avg_size"] == r["bytes"] // r["packets"] and r["pps"] > 0 for r in busy)
    assert t.summary["lost_events"] == 0 and t.summary["intervals"] >= 1
    assert t.summary["hooks"] == {"xmit": kind, "receive": kind}


@integration
def test_text_tables_with_throughput(pair: NetnsPair) -> None:
    with Trace(["netqtop", "-n", pair.dev_a, "-i", "0.5", "-t"]) as t:
        echo_traffic(pair)
    lines = t.lines
    header = [
        "QueueID",
        "avg_size",
        "[0,",
        "64)",
        "[64,",
        "512)",
        "[512,",
        "2K)",
        "[2K,",
        "16K)",
        "[16K,",
        "64K)",
        "BPS",
        "PPS",
    ]
    assert lines.count("TX") == lines.count("RX") >= 1
    assert all(lines[i + 1].split() == header for i, line in enumerate(lines) if line in ("TX", "RX"))
    totals_512 = [int(line.split()[4]) for line in lines if line.split()[:1] == ["Total"]]
    assert sum(totals_512) == 2 * COUNT  # TX and RX tables both count our echoes
    assert lines[-1] == "-" * 95


def test_missing_interface_is_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["netqtop", "-n", "nosuchif0"])
    assert result.exit_code == 2
    assert "'nosuchif0' does not exist" in result.output and "Traceback" not in result.output


def test_interface_is_required() -> None:
    result = CliRunner().invoke(cli, ["netqtop"])
    assert result.exit_code == 2 and "Missing option '-n'" in result.output


def complete(words: str, netns: str | None = None) -> list[str]:
    """What the real CLI's completion offers for the last of ``words`` (as bash asks
    click for it: ``_NETSNOOP_COMPLETE=bash_complete``), run inside ``netns``."""
    env = {**os.environ, "_NETSNOOP_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1)}
    prefix = ["ip", "netns", "exec", netns] if netns else []
    done = subprocess.run([*prefix, *NETSNOOP], capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if line]


def link_names(netns: str | None = None) -> set[str]:
    """The interfaces iproute2 lists (``ip -o link``: "N: name[@peer]: ...")."""
    out = sh(f"ip {'-n ' + netns + ' ' if netns else ''}-o link show").stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


@integration
def test_interface_names_complete_per_namespace() -> None:
    """-n/--name completes the interfaces of the namespace netsnoop runs in, as
    iproute2 lists them there: a veth end shows in its own namespace only."""
    with NetnsPair() as p:
        assert complete("netsnoop netqtop -n ", p.a) == sorted(link_names(p.a)) == sorted(["lo", p.dev_a])
        assert complete("netsnoop netqtop -n ", p.b) == sorted(["lo", p.dev_b])
        assert complete(f"netsnoop netqtop --name {p.dev_a[:4]}", p.a) == [p.dev_a]  # the typed prefix
        assert complete(f"netsnoop netqtop --name {p.dev_b[:4]}", p.a) == []  # the peer is in the other namespace


@integration
def test_interface_names_complete_on_the_host() -> None:
    """In the host namespace too (other tests may add or remove interfaces meanwhile:
    what both listings have must be offered, what neither has must not)."""
    before = link_names()
    offered = set(complete("netsnoop netqtop -n "))
    after = link_names()
    assert before & after <= offered <= before | after and "lo" in offered


@integration
def test_the_interface_of_another_namespace(pair: NetnsPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run on the host, --netns names the interface's namespace: it is found there, and
    only its packets count (the peer veth in the other namespace, likely of the same
    ifindex, would double them); without --netns the name is not the host's."""
    monkeypatch.setattr(helpers, "NETSNOOP", NETSNOOP)  # the host's namespace, not A's
    with Trace(["netqtop", "-n", pair.dev_a, "--netns", pair.a, "-i", "0.5", "--json"]) as t:
        echo_traffic(pair)
    assert totals(t.records, "TX")["size_512_2k"] == totals(t.records, "RX")["size_512_2k"] == COUNT
    assert f"Tracing {pair.dev_a} in {pair.a}" in t.stderr
    result = CliRunner().invoke(cli, ["netqtop", "-n", pair.dev_a])
    assert result.exit_code == 2 and "does not exist (in this network namespace)" in result.output
