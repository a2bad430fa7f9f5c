"""The state of every network namespace on the host: which there are, their counters,
interfaces and TCP listeners.

The hooks see all namespaces, but ``/proc/net/*`` and sock_diag answer only for the
namespace of whoever asks. So each reading enters the namespace (``setns`` on the
calling thread), opens what it reads, and comes back: a file under
``/proc/thread-self/net`` or a netlink socket stays bound to the namespace it was opened
in. The listeners come from sock_diag (``ss -lt``'s source), asked directly rather than
through pyroute2: its import alone costs 0.2-0.45 s here, most of a start-up budget, for
one request and one reply layout.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable, Iterator

CLONE_NEWNET = 0x40000000
# The host's (init_net's) namespace inode is a kernel constant (PROC_NET_INIT_INO), so it
# is known without reading /proc/1, which a locked-down or sandboxed host may refuse.
HOST_NETNS_INODE = 0xEFFFFFF9


@dataclass(frozen=True)
class Netns:
    """One network namespace: its inode (what BPF reads as ``net->ns.inum``), a path
    ``setns`` can open, and the ``ip netns`` name when it has one."""

    inode: int
    path: str
    name: str = ""
    host: bool = False

    @property
    def label(self) -> str:
        """How rows name it: the ``ip netns`` name, ``host``, or ``netns:<inode>``."""
        return self.name or ("host" if self.host else f"netns:{self.inode}")


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def namespaces() -> list[Netns]:
    """Every network namespace that has a name under /run/netns or a process in it,
    the host's first, then named ones, then the rest by inode."""
    host = HOST_NETNS_INODE
    found: dict[int, Netns] = {}
    try:
        names = sorted(os.listdir("/run/netns"))
    except OSError:
        names = []
    for name in names:
        path = os.path.join("/run/netns", name)
        ino = _inode(path)
        if ino is not None and ino not in found:
            found[ino] = Netns(ino, path, name, ino == host)
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        path = f"/proc/{pid}/ns/net"
        ino = _inode(path)
        if ino is not None and ino not in found:
            found[ino] = Netns(ino, path, "", ino == host)
    return sorted(found.values(), key=lambda n: (not n.host, not n.name, n.name, n.inode))


def by_inode() -> dict[int, Netns]:
    return {n.inode: n for n in namespaces()}


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(ns: Netns) -> Iterator[None]:
    """Run the block in ``ns`` (this thread only); always back home after it."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(ns.path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def _read_net_file(name: str) -> str:
    with open(f"/proc/thread-self/net/{name}") as f:
        return f.read()


def parse_counters(text: str) -> dict[str, int]:
    """``/proc/net/netstat`` or ``snmp`` (header line, value line, per protocol) as
    nstat names them: ``TcpExtListenOverflows``, ``TcpRetransSegs``, ``IpOutNoRoutes``."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        proto, _, names = head.partition(":")
        _, _, numbers = values.partition(":")
        for key, value in zip(names.split(), numbers.split()):
            try:
                out[proto + key] = int(value)
            except ValueError:
                continue
    return out


def counters(ns: Netns) -> dict[str, int]:
    """The namespace's IP/TCP/UDP counters (``nstat -az`` inside it, absolute values)."""
    with entered(ns):
        text = _read_net_file("snmp") + _read_net_file("netstat")
    return parse_counters(text)


@dataclass(frozen=True)
class Interface:
    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_dev(text: str) -> list[Interface]:
    """``/proc/net/dev``: per interface, the receive and transmit columns we use."""
    out = []
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = [int(x) for x in rest.split()]
        if len(f) >= 16:
            out.append(Interface(name.strip(), f[0], f[1], f[2], f[3], f[8], f[9], f[10], f[11]))
    return out


def interfaces(ns: Netns) -> list[Interface]:
    with entered(ns):
        text = _read_net_file("dev")
    return parse_dev(text)


