"""netsnoop connect: real connects on loopback and between private namespaces."""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from conn_helpers import assert_in_kernel
from helpers import NETSNOOP, ROOT, NetnsPair, PayloadServer, Trace, closed_port, fetch, refused_connect

from netsnoop.cli import cli
from netsnoop.conn import filters as conn_filters
from netsnoop.conn import outcome, row_of
from netsnoop.output import Column

integration = pytest.mark.integration
MY_COMM = open("/proc/self/comm").read().strip()

# A child that connects to argv[1]:argv[2] once told to on stdin (so a test can learn its
# pid, and start a filtered trace, before the connect).
CHILD = """
import encodings.idna, os, socket, sys  # idna: loaded before any setuid
print(flush=True)
sys.stdin.readline()
if len(sys.argv) > 3:  # connect as this uid
    os.setgid(int(sys.argv[3]))
    os.setuid(int(sys.argv[3]))
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    print(s.getsockname()[1], flush=True)
"""


def child(host: str, port: int, *uid: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, host, str(port), *uid], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "\n"
    return proc


def go(proc: subprocess.Popen[str]) -> int:
    """Let the child connect; its local port."""
    out, _ = proc.communicate("go\n", timeout=10)
    return int(out)


def mine(records: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return [r for r in records if r["dport"] == port]


# ---- unit ------------------------------------------------------------------------------

def test_outcome_names() -> None:
    assert outcome(1, 0) == "ESTABLISHED"
    assert outcome(7, 111) == "REFUSED"
    assert outcome(7, 110) == "TIMEOUT"
    assert outcome(7, 113) == "UNREACHABLE"
    assert outcome(7, 0) == "ABORTED"
    assert outcome(7, 71) == "EPROTO"


def test_rows_follow_the_columns() -> None:
    fields = "ts_ns lat_ns pid uid netns err family sport dport kind state saddr daddr comm"
    values = (1, 2_500_000, 42, 1000, 4026531840, 111, socket.AF_INET6, 40000, 80, 1, 7,
              socket.inet_pton(socket.AF_INET6, "::1"), socket.inet_pton(socket.AF_INET6, "fd00::2"), b"curl\0\0")
    event = SimpleNamespace(**dict(zip(fields.split(), values)))
    cols = [
        Column(h)
        for h in ("T", "TYPE", "UID", "PID", "COMM", "IP", "SADDR", "LPORT", "DADDR", "DPORT", "RESULT", "LAT(ms)")
    ]
    assert row_of(cols)(event) == ("C", "connect", 1000, 42, "curl", 6, "::1", 40000, "fd00::2", 80, "REFUSED", 2.5)


@pytest.mark.parametrize(
    "args",
    [
        ["-c", "--dns"],
        ["-u", "-1"],
        ["-P", "0"],
        ["-p", "x"],
        ["--cgroup", "/nonexistent"],
        ["-d", "inf"],
        ["-d", "nan"],
        ["-d", "0"],
        ["-d", "x"],
    ],
)
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["connect", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["-d"], ["-d", "-P", "80"], ["-P", "80", "-d"]])
def test_bcc_dns_flag_names_the_right_spelling(args: list[str]) -> None:
    """bcc's `tcpconnect -d` (DNS): one line naming what -d is here, exit 2."""
    result = CliRunner().invoke(cli, ["connect", *args])
    assert result.exit_code == 2, result.output
    assert "-d is a duration in netsnoop" in result.output and "DNS" in result.output
    assert "requires an argument" not in result.output and "Traceback" not in result.output


# ---- integration -------------------------------------------------------------------------

@integration
def test_open_port_row_names_the_connecting_process() -> None:
    with PayloadServer() as srv, Trace(["connect", "--json", "-P", str(srv.port)]) as t:
        fetch("127.0.0.1", srv.port)
    rows = mine(t.records, srv.port)
    assert len(rows) == 1, t.stdout
    r = rows[0]
    assert (r["pid"], r["comm"], r["uid"]) == (os.getpid(), MY_COMM, os.getuid())
    assert (r["ip"], r["saddr"], r["daddr"], r["dport"]) == (4, "127.0.0.1", "127.0.0.1", srv.port)
    assert all(isinstance(r[k], int) for k in ("pid", "uid", "ip", "dport"))
    assert isinstance(r["timestamp"], float) and "lport" not in r
    assert t.summary["lost_events"] == 0


