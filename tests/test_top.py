"""netsnoop top: known-size transfers on loopback, counted per process and connection."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest
from helpers import NETSNOOP, READY_TIMEOUT, ROOT, PayloadServer, Trace, assert_verified, closed_port, fetch, run

from netsnoop.commands.top import DRAIN, TRACER
from netsnoop.loader import BPFObject
from netsnoop.options import cgroup2_mounts

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
CLIENT = ("import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
          "s.sendall(b'q' * 300000); s.shutdown(socket.SHUT_WR); s.recv(1)")


def totals(records: list[dict], **match: int) -> tuple[int, int, int, int]:
    """rx_bytes, tx_bytes, rx_kb, tx_kb summed over the intervals of matching rows."""
    rows = [r for r in records if all(r[k] == v for k, v in match.items())]
    return (sum(r["rx_bytes"] for r in rows), sum(r["tx_bytes"] for r in rows),
            sum(r["rx_kb"] for r in rows), sum(r["tx_kb"] for r in rows))


def test_ten_mib_transfer_counts_real_bytes() -> None:
    """Exact to the byte on both hook kinds: every send/recv call has returned before
    the trace stops, and the last interval takes what the per-CPU caches still hold.
    Each interval's KB is that interval's bytes // 1024, so their sum may fall short
    of 10240 by less than one per interval."""
    with PayloadServer(size=10 * MIB, request_bytes=5000) as srv:
        port = str(srv.port)
        with Trace(["top", "--json", "0.2", "-P", port], env={"NETSNOOP_HOOKS": "tp_btf"}) as t, \
             Trace(["top", "--json", "0.2", "-P", port], env={"NETSNOOP_HOOKS": "tracepoint"}) as classic:
            lport, got = fetch("127.0.0.1", srv.port, send=5000)
    assert got == 10 * MIB
    me, my_comm = os.getpid(), open("/proc/self/comm").read().strip()
    for trace, kind in ((t, "tp_btf"), (classic, "tracepoint")):
        assert trace.summary["hooks"] == {"send": kind, "recv": kind}
        records = trace.records
        assert {(r["pid"], r["comm"]) for r in records} == {(me, my_comm)}
        assert all(r["ip"] == 4 and r["laddr"] == r["raddr"] == "127.0.0.1" for r in records)
        server = totals(records, lport=srv.port, rport=lport)
        client = totals(records, lport=lport, rport=srv.port)
        assert server[:2] == (5000, 10 * MIB) and client[:2] == (10 * MIB, 5000)
        intervals = trace.summary["intervals"]
        assert 10240 - intervals < server[3] <= 10240 and 10240 - intervals < client[2] <= 10240
        assert all(r["tx_kb"] == r["tx_bytes"] // 1024 and r["rx_kb"] == r["rx_bytes"] // 1024 for r in records)
        assert trace.summary["lost_events"] == 0 and intervals >= 1
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
    assert (
        head6 == "PID    COMM         LADDR6                           RADDR6                            RX_KB  TX_KB"
    )
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


# A process with a name of its choosing (prctl PR_SET_NAME) that keeps CONNS loopback
# connections to one server of its own busy until killed; prints the server's port.
HOSTILE = """import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
server = socket.create_server(("127.0.0.1", 0))
pairs = []
for _ in range(int(sys.argv[2])):
    c = socket.create_connection(server.getsockname())
    pairs.append((c, server.accept()[0]))
print(server.getsockname()[1], *(c.getsockname()[1] for c, _ in pairs), flush=True)
while True:
    for c, s in pairs:
        c.sendall(b"x" * 8192)
        got = 0
        while got < 8192:
            got += len(s.recv(8192 - got))
    time.sleep(0.005)
