"""netsnoop fdsnoop against descriptors this test passes over Unix sockets."""

from __future__ import annotations

import ctypes
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from typing import Iterator

import pytest
from click.testing import CliRunner
from helpers import NetnsPair, Trace
from test_where import Cgroups

from netsnoop.cli import cli

integration = pytest.mark.integration
MAX_FDS = 4


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(IoVec)),
        ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


LIBC = ctypes.CDLL(None, use_errno=True)


def _messages(count: int, control: list[bytes]) -> tuple[ctypes.Array, list[object]]:
    """``count`` one-byte messages whose control buffers start as ``control``."""
    keep: list[object] = []
    vec = (MMsgHdr * count)()
    for i in range(count):
        data = ctypes.create_string_buffer(b"m", 1)
        iov = IoVec(ctypes.addressof(data), 1)
        ctl = ctypes.create_string_buffer(control[i], len(control[i]))
        keep += [data, iov, ctl]
        vec[i].hdr.iov = ctypes.pointer(iov)
        vec[i].hdr.iovlen = 1
        vec[i].hdr.control = ctypes.addressof(ctl)
        vec[i].hdr.controllen = len(control[i])
    return vec, keep


def sendmmsg_fds(sock: socket.socket, fds_per_message: list[list[int]]) -> None:
    """sendmmsg(2): one message per list, each carrying its fds as SCM_RIGHTS."""
    control = [struct.pack("=Qii", socket.CMSG_LEN(4 * len(f)), socket.SOL_SOCKET, socket.SCM_RIGHTS)
               + struct.pack(f"={len(f)}i", *f).ljust(socket.CMSG_SPACE(4 * len(f)) - 16, b"\0")
               for f in fds_per_message]
    vec, _keep = _messages(len(control), control)
    sent = LIBC.sendmmsg(sock.fileno(), vec, len(control), 0)
    assert sent == len(control), os.strerror(ctypes.get_errno())


def recvmmsg_fds(sock: socket.socket, count: int) -> list[list[int]]:
    """recvmmsg(2) of ``count`` messages; returns the fds each one brought."""
    vec, _keep = _messages(count, [bytes(socket.CMSG_SPACE(4 * MAX_FDS))] * count)
    got = LIBC.recvmmsg(sock.fileno(), vec, count, 0, None)
    assert got == count, os.strerror(ctypes.get_errno())
    out = []
    for i in range(count):
        raw = ctypes.string_at(vec[i].hdr.control, vec[i].hdr.controllen)
        length, level, kind = struct.unpack_from("=Qii", raw)
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        out.append(list(struct.unpack_from(f"={(length - 16) // 4}i", raw, 16)))
    return out


@pytest.fixture
def files() -> Iterator[list]:
    """Three open temporary files: the descriptors the tests pass around."""
    with tempfile.TemporaryDirectory() as d:
        handles = [open(os.path.join(d, f"passed{i}.txt"), "w+") for i in range(3)]
        try:
            yield handles
        finally:
            for h in handles:
                h.close()


def socket_label(sock: socket.socket) -> str:
    return f"{sock.fileno()}:socket:[{os.fstat(sock.fileno()).st_ino}]"