@integration
def test_closed_port_is_traced_and_its_outcome_is_refused() -> None:
    port = closed_port()
    with Trace(["connect", "--json", "-P", str(port)]) as plain, \
            Trace(["connect", "--json", "--outcome", "-P", str(port)]) as out:
        refused_connect("127.0.0.1", port)
    assert [r["pid"] for r in mine(plain.records, port)] == [os.getpid()]
    [r] = mine(out.records, port)
    assert (r["pid"], r["result"]) == (os.getpid(), "REFUSED")
    assert isinstance(r["lat_ms"], float) and r["lat_ms"] >= 0
    assert isinstance(r["lport"], int) and r["lport"] > 0


@integration
def test_ipv6_row() -> None:
    with PayloadServer("::1") as srv, Trace(["connect", "--json", "-P", str(srv.port)]) as t:
        fetch("::1", srv.port)
    [r] = mine(t.records, srv.port)
    assert (r["ip"], r["saddr"], r["daddr"], r["pid"]) == (6, "::1", "::1", os.getpid())


@integration
def test_family_filter() -> None:
    with PayloadServer() as v4, PayloadServer("::1") as v6, \
            Trace(["connect", "--json", "-6", "-P", f"{v4.port},{v6.port}"]) as t:
        fetch("127.0.0.1", v4.port)
        fetch("::1", v6.port)
    assert [r["dport"] for r in t.records] == [v6.port]


@integration
def test_port_filter_keeps_only_those_destination_ports() -> None:
    with PayloadServer() as a, PayloadServer() as b, Trace(["connect", "--json", "-P", str(a.port)]) as t:
        fetch("127.0.0.1", b.port)
        fetch("127.0.0.1", a.port)
        fetch("127.0.0.1", b.port)
    assert [r["dport"] for r in t.records] == [a.port]


@integration
def test_pid_filter_keeps_only_that_process() -> None:
    with PayloadServer() as srv:
        proc = child("127.0.0.1", srv.port)
        with Trace(["connect", "--json", "-p", str(proc.pid)]) as t:
            fetch("127.0.0.1", srv.port)  # this process: filtered out
            go(proc)
    rows = t.records
    assert [(r["pid"], r["dport"]) for r in rows] == [(proc.pid, srv.port)]


@integration
@pytest.mark.parametrize("outcome", [[], ["--outcome"]], ids=["attempts", "outcomes"])
def test_count_modes_filter_by_process(outcome: list[str]) -> None:
    """The count modes read the connecting process only when a filter asks for it
    (export's per-namespace counts read none): -p still counts only that process's
    connects. This process's connects to the same port are the negative control."""
    with PayloadServer() as srv:
        proc = child("127.0.0.1", srv.port)
        with Trace(["connect", "-c", *outcome, "--json", "-P", str(srv.port), "-p", str(proc.pid)]) as t:
            fetch("127.0.0.1", srv.port)  # this process: filtered out
            go(proc)
            fetch("127.0.0.1", srv.port)
    assert sum(r["connects"] for r in t.records) == 1, t.records
    assert t.summary["lost_events"] == 0


@integration
def test_uid_filter_and_column() -> None:
    nobody = 65534
    with PayloadServer() as srv:
        proc = child("127.0.0.1", srv.port, str(nobody))
        with Trace(["connect", "-U", "-u", str(nobody), "-P", str(srv.port)]) as t:
            fetch("127.0.0.1", srv.port)  # root: filtered out
            go(proc)
    assert t.lines[0].split() == ["UID", "PID", "COMM", "IP", "SADDR", "DADDR", "DPORT"]
    assert [line.split()[:2] for line in t.lines[1:]] == [[str(nobody), str(proc.pid)]]


def cgroup_path_of(pid: int) -> str:
    """A process's cgroup v2 path, from /proc/PID/cgroup."""
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line[3:].rstrip("\n") for line in f if line.startswith("0::"))


def cgroup2_root() -> str:
    with open("/proc/mounts") as f:
        for line in f:
            dev, where, kind, *_ = line.split()
            if kind == "cgroup2":
                return where
    raise AssertionError("no cgroup v2 hierarchy mounted")


