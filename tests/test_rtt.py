"""netsnoop rtt: RTT histograms of traffic the tests make, on loopback and over a veth
link shaped to 4 Mbit/s (whose queue must push samples into the millisecond buckets)."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import NetnsPair, PayloadServer, Trace, fetch

from netsnoop.cli import cli
from netsnoop.loader import BPFObject

SERVER = (
    "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 5001)); s.listen()\n"
    "c, _ = s.accept(); c.sendall(b'x' * int(sys.argv[2])); c.close()"
)
CLIENT = (
    "import socket, sys; c = socket.create_connection((sys.argv[1], 5001)); n = 0\n"
    "while (d := c.recv(65536)): n += len(d)\n"
    "print(n)"
)


def check_consistent(record: dict[str, Any]) -> None:
    """The buckets add up to the count, and the exact average lies within them."""
    buckets = [b for b in record["buckets"] if b["count"]]
    assert sum(b["count"] for b in record["buckets"]) == record["count"] > 0
    assert buckets[0]["low"] <= record["avg"] <= buckets[-1]["high"] + 1


def transfer(server_host: str, port_filter: str, args: list[str], rounds: int = 5) -> Trace:
    with PayloadServer(server_host, size=256 * 1024, request_bytes=1000) as server, \
            Trace(["rtt", *args, port_filter, str(server.port)]) as t:
        for _ in range(rounds):
            assert fetch(server_host, server.port, send=1000)[1] == 256 * 1024
    return t


@pytest.mark.integration
def test_loopback_transfers_fill_one_histogram() -> None:
    t = transfer("127.0.0.1", "-P", ["--json"])  # the clients: remote port = server's
    (record,) = t.records
    assert record["unit"] == "usecs"
    check_consistent(record)
    assert t.summary["lost_events"] == 0


@pytest.mark.integration
def test_local_port_filter_and_ipv6_per_local_address_text() -> None:
    t = transfer("::1", "-p", ["-b", "-e", "-6"])  # the server side: local port = its own
    assert "Local Address = ::1" in t.lines
    assert "     usecs               : count     distribution" in t.lines
    rows = [line for line in t.lines if " -> " in line]
    counts = [int(line.split(":")[1].split("|")[0]) for line in rows]
    (avg,) = [line for line in t.lines if line.startswith("avg = ")]
    assert avg.endswith(f"count: {sum(counts)}") and sum(counts) > 0
    assert rows[counts.index(max(counts))].endswith("|" + "*" * 40 + "|")  # the tallest bar
    assert "Local Address = 127.0.0.1" not in t.lines


@pytest.mark.integration
def test_ipv4_filter_sees_no_ipv6_traffic() -> None:
    t = transfer("::1", "-P", ["--json", "-4"])
    assert t.records == []


@pytest.mark.integration
def test_shaped_link_lands_in_millisecond_buckets_per_remote_address() -> None:
    """Through a 4 Mbit/s bottleneck with a 100 kB queue, 300 kB must queue for tens of
    milliseconds: the sender's smoothed RTT cannot stay in the 0-3 ms buckets."""
    with NetnsPair() as ns:
        ns.exec(ns.b, f"tc qdisc add dev {ns.dev_b} root tbf rate 4mbit burst 4kb limit 100kb")
        with Trace(["rtt", "--json", "-m", "-B", "-a", ns.addr_b]) as t:
            server = ns.popen(ns.b, [sys.executable, "-c", SERVER, ns.addr_b, "300000"])
            time.sleep(0.2)
            got = ns.exec(ns.a, f'{sys.executable} -c "{CLIENT}" {ns.addr_b}').stdout
            server.wait(10)
    assert int(got) == 300000
    (record,) = t.records  # only the sender in namespace b: -a filtered everything else
    assert record["remote_address"] == ns.addr_a and record["unit"] == "msecs"
    check_consistent(record)
    assert max(b["low"] for b in record["buckets"] if b["count"]) >= 4


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["tracepoint", "kprobe"])
@pytest.mark.parametrize("div", [1, 1000])
def test_fallback_variants_pass_the_verifier(kind: str, div: int) -> None:
    with BPFObject("rtt", rodata={"unit_div": div, "key_by": 2}, variants={"segment": kind}) as obj:
        obj.load()
        assert obj.chosen == {"segment": kind}


@pytest.mark.parametrize("args", [["-b", "-B"], ["-a", "1.2.3"], ["-A", "::1", "-4"], ["-p", "70000"], ["-i", "0"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["rtt", *args])
    assert result.exit_code == 2, result.output