def closing(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


@integration
def test_sendmsg_and_recvmsg_rows_per_descriptor(files: list) -> None:
    a, b = socket.socketpair()
    labels = socket_label(a), socket_label(b)
    with a, b, Trace(["fdsnoop", "--json", "-p", str(os.getpid())]) as t:
        socket.send_fds(a, [b"x"], [files[0].fileno(), files[1].fileno()])
        _msg, received, _flags, _addr = socket.recv_fds(b, 16, MAX_FDS)
        t.stop()  # names are resolved while the received fds are still open
    closing(received)
    sends = [r for r in t.records if r["action"] == "SEND"]
    recvs = [r for r in t.records if r["action"] == "RECV"]
    assert [(r["fd"], r["name"]) for r in sends] == [(f.fileno(), f.name) for f in files[:2]]
    assert [(r["fd"], r["name"]) for r in recvs] == list(zip(received, [f.name for f in files[:2]]))
    for r in sends + recvs:
        assert r["pid"] == os.getpid() and r["tid"] == threading.get_native_id()
    assert {r["socket"] for r in sends} == {labels[0]} and {r["sock_fd"] for r in sends} == {
        int(labels[0].split(":")[0])
    }
    assert {r["socket"] for r in recvs} == {labels[1]}
    assert t.summary["lost_events"] == 0


@integration
def test_sendmmsg_and_recvmmsg(files: list) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    batches = [[files[0].fileno()], [files[1].fileno(), files[2].fileno()]]
    with a, b, Trace(["fdsnoop", "--json", "-p", str(os.getpid())]) as t:
        sendmmsg_fds(a, batches)
        received = recvmmsg_fds(b, 2)
        t.stop()
    closing([fd for batch in received for fd in batch])
    sends = [(r["fd"], r["name"]) for r in t.records if r["action"] == "SEND"]
    recvs = [(r["fd"], r["name"]) for r in t.records if r["action"] == "RECV"]
    assert sends == [(f.fileno(), f.name) for f in files]
    assert recvs == list(zip([fd for batch in received for fd in batch], [f.name for f in files]))


class PausedSender(threading.Thread):
    """A thread that reports its id, then passes ``fd`` once released: its id is
    known before tracing starts, so a trace can filter on it."""

    def __init__(self, sock: socket.socket, fd: int) -> None:
        super().__init__()
        self.sock, self.fd = sock, fd
        self.started_ok, self.go = threading.Event(), threading.Event()
        self.tid = 0

    def run(self) -> None:
        self.tid = threading.get_native_id()
        self.started_ok.set()
        self.go.wait(10)
        socket.send_fds(self.sock, [b"t"], [self.fd])


@integration
def test_thread_and_name_filters(files: list) -> None:
    with open("/proc/self/comm") as f:
        part = f.read().strip()[1:4]
    a, b = socket.socketpair()
    sender = PausedSender(a, files[1].fileno())
    sender.start()
    sender.started_ok.wait(10)
    pid = str(os.getpid())
    with a, b, Trace(["fdsnoop", "--json", "-t", str(sender.tid)]) as by_tid, \
            Trace(["fdsnoop", "--json", "-p", pid, "-n", part]) as by_name, \
            Trace(["fdsnoop", "--json", "-p", pid, "-n", "zzqqzz"]) as no_name:
        socket.send_fds(a, [b"m"], [files[0].fileno()])  # main thread: not the -t one
        sender.go.set()
        sender.join()
    assert [(r["tid"], r["fd"]) for r in by_tid.records] == [(sender.tid, files[1].fileno())]
    assert sorted(r["fd"] for r in by_name.records) == [files[0].fileno(), files[1].fileno()]
    assert all(part in r["comm"] for r in by_name.records)
    assert no_name.records == []


@integration
def test_text_layout_with_timestamps(files: list) -> None:
    a, b = socket.socketpair()
    label = socket_label(a)
    with a, b, Trace(["fdsnoop", "-T", "-p", str(os.getpid())]) as t:
        socket.send_fds(a, [b"x"], [files[0].fileno()])
        t.stop()
    header, *rows = t.lines
    assert header.split() == ["TIME(s)", "ACTION", "TID", "COMM", "SOCKET", "FD", "NAME"]
    assert len(rows) == 1
    cols = rows[0].split()
    assert float(cols[0]) == 0.0 and cols[1] == "SEND" and cols[2] == str(threading.get_native_id())
    assert cols[4] == label and cols[5] == str(files[0].fileno()) and cols[6] == files[0].name


@integration
def test_http_traffic_passes_no_descriptor_and_the_end_says_so(files: list) -> None:
    """The seed's puzzle: http.server and curl, fdsnoop shows nothing. The trace ends
    saying why; one that saw a descriptor passed (the control) does not."""
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tempfile.gettempdir(),
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert server.stdout is not None
        found = re.search(r"port (\d+)", server.stdout.readline())
        assert found is not None
        port = found[1]
        a, b = socket.socketpair()
        with a, b, Trace(["fdsnoop", "--json", "-p", str(server.pid)]) as http, \
                Trace(["fdsnoop", "--json", "-p", str(os.getpid())]) as control:
            done = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/"],
                                  capture_output=True, text=True, timeout=20)
            socket.send_fds(a, [b"x"], [files[0].fileno()])
            closing(socket.recv_fds(b, 16, MAX_FDS)[1])
    finally:
        server.kill()
        server.wait()
    assert done.stdout == "200"
    assert http.records == [] and "no file descriptor was passed" in http.stderr and "HTTP" in http.stderr
    assert len(control.records) == 2 and "no file descriptor was passed" not in control.stderr