@integration
def test_cgroup_filter() -> None:
    path = os.path.join(cgroup2_root(), f"netsnoop-test-{os.getpid()}")
    os.mkdir(path)
    try:
        with PayloadServer() as srv:
            proc = child("127.0.0.1", srv.port)
            try:
                with open(os.path.join(path, "cgroup.procs"), "w") as f:
                    f.write(str(proc.pid))
                with Trace(["connect", "--json", "--cgroup", path, "-P", str(srv.port)]) as t:
                    fetch("127.0.0.1", srv.port)  # this process is not in that cgroup
                    go(proc)
            finally:
                proc.kill()
                proc.wait()
        assert [r["pid"] for r in t.records] == [proc.pid]
    finally:
        os.rmdir(path)


@integration
def test_lport_matches_the_client_port_blocking_and_non_blocking() -> None:
    with PayloadServer() as srv, Trace(["connect", "--json", "-L", "-P", str(srv.port)]) as t:
        blocking, _ = fetch("127.0.0.1", srv.port)
        s = socket.socket()
        s.setblocking(False)
        assert s.connect_ex(("127.0.0.1", srv.port)) in (0, 115)  # EINPROGRESS
        nonblocking = s.getsockname()[1]
        time.sleep(0.2)
        s.close()
    assert sorted(r["lport"] for r in t.records) == sorted([blocking, nonblocking])


@integration
def test_text_layout_keeps_bcc_columns() -> None:
    with PayloadServer() as srv, Trace(["connect", "-t", "-L", "-P", str(srv.port)]) as t:
        lport, _ = fetch("127.0.0.1", srv.port)
    head, row = t.lines[0], t.lines[1]
    assert head.split() == ["TIME(s)", "PID", "COMM", "IP", "SADDR", "LPORT", "DADDR", "DPORT"]
    assert head.index("PID") == 10 and head.index("COMM") == 17 and head.index("IP") == 30
    assert row.split()[1:] == [str(os.getpid()), MY_COMM[:12], "4", "127.0.0.1", str(lport), "127.0.0.1", str(srv.port)]


@integration
def test_count_equals_the_connects_made() -> None:
    n = 25
    with PayloadServer() as srv, Trace(["connect", "-c", "--json", "-P", str(srv.port)]) as t:
        for _ in range(n):
            fetch("127.0.0.1", srv.port)
    host = os.stat("/proc/self/ns/net").st_ino
    assert t.records == [{"laddr": "127.0.0.1", "raddr": "127.0.0.1", "rport": srv.port, "connects": n,
                          "netns": "host", "netns_inode": host}]
    assert t.summary["connects"] == n and t.summary["lost_events"] == 0


@integration
def test_count_text_table() -> None:
    port = closed_port()
    with Trace(["connect", "-c", "-P", str(port)]) as t:
        for _ in range(3):
            refused_connect("127.0.0.1", port)
    assert t.lines[0].split() == ["LADDR", "RADDR", "RPORT", "CONNECTS", "NETNS"]
    assert t.lines[1].split() == ["127.0.0.1", "127.0.0.1", str(port), "3", "host"]
    assert "1 flows, 3 connects, 0 lost events" in t.stderr


@integration
def test_count_outcome_per_namespace_equals_the_connects_made_and_nstat() -> None:
    """-c --outcome in one namespace (-N): refused connects to a closed port and
    established ones to a server, counted per outcome and namespace as the test made
    them and as nstat counts them there (TcpActiveOpens, TcpAttemptFails); an attempt
    whose SYN a firewall drops is PENDING at exit. The other namespace's connects, to
    the same kind of ports, are not counted (the filter's negative control)."""
    from traffic_helpers import in_netns, nft_input_chain
    from traffic_helpers import nstat as nstat_of

    refused, established = 4, 3
    with NetnsPair() as net, nft_input_chain(net, net.b) as rule:
        with in_netns(net.b):
            server = PayloadServer(net.addr_b)
            closed = socket.socket()
            closed.bind((net.addr_b, 0))
            silent = socket.socket()  # its SYNs are dropped: never answered
            silent.bind((net.addr_b, 0))
        with in_netns(net.a):
            closed_a = socket.socket()
            closed_a.bind((net.addr_a, 0))
        closed_port_b, silent_port = closed.getsockname()[1], silent.getsockname()[1]
        rule(f"tcp dport {silent_port} drop")
        counters = ("TcpActiveOpens", "TcpAttemptFails")
        before = nstat_of(net, net.a, *counters)
        with server, Trace(["connect", "-c", "--outcome", "--json", "-N", net.a]) as t:
            for _ in range(refused):
                with in_netns(net.a):
                    c = socket.socket()
                with c, pytest.raises(ConnectionRefusedError):
                    c.connect((net.addr_b, closed_port_b))
            for _ in range(established):
                with in_netns(net.a):
                    c = socket.socket()
                with c:
                    c.connect((net.addr_b, server.port))
            with in_netns(net.a):
                waiting = socket.socket()
            waiting.setblocking(False)
            assert waiting.connect_ex((net.addr_b, silent_port)) == errno.EINPROGRESS
            for _ in range(2):  # from b: not in the filtered namespace
                with in_netns(net.b):
                    c = socket.socket()
                with c, pytest.raises(ConnectionRefusedError):
                    c.connect((net.addr_a, closed_a.getsockname()[1]))
            after = nstat_of(net, net.a, *counters)
        waiting.close()
        for s in (closed, silent, closed_a):
            s.close()
    got = {(r["netns"], r["raddr"], r["rport"], r["result"]): r["connects"] for r in t.records}
    assert got == {
        (net.a, net.addr_b, closed_port_b, "REFUSED"): refused,
        (net.a, net.addr_b, server.port, "ESTABLISHED"): established,
        (net.a, net.addr_b, silent_port, "PENDING"): 1,
    }, t.records
    assert {r["laddr"] for r in t.records} == {net.addr_a}
    assert after["TcpActiveOpens"] - before["TcpActiveOpens"] == t.summary["connects"] == refused + established + 1
    assert after["TcpAttemptFails"] - before["TcpAttemptFails"] == refused
    assert t.summary["lost_events"] == 0


