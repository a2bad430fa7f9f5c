"""The ``-c/--count`` run mode of connect, accept, drop and retrans: the kernel counts
into a ``counts`` map instead of sending events, and one table is printed on exit."""

from __future__ import annotations

import struct
from typing import Any, Callable, Sequence

from netsnoop.btf import StructDecoder
from netsnoop.loader import BPFObject
from netsnoop.output import Column, OutputOptions, make_sink
from netsnoop.runner import ready, wait


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
    """The kernel counts into the ``counts`` map (key ``key_struct``, u64 value) until
    Ctrl-C or the duration; then one table, busiest first. ``at_stop`` adds entries
    known only at the end (connects still pending); ``total`` names what is counted,
    for a summary that also gives their sum (``3 connects``)."""
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
