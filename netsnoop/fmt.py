"""Turning kernel values into the strings the bcc tools print, shared by all subcommands."""

from __future__ import annotations

import re
import socket
import time
from functools import lru_cache
from typing import Any, Callable

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

# include/net/tcp_states.h
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}


class _Named(dict[int, Any]):
    """A table of names whose lookup is the whole function: a value it lacks is
    named by ``missing``. Called through ``__getitem__``, a bound C method, so the
    per-event lookups (every state change, every row's IP version) run no Python frame."""

    def __init__(self, names: dict[int, Any], missing: Callable[[int], Any]) -> None:
        super().__init__(names)
        self._missing = missing

    def __missing__(self, value: int) -> Any:
        return self._missing(value)


# TCP header flag bits, in bcc's print order
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")

# the kernel's name of a TCP state (its number, for one the table lacks)
tcp_state: Callable[[int], str] = _Named(TCP_STATES, str).__getitem__

_ntop = socket.inet_ntop


@lru_cache(maxsize=4096)
def addr(family: int, raw: bytes) -> str:
    """An address from the 16 bytes the BPF side fills (IPv4 in the first 4).
    Cached: a trace sees the same few addresses over and over."""
    if family == AF_INET6:
        return _ntop(AF_INET6, raw)
    return _ntop(AF_INET, raw[:4])


class _Addresses(dict[bytes, str]):
    """One family's addresses, raw -> text, bounded: looked up through ``__getitem__``
    (a bound C method) it costs a row one dict lookup, where :func:`addr`'s cache
    builds and hashes a key tuple on every call."""

    LIMIT = 4096

    def __init__(self, family: int) -> None:
        super().__init__()
        self._family = family
        self._size = 16 if family == AF_INET6 else 4

    def __missing__(self, raw: bytes) -> str:
        if len(self) >= self.LIMIT:
            self.clear()
        text = self[raw] = _ntop(self._family, raw[: self._size])
        return text


_V4_ADDRESSES = _Addresses(AF_INET).__getitem__

# the address lookup for a family: ``addresses(family)(raw)`` == ``addr(family, raw)``
addresses: Callable[[int], Callable[[bytes], str]] = _Named(
    {AF_INET6: _Addresses(AF_INET6).__getitem__}, lambda family: _V4_ADDRESSES).__getitem__


def endpoints(family: int, a: bytes, a_port: int, b: bytes, b_port: int) -> tuple[str, str, str, int, str, int]:
    """Both ends in bcc's ``ADDR:PORT`` notation (IPv6 unbracketed, as bcc prints it)
    for text, then as typed (address, port) pairs for JSON (the columns of
    :func:`netsnoop.output.typed_endpoints`)."""
    a_text, b_text = addr(family, a), addr(family, b)
    return f"{a_text}:{a_port}", f"{b_text}:{b_port}", a_text, a_port, b_text, b_port


def tcp_flags(bits: int) -> str:
    """``SYN|ACK`` for the flags byte of a TCP header."""
    return "|".join(name for i, name in enumerate(TCP_FLAGS) if bits & (1 << i))


# 6 for AF_INET6, else 4
ip_version: Callable[[int], int] = _Named({AF_INET: 4, AF_INET6: 6}, lambda family: 4).__getitem__


@lru_cache(maxsize=1024)
def comm(raw: bytes) -> str:
    """A task's name as the kernel holds it (any bytes: names are the process's own
    choice). Bytes that are not UTF-8 become ``\\xff`` text, so the name never fails to
    decode and no byte is lost; control characters stay, for the sinks to escape.
    Cached: a trace sees the same few names over and over."""
    return raw.split(b"\0", 1)[0].decode(errors="backslashreplace")


