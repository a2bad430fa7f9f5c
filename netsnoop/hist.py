"""Log2 histograms: read from BPF maps, printed like bcc (star bars) or as JSON lines.

The BPF side (``netsnoop/bpf/hist.h``) keeps one ``struct hist`` per key in a per-CPU
hash: slot ``i`` counts values ``v`` with ``floor(log2(v)) == i`` (slot 0 also holds
0), so slot ``i`` is the range ``[2**i, 2**(i+1) - 1]`` and slot 0 is ``[0, 1]`` --
the rows bcc prints. ``count`` and ``sum`` are exact, for totals and averages.

The API, for every histogram tool:

* :func:`read_hists` -- ``(key, Log2Hist)`` pairs of a map, CPUs added up, optionally
  clearing the map (one interval's worth).
* :class:`Section` -- one histogram to show, with its labels (``backlog_max = 128``)
  and extra facts printed under it (``overflows = 3``).
* :class:`Writer` -- what the interval tools print around their rows: headings,
  sections, tables; :func:`write_sections` -- one interval's sections.
* :func:`render` -- the bcc text lines of one histogram.

The run itself (the interval loop and the summary) is :func:`netsnoop.runner.every_interval`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Sequence

from netsnoop.btf import StructDecoder
from netsnoop.loader import BPFObject
from netsnoop.output import Column, OutputOptions, snake, write_table

STARS = 40  # bcc's bar width


@dataclass(frozen=True)
class Log2Hist:
    """One histogram, summed over CPUs. ``total`` is the exact sum of the values, in the
    unit the BPF side recorded (which may be finer than the slots' unit)."""

    slots: tuple[int, ...]
    count: int = 0
    total: int = 0

    def last_slot(self) -> int:
        """Index of the highest non-empty slot, -1 when empty."""
        return max((i for i, n in enumerate(self.slots) if n), default=-1)

    def buckets(self) -> list[tuple[int, int, int]]:
        """``(low, high, count)`` from slot 0 up to the highest non-empty slot."""
        return [(*slot_range(i), self.slots[i]) for i in range(self.last_slot() + 1)]

    def mean(self, div: float = 1) -> float:
        """Average value, divided by ``div`` (e.g. 1000 for ns -> us)."""
        return self.total / self.count / div if self.count else 0.0


EMPTY = Log2Hist(())


def slot_range(i: int) -> tuple[int, int]:
    """Values counted in slot ``i``."""
    return (0, 1) if i == 0 else (1 << i, (1 << (i + 1)) - 1)


def add_cpus(decoded: Iterable[Any]) -> Log2Hist:
    """Sum per-CPU ``struct hist`` values into one histogram."""
    slots: list[int] = []
    count = total = 0
    for h in decoded:
        slots = [a + b for a, b in zip(slots, h.slots)] if slots else list(h.slots)
        count += h.count
        total += h.sum
    return Log2Hist(tuple(slots), count, total)


def read_hists(obj: BPFObject, map_name: str, key_struct: str, clear: bool = True) -> list[tuple[Any, Log2Hist]]:
    """Every histogram of ``map_name`` with its decoded key (a namedtuple of the C struct
    ``key_struct``); with ``clear`` the entries are deleted, so the next read holds only
    what happened since."""
    m = obj.map(map_name)
    keys, values = StructDecoder(obj.btf, key_struct), StructDecoder(obj.btf, "hist")
    items = m.pop_all() if clear else m.items()
    out = []
    for raw_key, raw_value in items:
        per_cpu = raw_value if isinstance(raw_value, list) else [raw_value]
        out.append((keys.decode(raw_key), add_cpus(values.decode(v) for v in per_cpu)))
    return out


def stars(value: int, largest: int, width: int = STARS) -> str:
    """bcc's bar: ``width`` stars for the largest count, proportionally (rounded down)
    for the others."""
    if not largest:
        return ""
    return "*" * min(width, value * width // largest)


def render(hist: Log2Hist, unit: str) -> list[str]:
    """bcc's ``print_log2_hist`` layout: a header naming the unit, then one row per slot
    up to the highest non-empty one. Nothing for an empty histogram."""
    rows = hist.buckets()
    if not rows:
        return []
    largest = max(n for _lo, _hi, n in rows)
    if len(rows) <= 32:
        head, lo_w, width = f"     {unit:<19} : count     distribution", 10, STARS
    else:
        head, lo_w, width = f"               {unit:<29} : count     distribution", 20, STARS // 2
    lines = [head]
    for lo, hi, n in rows:
        lines.append(f"{lo:>{lo_w}} -> {hi:<{lo_w}} : {n:<8} |{stars(n, largest, width):<{width}}|")
    return lines


def to_json(hist: Log2Hist, unit: str, div: int = 1) -> dict[str, Any]:
    """The histogram as typed JSON fields: unit, count, sum and average (in ``unit``:
    the recorded values divided by ``div``), and the non-empty range of buckets."""
    return {
        "unit": unit,
        "count": hist.count,
        "sum": hist.total if div == 1 else round(hist.total / div, 3),
        "avg": round(hist.mean(div), 3),
        "buckets": [{"low": lo, "high": hi, "count": n} for lo, hi, n in hist.buckets()],
    }


def average_line(hist: Log2Hist, unit: str, div: int = 1) -> str:
    """The text under a histogram with averages on (tcprtt -e)."""
    return f"avg = {hist.mean(div):.0f} {unit}, total: {hist.total / div:.0f} {unit}, count: {hist.count}"


@dataclass
class Section:
    """One histogram to show. ``labels`` name it (text: ``name = value`` above it; JSON:
    snake_case keys); ``extra`` are typed facts printed below it the same way."""

    hist: Log2Hist
    labels: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _label_lines(values: dict[str, Any]) -> list[str]:
    return [f"{k} = {v}" for k, v in values.items()]


def interval_heading(out: OutputOptions, now: float | None = None) -> list[str]:
    """What bcc prints before each interval's text: a blank line, then ``HH:MM:SS``
    with -T."""
    if out.time:
        return ["", time.strftime("%H:%M:%S", time.localtime(now if now is not None else time.time()))]
    return [""]


class Writer:
    """What the interval tools print around their rows, in the user's format: each
    interval's heading (text only) and histograms. Tables go through the sinks
    (:meth:`table`), so every format's rules hold there too."""

    def __init__(self, out: OutputOptions, stream: IO[str] | None = None) -> None:
        self.out = out
        self.stream = stream

    def _write(self, lines: list[str]) -> None:
        if lines:
            stream = self.stream or sys.stdout
            stream.write("\n".join(lines) + "\n")
            stream.flush()

    def heading(self, *lines: str, now: float | None = None) -> None:
        """The text before an interval: ``lines``, or bcc's (a blank line, then
        ``HH:MM:SS`` with -T). Nothing in JSON, whose records carry a timestamp."""
        if not self.out.json:
            self._write(list(lines) or interval_heading(self.out, now))

    def sections(self, sections: Iterable[Section], unit: str, div: int = 1, averages: bool = False,
                 facts: dict[str, Any] | None = None, heading: bool = True) -> None:
        """One interval's histograms (after bcc's heading unless not ``heading``), see
        :func:`write_sections`."""
        now = time.time()
        if heading:
            self.heading(now=now)
        self._write(_section_lines(sections, unit, self.out, div, averages, facts, now))

    def table(self, columns: Sequence[Column], rows: Iterable[Sequence[Any]]) -> None:
        write_table(self.out, columns, rows, self.stream)


def write_sections(sections: Iterable[Section], unit: str, out: OutputOptions, div: int = 1,
                   averages: bool = False, facts: dict[str, Any] | None = None,
                   stream: IO[str] | None = None) -> None:
    """One interval's histograms: text like bcc (a blank line, ``HH:MM:SS`` with -T,
    then each section, with ``average_line`` under it when ``averages``), or one JSON
    object per section. ``div`` turns recorded sums into ``unit`` (e.g. 1000: ns->us).
    ``facts`` about the whole interval follow as ``name = value`` lines (JSON: one more
    object)."""
    Writer(out, stream).sections(sections, unit, div, averages, facts)


def _section_lines(sections: Iterable[Section], unit: str, out: OutputOptions, div: int, averages: bool,
                   facts: dict[str, Any] | None, now: float) -> list[str]:
    lines: list[str] = []
    if out.json:
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        for s in sections:
            record = {snake(k): v for k, v in s.labels.items()}
            record.update(to_json(s.hist, unit, div))
            record.update({snake(k): v for k, v in s.extra.items()})
            record["timestamp"] = round(now, 6)
            lines.append(dumps(record))
        if facts:
            lines.append(dumps({**{snake(k): v for k, v in facts.items()}, "timestamp": round(now, 6)}))
    else:
        for s in sections:
            if s.labels:
                lines.append("")
                lines.extend(_label_lines(s.labels))
            lines.extend(render(s.hist, unit))
            if averages:
                lines.append(average_line(s.hist, unit, div))
            lines.extend(_label_lines(s.extra))
        lines.extend(_label_lines(facts or {}))
    return lines
