"""netsnoop tracer: connect, accept and close of real connections, by the right pids."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner
from conn_helpers import assert_in_kernel
from helpers import NetnsPair, Trace, listening

from netsnoop.cli import cli

integration = pytest.mark.integration

# A client process: connects to argv[1]:argv[2], prints its local port, closes when
# stdin says so (or hands the socket to nobody and exits when stdin closes).
CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
s.close()
"""


def client(host: str, port: int, ns: NetnsPair | None = None, netns: str = "",
           uid: int | None = None) -> tuple[subprocess.Popen[str], int]:
    args = [sys.executable, "-c", CLIENT, host, str(port)]
    if uid is not None:  # setpriv execs the client: same pid, another user
        args = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *args]
    if ns is not None:
        args = ["ip", "netns", "exec", netns, *args]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def close_client(proc: subprocess.Popen[str]) -> None:
    proc.communicate("close\n", timeout=10)


def drain_and_close(conn: socket.socket) -> None:
    """Wait for the peer's FIN, then close: the passive close (CLOSE_WAIT -> LAST_ACK)."""
    conn.settimeout(5)
    while conn.recv(4096):
        pass
    conn.close()


def rows_for(records: list[dict[str, Any]], port: int) -> list[tuple[Any, ...]]:
    """(type, pid, saddr, sport, daddr, dport) of the rows about connections to ``port``."""
    return [(r["type"], r["pid"], r["saddr"], r["sport"], r["daddr"], r["dport"])
            for r in records if port in (r["sport"], r["dport"])]


# ---- unit ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["-N", "0"], ["-N", "abc"], ["-p", "-3"], ["-u", "-1"], ["-u", "nobody"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["tracer", *args])
    assert result.exit_code == 2, result.output


# ---- integration -------------------------------------------------------------------------

