"""Helpers for the traffic and loss tests (top, subnet, retrans, drop): sockets inside
a test's own network namespaces, nftables loss there, and small waits.

Nothing here touches the host's network configuration: nft rules live only in
namespaces a :class:`helpers.NetnsPair` created, and die with them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import threading
import time
from typing import Callable, Iterator

from helpers import NetnsPair

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block's socket() calls in namespace ``name`` (this thread only). Sockets
    stay in the namespace they were created in, so they can be used after the block."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


@contextlib.contextmanager
def nft_input_chain(net: NetnsPair, ns: str) -> Iterator[Callable[[str], None]]:
    """An nftables input chain in namespace ``ns``; yields ``add(rule)``; flushed on exit."""
    net.exec(ns, "nft add table inet netsnoop_test")
    net.exec(ns, "nft 'add chain inet netsnoop_test input { type filter hook input priority 0; policy accept; }'")

    def add(rule: str) -> None:
        net.exec(ns, f"nft 'add rule inet netsnoop_test input {rule}'")

    try:
        yield add
    finally:
        net.exec(ns, "nft delete table inet netsnoop_test", check=False)


def nstat(net: NetnsPair, ns: str, *names: str) -> dict[str, int]:
    """The kernel's own counters of namespace ``ns`` (absolute, ``nstat -asz`` run
    inside it, history untouched): the independent record a test compares with."""
    out = net.exec(ns, "nstat -asz --json " + " ".join(names)).stdout
    values = json.loads(out)["kernel"]
    return {n: int(values.get(n, 0)) for n in names}


def nft_rule_packets(net: NetnsPair, ns: str, comment: str) -> int:
    """Packets counted by the rule carrying ``comment`` (it needs ``counter``), from
    ``nft -j list ruleset`` inside the namespace."""
    ruleset = json.loads(net.exec(ns, "nft -j list ruleset").stdout)["nftables"]
    for item in ruleset:
        rule = item.get("rule")
        if rule and rule.get("comment") == comment:
            for expr in rule["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    raise AssertionError(f"no rule with comment {comment!r} and a counter in {ns}")


def flush_rules(net: NetnsPair, ns: str) -> None:
    net.exec(ns, "nft flush chain inet netsnoop_test input")


def kernel_has_symbol(symbol: str) -> bool:
    """Whether /proc/kallsyms lists ``symbol``: where a kprobe would attach."""
    with open("/proc/kallsyms") as f:
        return any(line.split()[2:3] == [symbol] for line in f)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Sink:
    """A listening socket that accepts connections and counts what each one sends."""

    def __init__(self, host: str, port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.reply = 0  # bytes sent back to each client once it has sent ``expect``
        self.expect = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            got = 0
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
                self.received += len(chunk)
                if self.reply and got >= self.expect:
                    conn.sendall(b"r" * self.reply)
                    self.reply = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept(); close() alone does not
        self.sock.close()
        self._thread.join(2)
