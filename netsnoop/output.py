"""The output layer: columns declared once per subcommand, rendered as bcc-style text,
CSV or JSON lines.

A subcommand declares its :class:`Column` list and produces one tuple per row, in
column order; a :class:`Sink` decides what the user sees. Text keeps bcc's layouts
(fixed widths, header once) so scripts written for bcc keep working. Every sink
writes whole batches and flushes once per batch: a pipe to ``grep`` sees each line as
soon as its batch arrives, without a system call per line.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable, Sequence

from netsnoop.process import write_all


def snake(header: str) -> str:
    """``C-PID`` -> ``c_pid``, ``TIME(s)`` -> ``time_s``, ``LAT(ms)`` -> ``lat_ms``."""
    return re.sub(r"[^a-z0-9]+", "_", header.lower()).strip("_")


@dataclass(frozen=True)
class Column:
    """One output column.

    ``width`` pads text output (0: last column, unpadded); ``truncate`` cuts strings
    to the width like ``%-10.10s``; ``spec`` formats values in text and CSV (``.2f``);
    ``text=False`` makes a JSON-only field (typed extras such as exact byte counts),
    ``json=False`` a text-only decoration such as bcc's ``->``; ``csv`` overrides
    ``text`` for CSV, where bcc's layouts differ slightly (IP always, no ``->``).
    """

    header: str
    width: int = 0
    align: str = "<"
    truncate: bool = False
    spec: str = ""
    key: str = ""
    text: bool = True
    json: bool = True
    csv: bool | None = None  # None: as in text

    @property
    def json_key(self) -> str:
        return self.key or snake(self.header)


@dataclass
class OutputOptions:
    """How the user asked to see rows (the shared -t/-T/-w/-s/--json options)."""

    timestamp: bool = False  # -t: seconds since the first event
    time: bool = False  # -T: HH:MM:SS
    wide: bool = False
    csv: bool = False
    json: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


TIME_COLUMN = Column("TIME", 8)
TIMESTAMP_COLUMN = Column("TIME(s)", 9, spec=".6f")


def time_columns(opts: OutputOptions) -> list[Column]:
    cols = []
    if opts.time:
        cols.append(TIME_COLUMN)
    if opts.timestamp:
        cols.append(TIMESTAMP_COLUMN)
    return cols


class Sink:
    """Writes rows; ``header()`` once, ``write()`` per batch, ``summary()`` at the end."""

    def __init__(self, columns: Sequence[Column], stream: IO[str] | None = None) -> None:
        self.columns = list(columns)
        self.stream = stream or sys.stdout
        self.count = 0
        self._fd = _file_descriptor(self.stream)

    def header(self) -> None:  # pragma: no cover - trivial in subclasses
        pass

    def _emit(self, lines: list[str]) -> None:
        """Write a batch of lines, counted, and flush them.

        To a real file or pipe the batch goes with ``os.write``, partial writes resumed
        here: CPython's buffered writer can drop the tail of a write larger than its
        buffer when a signal (Ctrl-C) interrupts a later write blocked on a full pipe
        (seen as 4 KiB holes in ``netsnoop ... | slow-reader`` output). Anything
        written through the stream object before (the header) is flushed first.
        """
        self.count += len(lines)
        text = "\n".join(lines) + "\n"
        if self._fd is None:
            self.stream.write(text)
            self.stream.flush()
            return
        self.stream.flush()
        write_all(self._fd, text.encode(self.stream.encoding, self.stream.errors or "strict"))

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def summary(self, record: dict[str, Any]) -> None:
        """End-of-run facts (lost events, counts) go to stderr for humans."""
        parts = [_summary_part(k, v) for k, v in record.items()]
        print("netsnoop: " + ", ".join(parts), file=sys.stderr, flush=True)


class TextSink(Sink):
    """bcc's fixed-width layout."""

    def __init__(self, columns: Sequence[Column], stream: IO[str] | None = None) -> None:
        super().__init__(columns, stream)
        self._indexes = [i for i, c in enumerate(self.columns) if c.text]
        shown = [self.columns[i] for i in self._indexes]
        parts, head = [], []
        for n, (i, c) in enumerate(zip(self._indexes, shown)):
            last = n == len(shown) - 1
            width = "" if (last and c.align == "<") or not c.width else str(c.width)
            prec = f".{c.width}" if c.truncate and c.width else ""
            parts.append(f"{{{i}:{c.align}{width}{prec}{c.spec}}}")
            head.append(f"{{:{c.align}{width}}}".format(c.header))
        self._line = " ".join(parts).format
        self._header = " ".join(head).rstrip()

    def header(self) -> None:
        if self.stream.isatty():  # colour for people; rich is imported only then
            from rich.console import Console

            Console(file=self.stream, highlight=False).print(self._header, style="bold", markup=False, soft_wrap=True)
        else:
            self.stream.write(self._header + "\n")
        self.stream.flush()

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        line = self._line
        out = [line(*r) for r in rows]
        if out:
            self._emit(out)


