"""netsnoop connlat: connect latency of real connects, fast (loopback) and slow (a SYN
dropped once between two private namespaces)."""

from __future__ import annotations

import os
import socket
import time
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conn_helpers import assert_in_kernel
from helpers import NetnsPair, PayloadServer, Trace, closed_port, fetch, refused_connect

from netsnoop.cli import cli

integration = pytest.mark.integration
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()"


@pytest.mark.parametrize("args", [["abc"], ["-1"], ["1", "2"], ["-L", "-p", "0"]])
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["connlat", *args])
    assert result.exit_code == 2, result.output


@integration
def test_latency_is_within_the_callers_own_time_around_connect() -> None:
    with PayloadServer() as srv, Trace(["connlat", "--json", "-L"]) as t:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            wall_ms = (time.monotonic() - t0) * 1000
            lport = s.getsockname()[1]
    [r] = [r for r in t.records if r["dport"] == srv.port]
    assert (r["pid"], r["ip"], r["saddr"], r["lport"], r["daddr"]) == (os.getpid(), 4, "127.0.0.1", lport, "127.0.0.1")
    assert isinstance(r["lat_ms"], float) and 0 < r["lat_ms"] <= wall_ms


@integration
def test_refused_connects_are_shown_and_other_processes_are_not() -> None:
    port = closed_port()
    with PayloadServer() as srv, Trace(["connlat", "--json", "-p", str(os.getpid())]) as t:
        refused_connect("127.0.0.1", port)
        subprocess.run([sys.executable, "-c", CONNECT, "127.0.0.1", str(srv.port)], check=True)
        fetch("127.0.0.1", srv.port)
    assert [(r["pid"], r["dport"], r["result"]) for r in t.records] == [
        (os.getpid(), port, "REFUSED"), (os.getpid(), srv.port, "ESTABLISHED"),
    ]


@integration
def test_min_ms_drops_fast_connects_and_keeps_slow_ones() -> None:
    """The namespace server drops the first SYN it sees, so that connect waits for the
    retransmission (about 1 s); loopback connects take well under a millisecond."""
    slow_port = 7071
    with NetnsPair() as ns, PayloadServer() as srv:
        ns.exec(ns.b, "nft add table inet t")
        ns.exec(ns.b, "nft add chain inet t in '{ type filter hook input priority 0; }'")
        ns.exec(ns.b, f"nft add rule inet t in tcp dport {slow_port} tcp flags syn numgen inc mod 2 0 drop")
        server = ns.popen(
            ns.b,
            [
                sys.executable,
                "-c",
                f"import socket; s = socket.create_server(('', {slow_port})); print(flush=True); s.accept()",
            ],
        )
        assert server.stdout is not None and server.stdout.readline() == "\n"
        with Trace(["connlat", "--json", "300"]) as slow_only, Trace(["connlat", "--json"]) as every:
            fetch("127.0.0.1", srv.port)
            client = ns.popen(ns.a, [sys.executable, "-c", CONNECT, ns.addr_b, str(slow_port)])
            assert client.wait(timeout=10) == 0
            server.wait(timeout=10)
    mine = {("127.0.0.1", srv.port), (ns.addr_b, slow_port)}
    assert sorted((r["daddr"], r["dport"]) for r in every.records if (r["daddr"], r["dport"]) in mine) == sorted(mine)
    [r] = [r for r in slow_only.records if (r["daddr"], r["dport"]) in mine]
    assert (r["dport"], r["pid"], r["daddr"]) == (slow_port, client.pid, ns.addr_b)
    assert r["lat_ms"] >= 300


@integration
def test_text_layout_keeps_bcc_columns() -> None:
    with PayloadServer() as srv, Trace(["connlat", "-t"]) as t:
        fetch("127.0.0.1", srv.port)
    assert t.lines[0].split() == ["TIME(s)", "PID", "COMM", "IP", "SADDR", "DADDR", "DPORT", "LAT(ms)"]
    [row] = [line.split() for line in t.lines[1:] if str(srv.port) in line.split()]
    assert row[1] == str(os.getpid()) and row[-2] == str(srv.port)
    assert float(row[-1]) >= 0 and len(row[-1].split(".")[1]) == 2


@integration
def test_kprobe_variant_passes_the_verifier() -> None:
    from netsnoop.loader import BPFObject

    with BPFObject("connlat", variants={"set_state": "kprobe"}) as obj:
        obj.load()
        assert_in_kernel(obj, "set_state__kprobe", "kprobe")


# Connects from namespace a, each timed by the client itself around connect():
# prints port, errno (0: established) and the wall time in ms.
TIMED_CLIENT = """
import socket, sys, time
for port in map(int, sys.argv[2:]):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 200)
    t0 = time.monotonic()
    try:
        s.connect((sys.argv[1], port))
        err = 0
    except OSError as e:
        err = e.errno
    print(port, err, (time.monotonic() - t0) * 1000, flush=True)
    s.close()
"""


@integration
def test_connect_outcome_and_connlat_share_one_definition_of_an_attempt() -> None:
    """Established, refused (a reset: an answer, as bcc's man page says) and timed out
    (no answer): connect --outcome shows all three, connlat the two the peer answered,
    with the same latency, each no more than the client's own wall time around
    connect()."""
    established, refused, silent = 7072, 7073, 7074
    with NetnsPair() as ns:
        ns.exec(ns.b, "nft add table inet t")
        ns.exec(ns.b, "nft add chain inet t in '{ type filter hook input priority 0; }'")
        ns.exec(ns.b, f"nft add rule inet t in tcp dport {silent} tcp flags syn drop")
        server = ns.popen(
            ns.b,
            [
                sys.executable,
                "-c",
                f"import socket; s = socket.create_server(('', {established})); print(flush=True); s.accept()",
            ],
        )
        assert server.stdout is not None and server.stdout.readline() == "\n"
        ports = f"{established},{refused},{silent}"
        with Trace(["connect", "--json", "--outcome", "-P", ports]) as outcome, Trace(["connlat", "--json"]) as lat:
            client = ns.popen(
                ns.a, [sys.executable, "-c", TIMED_CLIENT, ns.addr_b, str(established), str(refused), str(silent)]
            )
            out, err = client.communicate(timeout=20)
            server.wait(timeout=10)
    wall = {int(p): (int(e), float(ms)) for p, e, ms in (line.split() for line in out.splitlines())}
    assert {p: e for p, (e, _ms) in wall.items()} == {established: 0, refused: 111, silent: 110}, err
    attempts = {r["dport"]: r for r in outcome.records if r["daddr"] == ns.addr_b}
    answered = {r["dport"]: r for r in lat.records if r["daddr"] == ns.addr_b}
    assert {p: r["result"] for p, r in attempts.items()} == {
        established: "ESTABLISHED",
        refused: "REFUSED",
        silent: "TIMEOUT",
    }
    assert {p: r["result"] for p, r in answered.items()} == {established: "ESTABLISHED", refused: "REFUSED"}
    for port, r in answered.items():
        assert r["pid"] == attempts[port]["pid"] == client.pid
        assert abs(r["lat_ms"] - attempts[port]["lat_ms"]) < 1.0
        assert 0 < r["lat_ms"] <= wall[port][1]
    assert 0 < attempts[silent]["lat_ms"] <= wall[silent][1]
