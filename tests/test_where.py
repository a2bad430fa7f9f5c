"""Who and where on the connection tools' rows: the network namespace (NETNS) and the
container, pod or unit (CONTAINER) of each row, and the --netns, --cgroup and -p
filters, on processes the test places in container-like cgroups of its own and in
named network namespaces of its own."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
import uuid
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from helpers import NetnsPair, PayloadServer, Trace, fetch

from netsnoop import netns, where
from netsnoop.cli import cli
from netsnoop.options import cgroup2_mounts

integration = pytest.mark.integration

# ---- unit: reading cgroup paths ------------------------------------------------------------

DOCKER_ID = "4f1c2b7e9a0d" + "ab" * 26
POD_UID = "6d1e4a3c-8f2b-4c5d-9e7f-0a1b2c3d4e5f"


@pytest.mark.parametrize("path, label", [
    (f"/system.slice/docker-{DOCKER_ID}.scope", "docker:4f1c2b7e9a0d"),
    (f"/docker/{DOCKER_ID}", "docker:4f1c2b7e9a0d"),
    (f"/system.slice/cri-containerd-{DOCKER_ID}.scope", "containerd:4f1c2b7e9a0d"),
    (f"/machine.slice/libpod-{DOCKER_ID}.scope", "podman:4f1c2b7e9a0d"),
    (f"/system.slice/crio-{DOCKER_ID}.scope", "crio:4f1c2b7e9a0d"),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/"
     f"cri-containerd-{DOCKER_ID}.scope", f"pod:{POD_UID}/burstable/containerd:4f1c2b7e9a0d"),
    (f"/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice", f"pod:{POD_UID}/guaranteed"),
    (f"/kubepods/besteffort/pod{POD_UID}/{DOCKER_ID}", f"pod:{POD_UID}/besteffort/container:4f1c2b7e9a0d"),
    ("/system.slice/ssh.service", "ssh.service"),
    ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
    ("/system.slice/docker.service", "docker.service"),
    ("/netsnoop-test/plain", "/netsnoop-test/plain"),
    ("/", "/"),
])
def test_cgroup_paths_name_containers_pods_and_units(path: str, label: str) -> None:
    assert where.describe(path) == label


def test_hostile_names_are_escaped() -> None:
    assert where.printable(b"evil\x1b[31m\n\xff\\") == "evil\\x1b[31m\\x0a\\xff\\x5c"


@pytest.mark.parametrize("args, message", [
    (["--netns", "no-such-netns-here"], "no network namespace named 'no-such-netns-here'"),
    (["--netns", "4194305"], "no network namespace has inode 4194305"),
    (["--netns", "4194304"], "no process 4194304"),
    (["-p", "x"], "'x' is not a process ID"),
    (["-p", ",".join(str(p) for p in range(1, 18))], "at most 16 process IDs"),
    (["--cgroup", "/nonexistent"], "is not a cgroup v2 directory"),
])
@pytest.mark.parametrize("tool", ["states", "life", "connect", "accept", "tracer", "connlat"])
def test_bad_filters_are_usage_errors(tool: str, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, [tool, *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_more_namespaces_than_the_kernel_table_is_a_usage_error() -> None:
    with NetnsPair() as p, NetnsPair() as q, NetnsPair() as r, NetnsPair() as s, NetnsPair() as t:
        names = [p.a, p.b, q.a, q.b, r.a, r.b, s.a, s.b]
        eight = CliRunner().invoke(cli, ["accept", "--netns", ",".join(names), "-d", "0.01"])
        nine = CliRunner().invoke(cli, ["accept", "--netns", ",".join([*names, t.a]), "-d", "0.01"])
    assert nine.exit_code == 2 and "at most 8 network namespaces can be filtered in the kernel, got 9" in nine.output
    assert eight.exit_code != 2, eight.output  # the limit itself is accepted


def test_netns_values_by_name_pid_inode_and_host() -> None:
    with NetnsPair() as ns:
        inode = os.stat(f"/run/netns/{ns.a}").st_ino
        proc = ns.popen(ns.a, ["sleep", "30"])
        try:
            deadline = time.monotonic() + 5  # until ip netns exec has entered the namespace
            while os.stat(f"/proc/{proc.pid}/ns/net").st_ino != inode and time.monotonic() < deadline:
                time.sleep(0.01)
            value = f"{ns.a},{proc.pid},{inode},host"
            assert where.NETNS.convert(value, None, None) == [inode, netns.HOST_NETNS_INODE]
        finally:
            proc.kill()
            proc.wait()


def test_a_namespace_name_removed_is_not_kept() -> None:
    """Labels are listed again after max_age (the kernel reuses a gone namespace's
    inode): a namespace whose `ip netns` name was removed, still alive through a
    process, goes back to its inode; within max_age the listing is kept."""
    with NetnsPair() as ns:
        inode = os.stat(f"/run/netns/{ns.a}").st_ino
        proc = ns.popen(ns.a, ["sleep", "30"])
        try:
            deadline = time.monotonic() + 5
            while os.stat(f"/proc/{proc.pid}/ns/net").st_ino != inode and time.monotonic() < deadline:
                time.sleep(0.01)
            fresh = netns.NetnsLabels(interval=0, max_age=0)
            kept = netns.NetnsLabels(interval=0, max_age=60)
            assert fresh(inode) == kept(inode) == ns.a
            subprocess.run(["ip", "netns", "del", ns.a], check=True)
            assert fresh(inode) == f"netns:{inode}"
            assert kept(inode) == ns.a
        finally:
            proc.kill()
            proc.wait()


def test_namespace_names_complete() -> None:
    with NetnsPair() as ns:
        got = [c.value for c in where.NETNS.shell_complete(None, None, f"host,{ns.a[:5]}")]
    assert f"host,{ns.a}" in got and f"host,{ns.b}" not in got  # completes the last item, by prefix


# ---- cgroups made for the test ---------------------------------------------------------------

class Cgroups:
    """A docker-style and a Kubernetes-style cgroup under a private directory of the
    cgroup v2 tree, removed (with the directory) on exit."""

    def __init__(self) -> None:
        mounts = cgroup2_mounts()
        assert mounts, "no cgroup v2 hierarchy mounted"
        self.base = os.path.join(mounts[0], f"netsnoop-test-{uuid.uuid4().hex[:8]}")
        self.docker_id, self.cri_id, self.pod_uid = secrets.token_hex(32), secrets.token_hex(32), str(uuid.uuid4())
        self.docker = os.path.join(self.base, f"docker-{self.docker_id}.scope")
        pod = f"kubepods-burstable-pod{self.pod_uid.replace('-', '_')}.slice"
        self.kube = os.path.join(self.base, "kubepods.slice", "kubepods-burstable.slice", pod,
                                 f"cri-containerd-{self.cri_id}.scope")
        # what rows must show, from the paths made here
        self.docker_label = f"docker:{self.docker_id[:12]}"
        self.kube_label = f"pod:{self.pod_uid}/burstable/containerd:{self.cri_id[:12]}"

    def rel(self, path: str) -> str:
        return path[len(cgroup2_mounts()[0]):]

    def __enter__(self) -> "Cgroups":
        os.makedirs(self.docker)
        os.makedirs(self.kube)
        return self

    @staticmethod
    def move(path: str, pid: int) -> None:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def __exit__(self, *exc: object) -> None:
        for _ in range(50):
            for root, dirs, _files in os.walk(self.base, topdown=False):
                for d in dirs:
                    try:
                        os.rmdir(os.path.join(root, d))
                    except OSError:
                        pass
            try:
                os.rmdir(self.base)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)  # a process just reaped leaves its cgroup a moment later


@integration
def test_cgroup_ids_resolve_to_containers_and_pods() -> None:
    """The resolver finds cgroups made after its first walk (a later walk), and a
    removed cgroup's id is shown by number."""
    names = where.Cgroups(interval=0)
    assert names.label(os.stat(cgroup2_mounts()[0]).st_ino) == "/"
    with Cgroups() as cg:
        ids = os.stat(cg.docker).st_ino, os.stat(cg.kube).st_ino
        assert [names.label(i) for i in ids] == [cg.docker_label, cg.kube_label]
        assert names.path(ids[1]) == cg.rel(cg.kube)
        gone = os.path.join(cg.base, "gone")
        os.mkdir(gone)
        gone_id = os.stat(gone).st_ino
        os.rmdir(gone)
    assert names.label(gone_id) == f"cgroup:{gone_id}"