"""


class Busy:
    """HOSTILE running: .port (its server), .clients (its client ports)."""

    def __init__(self, name: str, conns: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOSTILE, name, str(conns)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.port, *self.clients = map(int, self.proc.stdout.readline().split())

    def __enter__(self) -> "Busy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_terminal(args: list[str], cols: int = 100, rows: int = 30, keys: bytes = b"",
                then: Callable[[], object] | None = None) -> tuple[str, str]:
    """Run netsnoop on a real terminal (script(1)'s pty, sized with stty), calling
    ``then`` and typing ``keys`` once it traces; returns (everything the terminal
    got, the terminal's settings (stty -a) after netsnoop ended). The exit status
    is checked here."""
    cmd = (f"stty cols {cols} rows {rows}; {shlex.join([*NETSNOOP, *args])}; echo netsnoop-rc=$?; "
           "stty -a; echo netsnoop-end")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(["script", "-qec", cmd, "/dev/null"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=ROOT, env={**env, "TERM": "xterm"})
    assert proc.stdin is not None and proc.stdout is not None
    screen: list[bytes] = []
    tracing = threading.Event()

    def pump() -> None:
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            screen.append(chunk)
            if b"Tracing" in b"".join(screen[-2:]):
                tracing.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if keys or then:
        assert tracing.wait(READY_TIMEOUT), b"".join(screen)
    if then:
        then()
    if keys:
        proc.stdin.write(keys)
        proc.stdin.flush()
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
        reader.join(5)
        proc.stdin.close()
    text = b"".join(screen).decode(errors="replace").replace("\r\n", "\n")
    assert "netsnoop-rc=0" in text and "Traceback" not in text, text
    run, settings = text.split("netsnoop-rc=0", 1)
    return run, settings


def last_frame(run: str) -> list[str]:
    """The live view's last frame, as the terminal shows it (styles removed)."""
    frame = run.rsplit("\x1b[2K", 1)[1].split("netsnoop:", 1)[0]
    lines = [ANSI.sub("", line) for line in frame.split("\n")]
    return [line for line in lines if line.strip()]


def test_hostile_process_names_are_shown_literally_on_a_terminal() -> None:
    """Names are never read as rich markup ('[/]x' ended the trace with MarkupError,
    '[red]x' recoloured) and control characters in them are shown escaped."""
    names = ["[/]x", "[red]x", "\x1b[2Jz\x07"]
    with Busy(names[0]) as a, Busy(names[1]) as b, Busy(names[2]) as c:
        run, _ = on_terminal(["top", "0.3", "3", "-P", f"{a.port},{b.port},{c.port}"])
    assert "MarkupError" not in run
    frame = last_frame(run)
    shown = {line.split()[1] for line in frame if re.match(r"\d+ ", line)}
    assert shown == {"[/]x", "[red]x", "\\x1b[2Jz\\x07"}, frame
    assert "\x1b[31m" not in run and "\x1b[2J" not in run and "\x07" not in run  # no colour, no clear, no bell


def test_q_quits_and_an_empty_interval_says_nothing_matched() -> None:
    run, settings = on_terminal(["top", "5", "-P", str(closed_port())], keys=b"q")
    frame = last_frame(run)
    assert frame[1] == "RX_KB, TX_KB: KiB received and sent in each 5 s interval; q quits"
    assert frame[2].split() == ["PID", "COMM", "LADDR", "RADDR", "RX_KB", "TX_KB"]
    assert frame[3] == "no TCP traffic matched"
    assert "netsnoop: 1 intervals" in run  # the interval q cut short, then the summary
    modes = settings.split()
    assert "icanon" in modes and "echo" in modes  # the terminal is given back as it was


def test_scrolling_text_on_a_terminal_says_when_nothing_matched() -> None:
    run, _ = on_terminal(["top", "-C", "-S", "0.2", "2", "-P", str(closed_port())])
    lines = [ANSI.sub("", line) for line in run.splitlines()]
    assert lines.count("no TCP traffic matched") == 2
    heads = [n for n, line in enumerate(lines) if line.split() == ["PID", "COMM", "LADDR", "RADDR", "RX_KB", "TX_KB"]]
    assert len(heads) == 2 and all(lines[n + 1] == "no TCP traffic matched" for n in heads)


def test_narrow_terminal_drops_text_columns_and_counts_rows_that_do_not_fit() -> None:
    with Busy("narrow", conns=8) as busy:
        run, _ = on_terminal(["top", "0.5", "2", "-P", str(busy.port)], cols=50, rows=14)
    frame = last_frame(run)
    assert all(len(line) <= 50 for line in frame), frame
    head = frame.index(next(line for line in frame if line.split()[:1] == ["PID"]))
    assert frame[head].split() == ["PID", "LADDR", "RADDR", "RX_KB", "TX_KB"]  # COMM went first
    more, total = frame[-2], frame[-1]
    rows = frame[head + 1:-2]
    assert rows and "…" not in "".join(rows)
    ends = {f"127.0.0.1:{p}" for p in (busy.port, *busy.clients)}
    for row in rows:
        pid, laddr, raddr, rx, tx = row.split()
        assert int(pid) == busy.proc.pid and {laddr, raddr} <= ends and rx.isdigit() and tx.isdigit()
    conns = int(re.fullmatch(r"total: (\d+) connections, RX_KB \d+, TX_KB \d+", total)[1])  # type: ignore[index]
    assert conns == 16 and more == f"... {conns - len(rows)} more"


class TwoConnections:
    """Two loopback connections with known byte counts, four rows in all:
    A, both ends in this process: the client sends 50,000 B and reads 200,000;
    B: a child process sends 300,000 B and reads 1 of the server's 1,000.
    ``expected`` maps each row's name to (pid, local port or None, rx, tx).

    The child starts with the servers and waits for a line on stdin: ``run()`` makes
    only traffic, quickly, where a Python started there would take the interval it
    must fit in (seconds on a loaded machine)."""

    def __init__(self) -> None:
        self.a = PayloadServer(size=200_000, request_bytes=50_000)
        self.b = PayloadServer(size=1000, request_bytes=300_000)
        self.expected: dict[str, tuple[int, int | None, int, int]] = {}

    def __enter__(self) -> "TwoConnections":
        self.a.__enter__()
        self.b.__enter__()
        self.ports = f"{self.a.port},{self.b.port}"
        self.child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline(); " + CLIENT,
                                       str(self.b.port)], stdin=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.child.kill()
        self.child.wait()
        self.b.__exit__()
        self.a.__exit__()

    def run(self) -> None:
        me = os.getpid()
        a_lport, got = fetch("127.0.0.1", self.a.port, send=50_000)
        assert got == 200_000
        child = self.child
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
        self.expected = {"A_srv": (me, self.a.port, 50_000, 200_000), "A_cli": (me, a_lport, 200_000, 50_000),
                         "B_srv": (me, self.b.port, 300_000, 1000), "B_cli": (child.pid, None, 1, 300_000)}

    def name(self, pid: int, lport: int) -> str:
        """Which row this is (the child's local port is the one the kernel chose)."""
        return next(n for n, (p, port, _, _) in self.expected.items() if p == pid and port in (lport, None))

    def named(self, records: list[dict]) -> list[str]:
        """The rows' names in the order shown, each checked against its known bytes."""
        names = [self.name(r["pid"], r["lport"]) for r in records]
        for n, r in zip(names, records):
            assert (r["rx_bytes"], r["tx_bytes"]) == self.expected[n][2:], (n, r)
        return names

    def named_text(self, lines: list[str]) -> list[str]:
        """The same from bcc's text rows (PID COMM LADDR RADDR RX_KB TX_KB)."""
        cells = [line.split() for line in lines if re.match(r"\d+ ", line)]
        names = [self.name(int(c[0]), int(c[2].rsplit(":", 1)[1])) for c in cells]
        for n, c in zip(names, cells):
            assert (int(c[-2]), int(c[-1])) == tuple(b // 1024 for b in self.expected[n][2:]), (n, c)
        return names


def one_interval(t: Trace) -> list[dict]:
    """The trace's rows, which all fell in its one interval."""
    assert t.summary["intervals"] == 1 and len({r["timestamp"] for r in t.records}) == 1, t.stdout
    return t.records


def test_sort_keys_and_row_limit() -> None:
    """-s orders the rows by the key (libbpf-tools' all/sent/received, pid, and the
    short names); -r keeps the first ROWS in that order: the rows it leaves out
    are there in the same run without it. Bytes from what the test sent."""
    with TwoConnections() as conns:
        top = ["top", "60", "-P", conns.ports]  # one interval: the six start one after another, Ctrl-C ends it
        with (
            Trace([*top, "--json"]) as by_all,
            Trace([*top, "--json", "-s", "sent"]) as by_sent,
            Trace([*top, "--json", "-s", "pid"]) as by_pid,
            Trace([*top, "--json", "-s", "sent", "-r", "2"]) as two,
            Trace([*top, "-C", "-S", "-s", "received"]) as text,
            Trace([*top, "-C", "-S", "-s", "rx", "-r", "3"]) as three,
        ):
            conns.run()
    all_order = conns.named(one_interval(by_all))
    # 301,000; 300,001; 250,000 each
    assert all_order[:2] == ["B_srv", "B_cli"] and set(all_order[2:]) == {"A_srv", "A_cli"}
    assert conns.named(one_interval(by_sent)) == ["B_cli", "A_srv", "A_cli", "B_srv"]
    assert conns.named(one_interval(two)) == ["B_cli", "A_srv"]  # -r 2: the first two of the line above
    pids = [r["pid"] for r in one_interval(by_pid)]
    assert pids == sorted(pids) and len(set(pids)) == 2 and len(pids) == 4
    assert text.lines[:2] == ["", "PID    COMM         LADDR                 RADDR                  RX_KB  TX_KB"]
    assert conns.named_text(text.lines) == ["B_srv", "A_cli", "A_srv", "B_cli"]
    assert conns.named_text(three.lines) == ["B_srv", "A_cli", "A_srv"]  # -s rx is -s received; -r 3 leaves B_cli out
    assert len(three.lines) == 5  # to a pipe: bcc's blank line, header and rows, nothing more


def test_sort_and_row_limit_in_the_live_view() -> None:
    """The live view shows the first ROWS in --sort order; its totals line counts
    every connection and says how many are shown."""
    with TwoConnections() as conns:
        run, _ = on_terminal(["top", "-s", "sent", "-r", "2", "2", "1", "-P", conns.ports], then=conns.run)
    frame = last_frame(run)
    assert conns.named_text(frame) == ["B_cli", "A_srv"], frame
    rx = sum(e[2] for e in conns.expected.values()) // 1024
    tx = sum(e[3] for e in conns.expected.values()) // 1024
    assert frame[-1] == f"total: 4 connections (2 shown: -r 2), RX_KB {rx}, TX_KB {tx}"

    # scrolling text on a terminal says how many -r left out; to a pipe it prints bcc's rows only
    with TwoConnections() as conns:
        run, _ = on_terminal(["top", "-C", "-S", "-s", "sent", "-r", "2", "2", "1", "-P", conns.ports], then=conns.run)
    lines = [ANSI.sub("", line) for line in run.splitlines()]
    assert conns.named_text(lines) == ["B_cli", "A_srv"] and "... 2 more (-r 2)" in lines, lines


def test_pid_filter_keeps_one_process() -> None:
    with PayloadServer(size=1000, request_bytes=300000) as srv, \
         Trace(["top", "--json", "5", "-p", str(os.getpid())]) as t:
        client = subprocess.run([sys.executable, "-c", CLIENT, str(srv.port)], timeout=30)
        assert client.returncode == 0
    mine = [r for r in t.records if r["lport"] == srv.port]
    assert [(r["pid"], r["rx_bytes"], r["tx_bytes"]) for r in mine] == [(os.getpid(), 300000, 1000)]
    assert not any(r["lport"] != srv.port and r["rport"] == srv.port for r in t.records)  # the client is not us


def test_cgroup_filter() -> None:
    """Only the client, moved into a cgroup made for the test, is counted; the server
    (this process, outside it) is not, though it carries the same bytes."""
    mounts = cgroup2_mounts()
    assert mounts, "no cgroup v2 hierarchy is mounted (this host has one at /sys/fs/cgroup/unified)"
    group = os.path.join(mounts[0], f"netsnoop-test-{os.getpid()}")
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
    assert [(r["pid"], r["rport"], r["tx_bytes"], r["rx_bytes"]) for r in t.records] == [
        (client.pid, srv.port, 300000, 1)
    ]  # it reads 1 byte


def test_count_stops_after_that_many_intervals() -> None:
    done = run(["top", "--json", "0.1", "3", "-P", "9"], timeout=20)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["type"], summary["intervals"], summary["lost_events"]) == ("summary", 3, 0)


@pytest.mark.parametrize("args", [["0"], ["1", "0"], ["-P", "70000"], ["--cgroup", "/nonexistent"], ["x"],
                                  ["-s", "size"], ["-r", "0"], ["-r", "x"]])
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    done = run(["top", *args])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("args", [["-c", "/sys/fs/cgroup/unified"], ["--cgroupmap", "/sys/fs/bpf/map"]])
def test_bcc_cgroup_spellings_name_the_right_one(args: list[str]) -> None:
    done = run(["top", *args])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"top has no {args[0]}: to trace one cgroup use --cgroup PATH" in done.stderr


@pytest.mark.parametrize("kind", ["tp_btf", "kprobe"])
def test_every_variant_passes_the_verifier_with_its_companions(kind: str) -> None:
    """The per-CPU cache (its drain, switch and destroy hooks) comes with tp_btf only."""
    names = (DRAIN, "send__tp_btf__switch", "send__tp_btf__closing")
    with BPFObject("top", variants={"send": kind, "recv": kind}) as obj:
        obj.load()
        for group in ("send", "recv"):
            assert_verified(obj, group, kind)
        assert {name: obj.loaded_program(name) is not None for name in names} == dict.fromkeys(names, kind == "tp_btf")


def test_send_and_recv_give_up_tp_btf_together() -> None:
    """The per-CPU cache needs both hooks typed and its companions loaded: a
    refused send__tp_btf (forced here) takes recv's tp_btf variant along."""
    with BPFObject("top", linked=TRACER.linked) as obj:
        obj.chooser.reject("send__tp_btf", "refused")  # as if this kernel had refused it
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


def wait_for_rows(trace: Trace, match: Callable[[dict], bool], count: int, timeout: float = 10) -> None:
    """Until ``trace`` has printed ``count`` rows that ``match`` (an interval is printed
    when it ends: its rows are the signal that it did)."""
    deadline = time.monotonic() + timeout
    while sum(1 for line in list(trace._out) if line.startswith("{") and match(json.loads(line))) < count:
        assert time.monotonic() < deadline, f"{count} rows never came: {trace._out[-5:]}"
        time.sleep(0.02)


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
            lport = client.getsockname()[1]
            for n, burst in enumerate((100_000, 50_000, 7), 1):
                client.sendall(b"b" * burst)
                recv_exactly(server, burst)
                wait_for_rows(
                    t, lambda r: r.get("lport") == lport, n
                )  # its interval is over: the next burst is in another
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


@pytest.mark.parametrize("kind", ["tp_btf", "tracepoint"])
def test_a_socket_shared_by_two_processes_is_split_between_them(kind: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with Trace(["top", "--json", "5", "-P", str(port)], env={"NETSNOOP_HOOKS": kind}) as t:
            proc = subprocess.Popen([sys.executable, "-c", SHARED, str(port)], stdout=subprocess.PIPE, text=True)
            server, _ = listener.accept()
            recv_exactly(server, 105_000)
            child = int(proc.communicate(timeout=30)[0])
            server.close()
    assert proc.returncode == 0 and t.summary["hooks"] == {"send": kind, "recv": kind}
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
    sent: dict[int, int] = {}
    for r in t.records:
        if r["rport"] == port:
            assert r["pid"] == proc.pid
            sent[r["lport"]] = sent.get(r["lport"], 0) + r["tx_bytes"]
    assert sent == sizes


def frame_of(rows4: list[tuple], rows6: list[tuple], width: int, height: int) -> list[str]:
    """What the live view draws for these rows on a terminal of that size."""
    from rich.console import Console

    from netsnoop.commands.top import LIVE_DROP, columns
    from netsnoop.live import LiveView

    buf = io.StringIO()
    console = Console(file=buf, width=width, height=height, force_terminal=True, color_system=None)
    view = LiveView(drop=LIVE_DROP, console=console)
    view.show(["head"], [(columns(False), rows4), (columns(True), rows6)], ["total"], empty="none")
    view.close()
    return [line for line in ANSI.sub("", buf.getvalue().rsplit("\x1b[2K", 1)[-1]).split("\n") if line.strip()]


def row(n: int, v6: bool = False) -> tuple:
    host = "::1" if v6 else "10.231.7.2"
    return (1000 + n, f"name{n}", f"{host}:{20000 + n}", f"{host}:80", 135 + n, n, 4, "", 0, "", 0, 0, 0, 0.0)


@pytest.mark.parametrize("width", [80, 60, 40])
def test_live_view_keeps_numbers_whole_and_counts_what_does_not_fit(width: int) -> None:
    frame = frame_of([row(n) for n in range(10)], [row(n, v6=True) for n in range(5)], width, 12)
    assert len(frame) <= 11 and all(len(line) <= width for line in frame), frame
    assert frame[0] == "head" and frame[-1] == "total"
    shown = [line for line in frame if re.match(r"\s*\d+ ", line) or line.startswith(("10.", "::1"))]
    assert frame[-2] == f"... {15 - len(shown)} more" and shown
    for line in shown:
        cells = line.split()
        assert re.fullmatch(r"(10\.231\.7\.2|::1):80", cells[-3]) and cells[-2].isdigit() and cells[-1].isdigit()
        assert "…" not in cells[-3:]


def test_live_view_with_nothing_matched_shows_the_header() -> None:
    frame = frame_of([], [], 80, 24)
    assert frame[1].split() == ["PID", "COMM", "LADDR", "RADDR", "RX_KB", "TX_KB"] and frame[2] == "none"
