"""netsnoop top: known-size transfers on loopback, counted per process and connection."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers import NETSNOOP, ROOT, PayloadServer, Trace, fetch, run

from netsnoop.commands.top import DRAIN, TRACER
from netsnoop.loader import BPFObject

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
CLIENT = ("import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
          "s.sendall(b'q' * 300000); s.shutdown(socket.SHUT_WR); s.recv(1)")


def near(value: int, expected: int, pct: float = 2.0) -> bool:
    return abs(value - expected) <= expected * pct / 100


def totals(records: list[dict], **match: int) -> tuple[int, int, int, int]:
    """rx_bytes, tx_bytes, rx_kb, tx_kb summed over the intervals of matching rows."""
    rows = [r for r in records if all(r[k] == v for k, v in match.items())]
    return (sum(r["rx_bytes"] for r in rows), sum(r["tx_bytes"] for r in rows),
            sum(r["rx_kb"] for r in rows), sum(r["tx_kb"] for r in rows))


def test_ten_mib_transfer_counts_real_bytes() -> None:
    with PayloadServer(size=10 * MIB, request_bytes=5000) as srv:
        port = str(srv.port)
        with Trace(["top", "--json", "0.2", "-P", port]) as t, \
             Trace(["top", "--json", "0.2", "-P", port], env={"NETSNOOP_PREFER": "tracepoint"}) as classic:
            lport, got = fetch("127.0.0.1", srv.port, send=5000)
    assert got == 10 * MIB
    me, my_comm = os.getpid(), open("/proc/self/comm").read().strip()
    for trace in (t, classic):
        records = trace.records
        assert {(r["pid"], r["comm"]) for r in records} == {(me, my_comm)}
        assert all(r["ip"] == 4 and r["laddr"] == r["raddr"] == "127.0.0.1" for r in records)
        server = totals(records, lport=srv.port, rport=lport)
        client = totals(records, lport=lport, rport=srv.port)
        assert near(server[1], 10 * MIB) and near(server[3], 10240) and server[0] == 5000
        assert near(client[0], 10 * MIB) and near(client[2], 10240) and client[1] == 5000
        assert all(r["tx_kb"] == r["tx_bytes"] // 1024 for r in records)
        assert trace.summary["lost_events"] == 0 and trace.summary["intervals"] >= 1
    stamps = [r["timestamp"] for r in t.records]
    assert stamps == sorted(stamps)


def test_text_layout_with_ipv4_and_ipv6_tables() -> None:
    with PayloadServer(size=300_000) as big, PayloadServer(size=100_000) as small, \
         PayloadServer(host="::1", size=200_000) as v6:
        ports = f"{big.port},{small.port},{v6.port}"
        with Trace(["top", "-C", "5", "-P", ports]) as t, Trace(["top", "-C", "-S", "5", "-P", ports]) as bare:
            small_lport, _ = fetch("127.0.0.1", small.port)
            big_lport, _ = fetch("127.0.0.1", big.port)
            v6_lport, _ = fetch("::1", v6.port)
    # one interval, printed at Ctrl-C: blank, loadavg, blank, IPv4 table, blank, IPv6 table
    blank, load, blank2, head4, *rest = t.lines
    assert blank == blank2 == ""
    assert re.fullmatch(r"\d\d:\d\d:\d\d loadavg: [\d.]+ [\d.]+ [\d.]+ \d+/\d+ \d+", load), load
    assert head4 == "PID    COMM         LADDR                 RADDR                  RX_KB  TX_KB"
    split = rest.index("")
    rows4, head6, rows6 = rest[:split], rest[split + 1], rest[split + 2:]
    assert head6 == "PID    COMM         LADDR6                           RADDR6                            RX_KB  TX_KB"
    cells = [r.split() for r in rows4]
    # busiest first: both ends of the 300000 B connection, then both ends of the other
    assert [c[2] for c in cells[:2]] in ([f"127.0.0.1:{big.port}", f"127.0.0.1:{big_lport}"],
                                        [f"127.0.0.1:{big_lport}", f"127.0.0.1:{big.port}"])
    by_local = {c[2]: c for c in cells}
    assert by_local[f"127.0.0.1:{big.port}"] == [str(os.getpid()), open("/proc/self/comm").read().strip()[:12],
                                                 f"127.0.0.1:{big.port}", f"127.0.0.1:{big_lport}", "0", "292"]
    assert by_local[f"127.0.0.1:{big_lport}"][4:] == ["292", "0"]
    assert by_local[f"127.0.0.1:{small_lport}"][4:] == ["97", "0"]
    assert sorted(r.split()[2] for r in rows6) == sorted([f"::1:{v6.port}", f"::1:{v6_lport}"])
    assert {tuple(r.split()[4:]) for r in rows6} == {("0", "195"), ("195", "0")}
    assert bare.lines[:2] == ["", head4]  # -S: no loadavg line


def read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end of the terminal is gone
            return
        if not chunk:
            return
        into.append(chunk)


def test_live_view_on_a_terminal() -> None:
    """On a TTY without -C the tables are redrawn in place (rich), not scrolled."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    screen: list[bytes] = []
    with PayloadServer(size=500_000) as srv:
        proc = subprocess.Popen([*NETSNOOP, "top", "0.3", "4", "-P", str(srv.port)], stdin=slave, stdout=slave,
                                stderr=subprocess.PIPE, cwd=ROOT, env=env)
        os.close(slave)
        reader = threading.Thread(target=read_all, args=(master, screen), daemon=True)
        reader.start()
        assert proc.stderr is not None and proc.stderr.readline().startswith(b"Tracing")
        lport, _ = fetch("127.0.0.1", srv.port)
        assert proc.wait(timeout=20) == 0
        reader.join(5)
    os.close(master)
    text = b"".join(screen).decode(errors="replace")
    assert "\x1b[1A" in text  # cursor up: redrawn in place
    assert "RX_KB" in text and "loadavg:" in text and f"127.0.0.1:{lport}" in text
    assert "Tracing" not in text and b"4 intervals, 0 lost events" in proc.stderr.read()  # stderr stays apart


