"""Host names for remote addresses, learnt from the DNS answers this machine receives.

``--dns`` shows, beside an address, the name this machine last resolved to it. The BPF
side hands over every DNS message a local socket sends to or receives from port 53, in
every network namespace (``bpf/dns_sock.bpf.c``, socket-level programs; where those
cannot run, ``bpf/dns.bpf.c``, tracepoints, UDP only). This module believes an answer
only when

* it answers a query seen leaving the same socket -- same namespace, addresses, ports,
  ID and question (UDP) -- or arrives in order on a TCP stream a local socket opened to
  port 53, so a forged datagram that no resolver would accept teaches nothing;
* it parses strictly: one question, class IN, NOERROR, not truncated, every name made
  of letters, digits, ``-`` and ``_`` only (so a name is safe on a terminal, in CSV and
  in JSON), compression pointers only backwards, every length inside the message.
  Anything else is dropped whole, never "repaired";

and then maps each A/AAAA address on the CNAME chain that starts at the question to
the question's name (what the client asked for, not the CDN's alias). An address no
believed answer carried has no name: nothing is guessed from reverse DNS or elsewhere.

Names are kept per network namespace: a name learnt in one is only used for rows of
that namespace (two containers may resolve one address under different names, and a
row's namespace is where its process asked). The table is a bounded LRU. A background
thread empties the ring every ``interval``; ``name_of`` empties it first too, so an
answer that arrived before the connect it led to is always taken in before that
connect's row is printed, whichever ring the command reads first.

>>> with Watcher(max_names=4096) as names:
...     names.name_of(event.family, event.daddr, event.netns)  # 'www.example.com' or None
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections import OrderedDict
from typing import Any, NamedTuple

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6
TYPE_A, TYPE_CNAME, TYPE_AAAA, TYPE_ANY = 1, 5, 28, 255
CLASS_IN = 1
IPPROTO_TCP, IPPROTO_UDP = 6, 17
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
SENT, RECEIVED = 1, 2  # enum dns_kind in bpf/dns.h

MAX_NAME_WIRE = 255  # RFC 1035 2.3.4, length bytes and the root included
MAX_CHAIN = 16  # CNAME links followed from the question
MAX_TCP_MESSAGE = 65535 + 2
DEFAULT_RINGBUF = 2 << 20
PENDING_SECONDS = 60.0  # a query unanswered for this long is forgotten
_LABEL_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_HEADER = struct.Struct("!6H")
_RR_FIXED = struct.Struct("!HHIH")
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


# ---- the parser: pure, never raises on any bytes ------------------------------------

class Question(NamedTuple):
    id: int
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int


def read_name(msg: bytes, off: int) -> tuple[str, int] | None:
    """The name at ``off`` and the offset just after it (after its first pointer, if
    compressed), or None if it is malformed. A pointer must point before the start of
    the labels it ends, so each jump goes further back and no loop is possible."""
    labels: list[str] = []
    end = None
    pos, limit, wire = off, off, 1
    size = len(msg)
    while True:
        if pos >= size:
            return None
        b = msg[pos]
        if b >= 0xC0:
            if pos + 1 >= size:
                return None
            target = (b & 0x3F) << 8 | msg[pos + 1]
            if end is None:
                end = pos + 2
            if target >= limit:
                return None
            pos = limit = target
            continue
        if b >= 0x40:  # the extended label types (0x40, 0x80) are not used in answers
            return None
        if b == 0:
            return ".".join(labels).lower(), end if end is not None else pos + 1
        label = msg[pos + 1 : pos + 1 + b]
        wire += b + 1
        if len(label) != b or wire > MAX_NAME_WIRE or not _LABEL_BYTES.issuperset(label):
            return None
        labels.append(label.decode("ascii"))
        pos += 1 + b


def _question(msg: bytes) -> tuple[Question, int] | None:
    """The header's ID and the one question, and where the records start."""
    if len(msg) < 12:
        return None
    qid, _flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(msg)
    if qdcount != 1:
        return None
    got = read_name(msg, 12)
    if got is None or not got[0]:
        return None
    name, off = got
    if off + 4 > len(msg):
        return None
    qtype, qclass = struct.unpack_from("!HH", msg, off)
    return Question(qid, name, qtype, qclass), off + 4


