"""netsnoop.dns: names learnt from DNS answers.

Unit tests feed the parser and the table crafted messages (built here by a small
encoder of the test's own, not by the code under test). Integration tests run a DNS
server of the test's own inside a private namespace and resolve through it from the
other one, with glibc's resolver (getaddrinfo, the namespace's own resolv.conf) and
with raw queries answered by hostile messages.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any, Iterator, Sequence

import pytest
from helpers import NetnsPair, Trace

from netsnoop.dns import (
    IPPROTO_TCP, IPPROTO_UDP, RECEIVED, SENT, TCP_ACK, TCP_SYN, Names, Watcher, address_key, parse_answer,
    parse_query, read_name,
)

integration = pytest.mark.integration
A, CNAME, AAAA = 1, 5, 28


# ---- an encoder of the test's own ------------------------------------------------------

def wire(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return b"".join(bytes([len(label)]) + label for label in raw.split(b".") if label) + b"\0"


def rr(owner: bytes, rtype: int, rdata: bytes, rclass: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, 300, len(rdata)) + rdata


def message(qid: int, name: str, qtype: int, records: list[bytes], flags: int = 0x8180,
            ancount: int | None = None) -> bytes:
    count = len(records) if ancount is None else ancount
    return (
        struct.pack("!6H", qid, flags, 1, count, 0, 0) + wire(name) + struct.pack("!HH", qtype, 1) + b"".join(records)
    )


def query(qid: int, name: str, qtype: int = A) -> bytes:
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + wire(name) + struct.pack("!HH", qtype, 1)


def v4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


QNAME_PTR = b"\xc0\x0c"  # the question's name, at offset 12


# ---- the parser ----------------------------------------------------------------------

def test_a_record_names_its_address() -> None:
    got = parse_answer(message(7, "Web.Example.com", A, [rr(QNAME_PTR, A, v4("192.0.2.1"))]))
    assert got is not None
    assert got[0].name == "web.example.com" and got[0].id == 7
    assert got[1] == [(socket.AF_INET, v4("192.0.2.1"))]


def test_cname_chain_maps_to_the_question_name_and_ignores_records_off_the_chain() -> None:
    records = [
        rr(QNAME_PTR, CNAME, wire("mid.cdn.net")),
        rr(wire("mid.cdn.net"), CNAME, wire("edge.cdn.net")),
        rr(wire("edge.cdn.net"), A, v4("198.51.100.7")),
        rr(wire("edge.cdn.net"), A, v4("198.51.100.8")),
        rr(wire("stray.example"), A, v4("203.0.113.9")),  # not on the chain: no name
    ]
    got = parse_answer(message(1, "www.shop.example", A, records))
    assert got is not None and got[0].name == "www.shop.example"
    assert sorted(got[1]) == [(socket.AF_INET, v4("198.51.100.7")), (socket.AF_INET, v4("198.51.100.8"))]


def test_aaaa_and_compressed_cname_target() -> None:
    # the CNAME target is "edge" + a pointer to the question's "example.org"
    qname = "www.example.org"
    target = b"\x04edge\xc0\x10"  # offset 16: "example.org" inside the question
    got = parse_answer(
        message(2, qname, AAAA, [rr(QNAME_PTR, CNAME, target), rr(b"\x04edge\xc0\x10", AAAA, v6("2001:db8::5"))])
    )
    assert got is not None and got[1] == [(socket.AF_INET6, v6("2001:db8::5"))] and got[0].name == qname


@pytest.mark.parametrize("flags", [0x0100, 0x8183, 0x8380, 0x8980])  # a query, NXDOMAIN, truncated, opcode 1
def test_only_successful_whole_answers_count(flags: int) -> None:
    assert parse_answer(message(3, "a.example", A, [rr(QNAME_PTR, A, v4("192.0.2.3"))], flags=flags)) is None


def hostile_messages() -> dict[str, bytes]:
    good_a = rr(QNAME_PTR, A, v4("192.0.2.66"))
    base = message(9, "h.example", A, [good_a])
    head = struct.pack("!6H", 9, 0x8180, 1, 1, 0, 0) + wire("h.example") + struct.pack("!HH", A, 1)
    here = struct.pack("!H", 0xC000 | len(head))  # a pointer to where the record starts
    fixed_a = struct.pack("!HHIH", A, 1, 1, 4) + v4("192.0.2.66")
    return {
        "pointer to itself": head + here + fixed_a,
        "pointer loop through a label": head + b"\x01x" + here + fixed_a,
        "forward pointer": head + b"\xc0\x40" + fixed_a,
        "pointer past the end": head + b"\xff\xff" + fixed_a,
        "control bytes in a label": message(9, "h.example", A, [rr(QNAME_PTR, CNAME, wire(b"ev\x1b[2Jil.example")),
                                                                rr(wire(b"ev\x1b[2Jil.example"), A, v4("192.0.2.66"))]),
        "NUL in a label": message(9, "h.example", A, [rr(QNAME_PTR, CNAME, b"\x03a\x00b\x00"),
                                                      rr(b"\x03a\x00b\x00", A, v4("192.0.2.66"))]),
        "rdata past the end": base[:-2],
        "rdlength 16 for A": message(9, "h.example", A, [rr(QNAME_PTR, A, v4("192.0.2.66") * 4)]),
        "more records than sent": message(9, "h.example", A, [good_a], ancount=65535),
        "label past the end": message(9, "h.example", A, [b"\x3fabc"]),
        "extended label type": message(9, "h.example", A, [b"\x41" + b"a" * 10 + b"\0" + fixed_a]),
        "name longer than 255": message(9, "h.example", A, [
            rr(b"".join(b"\x3f" + c * 63 for c in (b"a", b"b", b"c", b"d")) + b"\0", A, v4("192.0.2.66"))]),
        "two questions": struct.pack("!6H", 9, 0x8180, 2, 1, 0, 0) + wire("h.example") + b"\0\1\0\1" + wire("h.example")
        + b"\0\1\0\1" + good_a,
        "empty": b"",
        "header only": struct.pack("!6H", 9, 0x8180, 1, 1, 0, 0),
        "class CH question": struct.pack("!6H", 9, 0x8180, 1, 1, 0, 0) + wire("h.example") + struct.pack("!HH", A, 3)
        + good_a,
    }


@pytest.mark.parametrize("kind", sorted(hostile_messages()))
def test_hostile_answers_teach_nothing(kind: str) -> None:
    msg = hostile_messages()[kind]
    assert parse_answer(msg) is None, kind
    # told the message was cut short, only records that lie wholly inside may count
    partial = parse_answer(msg, complete=False)
    cut_after_a_whole_record = {"more records than sent"}
    assert partial is None or not partial[1] or kind in cut_after_a_whole_record, kind


def test_cut_messages_keep_only_their_whole_records() -> None:
    msg = message(4, "a.example", A, [rr(QNAME_PTR, A, v4("192.0.2.4")), rr(QNAME_PTR, A, v4("192.0.2.5"))])
    assert parse_answer(msg[:-3]) is None  # a message that claims to be whole: malformed
    got = parse_answer(msg[:-3], complete=False)
    assert got is not None and got[1] == [(socket.AF_INET, v4("192.0.2.4"))]


def test_random_bytes_never_raise_and_never_name_badly() -> None:
    rng = random.Random(1234)
    good = message(
        5, "ok.example", A, [rr(QNAME_PTR, CNAME, wire("x.example")), rr(wire("x.example"), A, v4("192.0.2.8"))]
    )
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
    for i in range(20000):
        if i % 2:
            msg = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        else:
            buf = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] = rng.getrandbits(8)
            msg = bytes(buf[: rng.randrange(len(buf) + 1)])
        for complete in (True, False):
            got = parse_answer(msg, complete)
            if got is not None:
                assert set(got[0].name) <= allowed and got[0].name
        parse_query(msg)
        read_name(msg, rng.randrange(0, 20))


def test_queries_are_parsed_and_answers_are_not_queries() -> None:
    q = parse_query(query(0x1234, "Mixed.Case.example", AAAA))
    assert q is not None and (q.id, q.name, q.qtype, q.qclass) == (0x1234, "mixed.case.example", AAAA, 1)
    assert parse_query(message(1, "a.example", A, [])) is None


def test_address_keys() -> None:
    assert address_key(socket.AF_INET, v4("10.0.0.1") + b"\0" * 12) == (socket.AF_INET, v4("10.0.0.1"))
    assert address_key(socket.AF_INET6, v6("::ffff:10.0.0.1")) == (socket.AF_INET, v4("10.0.0.1"))
    assert address_key(socket.AF_INET6, "2001:db8::1") == (socket.AF_INET6, v6("2001:db8::1"))
    assert address_key(socket.AF_INET, "not an address") is None
    assert address_key(socket.AF_INET6, b"\1\2") is None


# ---- the table: queries, answers, namespaces, bounds --------------------------------

CLIENT_ADDR, SERVER_ADDR = v4("10.0.0.2") + bytes(12), v4("10.0.0.53") + bytes(12)


def rec(kind: int, netns: int, payload: bytes, cport: int = 40000, proto: int = IPPROTO_UDP, seq: int = 0,
        flags: int = 0, ts: int = 1, caplen: int | None = None) -> tuple[Any, bytes]:
    src, sport, dst, dport = ((CLIENT_ADDR, cport, SERVER_ADDR, 53) if kind == SENT
                              else (SERVER_ADDR, 53, CLIENT_ADDR, cport))
    h = SimpleNamespace(ts_ns=ts, netns=netns, seq=seq, family=socket.AF_INET, sport=sport, dport=dport,
                        caplen=len(payload) if caplen is None else caplen, wirelen=len(payload), kind=kind,
                        proto=proto, tcp_flags=flags, saddr=src, daddr=dst)
    return h, payload[: h.caplen]


def feed(names: Names, *records: tuple[Any, bytes]) -> None:
    for h, payload in records:
        names.feed(h, payload)


def answer_a(qid: int, name: str, addr: str) -> bytes:
    return message(qid, name, A, [rr(QNAME_PTR, A, v4(addr))])


def test_an_answer_counts_only_after_its_query() -> None:
    names = Names()
    feed(names, rec(RECEIVED, 1, answer_a(10, "forged.example", "192.0.2.10")))  # nobody asked
    feed(names, rec(SENT, 1, query(11, "asked.example")), rec(RECEIVED, 1, answer_a(11, "other.example", "192.0.2.11")))
    feed(names, rec(SENT, 1, query(12, "real.example")), rec(RECEIVED, 1, answer_a(13, "real.example", "192.0.2.12")))
    feed(names, rec(SENT, 1, query(14, "real.example"), cport=40001),
         rec(RECEIVED, 1, answer_a(14, "real.example", "192.0.2.13"), cport=40002),  # another socket
         rec(RECEIVED, 1, answer_a(14, "real.example", "192.0.2.14"), cport=40001))
    assert names.name_of(socket.AF_INET, "192.0.2.10", 1) is None
    assert names.name_of(socket.AF_INET, "192.0.2.11", 1) is None  # question differs from the one asked
    assert names.name_of(socket.AF_INET, "192.0.2.12", 1) is None  # wrong ID
    assert names.name_of(socket.AF_INET, "192.0.2.13", 1) is None  # wrong port
    assert names.name_of(socket.AF_INET, "192.0.2.14", 1) == "real.example"
    assert names.counts["unmatched_answers"] == 3 and names.counts["malformed"] == 1
    feed(names, rec(RECEIVED, 1, answer_a(14, "real.example", "192.0.2.15"), cport=40001))  # a second answer
    assert names.name_of(socket.AF_INET, "192.0.2.15", 1) is None


def test_names_are_per_namespace_and_the_last_answer_wins() -> None:
    names = Names()
    feed(names, rec(SENT, 1, query(1, "one.example")), rec(RECEIVED, 1, answer_a(1, "one.example", "192.0.2.1")))
    feed(names, rec(SENT, 2, query(1, "two.example")), rec(RECEIVED, 2, answer_a(1, "two.example", "192.0.2.1")))
    assert names.name_of(socket.AF_INET, "192.0.2.1", 1) == "one.example"
    assert names.name_of(socket.AF_INET, "192.0.2.1", 2) == "two.example"
    assert names.name_of(socket.AF_INET, "192.0.2.1", 3) is None
    assert names.name_of(socket.AF_INET, "192.0.2.1", None) == "two.example"  # a row with no namespace: the newest
    feed(names, rec(SENT, 1, query(2, "uno.example")), rec(RECEIVED, 1, answer_a(2, "uno.example", "192.0.2.1")))
    assert names.name_of(socket.AF_INET, v4("192.0.2.1") + bytes(12), 1) == "uno.example"
    assert names.name_of(socket.AF_INET, v4("192.0.2.1"), None) == "uno.example"
    assert names.name_of(socket.AF_INET, "192.0.2.2", None) is None


def test_the_table_is_bounded_and_forgets_the_least_recently_used() -> None:
    names = Names(max_names=3)
    for i in range(1, 6):
        feed(names, rec(SENT, 1, query(i, f"n{i}.example")),
             rec(RECEIVED, 1, answer_a(i, f"n{i}.example", f"192.0.2.{i}")))
        if i == 3:
            assert names.name_of(socket.AF_INET, "192.0.2.1", 1) == "n1.example"  # used: kept
    assert len(names) == 3
    assert [names.name_of(socket.AF_INET, f"192.0.2.{i}", 1) for i in range(1, 6)] == [
        "n1.example", None, None, "n4.example", "n5.example"]
    assert [names.name_of(socket.AF_INET, f"192.0.2.{i}", None) for i in range(1, 6)] == [
        "n1.example", None, None, "n4.example", "n5.example"]
    assert len(names._latest) == 3  # the any-namespace index is bounded with the table


def test_pending_queries_are_bounded() -> None:
    names = Names(max_pending=2)
    for i in range(3):
        feed(names, rec(SENT, 1, query(i, "p.example"), cport=41000 + i))
    feed(names, rec(RECEIVED, 1, answer_a(0, "p.example", "192.0.2.50"), cport=41000))
    feed(names, rec(RECEIVED, 1, answer_a(2, "p.example", "192.0.2.52"), cport=41002))
    assert names.name_of(socket.AF_INET, "192.0.2.50", 1) is None
    assert names.name_of(socket.AF_INET, "192.0.2.52", 1) == "p.example"


def tcp_stream(*messages: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in messages)


def test_tcp_answers_are_read_in_stream_order_across_segments() -> None:
    names = Names()
    stream = tcp_stream(answer_a(1, "t1.example", "192.0.2.21"), answer_a(2, "t2.example", "192.0.2.22"))
    isn = 0xFFFFFFF0  # the sequence numbers wrap inside the stream
    feed(names, rec(SENT, 1, b"", proto=IPPROTO_TCP, flags=TCP_SYN),
         rec(RECEIVED, 1, b"", proto=IPPROTO_TCP, flags=TCP_SYN | TCP_ACK, seq=isn))
    assert len(stream) == 2 * 46
    first, second = stream[:1], stream[1:50]  # the first message ends inside the second segment
    feed(names, rec(RECEIVED, 1, first, proto=IPPROTO_TCP, flags=TCP_ACK, seq=isn + 1))
    feed(names, rec(RECEIVED, 1, first, proto=IPPROTO_TCP, flags=TCP_ACK, seq=isn + 1))  # retransmitted
    feed(names, rec(RECEIVED, 1, second, proto=IPPROTO_TCP, flags=TCP_ACK, seq=(isn + 2) & 0xFFFFFFFF))
    assert names.name_of(socket.AF_INET, "192.0.2.21", 1) == "t1.example"
    assert names.name_of(socket.AF_INET, "192.0.2.22", 1) is None  # not all there yet
    rest = stream[51:]
    feed(names, rec(RECEIVED, 1, rest, proto=IPPROTO_TCP, flags=TCP_ACK, seq=(isn + 52) & 0xFFFFFFFF))  # a gap
    assert names.name_of(socket.AF_INET, "192.0.2.22", 1) is None
    assert names.counts["tcp_streams_lost"] == 1


def test_tcp_needs_a_local_syn_and_a_whole_capture() -> None:
    names = Names()
    stream = tcp_stream(answer_a(1, "t.example", "192.0.2.30"))
    feed(names, rec(RECEIVED, 1, b"", proto=IPPROTO_TCP, flags=TCP_SYN | TCP_ACK, seq=100),
         rec(RECEIVED, 1, stream, proto=IPPROTO_TCP, flags=TCP_ACK, seq=101))  # no SYN of ours
    assert names.name_of(socket.AF_INET, "192.0.2.30", 1) is None
    feed(names, rec(SENT, 1, b"", proto=IPPROTO_TCP, flags=TCP_SYN),
         rec(RECEIVED, 1, b"", proto=IPPROTO_TCP, flags=TCP_SYN | TCP_ACK, seq=100),
         rec(RECEIVED, 1, stream, proto=IPPROTO_TCP, flags=TCP_ACK, seq=101, caplen=10))
    assert names.name_of(socket.AF_INET, "192.0.2.30", 1) is None
    feed(names, rec(SENT, 1, b"", proto=IPPROTO_TCP, flags=TCP_SYN),
         rec(RECEIVED, 1, b"", proto=IPPROTO_TCP, flags=TCP_SYN | TCP_ACK, seq=100),
         rec(RECEIVED, 1, stream, proto=IPPROTO_TCP, flags=TCP_ACK, seq=101))
    assert names.name_of(socket.AF_INET, "192.0.2.30", 1) == "t.example"


# ---- integration: a DNS server of our own in one namespace, clients in the other -----

# Runs in the server's namespace: answers UDP and TCP on port 53 (IPv4 and IPv6) from
# the zone given as JSON, and accepts TCP connections on the application port.
RESPONDER = r"""
import json, select, socket, struct, sys, threading
zone, app_port, udp_hosts = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3:5]

