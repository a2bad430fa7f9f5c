"""netsnoop accept: a server process accepting real loopback connections."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from typing import Iterator

import pytest
from click.testing import CliRunner
from conn_helpers import assert_in_kernel
from helpers import Trace, closed_port, listening, refused_connect

from netsnoop.cli import cli

integration = pytest.mark.integration

# A server process: listens, prints its port, accepts argv[2] connections (with accept4,
# Python's default, or libc's accept(), the accept syscall on x86_64), then waits.
SERVER = """
import ctypes, socket, sys
host, n, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.bind((host, 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
libc = ctypes.CDLL(None, use_errno=True)
for _ in range(n):
    if how == "accept":
        assert libc.accept(s.fileno(), None, None) >= 0  # the accept syscall where there is one
    else:
        s.accept()
print("done", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def server(host: str = "127.0.0.1", n: int = 1, how: str = "accept4") -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, host, str(n), how], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc, int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def connect(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.connect((host, port))
    return s


def wait_done(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None and proc.stdout.readline() == "done\n"


def comm_of(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


# ---- unit ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["-P", "70000"], ["-p", "0"], ["-4", "--json", "-s"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["accept", *args])
    assert result.exit_code == 2, result.output


# ---- integration -------------------------------------------------------------------------

@integration
def test_n_accepts_give_n_rows_with_server_pid_and_client_ports() -> None:
    n = 5
    with server(n=n) as (proc, port), Trace(["accept", "--json", "-P", str(port)]) as t:
        clients = [connect("127.0.0.1", port) for _ in range(n)]
        lports = sorted(c.getsockname()[1] for c in clients)
        wait_done(proc)
        comm = comm_of(proc.pid)
        for c in clients:
            c.close()
    rows = t.records
    assert len(rows) == n, t.stdout
    assert {r["pid"] for r in rows} == {proc.pid} and {r["comm"] for r in rows} == {comm}
    assert sorted(r["rport"] for r in rows) == lports
    assert {(r["laddr"], r["lport"], r["raddr"], r["ip"]) for r in rows} == {("127.0.0.1", port, "127.0.0.1", 4)}
    assert all(isinstance(r[k], int) for r in rows for k in ("pid", "rport", "lport", "ip"))
    assert t.summary["lost_events"] == 0


@integration
def test_count_per_namespace_equals_the_accepts_made_and_passive_opens() -> None:
    """-c -N b: the connections a listener in b accepted, counted per local address,
    port and namespace; nstat's TcpPassiveOpens there counts one more, the connection
    left in the queue (not accepted, so not counted). Accepts in a, the filter's
    negative control, are not counted."""
    from helpers import NetnsPair
    from traffic_helpers import in_netns, nstat

    n = 4
    with NetnsPair() as net:
        listeners = {}
        for ns, host in ((net.a, net.addr_a), (net.b, net.addr_b)):
            with in_netns(ns):
                listeners[ns] = socket.socket()
            listeners[ns].bind((host, 0))
            listeners[ns].listen(8)
        port_b = listeners[net.b].getsockname()[1]
        inode_b = os.stat(f"/run/netns/{net.b}").st_ino
        before = nstat(net, net.b, "TcpPassiveOpens")["TcpPassiveOpens"]
        with Trace(["accept", "-c", "--json", "-N", net.b]) as t:
            for client_ns, server_ns, host in ((net.a, net.b, net.addr_b),) * n + ((net.b, net.a, net.addr_a),) * 2:
                with in_netns(client_ns):
                    c = socket.socket()
                with c:
                    c.connect((host, listeners[server_ns].getsockname()[1]))
                    listeners[server_ns].accept()[0].close()
            with in_netns(net.a):
                queued = socket.socket()  # completes the handshake, never accepted
            queued.connect((net.addr_b, port_b))
            after = nstat(net, net.b, "TcpPassiveOpens")["TcpPassiveOpens"]
        queued.close()
        for s in listeners.values():
            s.close()
    assert t.records == [{"laddr": net.addr_b, "lport": port_b, "accepts": n, "netns": net.b,
                          "netns_inode": inode_b}]
    assert after - before == n + 1
    assert t.summary["accepts"] == n and t.summary["lost_events"] == 0


@integration
def test_plain_accept_syscall_is_traced_too() -> None:
    with server(n=2, how="accept") as (proc, port), Trace(["accept", "--json", "-P", str(port)]) as t:
        clients = [connect("127.0.0.1", port) for _ in range(2)]
        wait_done(proc)
        for c in clients:
            c.close()
    assert [r["pid"] for r in t.records] == [proc.pid, proc.pid]


@integration
def test_refused_and_unaccepted_connects_produce_no_row() -> None:
    """A refused connect and one left in the backlog are no accepts; the one accept
    made in the same run (positive control) is the only row."""
    port = closed_port()
    with listening() as lsock, server() as (proc, served), \
            Trace(["accept", "--json", "-P", f"{port},{lsock.getsockname()[1]},{served}"]) as t:
        refused_connect("127.0.0.1", port)
        waiting = connect("127.0.0.1", lsock.getsockname()[1])  # handshake done, never accepted
        taken = connect("127.0.0.1", served)
        wait_done(proc)  # accept() has returned in the server: its row is due
        waiting.close()
        taken.close()
    assert [(r["pid"], r["lport"]) for r in t.records] == [(proc.pid, served)]
    assert t.summary["events"] == 1


@integration
def test_ipv6() -> None:
    with server("::1") as (proc, port), Trace(["accept", "--json", "-P", str(port)]) as t:
        c = connect("::1", port)
        lport = c.getsockname()[1]
        wait_done(proc)
        c.close()
    [r] = t.records
    assert (r["ip"], r["laddr"], r["raddr"], r["rport"], r["pid"]) == (6, "::1", "::1", lport, proc.pid)


@integration
def test_pid_and_family_filters() -> None:
    with (
        server() as (p4, port4),
        server("::1") as (p6, port6),
        Trace(["accept", "--json", "-p", str(p6.pid)]) as by_pid,
        Trace(["accept", "--json", "-4", "-P", f"{port4},{port6}"]) as by_family,
    ):
        clients = [connect("127.0.0.1", port4), connect("::1", port6)]
        wait_done(p4)
        wait_done(p6)
        for c in clients:
            c.close()
    assert [(r["pid"], r["lport"]) for r in by_pid.records] == [(p6.pid, port6)]
    assert [(r["pid"], r["lport"]) for r in by_family.records] == [(p4.pid, port4)]


@integration
def test_text_layout_with_time() -> None:
    with server() as (proc, port), Trace(["accept", "-T", "-P", str(port)]) as t:
        c = connect("127.0.0.1", port)
        lport = c.getsockname()[1]
        wait_done(proc)
        c.close()
    head, row = t.lines[0], t.lines[1].split()
    assert head.split() == ["TIME", "PID", "COMM", "IP", "RADDR", "RPORT", "LADDR", "LPORT"]
    assert head.index("PID") == 9 and head.index("COMM") == 17 and head.index("RADDR") == 33
    assert len(row[0]) == 8 and row[1] == str(proc.pid)
    assert row[4:] == ["127.0.0.1", str(lport), "127.0.0.1", str(port)]


@integration
def test_kretprobe_variant_passes_the_verifier() -> None:
    from netsnoop.loader import BPFObject

    with BPFObject("accept", variants={"accept4": "kretprobe"}) as obj:
        obj.load()
        assert_in_kernel(obj, "accept4__kretprobe", "kprobe")