# What a terminal may act on rather than show: C0 controls (ESC starts CSI/OSC
# sequences, BEL, BS and CR overwrite, LF breaks the row), DEL, C1 controls (0x9b is a
# one-byte CSI on some terminals), the bidirectional overrides and line separators
# that reorder or break what is shown, and lone surrogates (bytes that were not UTF-8,
# from os.fsdecode), which no encoder accepts.
_OTHER_CONTROLS = "\\x7f-\\x9f\\u061c\\u200e\\u200f\\u2028-\\u202e\\u2066-\\u2069\\ud800-\\udfff"
_CONTROLS = "\\x00-\\x1f" + _OTHER_CONTROLS
UNSAFE = re.compile(f"[{_CONTROLS}]")
UNSAFE_IN_LINES = re.compile("[\\x00-\\x08\\x0b-\\x1f" + _OTHER_CONTROLS + "]")  # all but tab and newline
UNSAFE_BUT_NEWLINE = re.compile("[\\x00-\\x09\\x0b-\\x1f" + _OTHER_CONTROLS + "]")
UNSAFE_BEYOND_C0 = re.compile(f"[{_OTHER_CONTROLS}]")
_PIECES = re.compile(f"([{_CONTROLS}])")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


@lru_cache(maxsize=256)
def _escape_char(c: str) -> str:
    code = ord(c)
    if c in _NAMED:
        return _NAMED[c]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _escape(m: re.Match[str]) -> str:
    return _escape_char(m.group())


def printable(text: str, width: int | None = None) -> str:
    """``text`` safe to show on a terminal, one line: control characters as visible
    escapes (``\\x1b``, ``\\n``, ``\\x9b``, ``\\u202e``), everything else unchanged.

    With ``width``, cut to at most that many characters after escaping, never inside
    an escape (a half ``\\x1`` would read as another character). The one place every
    name (COMM, file names) is made safe: the text and CSV sinks call it, and so must
    any other view that shows names (a rich table: pass the result as ``Text``, never
    as markup).
    """
    if not UNSAFE.search(text):
        return text if width is None else text[:width]
    if width is None:
        return UNSAFE.sub(_escape, text)
    out, used = [], 0
    for piece in _PIECES.split(text):
        if not piece:
            continue
        shown = _escape_char(piece) if UNSAFE.fullmatch(piece) else piece
        if used + len(shown) > width:
            if not UNSAFE.fullmatch(piece):
                out.append(shown[: width - used])
            break
        out.append(shown)
        used += len(shown)
    return "".join(out)


def printable_lines(text: str) -> str:
    """Like :func:`printable` for a value that is several lines on purpose (drop's
    stack: tab-indented lines after the reason): line breaks and tabs are kept,
    every other control character is escaped."""
    return UNSAFE_IN_LINES.sub(_escape, text)


class Clock:
    """Converts ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC) stamps to wall-clock time."""

    def __init__(self) -> None:
        self.offset_ns = time.time_ns() - time.monotonic_ns()
        self._first_ns: int | None = None
        self._hms_sec = -1
        self._hms = ""

    def wall(self, ktime_ns: int) -> float:
        return (ktime_ns + self.offset_ns) / 1e9

    def wall_us(self, ktime_ns: int) -> float:
        """Wall-clock seconds to the microsecond (JSON's ``timestamp``), rounded in
        integers: exact, where ``round(ns / 1e9, 6)`` is one microsecond off for some
        stamps, and a sixth of its cost per event."""
        return (ktime_ns + self.offset_ns + 500) // 1000 / 1e6

    def hms(self, ktime_ns: int) -> str:
        """HH:MM:SS local time, formatted once per second."""
        sec = (ktime_ns + self.offset_ns) // 1_000_000_000
        if sec != self._hms_sec:
            self._hms_sec = sec
            self._hms = time.strftime("%H:%M:%S", time.localtime(sec))
        return self._hms

    def since_first(self, ktime_ns: int) -> float:
        """Seconds since the first event shown (bcc's TIME(s))."""
        if self._first_ns is None:
            self._first_ns = ktime_ns
        return (ktime_ns - self._first_ns) / 1e9