def parse_query(msg: bytes) -> Question | None:
    """A standard query's ID and question, or None."""
    if len(msg) < 12:
        return None
    flags = _HEADER.unpack_from(msg)[1]
    if flags & 0x8000 or (flags >> 11) & 0xF:  # an answer, or not opcode QUERY
        return None
    got = _question(msg)
    return got[0] if got else None


def parse_answer(msg: bytes, complete: bool = True) -> tuple[Question, list[tuple[int, bytes]]] | None:
    """The question of a successful answer and the addresses (family, packed) the
    answer gives for it, following CNAMEs from the question name; None unless the
    message is a well-formed NOERROR answer of class IN.

    ``complete=False`` says ``msg`` is only the start of the message (the rest was not
    captured): the records that lie wholly inside it are used, the cut one is not.
    """
    if len(msg) < 12:
        return None
    _qid, flags, _qd, ancount, _ns, _ar = _HEADER.unpack_from(msg)
    # QR set, opcode QUERY, not truncated (TC: the client asks again over TCP), RCODE 0
    if not flags & 0x8000 or (flags >> 11) & 0xF or flags & 0x0200 or flags & 0xF:
        return None
    got = _question(msg)
    if got is None:
        return None
    question, off = got
    if question.qclass != CLASS_IN:
        return None
    wanted = {TYPE_A: (TYPE_A,), TYPE_AAAA: (TYPE_AAAA,), TYPE_ANY: (TYPE_A, TYPE_AAAA)}.get(question.qtype, ())
    cnames: dict[str, str] = {}
    addresses: list[tuple[str, int, bytes]] = []
    for _ in range(ancount):
        rr = _record(msg, off)
        if rr is None:
            if complete:
                return None
            break
        owner, rtype, rclass, rdata_off, rdlen, off = rr
        if rclass != CLASS_IN:
            continue
        if rtype == TYPE_CNAME:
            target = read_name(msg, rdata_off)
            if target is None or target[1] != rdata_off + rdlen or not target[0]:
                return None
            if owner in cnames:  # two aliases for one name: not a chain
                return None
            cnames[owner] = target[0]
        elif rtype in (TYPE_A, TYPE_AAAA):
            if rdlen != (4 if rtype == TYPE_A else 16):
                return None
            if rtype in wanted:
                family = AF_INET if rtype == TYPE_A else AF_INET6
                addresses.append((owner, family, bytes(msg[rdata_off : rdata_off + rdlen])))
    chain, name = {question.name}, question.name
    for _ in range(MAX_CHAIN):
        name = cnames.get(name, "")
        if not name or name in chain:
            break
        chain.add(name)
    return question, [(family, raw) for owner, family, raw in addresses if owner in chain]


def _record(msg: bytes, off: int) -> tuple[str, int, int, int, int, int] | None:
    """(owner, type, class, rdata offset, rdata length, next offset) of the resource
    record at ``off``, or None if it does not lie wholly inside ``msg``."""
    got = read_name(msg, off)
    if got is None:
        return None
    owner, off = got
    if off + _RR_FIXED.size > len(msg):
        return None
    rtype, rclass, _ttl, rdlen = _RR_FIXED.unpack_from(msg, off)
    off += _RR_FIXED.size
    if off + rdlen > len(msg):
        return None
    return owner, rtype, rclass, off, rdlen, off + rdlen