def wire(name):
    return b"".join(bytes([len(l)]) + l for l in name.encode("latin-1").split(b".") if l) + b"\0"

def rr(owner, rtype, rdata):
    return owner + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata

def header(qid, count, flags=0x8180):
    return struct.pack("!6H", qid, flags, 1, count, 0, 0)

def answer(msg):
    qid = struct.unpack_from("!H", msg)[0]
    pos, labels = 12, []
    while msg[pos]:
        labels.append(msg[pos + 1 : pos + 1 + msg[pos]].decode())
        pos += 1 + msg[pos]
    question = msg[12 : pos + 5]
    qtype = struct.unpack_from("!H", msg, pos + 1)[0]
    name = ".".join(labels).lower()
    entry = zone.get(name, {})
    ptr = b"\xc0\x0c"
    A4 = lambda a: socket.inet_pton(socket.AF_INET, a)
    hostile = entry.get("hostile")
    if hostile == "loop":       # the record's owner points at itself
        off = 12 + len(question)
        return (header(qid, 1) + question + struct.pack("!H", 0xC000 | off) + struct.pack("!HHIH", 1, 1, 60, 4)
                + A4(entry["addr"]))
    if hostile == "control":    # a CNAME to a name with terminal escapes
        bad = "x\x1b[31mred\x07.test"
        return header(qid, 2) + question + rr(ptr, 5, wire(bad)) + rr(wire(bad), 1, A4(entry["addr"]))
    if hostile == "badlen":     # rdlength runs past the end
        return header(qid, 1) + question + ptr + struct.pack("!HHIH", 1, 1, 60, 40) + A4(entry["addr"])
    if hostile == "count":      # claims more records than it has
        return header(qid, 500) + question + rr(ptr, 1, A4(entry["addr"]))
    if hostile == "forge":      # first an answer with another ID, then the real one
        forged = header(qid ^ 0x5555, 1) + question + rr(ptr, 1, A4(entry["forged"]))
        return [forged, header(qid, 1) + question + rr(ptr, 1, A4(entry["addr"]))]
    records, owner = [], ptr
    for target in entry.get("cname", []):
        records.append(rr(owner, 5, wire(target)))
        owner = wire(target)
    if qtype == 1:
        records += [rr(owner, 1, A4(a)) for a in entry.get("a", [])]
    if qtype == 28:
        records += [rr(owner, 28, socket.inet_pton(socket.AF_INET6, a)) for a in entry.get("aaaa", [])]
    records += [rr(wire(n), 1, A4(a)) for n, a in entry.get("extra", [])]
    return header(qid, len(records), 0x8180 if entry else 0x8183) + question + b"".join(records)