# ---- listeners (sock_diag) ----------------------------------------------------------

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_LISTEN = 10
ALL_STATES = (1 << 12) - 2  # every state, TCP_ESTABLISHED (1) to TCP_CLOSING (11)
NLMSG_HDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid
DIAG_REQ = struct.Struct("=BBBxI" + "HH16s16sI8s")
# The older request (TCPDIAG_GETSOCK, struct inet_diag_req): the kernel answers it for
# both families in one walk of its socket tables, where the one above walks them once
# per family (the established table is shared by all namespaces: a walk costs the
# same however few sockets a namespace has)
TCPDIAG_GETSOCK = 18
DIAG_REQ_V1 = struct.Struct("=BBBB" + "HH16s16sI8s" + "II")
# struct inet_diag_msg: family, state, timer, retrans, sockid (ports big-endian),
# expires, rqueue, wqueue, uid, inode
DIAG_MSG = struct.Struct("=BBBB" + "2s2s16s16sI8s" + "IIIII")
INET_DIAG_INFO = 2  # the attribute carrying struct tcp_info (asked for with bit 1 << (2 - 1))
INET_DIAG_SKMEMINFO = 7  # the attribute carrying the socket's memory and drop counts
SK_MEMINFO_DROPS = 8  # sk_drops, ``ss -m``'s "d"
NLA_HDR = struct.Struct("=HH")
# struct tcp_info (uapi, append-only): tcpi_rtt at 68, tcpi_total_retrans at 100,
# tcpi_bytes_acked at 120, tcpi_bytes_received at 128; tcpi_bytes_sent at 200 and
# tcpi_bytes_retrans at 208 (kernels from 4.19 on)
TCP_INFO_RTT, TCP_INFO_TOTAL_RETRANS, TCP_INFO_BYTES_ACKED, TCP_INFO_BYTES_RECEIVED = 68, 100, 120, 128
TCP_INFO_BYTES_SENT, TCP_INFO_BYTES_RETRANS = 200, 208


@dataclass(frozen=True)
class Listener:
    """A TCP socket in LISTEN: where it listens and how full its accept queue is."""

    netns: Netns
    family: int
    addr: str
    port: int
    queue: int  # connections waiting for accept() (sk_ack_backlog)
    backlog: int  # the limit listen() set (sk_max_ack_backlog)
    uid: int
    inode: int

    @property
    def endpoint(self) -> str:
        return f"[{self.addr}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.addr}:{self.port}"

    def accepts(self, addr: str) -> bool:
        """Whether a connection to ``addr`` on this port reaches this listener: bound to
        it, or to the wildcard of its family (an IPv6 wildcard also takes IPv4 unless
        the socket is v6-only, which sock_diag does not say: assumed dual-stack)."""
        if self.addr in ("0.0.0.0", "::") or self.addr == addr:
            return self.family == socket.AF_INET6 or ":" not in addr
        return False


@dataclass(frozen=True)
class DiagSocket:
    """One TCP socket as sock_diag reports it (``ss -tan``'s columns). For a listener,
    ``rqueue`` is its accept queue and ``wqueue`` the queue's limit."""

    family: int
    state: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    rqueue: int
    wqueue: int
    uid: int
    inode: int
    # from struct tcp_info, when asked for (info=True); None otherwise
    rtt_us: int | None = None  # smoothed round-trip time
    bytes_acked: int | None = None  # payload bytes sent and acknowledged
    bytes_received: int | None = None  # payload bytes received
    total_retrans: int | None = None  # segments retransmitted over the connection's life
    # from the memory info, when asked for (meminfo=True)
    drops: int | None = None  # sk_drops: for a listener, SYNs and final ACKs it dropped
    cookie: int = 0  # the kernel's socket cookie (what BPF reads as sk->__sk_common.skc_cookie)
    # tcp_info's payload bytes put on the wire (retransmissions included) and retransmitted
    bytes_sent: int | None = None
    bytes_retrans: int | None = None


def _attributes(attrs: bytes) -> dict[str, int]:
    """The tcp_info and meminfo figures we use, from a reply's attributes."""
    out: dict[str, int] = {}
    off = 0
    while off + NLA_HDR.size <= len(attrs):
        length, kind = NLA_HDR.unpack_from(attrs, off)
        if length < NLA_HDR.size:
            break
        at, size = off + NLA_HDR.size, length - NLA_HDR.size
        if kind == INET_DIAG_INFO and size >= TCP_INFO_BYTES_RECEIVED + 8:
            out.update(rtt_us=struct.unpack_from("=I", attrs, at + TCP_INFO_RTT)[0],
                       total_retrans=struct.unpack_from("=I", attrs, at + TCP_INFO_TOTAL_RETRANS)[0],
                       bytes_acked=struct.unpack_from("=Q", attrs, at + TCP_INFO_BYTES_ACKED)[0],
                       bytes_received=struct.unpack_from("=Q", attrs, at + TCP_INFO_BYTES_RECEIVED)[0])
            if size >= TCP_INFO_BYTES_RETRANS + 8:
                out.update(bytes_sent=struct.unpack_from("=Q", attrs, at + TCP_INFO_BYTES_SENT)[0],
                           bytes_retrans=struct.unpack_from("=Q", attrs, at + TCP_INFO_BYTES_RETRANS)[0])
        elif kind == INET_DIAG_SKMEMINFO and size >= 4 * (SK_MEMINFO_DROPS + 1):
            out["drops"] = struct.unpack_from("=I", attrs, at + 4 * SK_MEMINFO_DROPS)[0]
        off += (length + 3) & ~3
    return out


