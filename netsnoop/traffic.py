"""Pieces shared by the traffic and loss tools (top, subnet, retrans, drop): endpoint
and TCP flag formatting, draining an in-kernel aggregation map, and the ``-c/--count``
mode that counts in the kernel and prints one table on exit."""

from __future__ import annotations

import ctypes
import struct
from typing import Any, Callable, Sequence

import click

from netsnoop.btf import StructDecoder
from netsnoop.errors import LoadError
from netsnoop.fmt import addr, comm
from netsnoop.libbpf import errno_message, last_errno, lib
from netsnoop.loader import BPFObject, Map
from netsnoop.output import Column, OutputOptions, make_sink
from netsnoop.runner import ready, wait

ENOENT = 2

# TCP header flag bits, in bcc's print order
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


def endpoints(family: int, a: bytes, a_port: int, b: bytes, b_port: int) -> tuple[str, str, str, int, str, int]:
    """Both ends in bcc's ``ADDR:PORT`` notation (IPv6 unbracketed, as bcc prints it)
    for text, then as typed (address, port) pairs for JSON."""
    a_text, b_text = addr(family, a), addr(family, b)
    return f"{a_text}:{a_port}", f"{b_text}:{b_port}", a_text, a_port, b_text, b_port


def typed_endpoints(local: str = "L", remote: str = "R") -> list[Column]:
    """The JSON-only columns for :func:`endpoints`' typed values, in its order:
    ``LADDR LPORT RADDR RPORT`` (or ``SADDR SPORT DADDR DPORT`` with "S", "D")."""
    return [Column(f"{end}{part}", text=False) for end in (local, remote) for part in ("ADDR", "PORT")]


# The hook groups of bpf/owner.h, optional everywhere: without them rows have no owner.
OWNER_GROUPS = frozenset({"send", "recv", "set_state", "forget"})


def owner(e: Any) -> tuple[int | None, str | None]:
    """An event's socket owner (``pid``, ``comm`` filled from bpf/owner.h's map), or
    (None, None) when no process was seen using the socket."""
    return (e.pid, comm(e.comm)) if e.pid else (None, None)


def tcp_flags(bits: int) -> str:
    """``SYN|ACK`` for the flags byte of a TCP header."""
    return "|".join(name for i, name in enumerate(TCP_FLAGS) if bits & (1 << i))


def take_all(m: Map) -> list[tuple[bytes, bytes]]:
    """Every entry of a (non per-CPU) hash map, each read and deleted in one step, so
    a byte counted while we read lands either in this interval or in the next."""
    fn = lib().bpf_map_lookup_and_delete_elem
    out = []
    for key in list(m.keys()):
        buf = ctypes.create_string_buffer(m.value_size)
        rc = fn(m.fd, key, buf)
        if rc == 0:
            out.append((key, buf.raw))
            continue
        err = -rc if rc < 0 else last_errno()
        if err != ENOENT:  # ENOENT: gone meanwhile; anything else is a real failure
            raise LoadError(f"reading map {m.name} failed: {errno_message(err)}")
    return out


def count_option(help: str) -> Callable[[Any], Any]:
    return click.option("-c", "--count", "count", is_flag=True, help=help)


def show_counts(
    obj: BPFObject,
    key_struct: str,
    columns: Sequence[Column],
    row: Callable[[Any, int], Sequence[Any]],
    out: OutputOptions,
    duration: float | None,
    banner: str,
    total: str | None = None,
    at_stop: Callable[[], list[tuple[Any, int]]] | None = None,
) -> None:
    """The -c mode: the kernel counts into the ``counts`` map (key ``key_struct``,
    u64 value) until Ctrl-C or the duration; then one table, busiest first. ``at_stop``
    adds entries known only at the end (connects still pending); ``total`` names what
    is counted, for a summary that also gives their sum (``3 connects``)."""
    ready(banner)
    wait(duration)
    decode = StructDecoder(obj.btf, key_struct).decode
    entries = [(decode(k), struct.unpack_from("=Q", v)[0]) for k, v in obj.map("counts").items()]
    entries += at_stop() if at_stop else []
    entries.sort(key=lambda kv: kv[1], reverse=True)
    sink = make_sink(out, columns)
    sink.header()
    sink.write([row(key, n) for key, n in entries])
    sums = {total: sum(n for _key, n in entries)} if total else {}
    sink.summary({"flows": len(entries), **sums, **obj.health()})