# waits for "go" (meanwhile it is moved into its cgroup), passes /dev/null over a
# socket pair of its own namespace, says so, and keeps the descriptors until stdin closes
PASS_ON_GO = (
    "import socket, sys; sys.stdin.readline(); a, b = socket.socketpair(); f = open('/dev/null'); "
    "socket.send_fds(a, [b'x'], [f.fileno()]); got = socket.recv_fds(b, 16, 4); print('passed', flush=True); "
    "sys.stdin.read()"
)


@integration
def test_who_and_where_columns_and_filters(files: list) -> None:
    """A process in a docker-style cgroup and a named namespace of the test's, and this
    process (outside both) pass a descriptor each: -w names the first's namespace and
    container; --cgroup and --netns keep only the first, --netns host only this
    process, while the unfiltered trace of the same run has both."""
    me = os.getpid()
    with NetnsPair() as ns, Cgroups() as cg:
        child = subprocess.Popen(["ip", "netns", "exec", ns.a, sys.executable, "-c", PASS_ON_GO],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdin and child.stdout
            Cgroups.move(cg.docker, child.pid)
            a, b = socket.socketpair()
            pids = f"{me},{child.pid}"
            with a, b, Trace(["fdsnoop", "-w", "-p", pids]) as text, \
                    Trace(["fdsnoop", "--json", "--cgroup", cg.docker]) as by_cgroup, \
                    Trace(["fdsnoop", "--json", "-N", ns.a]) as by_netns, \
                    Trace(["fdsnoop", "--json", "-p", pids, "-N", "host"]) as by_host, \
                    Trace(["fdsnoop", "--json", "-p", pids]) as everything:
                socket.send_fds(a, [b"x"], [files[0].fileno()])
                closing(socket.recv_fds(b, 16, MAX_FDS)[1])
                child.stdin.write("go\n")
                child.stdin.flush()
                assert child.stdout.readline() == "passed\n"
        finally:
            child.kill()
            child.wait()
    inode = os.stat("/proc/self/ns/net").st_ino
    seen = {(r["pid"], r["action"], r["netns"], r["container"] == cg.docker_label) for r in everything.records}
    assert seen == {(p, action, netns, p == child.pid) for p, netns in ((me, "host"), (child.pid, ns.a))
                    for action in ("SEND", "RECV")}, everything.stdout  # the control
    assert {r["netns_inode"] for r in everything.records if r["pid"] == me} == {inode}
    assert {(r["pid"], r["container"]) for r in by_cgroup.records} == {(child.pid, cg.docker_label)}, by_cgroup.stdout
    assert len(by_cgroup.records) == 2
    assert {(r["pid"], r["netns"]) for r in by_netns.records} == {(child.pid, ns.a)}, by_netns.stdout
    assert len(by_netns.records) == 2
    assert {r["pid"] for r in by_host.records} == {me} and len(by_host.records) == 2, by_host.stdout

    header, *rows = text.lines
    assert header.split()[-2:] == ["NETNS", "CONTAINER"]
    tail = {(r.split()[-2], r.split()[-1]) for r in rows if r.split()[1] == str(child.pid)}
    assert tail == {(ns.a, cg.docker_label)}, text.stdout


def test_help_says_only_descriptor_passing_is_shown() -> None:
    result = CliRunner().invoke(cli, ["fdsnoop", "--help"])
    assert result.exit_code == 0
    assert "Only descriptor passing is shown" in result.output and "HTTP" in result.output


@pytest.mark.parametrize(
    "args", [["-n", "a-name-longer-than-15"], ["-n", ""], ["-t", "abc"], ["-p", "0"], ["-d", "-1"]]
)
def test_bad_values_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["fdsnoop", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