def _cookie(raw: bytes) -> int:
    """inet_diag_sockid's cookie: two u32 in host order, the low half first."""
    low, high = struct.unpack("=II", raw)
    return high << 32 | low


def _diag_dump(family: int, states: int = 1 << TCP_LISTEN, info: bool = False,
               meminfo: bool = False) -> Iterator[DiagSocket]:
    """The TCP sockets of ``family`` in the current namespace whose state is in the
    ``states`` bit mask (bit N: TCP state N), with tcp_info figures when ``info`` and
    the drop count when ``meminfo``; ``family`` 0: both families, in one walk."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    try:
        ext = (1 << (INET_DIAG_INFO - 1) if info else 0) | (1 << (INET_DIAG_SKMEMINFO - 1) if meminfo else 0)
        if family:
            reply = SOCK_DIAG_BY_FAMILY
            req = DIAG_REQ.pack(family, socket.IPPROTO_TCP, ext, states, 0, 0, b"", b"", 0, b"\xff" * 8)
        else:
            reply = TCPDIAG_GETSOCK
            req = DIAG_REQ_V1.pack(socket.AF_INET, 0, 0, ext, 0, 0, b"", b"", 0, b"\xff" * 8, states, 0)
        s.sendto(NLMSG_HDR.pack(NLMSG_HDR.size + len(req), reply, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
                 + req, (0, 0))
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + NLMSG_HDR.size <= len(data):
                length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, off)
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + NLMSG_HDR.size)[0]
                    if err:
                        raise OSError(err, f"sock_diag: {os.strerror(err)}")
                    return
                if kind == reply:
                    (fam, state, _t, _r, sport, dport, src, dst, _if, cookie,
                     _exp, rq, wq, uid, inode) = DIAG_MSG.unpack_from(data, off + NLMSG_HDR.size)
                    size = 4 if fam == socket.AF_INET else 16
                    body = off + NLMSG_HDR.size + DIAG_MSG.size
                    extra = _attributes(data[body : off + length]) if info or meminfo else {}
                    yield DiagSocket(fam, state, socket.inet_ntop(fam, src[:size]), int.from_bytes(sport, "big"),
                                     socket.inet_ntop(fam, dst[:size]), int.from_bytes(dport, "big"), rq, wq, uid,
                                     inode, cookie=_cookie(cookie), **extra)
                if length == 0:
                    return
                off += (length + 3) & ~3
    finally:
        s.close()


def tcp_sockets(ns: Netns, states: int = ALL_STATES, info: bool = False, meminfo: bool = False) -> list[DiagSocket]:
    """The TCP sockets of ``ns`` (both families) whose state is in ``states``, with
    tcp_info's figures when ``info`` (``ss -tin``) and drop counts when ``meminfo``."""
    out: list[DiagSocket] = []
    with entered(ns):
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                out.extend(s for s in _diag_dump(family, states, info, meminfo) if states >> s.state & 1)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                    continue  # that family is not built into this kernel
                raise
    return out


def tcp_sockets_one_walk(ns: Netns, states: int = ALL_STATES, info: bool = False) -> list[DiagSocket]:
    """:func:`tcp_sockets` asked in one request for both families (half the kernel's
    work for states outside LISTEN), or per family where the kernel refuses it."""
    with entered(ns):
        try:
            return [s for s in _diag_dump(0, states, info) if states >> s.state & 1]
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
                raise
    return tcp_sockets(ns, states, info)


def listeners(ns: Netns) -> list[Listener]:
    """The TCP listeners of ``ns`` (both families), as ``ss -ltn`` shows them there."""
    return [Listener(ns, s.family, s.laddr, s.lport, s.rqueue, s.wqueue, s.uid, s.inode)
            for s in tcp_sockets(ns, 1 << TCP_LISTEN)]


def all_listeners() -> list[Listener]:
    """The TCP listeners of every namespace (a namespace that vanished meanwhile is
    skipped)."""
    out = []
    for ns in namespaces():
        try:
            out.extend(listeners(ns))
        except OSError:
            continue
    return out


@dataclass(frozen=True)
class Owner:
    pid: int
    comm: str