@integration
def test_count_mode_sends_no_ring_records() -> None:
    """Counting 1000 connects puts nothing in the events ring and loses nothing; the
    same object emitting rows (the positive control) hands over one record per
    connect."""
    from netsnoop.commands.connect import OUTCOME, TRACER

    n = 1000
    port = closed_port()
    for count_only in (1, 0):
        with TRACER.open({**conn_filters(rports=[port]), "report_mode": OUTCOME, "count_only": count_only},
                         quiet=True) as obj:
            for _ in range(n):
                refused_connect("127.0.0.1", port)
            ring, decoder = obj.ring_buffer(), obj.decoder("event")
            records = []
            while batch := ring.read_events(decoder):
                records.extend(batch)
            counted = sum(struct.unpack_from("=Q", v)[0] for _k, v in obj.map("counts").items())
            lost = obj.health()["lost_events"]
        if count_only:
            assert (len(records), counted, lost) == (0, n, 0)
        else:
            assert (len(records), counted, lost) == (n, 0, 0)
            assert {outcome(e.state, e.err) for e in records} == {"REFUSED"}


@integration
def test_a_full_count_map_counts_what_it_could_not_take_as_lost() -> None:
    """Refused connects to five ports, one key each: a count map sized for two keys
    keeps two and counts three lost; a latency map sized for one histogram keeps one
    and counts four lost, while the counts (room enough) keep all five."""
    from netsnoop.commands.connect import ATTEMPT, COUNT_LATENCY, COUNT_PORT, OUTCOME, TRACER

    ports: list[int] = []
    while len(ports) < 5:  # five different keys
        ports += [p for p in [closed_port()] if p not in ports]
    cases = [({"report_mode": ATTEMPT, "count_flags": COUNT_PORT}, {"counts": 2}, (2, 3)),
             ({"report_mode": OUTCOME, "count_flags": COUNT_PORT | COUNT_LATENCY}, {"latency": 1}, (5, 4))]
    for rodata, sizes, (kept, lost) in cases:
        with TRACER.open({**conn_filters(rports=ports), "count_only": 1, **rodata}, max_entries=sizes,
                         quiet=True) as obj:
            for port in ports:
                refused_connect("127.0.0.1", port)
            counted = sum(struct.unpack_from("=Q", v)[0] for _k, v in obj.map("counts").items())
            assert (counted, obj.health()["lost_events"]) == (kept, lost), rodata


# A connect from namespace a to b, where b's firewall makes the SYN go unanswered (TIMEOUT)
# or answers it with ICMP host-unreachable (UNREACHABLE). TCP_USER_TIMEOUT ends the
# unanswered attempt at its first retransmission (about 1 s) instead of minutes later.
NS_CLIENT = """
import socket, sys
for port in map(int, sys.argv[2:]):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 200)
    try:
        s.connect((sys.argv[1], port))
    except OSError as e:
        print(port, e.errno, flush=True)
"""