def one_connection(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Client process connects, this process accepts; client closes first, then us."""
    me, lo = os.getpid(), "127.0.0.1"
    with listening() as lsock, Trace(["tracer", "--json"], env=env) as t:
        port = lsock.getsockname()[1]
        proc, lport = client(lo, port)
        conn, _ = lsock.accept()
        close_client(proc)
        drain_and_close(conn)
    assert rows_for(t.records, port) == [
        ("connect", proc.pid, lo, lport, lo, port),
        ("accept", me, lo, port, lo, lport),
        ("close", proc.pid, lo, lport, lo, port),
        ("close", me, lo, port, lo, lport),
    ]
    assert t.summary["lost_events"] == 0
    return t.summary


@integration
def test_one_connection_yields_connect_accept_and_close_rows() -> None:
    one_connection()


@integration
def test_classic_tracepoint_variant_gives_the_same_rows() -> None:
    summary = one_connection(env={"NETSNOOP_HOOKS": "tracepoint"})
    assert summary["hooks"] == {"set_state": "tracepoint", "accept4": "tracepoint", "accept": "tracepoint"}


@integration
def test_resets_before_accept_are_closes_too_exact_counts() -> None:
    """500 connections each closed by the client with a reset; half are accepted
    before the reset, half only after it (the peer's reset closes them while they wait
    in the accept queue): 500 C, 500 A and 1,000 X, the server's X charged to the
    acceptor."""
    n, me, lo = 500, os.getpid(), "127.0.0.1"
    linger0 = struct.pack("ii", 1, 0)
    with listening(backlog=n) as lsock, Trace(["tracer", "--json"]) as t:
        port = lsock.getsockname()[1]
        accepted, clients = [], []
        for i in range(n):
            c = socket.create_connection((lo, port))
            clients.append(c.getsockname()[1])
            if i % 2 == 0:
                accepted.append(lsock.accept()[0])
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
            c.close()
        accepted += [lsock.accept()[0] for _ in range(n // 2)]  # already reset by the peer
        for conn in accepted:
            conn.close()
    rows = rows_for(t.records, port)
    assert sorted(r for r in rows if r[0] == "connect") == sorted(("connect", me, lo, p, lo, port) for p in clients)
    assert sorted(r for r in rows if r[0] == "accept") == sorted(("accept", me, lo, port, lo, p) for p in clients)
    closes = sorted(r for r in rows if r[0] == "close")
    expected = [("close", me, lo, p, lo, port) for p in clients] + [("close", me, lo, port, lo, p) for p in clients]
    assert closes == sorted(expected), f"{len(closes)} of {2 * n} closes"
    assert t.summary["lost_events"] == 0


@integration
def test_close_is_charged_to_the_process_that_closed() -> None:
    """This process connects, hands the socket to a child and lets go: the child's
    close() is the one that closes the connection."""
    me, lo = os.getpid(), "127.0.0.1"
    with listening() as lsock, Trace(["tracer", "--json"]) as t:
        port = lsock.getsockname()[1]
        sock = socket.create_connection((lo, port))
        lport = sock.getsockname()[1]
        conn, _ = lsock.accept()
        heir = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, sys; sys.stdin.readline(); os.close(int(sys.argv[1]))",
                str(sock.fileno()),
            ],
            stdin=subprocess.PIPE,
            text=True,
            pass_fds=[sock.fileno()],
        )
        sock.close()  # not the last reference: nothing happens yet
        heir.communicate("close\n", timeout=10)
        drain_and_close(conn)
    rows = rows_for(t.records, port)
    assert ("connect", me, lo, lport, lo, port) in rows
    assert ("close", heir.pid, lo, lport, lo, port) in rows
    assert [r for r in rows if r[0] == "close" and r[3] == lport] == [("close", heir.pid, lo, lport, lo, port)]


@integration
def test_reset_by_the_peer_is_charged_to_the_socket_owner() -> None:
    """We abort with SO_LINGER 0 (our close, in our context); the client's side closes
    when the reset arrives, in softirq on our CPU: still the client's row."""
    me, lo = os.getpid(), "127.0.0.1"
    with listening() as lsock, Trace(["tracer", "--json"]) as t:
        port = lsock.getsockname()[1]
        proc, lport = client(lo, port)
        conn, _ = lsock.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        close_client(proc)
    rows = rows_for(t.records, port)
    closes = sorted(r for r in rows if r[0] == "close")
    assert closes == sorted([("close", me, lo, port, lo, lport), ("close", proc.pid, lo, lport, lo, port)])


@integration
def test_pid_filter() -> None:
    lo = "127.0.0.1"
    with listening() as lsock:
        port = lsock.getsockname()[1]
        proc, lport = client(lo, port)  # connected before the trace: no C row
        with Trace(["tracer", "--json", "-p", str(proc.pid)]) as t:
            conn, _ = lsock.accept()  # our accept: filtered out
            close_client(proc)
            drain_and_close(conn)
    assert rows_for(t.records, port) == [("close", proc.pid, lo, lport, lo, port)]


@integration
def test_uid_filter_and_column() -> None:
    """-u keeps the events of one user's processes (its connect and its close), not
    root's connect nor this process's accept and close of the same connection; -U
    shows every row's UID first, as bcc."""
    lo, nobody, me = "127.0.0.1", 65534, os.getpid()
    with listening() as lsock, Trace(["tracer", "--json", "-u", str(nobody)]) as only, Trace(["tracer", "-U"]) as text:
        port = lsock.getsockname()[1]
        theirs, their_port = client(lo, port, uid=nobody)
        conn, _ = lsock.accept()
        with open(f"/proc/{theirs.pid}/status") as f:  # the kernel's own word on the client's user
            assert [line.split()[1] for line in f if line.startswith("Uid:")] == [str(nobody)]
        close_client(theirs)
        drain_and_close(conn)
        root, root_port = client(lo, port)  # the positive control's twin, made by root
        conn, _ = lsock.accept()
        close_client(root)
        drain_and_close(conn)
    assert rows_for(only.records, port) == [
        ("connect", theirs.pid, lo, their_port, lo, port), ("close", theirs.pid, lo, their_port, lo, port),
    ]
    assert {r["uid"] for r in only.records} == {nobody}
    assert text.lines[0].split() == ["UID", "T", "PID", "COMM", "IP", "SADDR", "DADDR", "SPORT", "DPORT"]
    rows = [f for f in map(str.split, text.lines[1:]) if str(port) in f[-2:]]
    assert sorted((f[1], f[2], f[0]) for f in rows) == sorted([
        ("C", str(theirs.pid), str(nobody)), ("A", str(me), "0"), ("X", str(theirs.pid), str(nobody)),
        ("X", str(me), "0"), ("C", str(root.pid), "0"), ("A", str(me), "0"), ("X", str(root.pid), "0"),
        ("X", str(me), "0"),
    ])


def aborted_children_then_connects(rounds: int = 4, children: int = 100) -> None:
    """Connections a listener never accepts, aborted when it closes (their sockets are
    freed, their memory soon reused), then as many connects of this process: a connect
    whose socket takes a freed child's place is still this process's, whoever it is."""
    for _ in range(rounds):
        with socket.create_server(("127.0.0.1", 0), backlog=children) as lst:
            clients = [socket.create_connection(lst.getsockname()) for _ in range(children)]
        for c in clients:
            c.close()
        with socket.create_server(("127.0.0.1", 0), backlog=children) as srv:
            for _ in range(children):
                with socket.socket() as c:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    c.connect(srv.getsockname())
                    srv.accept()[0].close()


@integration
def test_filters_hold_for_sockets_reusing_a_never_accepted_childs_place() -> None:
    """A child that no accept() took once left its (ownerless) entry behind, and the
    next connect at that address completed as a row with no process: hundreds of
    uid 0, pid 0 rows through -u. The other user's connect is the positive control."""
    lo, nobody = "127.0.0.1", 65534
    with listening() as lsock, Trace(["tracer", "--json", "-u", str(nobody)]) as only:
        port = lsock.getsockname()[1]
        aborted_children_then_connects()
        theirs, their_port = client(lo, port, uid=nobody)
        conn, _ = lsock.accept()
        close_client(theirs)
        drain_and_close(conn)
    assert rows_for(only.records, port) == [
        ("connect", theirs.pid, lo, their_port, lo, port), ("close", theirs.pid, lo, their_port, lo, port)]
    # the filter's claim, over every row (other users' rows, had any, would show here)
    assert {(r["uid"], r["pid"] > 0) for r in only.records} == {(nobody, True)}, only.records[:3]


@integration
def test_netns_filter_and_column() -> None:
    server = ("import socket, sys; s = socket.create_server(('', 7070)); print(flush=True); "
              "c = s.accept()[0]; c.recv(1); c.close()")
    with NetnsPair() as ns:
        inode = os.stat(f"/run/netns/{ns.a}").st_ino
        srv = ns.popen(ns.b, [sys.executable, "-c", server])
        assert srv.stdout is not None and srv.stdout.readline() == "\n"
        with Trace(["tracer", "--json", "-N", str(inode)]) as t:
            proc, lport = client(ns.addr_b, 7070, ns, ns.a)
            close_client(proc)
            srv.wait(timeout=10)
    rows = [r for r in t.records if 7070 in (r["sport"], r["dport"])]
    assert [(r["type"], r["pid"], r["sport"], r["netns_inode"], r["netns"]) for r in rows] == [
        ("connect", proc.pid, lport, inode, ns.a), ("close", proc.pid, lport, inode, ns.a),
    ]


@integration
def test_text_layouts() -> None:
    lo = "127.0.0.1"
    with listening() as lsock, Trace(["tracer"]) as short, Trace(["tracer", "-v", "-t"]) as long:
        port = lsock.getsockname()[1]
        proc, lport = client(lo, port)
        conn, _ = lsock.accept()
        close_client(proc)
        drain_and_close(conn)
    assert short.lines[0].split() == ["T", "PID", "COMM", "IP", "SADDR", "DADDR", "SPORT", "DPORT"]
    assert short.lines[0].index("PID") == 3 and short.lines[0].index("COMM") == 10
    assert [str(proc.pid), "4", lo, lo, str(lport), str(port)] in [
        [f[1], *f[-5:]] for f in map(str.split, short.lines[1:]) if f[0] == "C"
    ]
    assert long.lines[0].split() == [
        "TIME(s)",
        "TYPE",
        "PID",
        "COMM",
        "IP",
        "SADDR",
        "DADDR",
        "SPORT",
        "DPORT",
        "NETNS",
        "CONTAINER",
    ]
    mine = [f for f in map(str.split, long.lines[1:]) if str(port) in f]
    assert [f[1] for f in mine] == ["connect", "accept", "close", "close"] and {f[-2] for f in mine} == {"host"}


@integration
def test_kprobe_variants_pass_the_verifier() -> None:
    from netsnoop.loader import BPFObject

    with BPFObject("tracer", variants={"set_state": "kprobe", "accept4": "kretprobe"}) as obj:
        obj.load()
        assert_in_kernel(obj, "set_state__kprobe", "kprobe")
        assert_in_kernel(obj, "accept4__kretprobe", "kprobe")