def socket_owners(inodes: set[int] | None = None) -> dict[int, Owner]:
    """Socket inode -> the first process (lowest PID) holding a descriptor to it, from
    ``/proc/*/fd``: the only record of who owns a listener. Limited to ``inodes``
    when given (stops early once all are found)."""
    out: dict[int, Owner] = {}
    wanted = set(inodes) if inodes is not None else None
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            ino = int(target[8:-1])
            if ino in out or (wanted is not None and ino not in wanted):
                continue
            out[ino] = Owner(int(pid), _comm(pid))
        if wanted is not None and wanted <= out.keys():
            break
    return out


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "backslashreplace")
    except OSError:
        return "?"


def listener_drops(ns: Netns) -> dict[int, int]:
    """Socket inode -> the listener's own drop count (sk_drops: tcp_listendrop() adds
    one for every SYN or final ACK it drops, accept-queue overflows included), for every
    TCP listener of ``ns`` (``ss -ltm`` there: "d" in skmem)."""
    return {s.inode: s.drops or 0 for s in tcp_sockets(ns, 1 << TCP_LISTEN, meminfo=True)}


# ESTABLISHED, SYN_RECV, CLOSE_WAIT: where a server's child waits for accept()
SERVER_SIDE_STATES = (1 << 1) | (1 << 3) | (1 << 8)


def connections(ns: Netns, states: int = SERVER_SIDE_STATES) -> list[DiagSocket]:
    """The TCP connections of ``ns`` in ``states`` (both families), as ``ss -tn``: a
    server's child has no file (inode 0) until accept() returns it, which makes an
    unaccepted connection visible from outside."""
    return tcp_sockets(ns, states)


def sysctl(ns: Netns, path: str) -> str | None:
    """A ``/proc/sys`` value as ``ns`` sees it (net/* sysctls are per namespace), or
    None; ``path`` with slashes (``net/ipv4/conf/eth0.5/rp_filter``: a device name may
    hold dots)."""
    try:
        with entered(ns):
            with open("/proc/sys/" + path) as f:
                return f.read().strip()
    except OSError:
        return None


def ifname(ns: Netns, ifindex: int) -> str | None:
    """The name of interface ``ifindex`` in ``ns``."""
    try:
        with entered(ns):
            return socket.if_indextoname(ifindex)
    except OSError:
        return None


def parse_counters6(text: str) -> dict[str, int]:
    """``/proc/net/snmp6`` (one ``Ip6OutNoRoutes  3`` per line) as nstat names them."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def all_counters(ns: Netns) -> dict[str, int]:
    """:func:`counters` plus the IPv6 ones (``Ip6OutNoRoutes``), when IPv6 is there."""
    with entered(ns):
        text = _read_net_file("snmp") + _read_net_file("netstat")
        try:
            text6 = _read_net_file("snmp6")
        except OSError:
            text6 = ""
    return {**parse_counters(text), **parse_counters6(text6)}


# ---- naming namespaces in rows --------------------------------------------------------

def holder_pid(ns: Netns) -> int | None:
    """The process through which ``ns`` was found (its lowest PID), None for a namespace
    known only by its ``ip netns`` name."""
    parts = ns.path.split("/")
    return int(parts[2]) if ns.path.startswith("/proc/") and parts[2].isdigit() else None


class NetnsLabels:
    """Namespace inode -> the label rows show, cached (at most ``limit`` entries).

    An inode not in the cache makes the namespaces be listed again (each process's
    ``/proc/PID/ns/net``: not more than once per ``interval`` seconds); one still
    unknown after that is shown by its inode. The kernel reuses the inode of a
    namespace that is gone, so a listing older than ``max_age`` seconds is not trusted:
    it is made again. ``owner`` names an unnamed namespace after a process in it (its
    container), or returns "" to keep the inode.
    """

    def __init__(self, owner: Callable[[int], str] | None = None, limit: int = 4096, interval: float = 1.0,
                 max_age: float = 5.0) -> None:
        self._owner = owner
        self._limit = limit
        self._interval = interval
        self._max_age = max_age
        self._labels: dict[int, str] = {}
        self._listed = -max(interval, max_age)

    def __call__(self, inode: int) -> str:
        now = time.monotonic()
        if inode in self._labels and now - self._listed < self._max_age:
            return self._labels[inode]
        if inode == 0:
            return "-"
        if now - self._listed >= self._interval:
            self._listed = now
            found = {ns.inode: ns for ns in namespaces()}
            self._labels.clear()
            for ns in list(found.values())[: self._limit]:
                self._labels[ns.inode] = self._label(ns)
        return self._labels.get(inode) or f"netns:{inode}"

    def _label(self, ns: Netns) -> str:
        if ns.name or ns.host or self._owner is None:
            return ns.label
        pid = holder_pid(ns)
        return (self._owner(pid) if pid else "") or ns.label
