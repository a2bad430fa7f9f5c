"""Entries for the systemd journal, written in its native protocol.

journald takes one datagram per entry on ``/run/systemd/journal/socket``: fields as
``NAME=value`` lines, and a value that holds a newline as ``NAME``, a newline, its
length (64-bit little endian), the bytes and a newline (systemd's "Native Journal
Protocol"). No library is needed for that, and none is used. Field names are upper
case letters, digits and ``_``, not starting with ``_`` (journald drops those: they
are its own trusted fields).

Sending never blocks tracing for long: an entry the journal does not take within a
second, or refuses, is lost (``lost`` counts it for the summary), and after such a wait
entries are offered without waiting until the journal takes one again, so a stuck
journald costs entries, not the trace.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from typing import Any

from netsnoop.errors import MissingFeature

SOCKET = "/run/systemd/journal/socket"
SEND_TIMEOUT = 1.0
_NAME = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")


def encode(fields: dict[str, Any]) -> bytes:
    """One entry; values are str (UTF-8, every character kept), bytes or numbers;
    None leaves the field out."""
    out = bytearray()
    for name, value in fields.items():
        if value is None:
            continue
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a journal field name")
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        key = name.encode("ascii")
        if b"\n" in data:
            out += key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


class Journal:
    """A connection to the journal; ``send`` one entry per call."""

    def __init__(self, path: str = SOCKET) -> None:
        self.sent = self.lost = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise MissingFeature(f"cannot write to the systemd journal ({path}: {os.strerror(e.errno or 0)}); "
                                 "is systemd-journald running?") from None
        self.sock.settimeout(SEND_TIMEOUT)

    def send(self, fields: dict[str, Any]) -> None:
        try:
            self.sock.send(encode(fields))
        except TimeoutError:  # journald took nothing for a second: stop waiting for it
            self.lost += 1
            self.sock.settimeout(0)
            return
        except OSError:  # full while not waiting, a datagram it refuses, journald gone
            self.lost += 1
            return
        self.sent += 1
        if self.sock.gettimeout() == 0:
            self.sock.settimeout(SEND_TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