def address_key(family: int, addr: bytes | str) -> tuple[int, bytes] | None:
    """(family, packed address) as names are filed: IPv4 in 4 bytes (also when it came
    as the kernel's 16-byte field, or as an IPv4-mapped IPv6 address), IPv6 in 16."""
    try:
        if isinstance(addr, str):
            family = AF_INET6 if ":" in addr else AF_INET
            addr = socket.inet_pton(family, addr)
    except OSError:
        return None
    if family == AF_INET6:
        raw = bytes(addr[:16])
        if len(raw) != 16:
            return None
        return (AF_INET, raw[12:]) if raw[:12] == _V4_MAPPED else (AF_INET6, raw)
    raw = bytes(addr[:4])
    return (AF_INET, raw) if len(raw) == 4 else None


# ---- what the messages teach -----------------------------------------------------------

class _Flow:
    """One TCP connection to a DNS server: the stream's next expected byte (once the
    SYN-ACK is seen) and the bytes not yet forming a whole message."""

    __slots__ = ("next_seq", "buf")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.buf = bytearray()


class Names:
    """The address -> name table and the matching of answers to queries, fed with the
    BPF side's records (header decoded, payload bytes); no kernel involved, so it can be
    tested with crafted messages."""

    def __init__(self, max_names: int = 4096, max_pending: int = 4096, max_flows: int = 256) -> None:
        if max_names < 1:
            raise ValueError("max_names must be at least 1")
        self.max_names, self.max_pending, self.max_flows = max_names, max_pending, max_flows
        self._names: OrderedDict[tuple[int, int, bytes], str] = OrderedDict()
        self._latest: dict[tuple[int, bytes], tuple[int, int, bytes]] = {}  # (family, addr) -> newest key
        self._pending: OrderedDict[tuple[Any, ...], tuple[Question, int]] = OrderedDict()
        self._flows: OrderedDict[tuple[Any, ...], _Flow] = OrderedDict()
        self.counts = {"answers": 0, "tcp_answers": 0, "names_learnt": 0, "unmatched_answers": 0, "malformed": 0,
                       "partial_answers": 0, "tcp_streams_lost": 0}

    def __len__(self) -> int:
        return len(self._names)

    def name_of(self, family: int, addr: bytes | str, netns: int | None) -> str | None:
        """The name last learnt for ``addr`` in namespace ``netns``; with ``netns=None``
        (rows that carry no namespace), the name last learnt for it in any namespace."""
        if family == AF_INET and type(addr) is bytes and netns is not None:  # an event's field, quickly
            full: tuple[int, int, bytes] | None = (netns, AF_INET, addr[:4])
        else:
            key = address_key(family, addr)
            if key is None:
                return None
            full = (netns, *key) if netns is not None else self._latest.get(key)
        if full is None:
            return None
        name = self._names.get(full)
        if name is not None:
            self._names.move_to_end(full)
        return name

    def learn(self, netns: int, family: int, addr: bytes, name: str) -> None:
        filed = address_key(family, addr)
        if filed is None:
            return
        key = (netns, *filed)
        self._names[key] = name
        self._names.move_to_end(key)
        self._latest[filed] = key
        self.counts["names_learnt"] += 1
        while len(self._names) > self.max_names:
            old, _ = self._names.popitem(last=False)
            if self._latest.get(old[1:]) == old:
                del self._latest[old[1:]]

    def feed(self, h: Any, payload: bytes) -> None:
        """One record: ``h`` the decoded ``struct dns_msg``, ``payload`` its bytes."""
        if h.proto == IPPROTO_UDP:
            self._udp(h, payload)
        elif h.proto == IPPROTO_TCP:
            self._tcp(h, payload)

    # -- UDP: an answer must match a query from the same socket ----------------------------
    def _udp(self, h: Any, payload: bytes) -> None:
        if h.kind == SENT:
            q = parse_query(payload)
            if q is None:
                return
            key = (h.netns, h.family, h.saddr, h.sport, h.daddr, h.dport, q.id)
            self._pending[key] = (q, h.ts_ns)
            self._pending.move_to_end(key)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
            return
        if len(payload) < 2:
            self.counts["malformed"] += 1
            return
        qid = payload[0] << 8 | payload[1]
        asked = self._pending.pop((h.netns, h.family, h.daddr, h.dport, h.saddr, h.sport, qid), None)
        if asked is None or h.ts_ns - asked[1] > PENDING_SECONDS * 1e9:
            self.counts["unmatched_answers"] += 1
            return
        complete = h.caplen >= h.wirelen
        got = parse_answer(payload, complete)
        if got is None or got[0] != asked[0]:
            self.counts["malformed"] += 1
            return
        if not complete:
            self.counts["partial_answers"] += 1
        self._answer(h.netns, got)

    def _answer(self, netns: int, got: tuple[Question, list[tuple[int, bytes]]]) -> None:
        question, addresses = got
        self.counts["answers"] += 1
        for family, raw in addresses:
            self.learn(netns, family, raw, question.name)

    # -- TCP: answers in order on a stream a local socket opened ----------------------------
    def _tcp(self, h: Any, payload: bytes) -> None:
        if h.kind == SENT:  # the client's SYN
            if h.tcp_flags & TCP_SYN and not h.tcp_flags & TCP_ACK:
                key = (h.netns, h.family, h.saddr, h.sport, h.daddr, h.dport)
                self._flows[key] = _Flow()
                self._flows.move_to_end(key)
                while len(self._flows) > self.max_flows:
                    self._flows.popitem(last=False)
            return
        key = (h.netns, h.family, h.daddr, h.dport, h.saddr, h.sport)
        flow = self._flows.get(key)
        if flow is None:
            return
        if h.tcp_flags & TCP_SYN:
            if h.tcp_flags & TCP_ACK and flow.next_seq is None:
                flow.next_seq = (h.seq + 1) & 0xFFFFFFFF
            return
        if flow.next_seq is not None and h.wirelen:
            behind = (flow.next_seq - h.seq) & 0xFFFFFFFF
            if behind and behind < 1 << 31 and behind >= h.wirelen:
                pass  # a retransmission of bytes already taken
            elif behind or h.caplen < h.wirelen:  # a gap, an overlap, or bytes not captured
                self.counts["tcp_streams_lost"] += 1
                del self._flows[key]
                return
            else:
                flow.buf += payload
                flow.next_seq = (flow.next_seq + h.wirelen) & 0xFFFFFFFF
                self._messages(h.netns, flow)
                if len(flow.buf) > MAX_TCP_MESSAGE:
                    del self._flows[key]
                    return
        if h.tcp_flags & (TCP_FIN | TCP_RST):
            self._flows.pop(key, None)

    def _messages(self, netns: int, flow: _Flow) -> None:
        """Every whole message at the front of the stream (2-byte length, then it)."""
        buf = flow.buf
        while len(buf) >= 2:
            size = buf[0] << 8 | buf[1]
            if len(buf) < 2 + size:
                return
            got = parse_answer(bytes(buf[2 : 2 + size]))
            del buf[: 2 + size]
            if got is None:
                self.counts["malformed"] += 1
            else:
                self.counts["tcp_answers"] += 1
                self._answer(netns, got)


