"""Test helpers: run netsnoop for real, and make real traffic for it to see.

Everything talks to loopback or to network namespaces the test creates itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from typing import Any, Iterator

# the process driver shared with bench/run.py; the tests import these names from here
from driver import NETSNOOP, READY_TIMEOUT, ROOT, DidNotStart, Netsnoop, bpf_fds, parse_hooks  # noqa: F401


def bpf_unavailable_reason() -> str | None:
    """Why integration tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (CAP_BPF + CAP_PERFMON) to load BPF programs"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "needs kernel BTF (/sys/kernel/btf/vmlinux)"
    bpf_dir = os.path.join(ROOT, "netsnoop", "bpf")
    if not any(f.endswith(".bpf.o") for f in os.listdir(bpf_dir)):
        return "BPF objects not built (run: make bpf)"
    return None


def run(args: list[str], timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run netsnoop to completion (e.g. with -d) and capture its output."""
    return subprocess.run(NETSNOOP + args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


PROG_TYPES = {1: "socket_filter", 2: "kprobe", 5: "tracepoint", 17: "raw_tracepoint", 26: "tracing"}


class Trace(Netsnoop):
    """A netsnoop subcommand running in the background, ready once it says so.

    >>> with Trace(["states", "--json"], hooks="tracepoint") as t:
    ...     make_traffic()
    >>> t.records  # parsed JSON lines (or t.lines for text)
    >>> t.hooks    # {"set_state": "tracepoint"}: the kind each hook group ran on

    Once it says it is tracing, the process must hold attached BPF programs (checked
    in the kernel's own fdinfo: ``t.links``, and ``t.prog_types`` of the attached
    programs: tracing for tp_btf/fentry, tracepoint, kprobe). ``hooks`` forces the
    kinds allowed (NETSNOOP_HOOKS); every attached program must then be of those
    kinds, and after the stop the summary must name only them.
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None, hooks: str | None = None,
                 prefix: list[str] | None = None) -> None:
        # NETSNOOP read here, not in driver: a fixture may set helpers.NETSNOOP to run every
        # trace of its tests inside a namespace (test_netqtop)
        super().__init__(args, env={**(env or {}), **({"NETSNOOP_HOOKS": hooks} if hooks else {})}, prefix=prefix,
                         command=NETSNOOP)
        self.forced = hooks.split(",") if hooks else None
        self.links: list[dict[str, str]] = []
        self.prog_types: set[str] = set()

    def __enter__(self) -> "Trace":
        self.start()
        try:
            self.wait_ready(READY_TIMEOUT)
        except DidNotStart as err:
            raise AssertionError(str(err)) from None
        fds = self.bpf_fds()
        types = {i["prog_id"]: PROG_TYPES.get(int(i["prog_type"]), i["prog_type"]) for i in fds if "prog_type" in i}
        self.links = [i for i in fds if "link_type" in i]
        self.prog_types = {types.get(i.get("prog_id", ""), "?") for i in self.links}  # of the attached ones
        if not self.links:
            self.stop()
            raise AssertionError(f"netsnoop {' '.join(self.args)} said it was tracing but has no BPF program attached")
        if self.forced:
            kinds = {"tp_btf": "tracing", "fentry": "tracing", "fexit": "tracing", "tracepoint": "tracepoint",
                     "kprobe": "kprobe", "kretprobe": "kprobe"}
            if not self.prog_types <= {kinds[k] for k in self.forced}:
                self.stop()
                raise AssertionError(f"NETSNOOP_HOOKS={','.join(self.forced)} but attached programs are of type "
                                     f"{sorted(self.prog_types)}")
        time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGINT, settle: float = 0.3, timeout: float = 20.0) -> "Trace":
        """Stops it (after ``settle`` seconds for the last events to reach the ring
        buffer); with ``hooks``, the summary must name only the forced kinds."""
        if self.returncode is None:
            super().stop(sig, settle, timeout)
            if self.forced and self.links:
                ran = {k for k in self.hooks.values() if k}
                assert ran and ran <= set(self.forced), f"NETSNOOP_HOOKS={self.forced} but hooks ran: {self.hooks}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def _out(self) -> list[str]:
        """The stdout lines so far, for a test that watches a running trace."""
        return self.out_lines


def free_port(family: int = socket.AF_INET) -> int:
    with socket.socket(family) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound then released)."""
    return free_port(socket.AF_INET6 if ":" in host else socket.AF_INET)


class PayloadServer:
    """A TCP server in this process that sends ``size`` bytes to each client, after
    reading whatever the client sent until EOF or ``request_bytes``."""

    def __init__(self, host: str = "127.0.0.1", size: int = 0, request_bytes: int = 0, backlog: int = 128) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.size, self.request_bytes = size, request_bytes
        self.accepted: list[tuple[str, int]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(peer[:2])
            with conn:
                got = 0
                while got < self.request_bytes:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
                if self.size:
                    conn.sendall(b"x" * self.size)

    def __enter__(self) -> "PayloadServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def fetch(host: str, port: int, send: int = 0, expect: int = 0) -> tuple[int, int]:
    """Connect, send ``send`` bytes, shut down writing, read until EOF.
    Returns (local port, bytes received)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect((host, port))
        lport = s.getsockname()[1]
        if send:
            s.sendall(b"y" * send)
        s.shutdown(socket.SHUT_WR)
        got = 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        return lport, got


