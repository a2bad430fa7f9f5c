"""fmt's per-family address lookup, and the compiled rows of life and states that use it."""

from __future__ import annotations

import collections
import socket

from netsnoop import where
from netsnoop.commands import life, states
from netsnoop.conn import row_of
from netsnoop.fmt import _Addresses, addresses


def test_addresses_are_what_inet_ntop_says_for_each_family() -> None:
    v4 = socket.inet_pton(socket.AF_INET, "192.0.2.7") + bytes(12)
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    assert addresses(socket.AF_INET)(v4) == "192.0.2.7"
    assert addresses(socket.AF_INET6)(v6) == "2001:db8::7"
    # the same 16 bytes are another address in the other family: the caches are apart
    assert addresses(socket.AF_INET6)(v4) == "c000:207::"
    assert addresses(socket.AF_INET)(v4) == "192.0.2.7"
    assert addresses(0)(v4) == "192.0.2.7"  # an unknown family reads as IPv4, as addr() does


def test_address_cache_stays_bounded() -> None:
    cache = _Addresses(socket.AF_INET)
    for i in range(_Addresses.LIMIT + 10):
        assert cache[i.to_bytes(4, "big") + bytes(12)] == socket.inet_ntoa(i.to_bytes(4, "big"))
    assert len(cache) <= _Addresses.LIMIT


LifeEvent = collections.namedtuple(
    "LifeEvent", "ts_ns span_ns rx_bytes tx_bytes cgroup pid netns saddr daddr sport dport family comm")


def test_life_text_row_holds_exactly_the_shown_columns_by_index() -> None:
    e = LifeEvent(1, 2_345_000, 5000, 3072, 0, 42, 0, socket.inet_pton(socket.AF_INET, "127.0.0.1") + bytes(12),
                  socket.inet_pton(socket.AF_INET, "127.0.0.2") + bytes(12), 1234, 80, socket.AF_INET,
                  b"curl\0" + bytes(11))
    shown = [c for c in life.columns(False, False) if c.text]
    row = row_of(shown, None, life.FIELDS, life._SCOPE, LifeEvent._fields)
    assert [c.header for c in shown] == ["PID", "COMM", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS"]
    assert row(e) == (42, "curl", "127.0.0.1", 1234, "127.0.0.2", 80, 3, 4, 2.345)
    # no owner seen: "?" whatever the name; -w text adds the two where columns shown
    wide = [c for c in life.columns(True, False) if c.text]
    assert [c.header for c in wide][-2:] == list(where.HEADERS[:2])
    got = row_of(wide, None, life.FIELDS, life._SCOPE, LifeEvent._fields)(e._replace(pid=0))
    assert got[:3] == (0, "?", 4) and len(got) == len(wide)


StatesEvent = collections.namedtuple(
    "StatesEvent", "ts_ns skaddr delta_ns cgroup pid netns saddr daddr sport dport family oldstate newstate comm")


def test_states_rows_name_states_and_keep_skaddr_hex_in_json() -> None:
    e = StatesEvent(1, 0xFFFF8880DEADBEEF, 1_500_000, 0, 7, 0, socket.inet_pton(socket.AF_INET6, "::1"),
                    socket.inet_pton(socket.AF_INET6, "::1"), 5000, 6000, socket.AF_INET6, 2, 1, b"nc\0" + bytes(13))
    full = row_of(states.columns(False, False), fields=states.FIELDS, scope=states._SCOPE, names=StatesEvent._fields)
    assert full(e) == ("ffff8880deadbeef", 7, "nc", 6, "::1", 5000, "::1", 6000, "SYN_SENT", "->", "ESTABLISHED", 1.5)