def test_pid_filter_keeps_one_process() -> None:
    with PayloadServer(size=1000, request_bytes=300000) as srv, \
         Trace(["top", "--json", "5", "-p", str(os.getpid())]) as t:
        client = subprocess.run([sys.executable, "-c", CLIENT, str(srv.port)], timeout=30)
        assert client.returncode == 0
    mine = [r for r in t.records if r["lport"] == srv.port]
    assert [(r["pid"], r["rx_bytes"], r["tx_bytes"]) for r in mine] == [(os.getpid(), 300000, 1000)]
    assert not any(r["lport"] != srv.port and r["rport"] == srv.port for r in t.records)  # the client is not us


def cgroup2_mount() -> str | None:
    with open("/proc/mounts") as f:
        return next((line.split()[1] for line in f if line.split()[2] == "cgroup2"), None)


def test_cgroup_filter() -> None:
    root = cgroup2_mount()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    group = os.path.join(root, f"netsnoop-test-{os.getpid()}")
    os.mkdir(group)
    try:
        # the client moves itself into the new cgroup first; the server (us) stays out
        joined = f"open({os.path.join(group, 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid())); "
        with PayloadServer(size=1000, request_bytes=300000) as srv, \
             Trace(["top", "--json", "5", "-P", str(srv.port), "--cgroup", group]) as t:
            client = subprocess.Popen([sys.executable, "-c", joined + CLIENT, str(srv.port)])
            assert client.wait(timeout=30) == 0
    finally:
        os.rmdir(group)
    assert [(r["pid"], r["rport"], r["tx_bytes"], r["rx_bytes"]) for r in t.records] == [(client.pid, srv.port, 300000, 1)]  # it reads 1 byte


def test_count_stops_after_that_many_intervals() -> None:
    done = run(["top", "--json", "0.1", "3", "-P", "9"], timeout=20)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["type"], summary["intervals"], summary["lost_events"]) == ("summary", 3, 0)


@pytest.mark.parametrize("args", [["0"], ["1", "0"], ["-P", "70000"], ["--cgroup", "/nonexistent"], ["x"]])
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    done = run(["top", *args])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("kind", ["tp_btf", "kprobe"])
def test_every_variant_passes_the_verifier_with_its_companions(kind: str) -> None:
    """The per-CPU cache (its drain, switch and destroy hooks) comes with tp_btf only."""
    names = (DRAIN, "send__tp_btf__switch", "send__tp_btf__closing")
    with BPFObject("top", variants={"send": kind, "recv": kind}) as obj:
        obj.load()
        assert obj.chosen == {"send": kind, "recv": kind}
        assert {name: obj.loaded_program(name) is not None for name in names} == dict.fromkeys(names, kind == "tp_btf")


