"""Hostile process names, end to end: a real process renames itself with
prctl(PR_SET_NAME) and makes loopback connections; `netsnoop life` shows its sessions
in text (to a pipe and to a terminal), CSV and JSON, to UTF-8 and to ASCII streams.
Every row stays one line, no byte a terminal acts on gets through, CSV parses and
JSON keeps the name exactly, the trace ends normally -- and the hostile rows are
there (a filter that hid them would pass every other check)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import termios
import threading
import time
from typing import IO, Any

import pytest
from helpers import NETSNOOP, READY_TIMEOUT, ROOT, PayloadServer

from netsnoop.fmt import comm, printable

pytestmark = pytest.mark.integration

NAMES = [b"[/]x", b"[red]x", b"\x1b]0;pwn\x07", b'a,b"c', b"line\nbreak", b"caf\xc3\xa9", b"\xff\xfe",
         b"\x1b[2J\rcr\x08\x9b"]

# Renames itself before each connection (PR_SET_NAME = 15), connects, sends a byte,
# reads the server's answer to EOF, closes; prints "<name hex> <local port>" per session.
CHILD = r"""
import ctypes, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
port = int(sys.argv[1])
for name in sys.argv[2:]:
    if libc.prctl(15, bytes.fromhex(name), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")
    with socket.create_connection(("127.0.0.1", port)) as s:
        lport = s.getsockname()[1]
        s.sendall(b"x")
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    print(name, lport, flush=True)
"""

# Raw bytes a terminal acts on (ESC, BEL, CR, BS, DEL, C1): none may reach stdout in a row.
ACTIVE = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")
SGR = re.compile(rb"\x1b\[[0-9;]*m")  # colour and bold: the header's, on a terminal

MODES = {
    "text": ([], {}, False),
    "csv": (["-s"], {}, False),
    "json": (["--json"], {}, False),
    "tty": ([], {"TERM": "xterm-256color"}, True),
    "text-ascii": ([], {"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"}, False),
    "csv-ascii": (["-s"], {"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"}, False),
    "json-ascii": (["--json"], {"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"}, False),
}


class RawTrace:
    """netsnoop in the background, its stdout kept as bytes, to a pipe or to a
    terminal (a pseudo-terminal without output processing, so the bytes read are the
    bytes written)."""

    def __init__(self, args: list[str], env: dict[str, str], tty: bool) -> None:
        self.out = bytearray()
        self.err = bytearray()
        ready = threading.Event()
        if tty:
            master, slave = os.openpty()
            attrs = termios.tcgetattr(slave)
            attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n": a CR read here was written by netsnoop
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            stdout: Any = slave
        else:
            stdout = subprocess.PIPE
        self.proc = subprocess.Popen(
            NETSNOOP + args, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "COLUMNS": "200", **env},
        )
        reader: IO[bytes]
        if tty:
            os.close(slave)
            reader = os.fdopen(master, "rb", buffering=0)
        else:
            assert self.proc.stdout is not None
            reader = self.proc.stdout

        def pump_out() -> None:
            while True:
                try:
                    chunk = reader.read1(65536) if hasattr(reader, "read1") else reader.read(65536)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not chunk:
                    break
                self.out += chunk

        stderr = self.proc.stderr
        assert stderr is not None

        def pump_err() -> None:
            for line in stderr:
                self.err += line
                if line.startswith(b"Tracing"):
                    ready.set()
            ready.set()

        self.threads = [threading.Thread(target=t, daemon=True) for t in (pump_out, pump_err)]
        for t in self.threads:
            t.start()
        self.ready = ready

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        for t in self.threads:
            t.join(5)
        return rc


@pytest.fixture(scope="module")
def traced() -> dict[str, Any]:
    """One round of hostile traffic, seen by `life` in every output mode at once."""
    with PayloadServer(size=10, request_bytes=1) as srv:
        port = str(srv.port)
        traces = {
            mode: RawTrace(["life", "-w", "-D", port, *flags], env, tty) for mode, (flags, env, tty) in MODES.items()
        }
        try:
            for mode, t in traces.items():
                assert t.ready.wait(READY_TIMEOUT) and t.proc.poll() is None, (mode, bytes(t.err))
            child = subprocess.run(
                [sys.executable, "-c", CHILD, port, *(n.hex() for n in NAMES)],
                capture_output=True, text=True, timeout=30,
            )
            assert child.returncode == 0, child.stderr
            sessions = {
                int(lport): bytes.fromhex(name) for name, lport in (line.split() for line in child.stdout.splitlines())
            }
            assert len(sessions) == len(NAMES)
            # each trace has shown every session once its local port is in the output
            deadline = time.monotonic() + 10
            for t in traces.values():
                while not all(str(p).encode() in t.out for p in sessions) and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            codes = {mode: t.stop() for mode, t in traces.items()}
    return {"traces": traces, "codes": codes, "sessions": sessions}


def rows_by_port(lines: list[list[str]], lport_index: int) -> dict[int, list[str]]:
    return {int(f[lport_index]): f for f in lines if len(f) > lport_index and f[lport_index].isdigit()}


@pytest.mark.parametrize("mode", list(MODES))
def test_trace_survives_hostile_names(traced: dict[str, Any], mode: str) -> None:
    t = traced["traces"][mode]
    assert traced["codes"][mode] == 0, bytes(t.err)
    assert b"Traceback" not in t.err and b"internal error" not in t.err
    summary = t.out.splitlines()[-1] if mode.startswith("json") else t.err
    assert b"events" in summary  # the summary: the trace ended normally
    if mode.endswith("ascii"):
        assert max(t.out, default=0) < 0x80


@pytest.mark.parametrize("mode", ["text", "tty", "text-ascii"])
def test_text_rows_are_escaped_one_per_line(traced: dict[str, Any], mode: str) -> None:
    out = bytes(traced["traces"][mode].out)
    header, *rows = out.split(b"\n")
    assert rows[-1] == b"" and b"PID" in header and b"COMM" in header
    assert not ACTIVE.search(SGR.sub(b"", header))  # a terminal gets bold, nothing else
    assert bool(SGR.search(header)) == (mode == "tty")  # the terminal path really ran
    data = b"\n".join(rows)
    assert not ACTIVE.search(data) and b"\x1b" not in data, data
    fields = [line.decode("utf-8").split() for line in rows[:-1]]
    # PID COMM IP LADDR LPORT RADDR RPORT TX_KB RX_KB MS NETNS CONTAINER (-w)
    assert all(len(f) == 12 for f in fields), fields
    found = rows_by_port(fields, 4)
    for lport, raw in traced["sessions"].items():
        assert lport in found, f"no row for {raw!r} (port {lport})"  # the positive control
        shown = printable(comm(raw), 16)
        if mode == "text-ascii":
            shown = shown.encode("ascii", "backslashreplace").decode()
        assert found[lport][1] == shown


@pytest.mark.parametrize("mode", ["csv", "csv-ascii"])
def test_csv_parses_and_names_round_trip(traced: dict[str, Any], mode: str) -> None:
    text = bytes(traced["traces"][mode].out).decode("utf-8")
    assert not ACTIVE.search(text.encode()) and text.endswith("\n")
    parsed = list(csv.reader(io.StringIO(text)))
    header, rows = parsed[0], parsed[1:]
    assert header[:2] == ["PID", "COMM"] and all(len(r) == len(header) for r in rows)
    assert len(rows) == text.count("\n") - 1  # one row per line
    found = rows_by_port(rows, header.index("LPORT"))
    for lport, raw in traced["sessions"].items():
        assert lport in found, f"no row for {raw!r} (port {lport})"
        shown = printable(comm(raw))  # whole: CSV does not cut
        if mode == "csv-ascii":
            shown = shown.encode("ascii", "backslashreplace").decode()
        assert found[lport][1] == shown
    assert found[next(p for p, n in traced["sessions"].items() if n == b'a,b"c')][1] == 'a,b"c'


@pytest.mark.parametrize("mode", ["json", "json-ascii"])
def test_json_keeps_names_exactly(traced: dict[str, Any], mode: str) -> None:
    out = bytes(traced["traces"][mode].out)
    assert not ACTIVE.search(out)
    records = [json.loads(line) for line in out.decode("utf-8").splitlines()]
    found = {r["lport"]: r for r in records if r.get("type") != "summary"}
    for lport, raw in traced["sessions"].items():
        assert lport in found, f"no row for {raw!r} (port {lport})"
        assert found[lport]["comm"] == comm(raw)  # "line\nbreak" with its newline, "café" whole
    assert any(r["comm"] == "café" for r in found.values())


def test_fdsnoop_file_names_are_escaped_in_text_and_exact_in_json(tmp_path: Any) -> None:
    """A file name is as hostile as a process name (any byte but / and NUL): fdsnoop's
    NAME column shows it escaped on one line, JSON keeps it (a non-UTF-8 byte as \\xff)."""
    import socket

    name = b"x\x1b]0;pwn\x07\nfake row\r\x9b\xff"
    path = os.path.join(os.fsencode(tmp_path), name)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    a, b = socket.socketpair()
    from helpers import Trace

    try:
        with Trace(["fdsnoop", "-p", str(os.getpid())]) as text, \
                Trace(["fdsnoop", "--json", "-p", str(os.getpid())]) as js:
            socket.send_fds(a, [b"x"], [fd])
            _, fds, _, _ = socket.recv_fds(b, 1, 1)
            deadline = time.monotonic() + 10  # rows are printed while the fds are still open
            while (len(text._out) < 3 or len(js._out) < 2) and time.monotonic() < deadline:
                time.sleep(0.05)
            for got in fds:
                os.close(got)
    finally:
        os.close(fd)
        a.close()
        b.close()
    assert text.returncode == 0 and js.returncode == 0, text.stderr + js.stderr
    expected = os.fsdecode(path)
    shown = printable(expected)
    header, *rows = text.lines
    assert len(rows) == 2 and text.stdout.count("\n") == 3  # SEND and RECV, one line each
    for row in rows:
        assert row.endswith(" " + shown), row
        assert not ACTIVE.search(row.encode())
    assert "\\x1b]0;pwn\\x07\\nfake row\\r\\x9b\\xff" in shown  # every control byte visible
    names = [r["name"] for r in js.records]
    as_text = re.sub("[\udc80-\udcff]", lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", expected)
    assert names == [as_text] * 2 and as_text.endswith("\r\\x9b\\xff")