def timeout_and_unreachable(ns: NetnsPair, silent: int, unreachable: int) -> tuple[Trace, Any]:
    with Trace(["connect", "--json", "--outcome", "-P", f"{silent},{unreachable}"]) as t:
        proc = ns.popen(ns.a, [sys.executable, "-c", NS_CLIENT, ns.addr_b, str(silent), str(unreachable)])
        out, err = proc.communicate(timeout=20)
    assert out.split() == [str(silent), "110", str(unreachable), "113"], err
    return t, proc


@integration
def test_outcome_timeout_and_unreachable_in_namespaces() -> None:
    silent, unreachable = 5001, 5002
    with NetnsPair() as ns:
        ns.exec(ns.b, "nft add table inet t")
        ns.exec(ns.b, "nft add chain inet t in '{ type filter hook input priority 0; }'")
        ns.exec(ns.b, f"nft add rule inet t in tcp dport {silent} tcp flags syn drop")
        ns.exec(ns.b, f"nft add rule inet t in tcp dport {unreachable} reject with icmp type host-unreachable")
        ns.exec(ns.a, "sysctl -q -w net.ipv4.tcp_syn_retries=1")
        for _ in range(3):
            t, proc = timeout_and_unreachable(ns, silent, unreachable)
            mine = [r for r in t.records if r.get("daddr") == ns.addr_b]
            # a state change the kernel skipped our hook for (it was already running on that
            # CPU: counted, and reported in the summary) leaves its attempt PENDING: that run
            # proves nothing either way, so it is run again
            if t.summary["skipped_hook_runs"] == 0 or all(r["result"] != "PENDING" for r in mine):
                break
        assert sorted((r["dport"], r["result"]) for r in mine) == [(silent, "TIMEOUT"), (unreachable, "UNREACHABLE")], \
            (mine, t.summary)
    for r in mine:
        assert (r["pid"], r["saddr"], r["daddr"]) == (proc.pid, ns.addr_a, ns.addr_b)
        assert r["lat_ms"] > 0


HANGING_CLIENT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)"


@integration
def test_outcome_shows_an_unanswered_attempt_as_pending_at_exit() -> None:
    port = 5003
    with NetnsPair() as ns:
        inode_a = os.stat(f"/run/netns/{ns.a}").st_ino
        ns.exec(ns.b, "nft add table inet t")
        ns.exec(ns.b, "nft add chain inet t in '{ type filter hook input priority 0; }'")
        ns.exec(ns.b, f"nft add rule inet t in tcp dport {port} tcp flags syn counter drop")
        with Trace(["connect", "--json", "-w", "--outcome", "-P", str(port)]) as t:
            t0 = time.monotonic()
            proc = ns.popen(ns.a, [sys.executable, "-c", HANGING_CLIENT, ns.addr_b, str(port)])
            try:
                deadline = time.monotonic() + 10
                while "packets 0 " in ns.exec(ns.b, "nft list ruleset").stdout:  # the SYN is out, dropped
                    assert time.monotonic() < deadline, "the SYN never reached the rule"
                    time.sleep(0.02)
                cgroup = cgroup_path_of(proc.pid)
                t.stop(settle=0)
                waited = time.monotonic() - t0
            finally:
                proc.kill()
                proc.wait()
    rows = [r for r in t.records if r["daddr"] == ns.addr_b]
    assert len(rows) == 1, t.records
    assert rows[0]["result"] == "PENDING" and rows[0]["dport"] == port and rows[0]["pid"] == proc.pid
    assert rows[0]["saddr"] == ns.addr_a and 0 < rows[0]["lat_ms"] <= waited * 1000
    # who and where, kept with the attempt in the kernel
    assert (rows[0]["netns"], rows[0]["netns_inode"]) == (ns.a, inode_a)
    assert rows[0]["cgroup"] == cgroup


def test_pending_is_the_outcome_of_an_attempt_still_in_syn_sent() -> None:
    assert outcome(2, 0) == "PENDING"


@integration
def test_kprobe_variant_passes_the_verifier() -> None:
    from netsnoop.loader import BPFObject

    with BPFObject("connect", variants={"set_state": "kprobe"}) as obj:
        obj.load()
        assert_in_kernel(obj, "set_state__kprobe", "kprobe")


LOAD_SERVER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4096)
print(s.getsockname()[1], flush=True)
for _ in range(int(sys.argv[1])):
    s.accept()[0].close()