def refused_connect(host: str = "127.0.0.1", port: int | None = None) -> int:
    """Connect to a closed port; returns the port that refused."""
    port = port or closed_port(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return port
    raise AssertionError(f"connect to {host}:{port} was not refused")


def bpf_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def wait_progs_gone(before: set[int], timeout: float = 10.0) -> set[int]:
    """Programs loaded since ``before`` that are still there after ``timeout``
    (the kernel frees them asynchronously once the last reference is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        extra = bpf_prog_ids() - before
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.2)


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=check)


class NetnsPair:
    """Two private network namespaces joined by a veth pair, on addresses private to
    them (IPv4 10.77.N.1/2, IPv6 fd77:N::1/2). Nothing on the host changes; both
    namespaces are deleted on exit.
    """

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"nsa{tag}", f"nsb{tag}"
        self.dev_a, self.dev_b = f"va{tag}", f"vb{tag}"
        n = int(tag[:2], 16) % 250 + 1
        self.addr_a, self.addr_b = f"10.77.{n}.1", f"10.77.{n}.2"
        self.addr6_a, self.addr6_b = f"fd77:{n:x}::1", f"fd77:{n:x}::2"

    def __enter__(self) -> "NetnsPair":
        try:
            sh(f"ip netns add {self.a} && ip netns add {self.b}")
            sh(f"ip link add {self.dev_a} netns {self.a} type veth peer name {self.dev_b} netns {self.b}")
            for ns, dev, a4, a6 in ((self.a, self.dev_a, self.addr_a, self.addr6_a),
                                    (self.b, self.dev_b, self.addr_b, self.addr6_b)):
                sh(f"ip -n {ns} link set lo up && ip -n {ns} link set {dev} up")
                sh(f"ip -n {ns} addr add {a4}/24 dev {dev} && ip -n {ns} addr add {a6}/64 dev {dev} nodad")
        except BaseException:
            self.__exit__()  # a half-made pair would outlive the test: later tests see every namespace
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        sh(f"ip netns del {self.a}", check=False)
        sh(f"ip netns del {self.b}", check=False)

    def exec(self, ns: str, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(f"ip netns exec {ns} {cmd}", check=check)

    def popen(self, ns: str, args: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


@contextlib.contextmanager
def listening(host: str = "127.0.0.1", backlog: int = 128) -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(backlog)
    try:
        yield s
    finally:
        s.close()


PROG_TYPE_OF_KIND = {"kprobe": "kprobe", "kretprobe": "kprobe", "tracepoint": "tracepoint", "tp_btf": "tracing",
                     "fentry": "tracing", "fexit": "tracing"}


def kernel_text_symbols() -> set[str]:
    with open("/proc/kallsyms") as f:
        return {p[2] for p in map(str.split, f) if len(p) >= 3 and p[1] in "tT"}


BTF_KIND_TYPEDEF = 8


def assert_verified(obj: Any, group: str, kind: str) -> dict[str, str]:
    """What the verifier accepting ``group``'s ``kind`` variant of a loaded BPFObject
    means, checked from the kernel's side rather than from the loader's word: the
    program has a file descriptor, the kernel lists it (its own fdinfo: type, id), and
    the point it would attach to exists in this kernel (kallsyms for kprobes and
    fentry, tracefs for tracepoints, the BTF trace typedef for tp_btf). Returns fdinfo."""
    from netsnoop.libbpf import lib

    name = f"{group}__{kind}"
    prog = obj.loaded_program(name)
    assert prog is not None, f"{obj.name}: {name} was not loaded"
    fd = lib().bpf_program__fd(prog.handle)
    assert fd >= 0, f"{obj.name}: {name} has no file descriptor: the kernel did not take it"
    with open(f"/proc/self/fdinfo/{fd}") as f:
        info = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    assert PROG_TYPES.get(int(info["prog_type"])) == PROG_TYPE_OF_KIND[kind], (name, info)
    assert int(info["prog_id"]) in bpf_prog_ids()
    target = prog.section.split("/", 1)[1]
    if kind in ("kprobe", "kretprobe", "fentry", "fexit"):
        assert target in kernel_text_symbols(), f"{target} is not a kernel function here"
    elif kind == "tracepoint":
        sh("mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing")
        assert os.path.isdir(f"/sys/kernel/tracing/events/{target}"), f"no tracepoint {target}"
    else:  # the BTF typedef every raw tracepoint has, whatever event class defines it
        from netsnoop.btf import BTF

        btf = BTF.vmlinux()
        try:
            assert btf.find(f"btf_trace_{target}", BTF_KIND_TYPEDEF) > 0, f"no BTF tracepoint {target}"
        finally:
            btf.close()
    return info
