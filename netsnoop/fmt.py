"""Turning kernel values into the strings the bcc tools print, shared by all subcommands."""

from __future__ import annotations

import socket
import time
from functools import lru_cache

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


def tcp_state(value: int) -> str:
    return TCP_STATES.get(value, str(value))


_ntop = socket.inet_ntop


@lru_cache(maxsize=4096)
def addr(family: int, raw: bytes) -> str:
    """An address from the 16 bytes the BPF side fills (IPv4 in the first 4).
    Cached: a trace sees the same few addresses over and over."""
    if family == AF_INET6:
        return _ntop(AF_INET6, raw)
    return _ntop(AF_INET, raw[:4])


def ip_version(family: int) -> int:
    return 6 if family == AF_INET6 else 4


def comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


class Clock:
    """Converts ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC) stamps to wall-clock time."""

    def __init__(self) -> None:
        self.offset_ns = time.time_ns() - time.monotonic_ns()
        self._first_ns: int | None = None
        self._hms_sec = -1
        self._hms = ""

    def wall(self, ktime_ns: int) -> float:
        return (ktime_ns + self.offset_ns) / 1e9

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