@integration
def test_unnamed_namespace_is_named_after_its_container() -> None:
    with Cgroups() as cg:
        proc = subprocess.Popen(["unshare", "-n", "sh", "-c", "read x"], stdin=subprocess.PIPE, text=True)
        try:
            Cgroups.move(cg.docker, proc.pid)
            deadline = time.monotonic() + 5
            while os.stat(f"/proc/{proc.pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
                assert time.monotonic() < deadline, "unshare did not enter a namespace"
                time.sleep(0.01)
            inode = os.stat(f"/proc/{proc.pid}/ns/net").st_ino
            labels = netns.NetnsLabels(owner=where.pid_container, interval=0)
            assert labels(inode) == cg.docker_label
            assert labels(netns.HOST_NETNS_INODE) == "host"
        finally:
            proc.communicate("\n", timeout=10)


# ---- the six tools on container-like processes in named namespaces -----------------------------

# A peer: waits for "go" (meanwhile it is moved into its cgroup), listens and prints its
# port, reads the other peer's address, then connects to it while accepting the other's
# connection; each side sends, reads to EOF, closes.
PEER = r"""
import socket, sys, threading
sys.stdin.readline()
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
host, port = sys.stdin.readline().split()
def serve():
    c = srv.accept()[0]
    while c.recv(65536):
        pass
    c.sendall(b"z" * 300)
    c.close()
t = threading.Thread(target=serve)
t.start()
s = socket.create_connection((host, int(port)), timeout=10)
s.sendall(b"y" * 1000)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
s.close()
t.join()
srv.close()
"""


class World:
    """Process A (docker-style cgroup, namespace ns.a) and process B (Kubernetes-style
    cgroup, namespace ns.b) connect to each other; this process makes a loopback
    connection of its own on the host at the same time."""

    def __init__(self, ns: NetnsPair, cg: Cgroups) -> None:
        self.ns, self.cg = ns, cg
        self.inode_a = os.stat(f"/run/netns/{ns.a}").st_ino
        self.inode_b = os.stat(f"/run/netns/{ns.b}").st_ino
        self.a = self._start(ns.a, ns.addr_a, cg.docker)
        self.b = self._start(ns.b, ns.addr_b, cg.kube)

    @staticmethod
    def _start(name: str, addr: str, cgroup: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", PEER, addr],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        Cgroups.move(cgroup, proc.pid)
        return proc

    def run(self) -> None:
        """Both peers talk, and so does this process on loopback; returns when all is closed."""
        assert self.a.stdin and self.b.stdin and self.a.stdout and self.b.stdout
        for stdin in (self.a.stdin, self.b.stdin):
            stdin.write("go\n")
            stdin.flush()
        port_a, port_b = self.a.stdout.readline().strip(), self.b.stdout.readline().strip()
        self.a.stdin.write(f"{self.ns.addr_b} {port_b}\n")
        self.b.stdin.write(f"{self.ns.addr_a} {port_a}\n")
        self.a.stdin.close()
        self.b.stdin.close()
        with PayloadServer(size=100, request_bytes=10) as srv:
            fetch("127.0.0.1", srv.port, send=10)
        for proc in (self.a, self.b):
            assert proc.wait(timeout=20) == 0


@pytest.fixture
def world() -> Iterator[World]:
    with NetnsPair() as ns, Cgroups() as cg:
        w = World(ns, cg)
        try:
            yield w
        finally:
            for proc in (w.a, w.b):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def pid_of(tool: str, r: dict[str, Any]) -> int:
    return r["c_pid"] if tool == "states" else r["pid"]


TOOLS = ["states", "life", "connect", "accept", "tracer", "connlat"]


@integration
@pytest.mark.parametrize("tool", TOOLS)
def test_who_and_where(tool: str, world: World) -> None:
    """In one run of the peers, four traces of the tool:
    --netns ns.a (text, -w): NETNS and CONTAINER columns; rows of ns.a only;
    --cgroup <the pod's container> (JSON, -w): that process's rows only, with its pod and cgroup path;
    -p <this process>,<A> (JSON): rows of both, none of B;
    unfiltered (JSON): rows of A, B and this process, the control for every absence above."""
    ns, cg, me = world.ns, world.cg, os.getpid()
    wide = ["-v"] if tool == "tracer" else ["-w"]
    # states reads namespace and cgroup only for filters when no column shows them
    plain: Any = Trace([tool, "--netns", ns.a, "--cgroup", cg.docker]) if tool == "states" else contextlib.nullcontext()
    with Trace([tool, *wide, "--netns", ns.a]) as by_ns, \
            Trace([tool, "--json", "-w", "--cgroup", cg.kube]) as by_cgroup, \
            Trace([tool, "--json", "-p", f"{me},{world.a.pid}"]) as by_pid, \
            Trace([tool, "--json"]) as everything, plain as by_both:
        world.run()
    a, b = world.a.pid, world.b.pid
    ours = {a, b, me}

    # the control: every process's rows are there without a filter
    assert {pid_of(tool, r) for r in everything.records} >= ours, everything.stdout
    rows_a = [r for r in everything.records if pid_of(tool, r) == a]
    rows_b = [r for r in everything.records if pid_of(tool, r) == b]
    if tool != "states":  # states' C-PID is the task on the CPU: the socket may be another's
        assert {(r["netns"], r["netns_inode"], r["container"]) for r in rows_a} == {
            (ns.a, world.inode_a, cg.docker_label)
        }
        assert {(r["netns"], r["netns_inode"], r["container"]) for r in rows_b} == {
            (ns.b, world.inode_b, cg.kube_label)
        }
    else:
        assert {r["container"] for r in rows_a} == {cg.docker_label}
        assert {r["container"] for r in rows_b} == {cg.kube_label}
        assert {r["netns_inode"] for r in everything.records} >= {world.inode_a, world.inode_b}

    # --netns ns.a, text: the last two columns are NETNS and CONTAINER
    header, *lines = by_ns.lines
    assert header.split()[-2:] == ["NETNS", "CONTAINER"], header
    fields = [line.split() for line in lines]
    assert {f[-2] for f in fields} == {ns.a}, by_ns.stdout
    if tool != "states":
        assert {f[-1] for f in fields} == {cg.docker_label}
        assert any(str(a) in f for f in fields)

    # --cgroup: B's rows only, with its cgroup path and id
    assert {pid_of(tool, r) for r in by_cgroup.records} == {b}, by_cgroup.stdout
    assert {(r["container"], r["cgroup"]) for r in by_cgroup.records} == {(cg.kube_label, cg.rel(cg.kube))}

    # -p: this process and A, not B
    assert {pid_of(tool, r) for r in by_pid.records} == {me, a}, by_pid.stdout
    assert not any("cgroup" in r for r in by_pid.records)  # the path: with -w only

    if tool == "states":  # text, no -w: A's own changes in ns.a (its sockets' local address)
        fields = [line.split() for line in by_both.lines[1:]]
        assert fields and {(int(f[1]), f[3]) for f in fields} == {(world.a.pid, ns.addr_a)}, by_both.stdout
