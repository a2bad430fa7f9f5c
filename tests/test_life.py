"""netsnoop life: a real HTTP download between two processes on loopback."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import pytest
from helpers import PayloadServer, Trace, fetch, free_port

pytestmark = pytest.mark.integration

SIZE = 2 * 1024 * 1024
# A plain HTTP/1.0 client that counts what it sends and receives, to the byte.
CLIENT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
request = f"GET /blob HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n".encode()
with socket.create_connection((host, port)) as s:
    s.sendall(request)
    received = 0
    while chunk := s.recv(1 << 16):
        received += len(chunk)
print(len(request), received)
"""


@contextlib.contextmanager
def http_server(host: str = "127.0.0.1") -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A separate server process (so its pid differs from the client's) serving SIZE
    bytes, on a port the kernel picks (it says which once it is listening)."""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "blob"), "wb") as f:
            f.write(os.urandom(SIZE))
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "--bind", host, "--directory", d, "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()  # "Serving HTTP on HOST port N (...)": listening
            port = int(re.search(r" port (\d+)", banner).group(1))  # type: ignore[union-attr]
            yield proc, port
        finally:
            proc.terminate()
            proc.wait()


def download(host: str, port: int) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", CLIENT, host, str(port)], capture_output=True, text=True, check=True)
    assert int(done.stdout.split()[1]) > SIZE
    return done


def test_http_download_rows_name_server_and_client() -> None:
    with http_server() as (server, port), Trace(["life", "--json", "-P", str(port)]) as t:
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, "127.0.0.1", str(port)], stdout=subprocess.PIPE, text=True
        )
        out, _ = client.communicate(timeout=30)
    sent, received = map(int, out.split())  # what the client itself counted
    assert received > SIZE
    rows = t.records
    server_rows = [r for r in rows if r["lport"] == port]
    client_rows = [r for r in rows if r["rport"] == port]
    assert len(server_rows) == 1 and len(client_rows) == 1, rows
    srv, cli = server_rows[0], client_rows[0]
    # the passive side belongs to the server process, not the client on the CPU
    assert srv["pid"] == server.pid and srv["comm"].startswith("python")
    assert cli["pid"] == client.pid
    assert srv["rport"] == cli["lport"] and srv["laddr"] == cli["raddr"] == "127.0.0.1"
    assert (cli["tx_bytes"], cli["rx_bytes"]) == (sent, received)  # payload, to the byte
    assert (srv["tx_bytes"], srv["rx_bytes"]) == (received, sent)
    assert srv["tx_kb"] == srv["tx_bytes"] // 1024 and cli["rx_kb"] == cli["rx_bytes"] // 1024
    assert srv["ms"] > 0 and isinstance(srv["ms"], float)
    assert t.summary["lost_events"] == 0


# A client that sends argv[3] bytes, reads argv[4] bytes, then ends the way argv[5] says:
# "fin" (close after the server's close), "rst" (SO_LINGER 0: a reset, no FIN).
SIZED_CLIENT = """
import socket, struct, sys
host, port, send, expect, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = socket.create_connection((host, port))
s.sendall(b"q" * send)
got = 0
while got < expect:
    got += len(s.recv(expect - got))
if how == "rst":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
else:
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b""
print(s.getsockname()[1], flush=True)
s.close()
"""


def test_bytes_are_payload_bytes_exactly_at_both_ends() -> None:
    """Sizes known to the byte: each end's TX is what it sent and the peer acked, RX
    what it received; the SYN and FIN (sequence space the kernel's counters include)
    are not bytes. Closed by FIN, by a reset, and a session with no data at all."""
    cases = {"fin": (86, 1001), "rst": (5000, 123457), "none": (0, 0)}
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            Trace(["life", "--json", "-P", str(listener.getsockname()[1])]) as t:
        port = listener.getsockname()[1]
        ends = {}
        for how, (send, reply) in cases.items():
            client = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SIZED_CLIENT,
                    "127.0.0.1",
                    str(port),
                    str(send),
                    str(reply),
                    "rst" if how == "rst" else "fin",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            conn, _ = listener.accept()
            got = 0
            while got < send:
                got += len(conn.recv(send - got))
            conn.sendall(b"r" * reply)
            if how == "rst":
                out, _ = client.communicate(timeout=10)  # its reset comes before our close
                conn.close()
            else:
                conn.shutdown(socket.SHUT_WR)
                out, _ = client.communicate(timeout=10)
                conn.close()
            ends[int(out)] = how
    rows = {(r["lport"], r["rport"]): r for r in t.records}
    assert len(rows) == 2 * len(cases), t.records
    for lport, how in ends.items():
        send, reply = cases[how]
        cli, srv = rows[(lport, port)], rows[(port, lport)]
        assert (cli["tx_bytes"], cli["rx_bytes"]) == (send, reply), how
        assert (srv["tx_bytes"], srv["rx_bytes"]) == (reply, send), how
    assert t.summary["lost_events"] == 0


def test_same_port_for_local_and_remote_says_how_to_match_either_end() -> None:
    """`life -L 8000 -D 8000` (one port for both ends) matches nothing on loopback
    traffic to 8000: it says so at start, and -P 8000 matches both ends."""
    with PayloadServer(size=10) as srv:
        p = str(srv.port)
        with Trace(["life", "--json", "-L", p, "-D", p]) as both, Trace(["life", "--json", "-P", p]) as either:
            fetch("127.0.0.1", srv.port)
    hint = [line for line in both.stderr.splitlines() if "-L and -D must both match" in line]
    assert len(hint) == 1 and f"-P {p} matches" in hint[0], both.stderr
    assert both.records == []
    assert sorted((r["lport"] == srv.port, r["rport"] == srv.port) for r in either.records) == [
        (False, True),
        (True, False),
    ]
    assert "-L and -D" not in either.stderr


def test_local_and_remote_port_filters() -> None:
    with http_server() as (server, port):
        with Trace(["life", "--json", "-L", str(port)]) as local:
            download("127.0.0.1", port)
        with Trace(["life", "--json", "-D", str(port)]) as remote:
            download("127.0.0.1", port)
    assert [r["lport"] for r in local.records] == [port]
    assert local.records[0]["pid"] == server.pid
    assert [r["rport"] for r in remote.records] == [port]
    assert remote.records[0]["pid"] != server.pid


def test_pid_filter_uses_the_socket_owner() -> None:
    with http_server() as (server, port), Trace(["life", "--json", "-p", str(server.pid)]) as t:
        download("127.0.0.1", port)
    assert [(r["pid"], r["lport"]) for r in t.records] == [(server.pid, port)]


def test_ipv6_and_text_layout() -> None:
    with (
        PayloadServer(host="::1", size=100_000, request_bytes=5000) as srv,
        Trace(["life", "-w", "-P", str(srv.port)]) as t,
    ):
        lport, got = fetch("::1", srv.port, send=5000)
    assert got == 100_000
    header, *rows = t.lines
    assert header.split() == ["PID", "COMM", "IP", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS", "NETNS",
                              "CONTAINER"]
    fields = {int(r.split()[4]): r.split() for r in rows}
    assert set(fields) == {lport, srv.port}
    client = fields[lport]
    assert client[0] == str(os.getpid()) and client[2] == "6" and client[3] == "::1"
    assert int(client[7]) == 4 and int(client[8]) == 97  # 5000 B sent, 100000 B received, in KiB


def test_text_default_layout_matches_bcc() -> None:
    with PayloadServer(size=10) as srv, Trace(["life", "-T", "-D", str(srv.port)]) as t:
        fetch("127.0.0.1", srv.port)
    header, row = t.lines
    assert header == "TIME     PID   COMM       LADDR           LPORT RADDR           RPORT TX_KB RX_KB MS"
    assert row[8:].split()[5] == str(srv.port)


def test_sessions_begun_before_tracing_are_counted_not_shown() -> None:
    """A session that closes without its start having been seen gets no row (its
    duration is unknown) but is counted in the summary, so it is not silently missing;
    a listener closing is not a session."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        with Trace(["life", "--json", "-P", str(port)]) as t:
            client.close()
            server.close()
            listener.close()
            time.sleep(0.2)
    assert t.records == []
    assert t.summary["closes_without_start"] == 2


def test_exit_check_counts_sessions_whose_end_no_hook_saw() -> None:
    """A session left in the map after its socket is gone is one whose end the kernel
    did not let a hook see (it happens under storms). The exit check counts it, within
    the filters and this namespace, and leaves open connections alone."""
    from netsnoop.btf import StructDecoder
    from netsnoop.commands.life import TRACER, ends_not_seen
    from netsnoop.options import port_filters

    port, netns = free_port(), os.stat("/proc/self/ns/net").st_ino
    with TRACER.open({**port_filters(None, None, [port]), "own_netns": netns}) as obj:
        session = StructDecoder(obj.btf, "session")
        sessions = obj.map("sessions")

        def left_behind(key: int, **fields: int) -> None:
            # what a session whose CLOSE and destroy hooks did not run leaves: an entry
            # keyed by an address that is no socket any more
            sessions.update(struct.pack("=Q", key), session.encode(birth_ns=1, pid=os.getpid(), **fields))

        left_behind(0xFFFF888000000010, netns=netns, family=2, lport=40000, rport=port)  # counted
        left_behind(0xFFFF888000000020, netns=netns, family=2, lport=40001, rport=port + 1)  # other port
        left_behind(0xFFFF888000000030, netns=netns + 1, family=2, lport=40002, rport=port)  # other netns
        with socket.create_server(("127.0.0.1", port)) as listener:
            client = socket.create_connection(("127.0.0.1", port))
            server, _ = listener.accept()
            time.sleep(0.02)  # older than the grace for sockets not yet in the tables
            assert ends_not_seen(obj) == 1  # the open connection's two sessions are alive
            client.close()
            server.close()