def test_send_and_recv_give_up_tp_btf_together() -> None:
    """The per-CPU cache needs both hooks typed and its companions loaded: a
    refused send__tp_btf (forced here) takes recv's tp_btf variant along."""
    with BPFObject("top", linked=TRACER.linked) as obj:
        obj._rejected.add("send__tp_btf")  # as if this kernel had refused it
        obj.load()
        assert obj.chosen == {"send": "tracepoint", "recv": "tracepoint"}
        assert obj.loaded_program(DRAIN) is None


def test_a_kernel_that_cannot_run_the_drain_on_a_cpu_gets_the_classic_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before 5.10 BPF_PROG_TEST_RUN cannot pick the CPU: the loader tries the drain
    once at attach time and, refused, gives up tp_btf (for both linked groups) rather
    than fail at the first interval."""
    from netsnoop.libbpf import lib

    monkeypatch.setattr(lib(), "bpf_prog_test_run_opts", lambda fd, opts: -22)  # EINVAL
    with TRACER.open() as obj:
        assert obj.chosen == {"send": "tracepoint", "recv": "tracepoint"}
        assert obj.loaded_program(DRAIN) is None


def recv_exactly(sock: socket.socket, size: int) -> None:
    while size:
        size -= len(sock.recv(min(size, 65536)))


def test_an_open_connection_is_counted_in_the_interval_of_its_bytes() -> None:
    """Bytes of a socket that stays open are moved out of the per-CPU caches at every
    interval's end: each burst shows in its own interval, exactly."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with Trace(["top", "--json", "0.2", "-P", str(port)]) as t:
            client = socket.create_connection(("127.0.0.1", port))
            server, _ = listener.accept()
            for burst in (100_000, 50_000, 7):
                client.sendall(b"b" * burst)
                recv_exactly(server, burst)
                time.sleep(0.6)
            lport = client.getsockname()[1]
            time.sleep(0.2)  # the sockets stay open for the trace's last interval too
        client.close()
        server.close()
    sent = [r["tx_bytes"] for r in t.records if r["lport"] == lport]
    received = [r["rx_bytes"] for r in t.records if r["lport"] == port]
    assert sent == received == [100_000, 50_000, 7]


SHARED = """import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"p" * 70000)
child = os.fork()
if child == 0:
    s.sendall(b"c" * 30000)
    os._exit(0)
os.waitpid(child, 0)
s.sendall(b"p" * 5000)
s.close()
print(child)
"""


@pytest.mark.parametrize("prefer", ["tp_btf", "tracepoint"])
def test_a_socket_shared_by_two_processes_is_split_between_them(prefer: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with Trace(["top", "--json", "5", "-P", str(port)], env={"NETSNOOP_PREFER": prefer}) as t:
            proc = subprocess.Popen([sys.executable, "-c", SHARED, str(port)], stdout=subprocess.PIPE, text=True)
            server, _ = listener.accept()
            recv_exactly(server, 105_000)
            child = int(proc.communicate(timeout=30)[0])
            server.close()
    assert proc.returncode == 0
    sent: dict[int, int] = {}
    for r in t.records:
        if r["rport"] == port:
            sent[r["pid"]] = sent.get(r["pid"], 0) + r["tx_bytes"]
    assert sent == {proc.pid: 75_000, child: 30_000}


RELAY = """import socket, sys
port, rounds = int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
for r in range(rounds):  # one process, six sockets in turn: more than a CPU's cache holds
    for i, c in enumerate(conns):
        c.sendall(bytes([65 + i]) * (1000 * (i + 1)))
for c in conns:
    c.close()
"""


def test_a_process_using_many_sockets_in_turn_gets_each_its_own_bytes() -> None:
    """A proxy's pattern: one process sending on several sockets in turn. Each socket's
    bytes stay its own when the per-CPU cache gives places up and takes them back."""
    rounds = 200
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        port = listener.getsockname()[1]
        with Trace(["top", "--json", "0.3", "-P", str(port)]) as t:
            proc = subprocess.Popen([sys.executable, "-c", RELAY, str(port), str(rounds)])
            servers = [listener.accept()[0] for _ in range(6)]
            sizes = {}  # the relay connects in turn: the n-th socket carries 1000*n bytes a round
            for n, s in enumerate(servers, 1):
                recv_exactly(s, 1000 * n * rounds)
                sizes[s.getpeername()[1]] = 1000 * n * rounds
            assert proc.wait(timeout=30) == 0
            for s in servers:
                s.close()
            time.sleep(0.4)
    sent: dict[int, int] = {}
    for r in t.records:
        if r["rport"] == port:
            assert r["pid"] == proc.pid
            sent[r["lport"]] = sent.get(r["lport"], 0) + r["tx_bytes"]
    assert sent == sizes