"""


@integration
def test_load_20000_connects_are_counted_exactly() -> None:
    """Counted in the kernel (-c) and streamed (--json) at once: each reports every
    connect, or exactly as many fewer as it says it lost."""
    n = 20000
    server = subprocess.Popen([sys.executable, "-c", LOAD_SERVER, str(n)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    linger0 = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT left behind
    try:
        with Trace(["connect", "-c", "--json", "-P", str(port)]) as counted, \
                Trace(["connect", "--json", "-P", str(port)]) as streamed:
            deadline = time.monotonic() + 45
            for _ in range(n):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
                    s.connect(("127.0.0.1", port))
                assert time.monotonic() < deadline, "load generation took too long"
            server.wait(timeout=20)
            time.sleep(0.5)
    finally:
        server.kill()
    lost = counted.summary["lost_events"]
    total = sum(r["connects"] for r in counted.records)
    assert total == n - lost and lost == 0
    assert [(r["laddr"], r["raddr"], r["rport"], r["connects"], r["netns"]) for r in counted.records] == [
        ("127.0.0.1", "127.0.0.1", port, n, "host")]
    rows = [r for r in streamed.records if r["pid"] == os.getpid()]
    assert len(rows) == n - streamed.summary["lost_events"]
    assert streamed.summary["events"] == len(streamed.records) == len(rows)


@integration
def test_duration_ends_the_trace_after_that_time() -> None:
    """-d SECONDS still works: the trace sees a connect made during it (positive
    control: not an instant exit) and ends by itself, not before the time is up."""
    port = closed_port()
    t0 = time.monotonic()
    proc = subprocess.Popen([*NETSNOOP, "connect", "-d", "1.5", "--json", "-P", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stderr.readline().startswith("Tracing")
    refused_connect("127.0.0.1", port)
    out, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert [json.loads(line)["pid"] for line in out.splitlines() if '"dport"' in line] == [os.getpid()]
    assert 1.5 <= elapsed < 10


# Clients of a firewall REJECT (ICMP admin-prohibited): each prints the errno it got.
# "blocking": connect() waits; "so_error": non-blocking connect, poll, getsockopt(SO_ERROR)
# then close (as curl does; SO_ERROR hands over the soft error and clears it).
REJECT_CLIENT = """
import select, socket, sys
host, port, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket()
if how == "blocking":
    try:
        s.connect((host, port))
        err = 0
    except OSError as e:
        err = e.errno
else:
    s.setblocking(False)
    assert s.connect_ex((host, port)) == 115  # EINPROGRESS
    p = select.poll()
    p.register(s, select.POLLOUT)
    assert p.poll(5000)
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
print(s.getsockname()[1], err, flush=True)
s.close()
"""


@integration
def test_outcome_of_a_firewall_reject_is_the_error_the_client_got() -> None:
    """nft `reject with icmpx admin-prohibited` answers the SYN with an ICMP error. One
    that arrives while connect() holds the socket is kept as a soft error (sk_err_soft)
    and may end with the owner's close after SO_ERROR took it: still the client's
    errno, never ABORTED."""
    port = 5004
    with NetnsPair() as ns:
        ns.exec(ns.b, "nft add table inet t")
        ns.exec(ns.b, "nft add chain inet t in '{ type filter hook input priority 0; }'")
        ns.exec(ns.b, f"nft add rule inet t in tcp dport {port} counter reject with icmpx admin-prohibited")
        with Trace(["connect", "--json", "--outcome", "-P", str(port)]) as t:
            got = {}
            for how in ("so_error", "blocking"):
                proc = ns.popen(ns.a, [sys.executable, "-c", REJECT_CLIENT, ns.addr_b, str(port), how])
                out, err = proc.communicate(timeout=20)
                assert proc.returncode == 0, err
                lport, errno_ = map(int, out.split())
                got[lport] = (how, errno_, proc.pid)
        rejected = ns.exec(ns.b, "nft list ruleset").stdout
    assert "packets 0 " not in rejected  # the rule did answer
    assert sorted(e for _h, e, _p in got.values()) == [errno.EHOSTUNREACH] * 2  # what the clients got
    rows = {r["lport"]: r for r in t.records if r["daddr"] == ns.addr_b}
    assert set(rows) == set(got), t.records
    for lport, (how, errno_, pid) in got.items():
        assert rows[lport]["result"] == outcome(7, errno_) == "UNREACHABLE", how
        assert rows[lport]["pid"] == pid
    assert t.summary["hooks"]["so_error"] == "tracepoint"