def replies(msg):
    out = answer(msg)
    return out if isinstance(out, list) else [out]

def udp(sock):
    while True:
        msg, peer = sock.recvfrom(4096)
        for reply in replies(msg):
            sock.sendto(reply, peer)

def tcp_client(conn):
    with conn:
        buf = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack_from("!H", buf)[0]:
                size = struct.unpack_from("!H", buf)[0]
                msg, buf = buf[2 : 2 + size], buf[2 + size :]
                for reply in replies(msg):
                    conn.sendall(struct.pack("!H", len(reply)) + reply)

def tcp(sock, handler):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()

def app(conn):
    conn.close()

# UDP on the server's own addresses, so that answers leave from the address asked
for family, host, udp_host in ((socket.AF_INET, "0.0.0.0", udp_hosts[0]), (socket.AF_INET6, "::", udp_hosts[1])):
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.bind((udp_host, 53))
    threading.Thread(target=udp, args=(u,), daemon=True).start()
    for port, handler in ((53, tcp_client), (app_port, app)):
        t = socket.socket(family, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        t.bind((host, port))
        t.listen(64)
        threading.Thread(target=tcp, args=(t, handler), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# Runs in the client's namespace: resolves names with getaddrinfo (glibc, through the
# namespace's resolv.conf) and connects to what they resolve to; sends raw queries
# (ID, name) to the server and waits for what comes back; connects to bare addresses.
CLIENT = r"""
import json, socket, struct, sys
job, out = json.loads(sys.argv[1]), {"resolved": {}, "raw": {}}
for name, family in job["resolve"]:
    try:
        infos = socket.getaddrinfo(name, job["port"], family, socket.SOCK_STREAM)
    except socket.gaierror as e:
        out["resolved"][name] = str(e)
        continue
    out["resolved"][name] = sorted({i[4][0] for i in infos})
    for info in infos:
        with socket.socket(info[0], socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(info[4])
            s.sendall(b"x" * job["send"])
for qid, name in job["raw"]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        q = struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
        s.sendto(q, (job["server"], 53))
        got = []
        try:
            while len(got) < job.get("replies", {}).get(name, 1):
                got.append(len(s.recv(4096)))
        except socket.timeout:
            pass
        out["raw"][name] = got
for addr in job["bare"]:
    with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect((addr, job["port"]))
        s.sendall(b"x" * job["send"])
print(json.dumps(out), flush=True)
"""

APP_PORT = 8053


class DnsNet:
    """A NetnsPair whose namespace ``a`` runs the responder on ``zone`` and whose
    namespace ``b`` resolves through it (its own resolv.conf). ``host(i)`` is an extra
    address of ``a`` (10.77.N.i / fd77:N::i) that the zone's names point at."""

    def __init__(self, pair: NetnsPair, zone: dict[str, Any], server6: bool = False, tcp: bool = False) -> None:
        self.pair, self.zone, self.server6, self.tcp = pair, zone, server6, tcp

    def host(self, i: int, six: bool = False) -> str:
        return self.pair.addr6_a.rsplit(":", 1)[0] + f":{i:x}" if six else self.pair.addr_a.rsplit(".", 1)[0] + f".{i}"

    def netns(self, ns: str) -> int:
        return os.stat(f"/run/netns/{ns}").st_ino

    def __enter__(self) -> "DnsNet":
        p = self.pair
        for i in range(10, 50):
            p.exec(p.a, f"ip addr add {self.host(i)}/32 dev {p.dev_a}")
            p.exec(p.a, f"ip addr add {self.host(i, True)}/128 dev {p.dev_a} nodad")
        self.etc = f"/etc/netns/{p.b}"
        os.makedirs(self.etc, exist_ok=True)
        server = p.addr6_a if self.server6 else p.addr_a
        options = "options timeout:2 attempts:1" + (" use-vc" if self.tcp else "")
        with open(f"{self.etc}/resolv.conf", "w") as f:
            f.write(f"nameserver {server}\n{options}\n")
        self.proc = p.popen(
            p.a, [sys.executable, "-c", RESPONDER, json.dumps(self.zone), str(APP_PORT), p.addr_a, p.addr6_a]
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        assert self.proc.stdout.readline().strip() == "ready", self.proc.stderr.read()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.etc, ignore_errors=True)

    def client(self, resolve: Sequence[tuple[str, int]] = (), raw: Sequence[tuple[int, str]] = (),
               bare: Sequence[str] = (), replies: dict[str, int] | None = None, send: int = 0) -> dict[str, Any]:
        """``send``: bytes each connection sends before it closes."""
        job = {"resolve": list(resolve), "raw": list(raw), "bare": list(bare), "port": APP_PORT, "send": send,
               "server": self.pair.addr_a, "replies": replies or {}}
        out = subprocess.run(["ip", "netns", "exec", self.pair.b, sys.executable, "-c", CLIENT, json.dumps(job)],
                             capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout)


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    with NetnsPair() as p:
        yield p


@integration
@pytest.mark.parametrize("hooks", ["cgroup_skb", "tp_btf", "tracepoint"])
def test_names_from_udp_answers_in_a_namespace(pair: NetnsPair, hooks: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETSNOOP_HOOKS", hooks)
    probe = DnsNet(pair, {})
    zone = {
        "web.test": {"a": [probe.host(10)]},
        "alias.test": {"cname": ["mid.cdn.test", "edge.cdn.test"], "a": [probe.host(11), probe.host(12)],
                       "extra": [["stray.test", probe.host(13)]]},
        "six.test": {"aaaa": [probe.host(14, six=True)]},
        "trigger.test": {"hostile": "forge", "forged": probe.host(20), "addr": probe.host(21)},
        "loop.test": {"hostile": "loop", "addr": probe.host(22)},
        "control.test": {"hostile": "control", "addr": probe.host(23)},
        "badlen.test": {"hostile": "badlen", "addr": probe.host(24)},
        "count.test": {"hostile": "count", "addr": probe.host(25)},
    }
    with DnsNet(pair, zone) as net, Watcher() as names:
        assert names.hooks == {"received": hooks, "sent": hooks, "tcp": "cgroup_skb" if hooks == "cgroup_skb" else None}
        out = net.client(
            resolve=[("web.test", socket.AF_INET), ("alias.test", socket.AF_INET), ("six.test", socket.AF_INET6)],
            raw=[(0x1111, "trigger.test"), (0x2222, "loop.test"), (0x3333, "control.test"), (0x4444, "badlen.test"),
                 (0x5555, "count.test")],
            bare=[net.host(30)], replies={"trigger.test": 2})
        # what the client itself got: the independent record of what was resolved
        assert out["resolved"] == {"web.test": [net.host(10)], "alias.test": [net.host(11), net.host(12)],
                                   "six.test": [net.host(14, six=True)]}
        assert len(out["raw"]["trigger.test"]) == 2  # the forged answer and the real one both arrived
        b, a = net.netns(pair.b), net.netns(pair.a)
        name = lambda addr, ns=b: names.name_of(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr, ns)  # noqa: E731
        assert name(net.host(10)) == "web.test"
        assert name(net.host(11)) == name(net.host(12)) == "alias.test"
        assert name(net.host(14, six=True)) == "six.test"
        assert name(net.host(21)) == "trigger.test"
        # never resolved, off the CNAME chain, forged, or carried by hostile answers: no name
        for i in (13, 20, 22, 23, 24, 25, 30):
            assert name(net.host(i)) is None, i
        # the answers reached namespace b only
        assert name(net.host(10), a) is None
        stats = names.stats()
        assert stats["malformed"] >= 4 and stats["unmatched_answers"] >= 1 and stats["dns_lost_events"] == 0


@integration
@pytest.mark.parametrize("hooks", ["cgroup_skb", "tp_btf", "tracepoint"])
def test_names_from_udp_over_ipv6(pair: NetnsPair, hooks: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETSNOOP_HOOKS", hooks)
    probe = DnsNet(pair, {})
    zone = {"v6.test": {"cname": ["edge.v6.test"], "aaaa": [probe.host(18, six=True)]},
            "four.test": {"a": [probe.host(18)]}}
    with DnsNet(pair, zone, server6=True) as net, Watcher() as names:
        assert names.hooks["received"] == names.hooks["sent"] == hooks
        out = net.client(
            resolve=[("v6.test", socket.AF_INET6), ("four.test", socket.AF_INET)], bare=[net.host(19, six=True)]
        )
        assert out["resolved"] == {"v6.test": [net.host(18, six=True)], "four.test": [net.host(18)]}
        b = net.netns(pair.b)
        assert names.name_of(socket.AF_INET6, net.host(18, six=True), b) == "v6.test"
        assert names.name_of(socket.AF_INET, net.host(18), b) == "four.test"
        assert names.name_of(socket.AF_INET6, net.host(19, six=True), b) is None


@integration
def test_names_from_tcp_answers_over_ipv6(pair: NetnsPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETSNOOP_HOOKS", raising=False)
    probe = DnsNet(pair, {})
    zone = {"tcp.test": {"a": [probe.host(15)]},
            "chain.test": {"cname": ["c1.test"], "aaaa": [probe.host(16, six=True)]}}
    with DnsNet(pair, zone, server6=True, tcp=True) as net, Watcher() as names:
        out = net.client(resolve=[("tcp.test", socket.AF_INET), ("chain.test", socket.AF_INET6)], bare=[net.host(17)])
        assert out["resolved"] == {"tcp.test": [net.host(15)], "chain.test": [net.host(16, six=True)]}
        b = net.netns(pair.b)
        assert names.name_of(socket.AF_INET, net.host(15), b) == "tcp.test"
        assert names.name_of(socket.AF_INET6, net.host(16, six=True), b) == "chain.test"
        assert names.name_of(socket.AF_INET, net.host(17), b) is None
        assert names.hooks["tcp"] == "cgroup_skb" and names.stats()["tcp_answers"] >= 2


@integration
def test_the_watchers_table_stays_bounded(pair: NetnsPair) -> None:
    probe = DnsNet(pair, {})
    zone = {f"n{i}.test": {"a": [probe.host(30 + i)]} for i in range(6)}
    with DnsNet(pair, zone) as net, Watcher(max_names=3) as names:
        out = net.client(resolve=[(f"n{i}.test", socket.AF_INET) for i in range(6)])
        assert out["resolved"] == {f"n{i}.test": [net.host(30 + i)] for i in range(6)}
        b = net.netns(pair.b)
        assert len(names.names) <= 3 and names.name_of(socket.AF_INET, net.host(35), b) == "n5.test"
        assert [names.name_of(socket.AF_INET, net.host(30 + i), b) for i in range(3)] == [None] * 3
        assert names.stats()["names_learnt"] >= 6


@integration
def test_nothing_stays_attached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETSNOOP_HOOKS", raising=False)

    def ours() -> set[int]:
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
        return {p["id"] for p in json.loads(out) if p.get("name") in ("sock_received", "sock_sent")}

    before = ours()
    with Watcher() as names:
        assert names.hooks["tcp"] == "cgroup_skb"
        mine = ours() - before
        assert len(mine) == 2
    deadline = time.monotonic() + 10  # the kernel frees programs once the last link is gone
    while ours() & mine and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ours() & mine


@integration
def test_connect_dns_names_the_resolved_destination_and_no_other(pair: NetnsPair,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETSNOOP_HOOKS", raising=False)
    probe = DnsNet(pair, {})
    zone = {"web.test": {"a": [probe.host(10)]}}
    with DnsNet(pair, zone) as net:
        with Trace(["connect", "--dns", "--json", "-P", str(APP_PORT)]) as t:
            out = net.client(resolve=[("web.test", socket.AF_INET)], bare=[net.host(30)])
        assert out["resolved"] == {"web.test": [net.host(10)]}
        names = {r["daddr"]: r["name"] for r in t.records}
        # the resolved address is named; the one nobody resolved (the positive control's twin) is not
        assert names == {net.host(10): "web.test", net.host(30): None}
        assert t.summary["dns"]["names_learnt"] >= 1
        with Trace(["connect", "--dns", "-P", str(APP_PORT)]) as text:
            net.client(resolve=[("web.test", socket.AF_INET)])
        assert text.lines[0].split()[-1] == "NAME" and text.lines[1].split()[-1] == "web.test"


@integration
def test_tracer_dns_names_the_connect_row(pair: NetnsPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETSNOOP_HOOKS", raising=False)
    probe = DnsNet(pair, {})
    with DnsNet(pair, {"web.test": {"a": [probe.host(10)]}}) as net:
        with Trace(["tracer", "--dns", "--json"]) as t:
            net.client(resolve=[("web.test", socket.AF_INET)], bare=[net.host(30)])
        connects = {r["daddr"]: r["name"] for r in t.records if r["type"] == "connect" and r["dport"] == APP_PORT}
        assert connects == {net.host(10): "web.test", net.host(30): None}


@integration
def test_life_dns_names_the_resolved_remote_end_and_no_other(pair: NetnsPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETSNOOP_HOOKS", raising=False)
    probe = DnsNet(pair, {})
    with DnsNet(pair, {"web.test": {"a": [probe.host(10)]}}) as net:
        with Trace(["life", "--dns", "--json", "-P", str(APP_PORT)]) as t:
            out = net.client(resolve=[("web.test", socket.AF_INET)], bare=[net.host(30)])
        assert out["resolved"] == {"web.test": [net.host(10)]}
        clients = {r["raddr"]: r["name"] for r in t.records if r["rport"] == APP_PORT}
        # the resolved address is named; the one nobody resolved (the positive control's twin) is not
        assert clients == {net.host(10): "web.test", net.host(30): None}
        # the server's ends of the same sessions: their remote end (the client) was never resolved
        servers = [r for r in t.records if r["lport"] == APP_PORT]
        assert len(servers) == 2 and {r["name"] for r in servers} == {None}
        assert t.summary["dns"]["names_learnt"] >= 1
        with Trace(["life", "--dns", "-D", str(APP_PORT)]) as text:
            net.client(resolve=[("web.test", socket.AF_INET)])
        assert text.lines[0].split()[-1] == "NAME" and text.lines[1].split()[-1] == "web.test"


@integration
def test_top_dns_names_the_resolved_remote_end_and_no_other(pair: NetnsPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETSNOOP_HOOKS", raising=False)
    probe = DnsNet(pair, {})
    with DnsNet(pair, {"web.test": {"a": [probe.host(10)]}}) as net:
        with Trace(["top", "--dns", "--json", "-P", str(APP_PORT), "0.2"]) as t:
            out = net.client(resolve=[("web.test", socket.AF_INET)], bare=[net.host(30)], send=3000)
        assert out["resolved"] == {"web.test": [net.host(10)]}
        sent: dict[str, int] = {}
        names: dict[str, set[str | None]] = {}
        for r in t.records:
            if r["rport"] == APP_PORT:
                sent[r["raddr"]] = sent.get(r["raddr"], 0) + r["tx_bytes"]
                names.setdefault(r["raddr"], set()).add(r["name"])
        assert sent == {net.host(10): 3000, net.host(30): 3000}  # what the client sent to each
        # the resolved address is named; the one nobody resolved (the positive control's twin) is not
        assert names == {net.host(10): {"web.test"}, net.host(30): {None}}
        assert t.summary["dns"]["names_learnt"] >= 1
        with Trace(["top", "--dns", "-C", "-S", "-P", str(APP_PORT), "0.2"]) as text:
            net.client(resolve=[("web.test", socket.AF_INET)], send=3000)
        header = next(line for line in text.lines if line.startswith("PID"))
        rows = [line.split() for line in text.lines if f":{APP_PORT}" in line]
        assert header.split()[-1] == "NAME" and rows and {r[-1] for r in rows} == {"web.test"}


@integration
def test_why_dns_names_the_resolved_server_and_no_other(pair: NetnsPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETSNOOP_HOOKS", raising=False)
    probe = DnsNet(pair, {})
    with DnsNet(pair, {"web.test": {"a": [probe.host(10)]}}) as net:
        with Trace(["why", "--dns", "--json", "-P", str(APP_PORT)]) as t:
            out = net.client(resolve=[("web.test", socket.AF_INET)], bare=[net.host(30)])
        assert out["resolved"] == {"web.test": [net.host(10)]}
        verdicts = {r["address"]: (r["verdict"], r["name"]) for r in t.records if r["type"] == "verdict"}
        # the resolved server is named; the one nobody resolved (the positive control's twin) is not
        assert verdicts == {net.host(10): ("OK", "web.test"), net.host(30): ("OK", None)}
        assert t.summary["dns"]["names_learnt"] >= 1
        with Trace(["why", "--dns", "-P", str(APP_PORT)]) as text:
            net.client(resolve=[("web.test", socket.AF_INET)], bare=[net.host(30)])
            # the live verdict lines come once the attempts are settled (the run's end says only OK)
            servers = [f"{net.host(10)}:{APP_PORT}", f"{net.host(30)}:{APP_PORT}"]
            deadline = time.monotonic() + 15
            while not all(f" {x} " in "".join(text._out) for x in servers) and time.monotonic() < deadline:
                time.sleep(0.1)
        heads = {line.split()[2]: line.split()[3] for line in text.lines if " OK  " in line}
        # no name for the other: "in netns ..." follows its address
        assert heads == {servers[0]: "(web.test)", servers[1]: "in"}, text.stdout


@integration
def test_overview_dns_names_the_resolved_destination_and_no_other(pair: NetnsPair,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import NETSNOOP, ROOT

    from netsnoop.commands.overview import render

    monkeypatch.delenv("NETSNOOP_HOOKS", raising=False)
    probe = DnsNet(pair, {})
    with DnsNet(pair, {"web.test": {"a": [probe.host(10)]}}) as net:
        view = subprocess.Popen(NETSNOOP + ["overview", "--dns", "--json", "-d", "4"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert view.stderr is not None
        line = view.stderr.readline()
        assert line.startswith("Sampling"), line + view.stderr.read()
        out = net.client(resolve=[("web.test", socket.AF_INET)], bare=[net.host(30)])
        stdout, stderr = view.communicate(timeout=30)
        assert view.returncode in (0, 1), stderr
    assert out["resolved"] == {"web.test": [net.host(10)]}
    report = json.loads(stdout)
    mine = {c["remote"]: (c["attempts"], c["name"]) for c in report["connects"] if c["netns"] == pair.b}
    # the resolved destination is named; the one nobody resolved (the positive control's twin) is not
    assert mine == {f"{net.host(10)}:{APP_PORT}": (1, "web.test"), f"{net.host(30)}:{APP_PORT}": (1, None)}
    assert report["dns"]["names_learnt"] >= 1
    # the text screen of that very report, to our namespace's rows (other tests' may fill the top rows)
    screen = render({**report, "connects": [c for c in report["connects"] if c["netns"] == pair.b]})
    assert any(f"{pair.b} {net.host(10)}:{APP_PORT} (web.test) " in x for x in screen)
    assert any(f"{pair.b} {net.host(30)}:{APP_PORT} " in x for x in screen)
    assert not any(f"{net.host(30)}:{APP_PORT} (" in x for x in screen)
