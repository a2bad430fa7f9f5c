"""netsnoop states against real loopback traffic."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Iterator

import pytest
from helpers import NETSNOOP, ROOT, PayloadServer, Trace, fetch, free_port, refused_connect

pytestmark = pytest.mark.integration


def transitions(records: list[dict], port: int) -> list[tuple[str, str]]:
    return [(r["oldstate"], r["newstate"]) for r in records if port in (r["lport"], r["rport"])]


def test_refused_connect_goes_syn_sent_to_close() -> None:
    port = refused_connect()  # pick a port first, then trace only it
    with Trace(["states", "--json", "-D", str(port)]) as t:
        refused_connect(port=port)
    recs = t.records
    assert ("CLOSE", "SYN_SENT") in transitions(recs, port)
    assert ("SYN_SENT", "CLOSE") in transitions(recs, port)
    syn = next(r for r in recs if r["newstate"] == "SYN_SENT")
    assert syn["c_pid"] == os.getpid()
    assert syn["raddr"] == "127.0.0.1" and syn["rport"] == port
    # a hex string, as in text: a kernel address does not fit a JSON number (jq rounds it)
    assert isinstance(syn["skaddr"], str) and int(syn["skaddr"], 16) > 2**53 and isinstance(syn["ms"], float)
    close = next(r for r in recs if r["newstate"] == "CLOSE")
    assert close["skaddr"] == syn["skaddr"] and close["ms"] >= 0
    assert t.summary["lost_events"] == 0


def test_full_session_both_ends_and_ms_in_state() -> None:
    """Both ends of one connection, every change in order, and MS (time in the old
    state) inside what the test measured around its own steps: a state entered during
    one step and left during another lasted between (start of the second - end of the
    first) and (end of the second - start of the first). Each state is held 100 ms, so
    an MS measured from the wrong change falls outside."""
    hold = 0.1
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with Trace(["states", "--json", "-P", str(port)]) as t:
            client = socket.socket()
            c0 = time.monotonic()
            client.connect(("127.0.0.1", port))
            c1 = time.monotonic()
            server, _ = listener.accept()
            a1 = time.monotonic()
            lport = client.getsockname()[1]
            time.sleep(hold)  # a workload step: stay ESTABLISHED
            s0 = time.monotonic()
            client.shutdown(socket.SHUT_WR)
            s1 = time.monotonic()
            assert server.recv(1) == b""  # the client's FIN has been taken in
            e1 = time.monotonic()
            time.sleep(hold)  # stay in CLOSE_WAIT / FIN_WAIT2
            x0 = time.monotonic()
            server.close()
            x1 = time.monotonic()
            assert client.recv(1) == b""  # the server's FIN has been taken in
            f1 = time.monotonic()
            client.close()
    rows: dict[Any, Any] = {}
    for r in t.records:
        end = "client" if r["lport"] == lport or (r["lport"] == 0 and r["rport"] == port) else "server"
        rows.setdefault(end, []).append((r["oldstate"], r["newstate"], r["ms"]))
    assert [(o, n) for o, n, _ in rows["client"]] == [
        ("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1"),
        ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "CLOSE"),
    ]
    assert [(o, n) for o, n, _ in rows["server"]] == [
        ("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"), ("ESTABLISHED", "CLOSE_WAIT"),
        ("CLOSE_WAIT", "LAST_ACK"), ("LAST_ACK", "CLOSE"),
    ]
    ms = {(end, o): m for end, changes in rows.items() for o, _n, m in changes}
    slack = 0.05  # ms: clock reads beside the kernel's

    def within(value: float, low_s: float, high_s: float) -> bool:
        return low_s * 1000 - slack <= value <= high_s * 1000 + slack

    assert within(ms["client", "SYN_SENT"], 0, c1 - c0)  # both inside connect()
    assert within(ms["client", "ESTABLISHED"], s0 - c1, s1 - c0)  # connect() .. shutdown()
    assert within(ms["client", "FIN_WAIT2"], 0, f1 - s0)  # after shutdown() .. FIN seen
    assert within(ms["server", "ESTABLISHED"], s0 - a1, e1 - c0)  # handshake .. FIN taken in
    assert within(ms["server", "CLOSE_WAIT"], x0 - e1, x1 - s0)  # FIN taken in .. close()
    assert ms["server", "ESTABLISHED"] >= hold * 1000 and ms["server", "CLOSE_WAIT"] >= hold * 1000


def test_either_end_port_filter_sees_both_sides() -> None:
    with PayloadServer(size=10) as srv, Trace(["states", "--json", "-P", str(srv.port)]) as t:
        lport, _ = fetch("127.0.0.1", srv.port)
    ends = {(r["lport"], r["rport"]) for r in t.records if r["lport"] and r["rport"]}
    assert (lport, srv.port) in ends and (srv.port, lport) in ends


def test_ipv6_loopback_text_output() -> None:
    with PayloadServer(host="::1", size=10) as srv, Trace(["states", "-w", "-6", "-P", str(srv.port)]) as t:
        fetch("::1", srv.port)
    header, *rows = t.lines
    assert header.split() == [
        "SKADDR",
        "C-PID",
        "C-COMM",
        "IP",
        "LADDR",
        "LPORT",
        "RADDR",
        "RPORT",
        "OLDSTATE",
        "->",
        "NEWSTATE",
        "MS",
        "NETNS",
        "CONTAINER",
    ]
    assert rows, t.stderr
    for line in rows:
        cols = line.split()
        assert cols[3] == "6" and cols[4] == "::1" and cols[6] == "::1" and cols[-2] == "host"
    assert any(line.split()[-4] == "ESTABLISHED" for line in rows)


def test_family_filter_excludes_ipv4() -> None:
    """-6: the IPv4 attempt to the port is not shown, the IPv6 one in the same run is."""
    port = refused_connect()
    with Trace(["states", "--json", "-6", "-D", str(port)]) as t:
        refused_connect(port=port)
        refused_connect("::1", port)  # positive control
    assert {r["ip"] for r in t.records} == {6}
    assert ("SYN_SENT", "CLOSE") in transitions(t.records, port)


def test_classic_tracepoint_variant_sees_the_same() -> None:
    port = refused_connect()
    with Trace(["states", "--json", "-D", str(port)], env={"NETSNOOP_HOOKS": "tracepoint"}) as t:
        refused_connect(port=port)
    assert t.summary["hooks"]["set_state"] == "tracepoint"
    assert transitions(t.records, port) == [("CLOSE", "SYN_SENT"), ("SYN_SENT", "CLOSE")]


@contextlib.contextmanager
def kernel_trace(port: int) -> Iterator[list[str]]:
    """The kernel's own record of inet_sock_set_state for one port, in a private
    tracefs instance (independent of netsnoop's programs)."""
    tracefs = "/sys/kernel/tracing"
    if not os.path.exists(os.path.join(tracefs, "instances")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", tracefs], check=True)
    inst = os.path.join(tracefs, "instances", f"netsnoop-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(inst)
    lines: list[str] = []
    try:
        event = os.path.join(inst, "events", "sock", "inet_sock_set_state")
        with open(os.path.join(event, "filter"), "w") as f:
            f.write(f"sport == {port} || dport == {port}")
        with open(os.path.join(event, "enable"), "w") as f:
            f.write("1")
        yield lines
        with open(os.path.join(event, "enable"), "w") as f:
            f.write("0")
        with open(os.path.join(inst, "trace")) as f:
            lines.extend(line for line in f if "inet_sock_set_state" in line)
    finally:
        os.rmdir(inst)


def test_a_state_set_again_is_not_a_change() -> None:
    """close() after shutdown(SHUT_WR) makes the kernel set FIN_WAIT2 again (the
    kernel's own trace shows FIN_WAIT2 -> FIN_WAIT2): no row for it, every real change
    is shown, and FIN_WAIT2's MS counts from when it was entered."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with kernel_trace(port) as kernel, Trace(["states", "--json", "-L", str(port)]) as t:
            client = socket.create_connection(("127.0.0.1", port))
            server, _ = listener.accept()
            s0 = time.monotonic()
            server.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""  # FIN sent; acked at once: the server goes to FIN_WAIT2
            time.sleep(0.1)  # a workload step: stay in FIN_WAIT2
            again = time.monotonic()
            server.close()  # sets FIN_WAIT2 again
            client.close()  # FIN_WAIT2 -> CLOSE
            done = time.monotonic()
            t.stop()
    states = [tuple(re.findall(r"(?:old|new)state=TCP_(\w+)", line)) for line in kernel]
    server_side = [s for s, line in zip(states, kernel) if f"sport={port} " in line]
    assert ("FIN_WAIT2", "FIN_WAIT2") in server_side  # the kernel did it
    shown = transitions(t.records, port)
    assert shown == [s for s in server_side if s[0] != s[1]]
    [fin_wait2] = [r["ms"] for r in t.records if r["oldstate"] == "FIN_WAIT2"]
    # from its entry (after shutdown()), not from the second setting (after `again`)
    assert (done - again) * 1000 < fin_wait2 <= (done - s0) * 1000


def test_csv_and_timestamps() -> None:
    port = refused_connect()
    with Trace(["states", "-s", "-t", "-T", "-D", str(port)]) as t:
        refused_connect(port=port)
    header, *rows = t.lines
    assert header == "TIME,TIME(s),SKADDR,C-PID,C-COMM,IP,LADDR,LPORT,RADDR,RPORT,OLDSTATE,NEWSTATE,MS"
    assert len(rows) >= 2
    first = rows[0].split(",")
    assert len(first[0]) == 8 and float(first[1]) == 0.0 and first[5] == "4"


def test_a_change_the_hook_did_not_see_shows_in_the_next_one() -> None:
    """When the kernel does not run the hook for a change (it happens under storms), the
    socket's next change leaves a state it was not seen entering: that change gets MS 0
    (how long it was in that state is unknown, not the time since some earlier change)
    and is counted in changes_not_seen. Simulated here by rewriting what the map says
    the two ends of an open connection last entered."""
    import socket
    import struct
    import time

    from netsnoop.btf import StructDecoder
    from netsnoop.commands.states import TRACER
    from netsnoop.options import port_filters

    established, close_wait = 1, 8
    port = free_port()
    with TRACER.open(port_filters(None, None, [port])) as obj, socket.create_server(("127.0.0.1", port)) as listener:
        ring, events = obj.ring_buffer(), obj.decoder()
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        entered, state = obj.map("entered"), StructDecoder(obj.btf, "entered_state")
        ends = [k for k, v in entered.items() if state.decode(v).state == established]
        assert len(ends) == 2
        for key in ends:  # as if each had gone on to CLOSE_WAIT unseen
            entered.update(key, state.encode(ns=time.monotonic_ns(), state=close_wait))
        rewritten = time.monotonic_ns()
        time.sleep(0.1)  # so that a wrong MS would be far from 0
        client.close()
        server.close()
        time.sleep(0.1)
        rows = ring.read_events(events)
        assert obj.counter("changes_not_seen") == 2
    sockets = {struct.unpack("=Q", k)[0] for k in ends}
    after = [e for e in rows if e.skaddr in sockets and e.ts_ns > rewritten]
    assert sorted(e.delta_ns for e in after if e.oldstate == established) == [0, 0]
    later = [e for e in after if e.oldstate != established]
    assert later and all(e.delta_ns > 0 for e in later)  # the changes after those are timed again


# ---- -Y: the systemd journal --------------------------------------------------------------

def journal_entries(data: bytes) -> dict[str, str]:
    """One native-protocol datagram as journald reads it (NAME=value lines; a NAME
    alone on its line is followed by a 64-bit little-endian length and that many
    bytes), written here from systemd's description, not from netsnoop's encoder."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            pos = end + 1
        else:
            name, size = line, int.from_bytes(data[end + 1 : end + 9], "little")
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            pos = end + 10 + size
        assert re.fullmatch(rb"[A-Z0-9][A-Z0-9_]*", name), name  # what journald accepts from a client
        fields[name.decode()] = value.decode()
    return fields


# Runs the command after DIR in a private mount namespace whose /run/systemd is DIR.
BIND_RUN_SYSTEMD = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /run/systemd && exec "$@"']


@contextlib.contextmanager
def private_journal(read: bool = True) -> Iterator[tuple[list[str], list[dict[str, str]]]]:
    """A journal socket of the test's own, which netsnoop (started with the prefix
    this yields) finds at /run/systemd/journal/socket: a private mount namespace
    binds the test's directory there. Yields the prefix and the entries received
    (none, and nothing read, with ``read=False``: a stuck journal)."""
    import threading

    with tempfile.TemporaryDirectory() as d:
        os.mkdir(f"{d}/journal")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(f"{d}/journal/socket")
        sock.settimeout(0.2)
        entries: list[dict[str, str]] = []
        done = threading.Event()

        def receive() -> None:
            while not done.is_set():
                try:
                    entries.append(journal_entries(sock.recv(1 << 16)))
                except socket.timeout:
                    continue

        th = threading.Thread(target=receive, daemon=True)
        if read:
            th.start()
        prefix = [*BIND_RUN_SYSTEMD, d]
        try:
            yield prefix, entries
        finally:
            time.sleep(0.3)  # what was sent before the trace stopped is already queued
            done.set()
            if read:
                th.join(5)
            sock.close()


RENAMED_CLIENT = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"evil\nname\x1b[31m", 0, 0, 0)  # PR_SET_NAME
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(s.getsockname()[1], flush=True)
s.close()
"""


def test_journal_gets_each_change_with_bccs_fields() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, private_journal() as (prefix, entries):
        port = listener.getsockname()[1]
        with Trace(["states", "-Y", "--json", "-P", str(port)], prefix=prefix) as t:
            out = subprocess.run([sys.executable, "-c", RENAMED_CLIENT, str(port)], capture_output=True, text=True,
                                 check=True, timeout=20)
            lport = int(out.stdout)
            server, _ = listener.accept()
            server.close()
    client = [e for e in entries if e["OBJECT_TCP_DESTINATION_PORT"] == str(port)
              and e["OBJECT_TCP_SOURCE_PORT"] in (str(lport), "0")]
    # the client's side of a connection it closed first: what TCP goes through
    assert [(e["OBJECT_TCP_OLD_STATE"], e["OBJECT_TCP_NEW_STATE"]) for e in client] == [
        ("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1"),
        ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "CLOSE"),
    ]
    first = client[0]
    assert first["SYSLOG_IDENTIFIER"] == "netsnoop" and first["PRIORITY"] == "5"
    assert first["OBJECT_IPV4_SOURCE_ADDRESS"] == first["OBJECT_IPV4_DESTINATION_ADDRESS"] == "127.0.0.1"
    assert first["NETSNOOP_NETNS"] == "host"
    assert first["NETSNOOP_NETNS_INODE"] == str(os.stat("/proc/self/ns/net").st_ino)
    # connect() ran in the renamed client: its name exactly in its own field, escaped in MESSAGE
    assert first["NETSNOOP_COMM"] == "evil\nname\x1b[31m"
    assert first["MESSAGE"] == f"evil\\nname\\x1b[31m 127.0.0.1 0 -> 127.0.0.1 {port} CLOSE -> SYN_SENT"
    # one entry per row printed, the same facts
    rows = [r for r in t.records if port in (r["lport"], r["rport"])]
    assert [(e["NETSNOOP_SKADDR"], e["OBJECT_TCP_OLD_STATE"], e["OBJECT_TCP_NEW_STATE"], e["OBJECT_TCP_SOURCE_PORT"])
            for e in entries] == [(r["skaddr"], r["oldstate"], r["newstate"], str(r["lport"])) for r in rows]
    assert all(int(e["OBJECT_TCP_SPAN_TIME"]) == int(e["NETSNOOP_SPAN_NS"]) // 1000 for e in entries)
    assert t.summary["journal_entries"] == len(entries) and t.summary["journal_lost"] == 0


def test_journal_missing_is_one_line_before_anything_loads() -> None:
    with tempfile.TemporaryDirectory() as empty:  # a /run/systemd with no journal in it
        out = subprocess.run([*BIND_RUN_SYSTEMD, empty, *NETSNOOP, "states", "-Y", "-d", "1"],
                             capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "netsnoop: cannot write to the systemd journal (/run/systemd/journal/socket: No such file or directory); "
        "is systemd-journald running?"
    ]


def test_a_stuck_journal_costs_entries_not_the_trace() -> None:
    """A journal that reads nothing: its queue fills, entries are counted as lost, and
    every change still reaches stdout while the trace runs."""
    with socket.create_server(("127.0.0.1", 0)) as listener, private_journal(read=False) as (prefix, _):
        port = listener.getsockname()[1]
        with Trace(["states", "-Y", "--json", "-P", str(port)], prefix=prefix) as t:
            started = time.monotonic()
            for _ in range(20):
                socket.create_connection(("127.0.0.1", port)).close()
                listener.accept()[0].close()
            deadline = time.monotonic() + 10
            while len(t._out) < 20 * 8 and time.monotonic() < deadline:  # rows printed so far, all about the port
                time.sleep(0.05)
            took = time.monotonic() - started
    rows = [r for r in t.records if port in (r["lport"], r["rport"])]
    assert len(rows) >= 20 * 8 and took < 10  # 8+ changes a connection, all printed while tracing
    assert t.summary["journal_lost"] > 0
    assert t.summary["journal_entries"] + t.summary["journal_lost"] == len(rows)