class CsvSink(Sink):
    """Comma-separated, header first (bcc's -s)."""

    def __init__(self, columns: Sequence[Column], stream: IO[str] | None = None) -> None:
        super().__init__(columns, stream)
        self._indexes = [i for i, c in enumerate(self.columns) if (c.text if c.csv is None else c.csv)]
        self._line = ",".join(f"{{{i}:{self.columns[i].spec}}}" for i in self._indexes).format

    def header(self) -> None:
        self.stream.write(",".join(self.columns[i].header for i in self._indexes) + "\n")
        self.stream.flush()

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        out = [self._line(*r) for r in rows]
        if out:
            self._emit(out)


class JsonSink(Sink):
    """One JSON object per line; keys are snake_case column names, values typed."""

    def __init__(self, columns: Sequence[Column], stream: IO[str] | None = None) -> None:
        super().__init__(columns, stream)
        self._fields = [(i, c.json_key) for i, c in enumerate(self.columns) if c.json]
        self._dumps = _object_encoder()

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        fields, dumps = self._fields, self._dumps
        out = [dumps({k: r[i] for i, k in fields}) for r in rows]
        if out:
            self._emit(out)

    def summary(self, record: dict[str, Any]) -> None:
        self.stream.write(self._dumps({"type": "summary", **record}) + "\n")
        self.stream.flush()


def _summary_part(key: str, value: Any) -> str:
    """``3 lost events``; a mapping as ``hooks: set_state=tp_btf accept=none``."""
    name = key.replace("_", " ")
    if isinstance(value, dict):
        return f"{name}: " + " ".join(f"{k}={'none' if v is None else v}" for k, v in value.items())
    return f"{value} {name}"


def _file_descriptor(stream: IO[str]) -> int | None:
    """The OS file behind a text stream, or None for in-memory and wrapped streams."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return None
    return fd if isinstance(getattr(stream, "encoding", None), str) else None


def _object_encoder() -> Callable[[Any], str]:
    """``json.dumps(o, separators=(",", ":"), ensure_ascii=False)`` without its per-call
    set-up: ``JSONEncoder.encode`` builds a new C encoder, with circular-reference
    bookkeeping, for every object; rows are flat, so one encoder serves them all
    (a fifth of the JSON path's time). Falls back where the C encoder is missing."""
    plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    try:
        encoder = make(None, plain.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)  # type: ignore[misc]
        join = "".join
        fast: Callable[[Any], str] = lambda o: join(encoder(o, 0))  # noqa: E731
        sample = {"s": 'a"\u00e9\n', "i": -(1 << 70), "f": 0.1, "n": None, "b": True, "l": [1.5, "x"], "nan": float("nan")}
        if fast(sample) == plain.encode(sample):
            return fast
    except TypeError:  # no C encoder, or another signature
        pass
    return plain.encode


def make_sink(opts: OutputOptions, columns: Sequence[Column], stream: IO[str] | None = None) -> Sink:
    if opts.json:
        return JsonSink(columns, stream)
    if opts.csv:
        return CsvSink(columns, stream)
    return TextSink(columns, stream)


def write_table(opts: OutputOptions, columns: Sequence[Column], rows: Iterable[Sequence[Any]], stream: IO[str] | None = None) -> None:
    """A whole table at once (the ``-c/--count`` summaries), in the user's format."""
    sink = make_sink(opts, columns, stream)
    sink.header()
    sink.write(list(rows))
