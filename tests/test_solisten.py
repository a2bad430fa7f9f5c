"""netsnoop solisten against sockets this test puts into LISTEN."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from helpers import NETSNOOP, ROOT, NetnsPair, Trace
from test_where import Cgroups

from netsnoop.cli import cli

integration = pytest.mark.integration


def netns_inode(path: str = "/proc/self/ns/net") -> int:
    return os.stat(path).st_ino


def mine(records: list[dict], port: int) -> list[dict]:
    return [r for r in records if r["pid"] == os.getpid() and r["port"] == port]


@integration
@pytest.mark.parametrize(
    "family,host,proto", [(socket.AF_INET, "127.0.0.1", "TCPv4"), (socket.AF_INET6, "::1", "TCPv6")]
)
def test_listen_row_with_backlog_port_and_address(family: int, host: str, proto: str) -> None:
    with socket.socket(family) as s, Trace(["solisten", "--json", "-p", str(os.getpid())]) as t:
        s.bind((host, 0))
        port = s.getsockname()[1]
        s.listen(37)
    rows = mine(t.records, port)
    assert len(rows) == 1, t.records
    row = rows[0]
    assert (row["proto"], row["backlog"], row["addr"]) == (proto, 37, host)
    with open("/proc/self/comm") as f:
        assert row["comm"] == f.read().strip()
    assert (row["netns"], row["netns_inode"]) == ("host", netns_inode())
    assert t.summary["lost_events"] == 0


@integration
def test_unbound_listen_reports_its_port_and_relisten_its_new_backlog() -> None:
    with socket.socket() as s, socket.socket(socket.AF_UNIX) as unix, \
            Trace(["solisten", "--json", "-p", str(os.getpid())]) as t:
        s.listen(5)  # the kernel picks the port during listen()
        s.listen(9)  # only changes the backlog
        unix.bind(f"\0netsnoop-solisten-{os.getpid()}")
        unix.listen(3)  # not TCP: not shown
        port = s.getsockname()[1]
    assert [(r["port"], r["backlog"], r["addr"]) for r in t.records] == [(port, 5, "0.0.0.0"), (port, 9, "0.0.0.0")]


LISTENER = (
    "import socket; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(11); print(s.getsockname()[1], flush=True)"
)


@integration
def test_netns_filter_and_column() -> None:
    with NetnsPair() as pair:
        inode = netns_inode(f"/run/netns/{pair.a}")
        with socket.socket() as host_sock, Trace(["solisten", "--show-netns", "-n", str(inode)]) as t:
            host_sock.listen(4)  # the host namespace: filtered out
            child = pair.popen(pair.a, [sys.executable, "-c", LISTENER])
            port, _ = child.communicate(timeout=20)
    header, *rows = t.lines
    assert header.split() == ["PID", "COMM", "PROTO", "BACKLOG", "PORT", "ADDR", "NETNS", "CONTAINER"]
    assert len(rows) == 1, t.stdout
    pid, _comm, *rest, netns, _container = rows[0].split()
    assert (int(pid), netns) == (child.pid, pair.a)
    assert rest == ["TCPv4", "11", port.strip(), "0.0.0.0"]


# waits for "go" (meanwhile it is moved into its cgroup), listens, prints its port,
# and keeps the socket until stdin closes
LISTEN_ON_GO = (
    "import socket, sys; sys.stdin.readline(); s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(6); "
    "print(s.getsockname()[1], flush=True); sys.stdin.read()"
)


@integration
def test_container_column_and_cgroup_filter() -> None:
    """A listener in a docker-style cgroup of the test's and this process (outside it):
    -w names the first's container and both namespaces; --cgroup keeps only the first,
    while the unfiltered trace of the same run has both."""
    me = os.getpid()
    with Cgroups() as cg:
        child = subprocess.Popen([sys.executable, "-c", LISTEN_ON_GO], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdin and child.stdout
            Cgroups.move(cg.docker, child.pid)
            with socket.socket() as s, Trace(["solisten", "-w", "-p", f"{me},{child.pid}"]) as text, \
                    Trace(["solisten", "--json", "--cgroup", cg.docker]) as by_cgroup, \
                    Trace(["solisten", "--json", "-p", f"{me},{child.pid}"]) as everything:
                s.listen(3)
                my_port = s.getsockname()[1]
                child.stdin.write("go\n")
                child.stdin.flush()
                port = int(child.stdout.readline())
        finally:
            child.kill()
            child.wait()
    by_pid = {r["pid"]: r for r in everything.records}
    assert set(by_pid) == {me, child.pid}, everything.stdout  # the control
    assert (by_pid[child.pid]["port"], by_pid[child.pid]["container"]) == (port, cg.docker_label)
    assert by_pid[me]["port"] == my_port and by_pid[me]["container"] != cg.docker_label
    assert {(r["netns"], r["netns_inode"]) for r in everything.records} == {("host", netns_inode())}
    assert [(r["pid"], r["port"]) for r in by_cgroup.records] == [(child.pid, port)], by_cgroup.stdout

    header, *rows = text.lines
    assert header.split()[-2:] == ["NETNS", "CONTAINER"]
    cells = {int(r.split()[0]): r.split() for r in rows}
    assert cells[child.pid][-2:] == ["host", cg.docker_label] and cells[me][-2] == "host", text.stdout


@integration
def test_timestamps_are_seconds_since_the_first_listen_and_the_clock_time() -> None:
    """-t: TIME(s) is 0 for the first row and then the time between the listen()
    calls, as the test's own clock measured it around them; -T: the wall clock,
    HH:MM:SS, between the times the test read before and after."""
    gap = 0.3
    with socket.socket() as first, socket.socket() as second, \
            Trace(["solisten", "-t", "-T", "-p", str(os.getpid())]) as t:
        wall_before = time.time()
        start = time.monotonic()
        first.listen(3)
        after_first = time.monotonic()
        time.sleep(gap)  # the interval being measured, not a wait for anything
        before_second = time.monotonic()
        second.listen(4)
        end = time.monotonic()
        wall_after = time.time()
        ports = [first.getsockname()[1], second.getsockname()[1]]
    header, *rows = t.lines
    assert header.split() == ["TIME", "TIME(s)", "PID", "COMM", "PROTO", "BACKLOG", "PORT", "ADDR"]
    cells = [r.split() for r in rows]
    assert [(c[5], c[6]) for c in cells] == [("3", str(ports[0])), ("4", str(ports[1]))], t.stdout
    (hms1, since1), (hms2, since2) = ((c[0], float(c[1])) for c in cells)
    assert since1 == 0.0
    assert before_second - after_first <= since2 <= end - start
    assert re.fullmatch(r"\d\d:\d\d:\d\d", hms1) and re.fullmatch(r"\d\d:\d\d:\d\d", hms2)
    clock = {time.strftime("%H:%M:%S", time.localtime(s)) for s in range(int(wall_before), int(wall_after) + 1)}
    assert {hms1, hms2} <= clock

    # without the flags, no time columns (the flags are what adds them)
    with socket.socket() as s, Trace(["solisten", "-p", str(os.getpid())]) as plain:
        s.listen(2)
    assert plain.lines[0].split() == ["PID", "COMM", "PROTO", "BACKLOG", "PORT", "ADDR"]


def zsh_complete(words: str) -> dict[str, str]:
    """What the real CLI's completion offers for the last of ``words``, as zsh asks
    click for it: value -> help."""
    env = {**os.environ, "_NETSNOOP_COMPLETE": "zsh_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1)}
    done = subprocess.run(NETSNOOP, capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()  # type, value, help: three lines an item
    return {lines[i + 1]: lines[i + 2] for i in range(0, len(lines) - 2, 3)}


@integration
def test_netns_completes_the_inodes_of_existing_namespaces() -> None:
    with NetnsPair() as pair:
        inodes = {name: str(netns_inode(f"/run/netns/{name}")) for name in (pair.a, pair.b)}
        offered = zsh_complete("netsnoop solisten -n ")
        prefix = inodes[pair.a][:-1]
        narrowed = zsh_complete(f"netsnoop solisten --netns {prefix}")
    assert offered[pair.a] == pair.a and offered[pair.b] == pair.b  # named: by the name
    assert offered["host"] == "host"  # this process's namespace
    # a number being typed: the inodes, with how rows name each as the help
    assert narrowed[inodes[pair.a]] == pair.a and all(i.startswith(prefix) and i.isdigit() for i in narrowed)


def test_bad_values_are_usage_errors() -> None:
    for args in (["-n", "abc"], ["-n", "0"], ["-p", "x"]):
        result = CliRunner().invoke(cli, ["solisten", *args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