# ---- the kernel side ---------------------------------------------------------------------

def _sockets_allowed() -> bool:
    """``NETSNOOP_HOOKS`` (the loader's list of allowed hook kinds) rules the socket-level
    programs out unless it names ``cgroup_skb``."""
    listed = [k for k in os.environ.get("NETSNOOP_HOOKS", "").split(",") if k]
    return not listed or "cgroup_skb" in listed


class Watcher:
    """Loads the DNS programs, reads their ring in a background thread and on every
    lookup, and answers ``name_of``. A context manager: everything is detached on exit.

    ``name_of(family, addr, netns)`` takes the family and address as an event carries
    them (the 16-byte field, IPv4 in its first 4 bytes) or an address string, and the
    inode of the row's network namespace.

    The programs, best first: ``cgroup_skb`` on the cgroup v2 root (``dns_sock.bpf.o``:
    UDP and TCP, only what local sockets send and receive, the cheapest per packet);
    else tracepoints on every packet (``dns.bpf.o``: UDP only, with the loader's usual
    fallback from tp_btf to the classic tracepoint), and ``fallback`` says why.
    ``NETSNOOP_HOOKS`` without ``cgroup_skb`` forces the tracepoints.
    """

    def __init__(self, max_names: int = 4096, ringbuf: int = DEFAULT_RINGBUF, interval: float = 0.1) -> None:
        self.names = Names(max_names=max_names)
        self.ringbuf = ringbuf
        self.interval = interval
        self.fallback: str | None = None
        self.hooks: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.obj: Any = None
        self._ring: Any = None

    def __enter__(self) -> "Watcher":
        from netsnoop.runner import LoadSpec

        self.obj = self._open_sockets() if _sockets_allowed() else None
        if self.obj is not None:
            self.hooks = {"received": "cgroup_skb", "sent": "cgroup_skb", "tcp": "cgroup_skb"}
        else:
            self.fallback = self.fallback or "NETSNOOP_HOOKS leaves out cgroup_skb"
            self.obj = LoadSpec("dns", max_entries={"events": self.ringbuf}).open()
            self.hooks = {**self.obj.chosen, "tcp": None}
        try:
            self._header = self.obj.decoder("dns_msg")
            self._ring = self.obj.ring_buffer()
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._run, name="netsnoop-dns", daemon=True)
        self._thread.start()
        return self

    def _open_sockets(self) -> Any:
        """``dns_sock.bpf.o`` attached to the cgroup v2 root, or None (``fallback``)."""
        from netsnoop import kernel
        from netsnoop.errors import LoadError, MissingFeature
        from netsnoop.libbpf import errno_message, last_errno, lib
        from netsnoop.loader import BPFObject
        from netsnoop.options import cgroup2_mounts

        kernel.require_privileges()
        mounts = cgroup2_mounts()
        if not mounts:
            self.fallback = "no cgroup v2 hierarchy is mounted: DNS over UDP only, from tracepoints"
            return None
        attach = lib().bpf_program__attach_cgroup
        obj = BPFObject("dns_sock", max_entries={"events": self.ringbuf})
        try:
            obj.load()
            fd = os.open(mounts[0], os.O_RDONLY | os.O_DIRECTORY)
            try:
                for prog in obj.programs():
                    link = attach(prog.handle, fd)
                    if not link:
                        raise LoadError(f"attaching {prog.name} to {mounts[0]} failed: {errno_message(last_errno())}")
                    obj.links.append(link)
            finally:
                os.close(fd)
        except (LoadError, MissingFeature, OSError) as e:
            obj.close()
            self.fallback = f"{e}: DNS over UDP only, from tracepoints"
            return None
        return obj

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._lock:
            if self.obj is not None:
                self.obj.close()
            self.obj = self._ring = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> int:
        """Take in what the kernel has handed over so far; how many records."""
        with self._lock:
            return self._drain()

    def _drain(self) -> int:
        if self._ring is None:
            return 0
        records = self._ring.consume()
        decode, size, feed = self._header.decode, self._header.size, self.names.feed
        for raw in records:
            h = decode(raw)
            feed(h, raw[size : size + h.caplen])
        return len(records)

    def name_of(self, family: int, addr: bytes | str, netns: int | None) -> str | None:
        """The name this machine last resolved to ``addr`` in namespace ``netns``, or None.
        ``netns=None`` is for rows that carry no namespace: the newest name in any."""
        with self._lock:
            self._drain()
            return self.names.name_of(family, addr, netns)

    def stats(self) -> dict[str, Any]:
        """For the summary: what was learnt and what was refused, and the ring's losses."""
        with self._lock:
            self._drain()
            lost = self.obj.lost_events() if self.obj is not None else 0
            return {**self.names.counts, "names": len(self.names), "dns_lost_events": lost}
