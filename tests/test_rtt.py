"""netsnoop rtt: RTT histograms of traffic the tests make, on loopback and over a veth
link shaped to 4 Mbit/s (whose queue must push samples into the millisecond buckets)."""

from __future__ import annotations

import contextlib
import re
import socket
import sys
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from helpers import NetnsPair, PayloadServer, Trace, assert_verified, fetch, sh

from netsnoop.cli import cli
from netsnoop.loader import BPFObject

SERVER = (
    "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 5001)); s.listen(); print('listening', flush=True)\n"
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


class Quiet:
    """A loopback connection whose server end never sends: its smoothed RTT, measured
    on the handshake, stays as it is, so every sample taken on that end (one per
    segment it receives) is that value -- the one ``ss -ti`` shows."""

    def __init__(self, host: str) -> None:
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.port = self.listener.getsockname()[1]
        self.client = socket.create_connection((host, self.port))
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server = self.listener.accept()[0]

    def send(self, segments: int) -> None:
        """One byte a segment, each received before the next is sent."""
        for _ in range(segments):
            self.client.sendall(b"s")
            assert self.server.recv(1) == b"s"

    def ss_rtt_us(self) -> int:
        """The server end's rtt as ss -ti prints it (milliseconds, to the microsecond)."""
        local = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        out = sh(f"ss -tinH state established src {local}").stdout
        (ms,) = re.findall(r"\brtt:([\d.]+)/", out)
        return round(float(ms) * 1000)

    def close(self) -> None:
        for s in (self.client, self.server, self.listener):
            s.close()


@contextlib.contextmanager
def quiet(host: str) -> Iterator[Quiet]:
    q = Quiet(host)
    try:
        yield q
    finally:
        q.close()


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["tp_btf", "tracepoint"])
def test_samples_are_the_rtt_ss_reports(kind: str) -> None:
    """Every sample on the quiet end equals ss -ti's rtt for that connection: count,
    sum and bucket exact."""
    segments = 50
    with quiet("127.0.0.1") as q:
        with Trace(["rtt", "--json", "-L", str(q.port)], env={"NETSNOOP_HOOKS": kind}) as t:
            rtt = q.ss_rtt_us()
            q.send(segments)
        assert q.ss_rtt_us() == rtt > 0
    (record,) = t.records
    assert (record["unit"], record["count"], record["sum"]) == ("usecs", segments, segments * rtt)
    assert [(b["low"], b["high"]) for b in record["buckets"] if b["count"]] == [slot(rtt)]
    assert t.summary["lost_events"] == 0 and t.summary["hooks"] == {"segment": kind}


def slot(value: int) -> tuple[int, int]:
    """The log2 bucket (low, high) bcc prints ``value`` in."""
    if value < 2:
        return 0, 1
    low = 1 << (value.bit_length() - 1)
    return low, 2 * low - 1


@pytest.mark.integration
def test_loopback_transfers_fill_one_histogram() -> None:
    t = transfer("127.0.0.1", "-P", ["--json"])  # either end: server and clients
    (record,) = t.records
    assert record["unit"] == "usecs"
    check_consistent(record)
    assert t.summary["lost_events"] == 0


@pytest.mark.integration
def test_local_port_filter_and_ipv6_per_local_address_text() -> None:
    t = transfer("::1", "-L", ["-b", "-e", "-6"])  # the server side: local port = its own
    assert "Local Address = ::1" in t.lines
    assert "     usecs               : count     distribution" in t.lines
    rows = [line for line in t.lines if " -> " in line]
    counts = [int(line.split(":")[1].split("|")[0]) for line in rows]
    (avg,) = [line for line in t.lines if line.startswith("avg = ")]
    assert avg.endswith(f"count: {sum(counts)}") and sum(counts) > 0
    assert rows[counts.index(max(counts))].endswith("|" + "*" * 40 + "|")  # the tallest bar
    assert "Local Address = 127.0.0.1" not in t.lines


@pytest.mark.integration
def test_ports_local_remote_and_either_end() -> None:
    """-L counts the quiet server end only, -D the client end only (the server's port
    is its remote port), -P both."""
    with quiet("127.0.0.1") as q:
        port = str(q.port)
        with Trace(["rtt", "--json", "-L", port]) as local, Trace(["rtt", "--json", "-D", port]) as remote, \
                Trace(["rtt", "--json", "-P", port]) as either:
            q.send(30)
    (lrec,), (rrec,), (erec,) = local.records, remote.records, either.records
    assert lrec["count"] == 30 and rrec["count"] >= 1  # the client receives the server's ACKs
    assert erec["count"] == lrec["count"] + rrec["count"] and erec["sum"] == lrec["sum"] + rrec["sum"]


@pytest.mark.integration
def test_ipv4_filter_sees_no_ipv6_traffic() -> None:
    """Both families carry traffic in the same run: -4 shows all of the IPv4 samples
    and none of the IPv6 ones."""
    with quiet("127.0.0.1") as v4, quiet("::1") as v6:
        with Trace(["rtt", "--json", "-4", "-b", "-L", f"{v4.port},{v6.port}"]) as t:
            v4.send(20)
            v6.send(30)
    assert [(r["local_address"], r["count"]) for r in t.records] == [("127.0.0.1", 20)]


@pytest.mark.integration
def test_shaped_link_lands_in_millisecond_buckets_per_remote_address() -> None:
    """Through a 4 Mbit/s bottleneck with a 100 kB queue, 300 kB must queue for tens of
    milliseconds: the sender's smoothed RTT cannot stay in the 0-3 ms buckets."""
    with NetnsPair() as ns:
        ns.exec(ns.b, f"tc qdisc add dev {ns.dev_b} root tbf rate 4mbit burst 4kb limit 100kb")
        with Trace(["rtt", "--json", "-m", "-B", "-a", ns.addr_b]) as t:
            server = ns.popen(ns.b, [sys.executable, "-c", SERVER, ns.addr_b, "300000"])
            assert server.stdout is not None and server.stdout.readline().strip() == "listening"
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
        assert_verified(obj, "segment", kind)


@pytest.mark.parametrize("args", [["-b", "-B"], ["-a", "1.2.3"], ["-A", "::1", "-4"], ["-L", "70000"], ["-i", "0"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["rtt", *args])
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("args", [["-p", "8000"], ["-p"], ["-d", "1", "-p", "80"]])
def test_p_is_no_port_and_the_error_names_the_port_option(args: list[str]) -> None:
    """bcc's tcprtt -p (a local port) is -L here; -p is a process ID elsewhere."""
    result = CliRunner().invoke(cli, ["rtt", *args])
    assert result.exit_code == 2 and "-L/--lport" in result.output and "Traceback" not in result.output, result.output
