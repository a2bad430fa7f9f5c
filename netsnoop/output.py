"""The output layer: columns declared once per subcommand, rendered as bcc-style text,
CSV or JSON lines.

A subcommand declares its :class:`Column` list and produces one tuple per row, in
column order; a :class:`Sink` decides what the user sees. Text keeps bcc's layouts
(fixed widths, header once) so scripts written for bcc keep working. Every sink
writes whole batches and flushes once per batch: a pipe to ``grep`` sees each line as
soon as its batch arrives, without a system call per line.

Names are the traced processes' own choice (any bytes), so the sinks make them safe
once, here, for every subcommand: text and CSV show control characters as visible
escapes (one row stays one line, nothing reaches the terminal as a command), CSV
quotes what needs quoting, JSON escapes what JSON and terminals need, and a stream
that cannot encode a character gets an escape instead of an exception.
"""

from __future__ import annotations

import codecs
import io
import re
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable, Sequence

from netsnoop.fmt import UNSAFE, UNSAFE_BEYOND_C0, UNSAFE_BUT_NEWLINE, printable, printable_lines
from netsnoop.process import write_all

# What a CSV field must not hold unquoted and unescaped: control characters, the separator, the quote.
_CSV_SPECIAL = re.compile(UNSAFE.pattern[:-1] + ',"]')
# What JSON's own escaping (all of U+0000-U+001F) leaves raw but a terminal may act on.
_JSON_UNSAFE = UNSAFE_BEYOND_C0


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
    ``hex=True`` writes the value in JSON as the hex string the text shows: for a
    64-bit value such as a kernel address, an integer beyond 2**53 that JSON readers
    (jq, JavaScript) would round. ``lines=True``
    marks a text value that is several lines on purpose (drop's stack): its line
    breaks and tabs are kept, every other control character escaped.
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
    hex: bool = False
    lines: bool = False

    @property
    def json_key(self) -> str:
        return self.key or snake(self.header)

    def hex_string(self, value: Any) -> Any:
        """An integer as its hex string: as the text shows it when the column's spec is
        hex (``x``), ``0x``-prefixed otherwise; anything else unchanged."""
        if not isinstance(value, int) or isinstance(value, bool):
            return value
        return format(value, self.spec if self.spec in ("x", "X", "#x", "#X") else "#x")


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


def typed_endpoints(local: str = "L", remote: str = "R") -> list[Column]:
    """The JSON-only columns for :func:`netsnoop.fmt.endpoints`' typed values, in its
    order: ``LADDR LPORT RADDR RPORT`` (or ``SADDR SPORT DADDR DPORT`` with "S", "D")."""
    return [Column(f"{end}{part}", text=False) for end in (local, remote) for part in ("ADDR", "PORT")]


class Sink:
    """Writes rows; ``header()`` once, ``write()`` per batch, ``summary()`` at the end."""

    def __init__(self, columns: Sequence[Column], stream: IO[str] | None = None) -> None:
        self.columns = list(columns)
        self.stream = stream or sys.stdout
        self.count = 0
        self._fd = _file_descriptor(self.stream)
        self._encoding = getattr(self.stream, "encoding", None) or "utf-8"

    def header(self) -> None:  # pragma: no cover - trivial in subclasses
        pass

    def _emit(self, lines: list[str]) -> None:
        """Write a batch of lines, counted, and flush them."""
        self.count += len(lines)
        self._write("\n".join(lines) + "\n")

    def _write(self, text: str) -> None:
        """Write and flush ``text``.

        To a real file or pipe it goes with ``process.write_all``, partial writes resumed:
        CPython's buffered writer can drop the tail of a write larger than its buffer
        when a signal (Ctrl-C) interrupts a later write blocked on a full pipe (seen as
        4 KiB holes in ``netsnoop ... | slow-reader`` output). Anything written through
        the stream object before is flushed first. A character the stream's encoding
        lacks (``é`` on an ASCII terminal) is written as a backslash escape: a name
        never ends the trace.
        """
        if self._fd is None:
            self.stream.write(text)
            self.stream.flush()
            return
        self.stream.flush()
        write_all(self._fd, text.encode(self._encoding, "backslashreplace"))

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def summary(self, record: dict[str, Any]) -> None:
        """End-of-run facts (lost events, counts) go to stderr for humans."""
        parts = [_summary_part(k, v) for k, v in record.items()]
        print(printable("netsnoop: " + ", ".join(parts)), file=sys.stderr, flush=True)


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
        self._percent = _percent_layout(self.columns)
        self._header = printable(" ".join(head).rstrip())
        self._safe = [_text_escaper(c) if c.text else None for c in self.columns]
        self._multiline = any(c.text and c.lines for c in self.columns)

    def header(self) -> None:
        if self.stream.isatty():  # colour for people; rich is imported only then
            from rich.console import Console

            Console(file=self.stream, highlight=False).print(self._header, style="bold", markup=False, soft_wrap=True)
            self.stream.flush()
        else:
            self._write(self._header + "\n")

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        """Format the batch as is; only a batch whose text holds a character a terminal
        may act on (rare: a hostile name) is formatted again from escaped values, cut
        to the column width after escaping."""
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return
        text = "" if self._multiline else self._text(rows)
        if not _shown_as_is(text, len(rows)):
            line = self._line
            text = "\n".join([line(*self._escaped(r)) for r in rows]) + "\n"
        self.count += len(rows)
        self._write(text)

    def _text(self, rows: list[Sequence[Any]]) -> str:
        """The rows formatted as the columns say, one line each: with printf-style
        formatting when it gives the same text (it is faster than ``str.format``), else
        with the format template. The one value the two show differently is a bool in a
        ``%s`` field (``True`` where ``str.format`` writes ``1``): only a batch whose text
        holds True or False is looked at for one."""
        if self._percent is not None:
            template, loose = self._percent
            try:
                text = "\n".join(map(template.__mod__, rows)) + "\n"
            except (TypeError, ValueError):  # a row of other values or length: as str.format has it
                text = ""
            if text and not ("True" in text or "False" in text):
                return text
            if text and not any(bool in map(type, [r[i] for r in rows]) for i in loose):
                return text  # the words are in a name, not a bool's
        line = self._line
        return "\n".join([line(*r) for r in rows]) + "\n"

    def _escaped(self, row: Sequence[Any]) -> list[Any]:
        values = list(row)
        for i, esc in enumerate(self._safe[: len(values)]):
            if esc is not None and isinstance(values[i], str):
                values[i] = esc(values[i])
        return values


class CsvSink(Sink):
    """Comma-separated, header first (bcc's -s), quoted as Python's csv module and
    spreadsheets expect (a comma or a quote in a name stays inside its field). Control
    characters are escaped as in text, so each row is one line and the output is safe
    on a terminal too."""

    def __init__(self, columns: Sequence[Column], stream: IO[str] | None = None) -> None:
        super().__init__(columns, stream)
        self._specs = [(i, c.spec) for i, c in enumerate(self.columns) if (c.text if c.csv is None else c.csv)]
        self._indexes = [i for i, _spec in self._specs]
        self._line = ",".join(f"{{{i}:{spec}}}" for i, spec in self._specs).format

    @staticmethod
    def _csv(rows: list[list[str]]) -> str:
        import csv  # only CSV output needs it

        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue()

    def header(self) -> None:
        self._write(self._csv([[printable(self.columns[i].header) for i, _spec in self._specs]]))

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        """Plain joined fields, unless some string needs quoting or escaping."""
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return
        if not _strings_match(rows, self._indexes, _CSV_SPECIAL):
            self._emit([self._line(*r) for r in rows])
            return
        specs = self._specs
        self.count += len(rows)
        self._write(self._csv([[printable(format(r[i], spec)) for i, spec in specs] for r in rows]))


class JsonSink(Sink):
    """One JSON object per line; keys are snake_case column names, values typed.

    Strings keep every character (JSON escapes the C0 controls itself); DEL, the C1
    controls, bidirectional overrides and line separators are written as ``\\uXXXX``
    too, so a line shown on a terminal is as safe as the text output. To a stream that
    is not UTF-8 everything outside ASCII is ``\\uXXXX``. Columns declared ``hex``
    (64-bit values beyond what JSON readers keep exact) are hex strings."""

    def __init__(self, columns: Sequence[Column], stream: IO[str] | None = None) -> None:
        super().__init__(columns, stream)
        self._fields = [(i, c.json_key) for i, c in enumerate(self.columns) if c.json]
        self._hex = [(c.json_key, c.hex_string) for c in self.columns if c.json and c.hex]
        self._ascii = not _is_utf8(self.stream)
        self._dumps = _object_encoder(self._ascii)
        self._lines = self._object_lines
        keys = [k for _i, k in self._fields]
        if len(set(keys)) == len(keys):  # (a key twice stays a dict per row: one key, the last value)
            self._columns = [(i, c.hex_string if c.hex else None) for i, c in enumerate(self.columns) if c.json]
            self._values = _value_encoders(self._ascii)
            strings = _strings_encoder(self._ascii)
            self._keys = [strings(k).replace("%", "%%") + ":" for k in keys]
            self._lines = self._column_lines

    def write(self, rows: Iterable[Sequence[Any]]) -> None:
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return
        text = "\n".join(self._lines(rows))
        self.count += len(rows)
        self._write(self._safe(text) + "\n")

    def _object_lines(self, rows: list[Sequence[Any]]) -> list[str]:
        """One dict per row through the JSON encoder."""
        fields, dumps = self._fields, self._dumps
        objects = [{k: r[i] for i, k in fields} for r in rows]
        for k, to_hex in self._hex:
            for o in objects:
                o[k] = to_hex(o[k])
        return [dumps(o) for o in objects]

    def _column_lines(self, rows: list[Sequence[Any]]) -> list[str]:
        """The same lines, encoded a column at a time: a column whose values are all of
        one plain type (str, int, float or None: nearly every column of every batch)
        is encoded by that type's own encoder over the whole column, the rest value by
        value with the full encoder. The keys are written into the batch's line
        template once, and so is the value of a column that holds one value all
        through the batch (the where columns nearly always, a busy peer's address
        often). A third to a half less time than a dict per row, for the same text."""
        lengths = set(map(len, rows))
        if len(lengths) != 1 or lengths.pop() < len(self.columns):
            return self._object_lines(rows)  # rows of unequal length: as a dict per row does it
        by_column = list(zip(*rows))
        encoded, parts = [], []
        values, dumps, n = self._values, self._dumps, len(rows)
        for (i, to_hex), key in zip(self._columns, self._keys):
            column: Sequence[Any] = by_column[i]
            if to_hex is not None:
                column = list(map(to_hex, column))
            kind = type(column[0])
            encode = values.get(kind)
            # equal values of one type are one JSON text (1 == 1.0 == True are not)
            same = column.count(column[0]) == n
            if encode is not None and same and (kind is str or set(map(type, column)) == {kind}):
                one = encode(column[:1])
                if one is not None:
                    parts.append(key + one[0].replace("%", "%%"))
                    continue
            out = encode(column) if encode is not None else None
            encoded.append(out if out is not None else list(map(dumps, column)))
            parts.append(key + "%s")
        template = "{" + ",".join(parts) + "}"
        if not encoded:
            return [template.replace("%%", "%")] * n
        return list(map(template.__mod__, zip(*encoded)))

    def _safe(self, text: str) -> str:
        if self._ascii or text.isascii():  # isascii: no scan when there is nothing to find
            return text
        return _JSON_UNSAFE.sub(_json_escape, text)

    def summary(self, record: dict[str, Any]) -> None:
        self._write(self._safe(self._dumps({"type": "summary", **record})) + "\n")


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


def _strings_match(rows: list[Sequence[Any]], indexes: Sequence[int], pattern: re.Pattern[str]) -> bool:
    """Whether any string value in the columns ``indexes`` of ``rows`` matches
    ``pattern``: one search per column over its joined strings, so a clean batch
    costs little. A column whose first value is a number is taken to hold numbers
    (their formats are plain digits); names are strings in every row."""
    first = rows[0]
    for i in indexes:
        if type(first[i]) in _NUMBERS:
            continue
        values = [r[i] for r in rows]
        try:
            joined = "".join(values)
        except TypeError:  # None, lists: only the strings among them matter
            joined = "".join([v for v in values if isinstance(v, str)])
        if pattern.search(joined):
            return True
    return False


_NUMBERS = (int, float, bool)
_SHOWN_ASCII = bytes(range(0x20, 0x7F))  # what a terminal shows as it is


def _shown_as_is(text: str, lines: int) -> bool:
    """Whether ``text`` is ``lines`` lines holding no character a terminal may act on
    (:data:`netsnoop.fmt.UNSAFE`): then no value needs escaping. ASCII text (nearly
    every batch) is checked by deleting the harmless bytes, which is faster than a
    regular expression: what is left must be the rows' line breaks, no more (one
    inside a value would be one more)."""
    if not text:
        return False
    if text.isascii():
        return text.encode("ascii").translate(None, _SHOWN_ASCII) == b"\n" * lines
    if UNSAFE_BUT_NEWLINE.search(text):
        return False
    return text.count("\n") == lines


def _percent_layout(columns: Sequence[Column]) -> tuple[str, list[int]] | None:
    """The text line as a printf-style template that gives the same text as the
    ``str.format`` one for values of the types the columns hold, with the indexes of
    its ``%s`` fields (what they show of a bool differs, so the sink checks them);
    None when a column's format has no printf equivalent (centred, or another spec)."""
    shown = [i for i, c in enumerate(columns) if c.text]
    parts: list[str] = []
    loose: list[int] = []
    for i, c in enumerate(columns):
        if not c.text:
            parts.append("%.0s")  # a JSON-only value takes its place in the row and shows nothing
            continue
        last = i == shown[-1]
        if c.align not in ("<", ">") or not (c.spec == "" or re.fullmatch(r"\.\d+f|#?[xX]", c.spec)):
            return None
        width = "" if (last and c.align == "<") or not c.width else str(c.width)
        flags = ("-" if c.align == "<" and width else "") + ("#" if c.spec.startswith("#") else "")
        if c.spec:
            if c.truncate and c.width:
                return None  # str.format refuses a precision with these types
            parts.append(f"%{flags}{width}{c.spec.lstrip('#')}")
        else:
            parts.append(f"%{flags}{width}{f'.{c.width}' if c.truncate and c.width else ''}s")
            loose.append(i)
        if not last:
            parts.append(" ")
    return "".join(parts), loose


def _text_escaper(column: Column) -> Callable[[str], str]:
    """How the text sink makes a string value of ``column`` safe (and cut to width)."""
    if column.lines:
        return printable_lines
    if column.truncate and column.width:
        width = column.width
        return lambda s: printable(s, width)
    return printable


def _json_escape(m: re.Match[str]) -> str:
    """Inside a JSON string: a byte that was not UTF-8 (os.fsdecode's lone surrogate)
    as the text ``\\xNN``, as names show it everywhere; anything else as ``\\uXXXX``."""
    code = ord(m.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _is_utf8(stream: IO[str]) -> bool:
    """Whether ``stream`` takes any character (UTF-8, or an in-memory string)."""
    encoding = getattr(stream, "encoding", None)
    if not isinstance(encoding, str):
        return True
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def _strings_encoder(ensure_ascii: bool) -> Callable[[str], str]:
    """JSON's own encoder of one string, quotes included."""
    import json.encoder

    return json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring


def _object_encoder(ensure_ascii: bool = False) -> Callable[[Any], str]:
    """``json.dumps(o, separators=(",", ":"), ensure_ascii=...)`` without its per-call
    set-up: ``JSONEncoder.encode`` builds a new C encoder, with circular-reference
    bookkeeping, for every object; rows are flat, so one encoder serves them all
    (a fifth of the JSON path's time). Falls back where the C encoder is missing."""
    import json  # imported where JSON is written: the text and CSV paths start faster

    plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=ensure_ascii)
    make: Callable[..., Any] | None = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return plain.encode
    strings = _strings_encoder(ensure_ascii)
    try:
        encoder = make(None, plain.default, strings, None, ":", ",", False, False, True)
        join = "".join
        fast: Callable[[Any], str] = lambda o: join(encoder(o, 0))  # noqa: E731
        sample = {"s": 'a"\u00e9\n', "i": -(1 << 70), "f": 0.1, "n": None, "b": True, "l": [1.5, "x"],
                  "nan": float("nan")}
        if fast(sample) == plain.encode(sample):
            return fast
    except TypeError:  # a C encoder of another signature
        pass
    return plain.encode


def _value_encoders(ensure_ascii: bool) -> dict[type, Callable[[Sequence[Any]], list[str] | None]]:
    """By the type of a column's first value: the column encoded as JSON's encoder
    encodes each value, or None when some value is not of that type (the caller then
    encodes the column value by value). The type of each value is checked by the
    encoder that takes it (a str or float encoder refuses anything else), except that
    ``int.__repr__`` also takes bools, which JSON spells ``true``/``false``."""
    strings = _strings_encoder(ensure_ascii)
    special = frozenset(("nan", "inf", "-inf"))  # float.__repr__ of what JSON spells NaN, Infinity

    def of_strings(column: Sequence[Any]) -> list[str] | None:
        try:
            return list(map(strings, column))
        except TypeError:
            return None

    def of_floats(column: Sequence[Any]) -> list[str] | None:
        try:
            out = list(map(float.__repr__, column))
        except TypeError:
            return None
        return out if special.isdisjoint(out) else None

    def of_ints(column: Sequence[Any]) -> list[str] | None:
        if bool in map(type, column):
            return None
        try:
            return list(map(int.__repr__, column))
        except TypeError:
            return None

    def of_nones(column: Sequence[Any]) -> list[str] | None:
        return ["null"] * len(column) if column.count(None) == len(column) else None

    return {str: of_strings, int: of_ints, float: of_floats, type(None): of_nones}


def make_sink(opts: OutputOptions, columns: Sequence[Column], stream: IO[str] | None = None) -> Sink:
    if opts.json:
        return JsonSink(columns, stream)
    if opts.csv:
        return CsvSink(columns, stream)
    return TextSink(columns, stream)


def write_table(
    opts: OutputOptions, columns: Sequence[Column], rows: Iterable[Sequence[Any]], stream: IO[str] | None = None
) -> None:
    """A whole table at once (the ``-c/--count`` summaries), in the user's format."""
    sink = make_sink(opts, columns, stream)
    sink.header()
    sink.write(list(rows))
