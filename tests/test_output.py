"""The sinks with hostile names: every row one line, nothing a terminal would act on,
CSV that csv readers parse back, JSON that keeps every character and every digit, and
no encoding that can end a trace. No root needed."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Any

import pytest

from netsnoop.fmt import comm, printable
from netsnoop.output import Column, CsvSink, JsonSink, TextSink

# What a local user can name a process (prctl(PR_SET_NAME) takes any 15 bytes) or a file.
HOSTILE = [
    "[/]x",  # rich markup: would end the trace with MarkupError
    "[red]x",  # rich markup: would recolour
    "\x1b]0;pwn\x07",  # OSC: sets the terminal's title
    "\x1b[2J\x1b[H",  # CSI: clears the screen
    'a,b"c',  # CSV separator and quote
    "line\nbreak",  # a fake row
    "cr\rover",  # overwrites the start of the row
    "back\b\b\bx",  # backspaces
    "del\x7f",
    "c1\x9b31m",  # a one-byte CSI (C1)
    "\u202eevil",  # right-to-left override
    "café",
    comm(b"\xff\xfe"),  # not UTF-8
    "f\udcffile",  # a file name with a non-UTF-8 byte, as os.fsdecode gives it
]
# Raw bytes a terminal acts on; none may be in a sink's output except the row breaks.
TERMINAL_ACTIVE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e\ud800-\udfff]")

COLS = [Column("PID", 5), Column("COMM", 10, truncate=True), Column("MS", spec=".2f"), Column("NAME")]


def rows() -> list[tuple[Any, ...]]:
    return [(i, name, 1.5, name) for i, name in enumerate(HOSTILE)]


def test_printable_escapes_controls_and_keeps_the_rest() -> None:
    assert printable("\x1b]0;pwn\x07") == "\\x1b]0;pwn\\x07"
    assert printable("line\nbreak\r\t") == "line\\nbreak\\r\\t"
    assert printable("c1\x9b31m\x7f") == "c1\\x9b31m\\x7f"
    assert printable("\u202eevil") == "\\u202eevil"
    assert printable("f\udcffile") == "f\\xffile"  # the byte the name really holds
    for plain in ("[/]x", "[red]x", 'a,b"c', "café", "curl"):
        assert printable(plain) == plain


@pytest.mark.parametrize("width", range(1, 16))
def test_printable_cuts_between_escapes_never_inside(width: int) -> None:
    text = "ab\x1bcd\x07\x9b"
    full = printable(text)
    cut = printable(text, width)
    assert len(cut) <= width and full.startswith(cut)
    # every cut ends at a boundary of the escaped text: before or after a whole escape
    boundaries = {0, 1, 2, 6, 7, 8, 12, 16}
    assert len(cut) in boundaries and len(cut) >= max(b for b in boundaries if b <= width)


def test_comm_decodes_any_bytes() -> None:
    assert comm(b"curl\0\0garbage") == "curl"
    assert comm("café".encode()) == "café"
    assert comm(b"\xff\xfe") == "\\xff\\xfe"  # kept, as text
    for b in range(256):
        comm(bytes([b, 0x80, b]) + b"\xc3")  # never raises
    comm(os.urandom(4096))


def test_text_rows_are_one_line_each_and_escaped() -> None:
    buf = io.StringIO()
    sink = TextSink(COLS, buf)
    sink.header()
    sink.write(rows())
    out = buf.getvalue()
    lines = out.splitlines()
    assert len(lines) == 1 + len(HOSTILE) and out.count("\n") == len(lines)
    assert not TERMINAL_ACTIVE.search(out)
    for line, name in zip(lines[1:], HOSTILE):
        assert line.endswith(" " + printable(name)), line  # NAME: whole, escaped
        comm_field = line[6:16].rstrip()
        assert printable(name).startswith(comm_field)  # COMM: escaped, then cut
    assert lines[3].startswith("2     \\x1b]0;pwn ")  # cut after escaping, on a boundary
    assert sink.count == len(HOSTILE)


def test_text_truncation_never_leaves_half_an_escape() -> None:
    buf = io.StringIO()
    TextSink(COLS, buf).write([(1, "abcdefgh\x1bZ", 0.0, "n")])
    assert buf.getvalue() == "1     abcdefgh   0.00 n\n"  # not "abcdefgh\x"


def test_text_keeps_deliberate_lines_and_escapes_the_rest() -> None:
    cols = [Column("PID", 5), Column("REASON", lines=True)]
    buf = io.StringIO()
    TextSink(cols, buf).write([(1, "NO_SOCKET\n\tkfree_skb+0x1\x1b[2J\n")])
    assert buf.getvalue() == "1     NO_SOCKET\n\tkfree_skb+0x1\\x1b[2J\n\n"


def test_clean_rows_are_formatted_as_before() -> None:
    buf = io.StringIO()
    sink = TextSink(COLS, buf)
    sink.write(iter([(42, "averyverylongcomm", 1.234, "x"), (7, "curl", 0.0, "y")]))  # a generator too
    assert buf.getvalue() == "42    averyveryl 1.23 x\n7     curl       0.00 y\n"


def test_csv_is_valid_and_names_round_trip() -> None:
    buf = io.StringIO()
    sink = CsvSink(COLS, buf)
    sink.header()
    sink.write(rows())
    out = buf.getvalue()
    assert not TERMINAL_ACTIVE.search(out) and out.count("\n") == 1 + len(HOSTILE)
    parsed = list(csv.reader(io.StringIO(out)))
    assert parsed[0] == ["PID", "COMM", "MS", "NAME"]
    assert len(parsed) == 1 + len(HOSTILE)
    for fields, name in zip(parsed[1:], HOSTILE):
        assert len(fields) == 4
        assert fields[1] == fields[3] == printable(name)  # CSV does not cut
        assert fields[2] == "1.50"
    assert parsed[5][1] == 'a,b"c' and parsed[12][1] == "café"


def test_json_keeps_every_character_and_is_terminal_safe() -> None:
    buf = io.StringIO()
    JsonSink(COLS, buf).write(rows())
    out = buf.getvalue()
    assert not TERMINAL_ACTIVE.search(out)
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == len(HOSTILE)
    for r, name in zip(records, HOSTILE):
        expected = name.replace("\udcff", "\\xff")  # a lone surrogate is no character: its byte as text
        assert r["comm"] == expected and r["name"] == expected


def test_hex_columns_keep_64_bit_values_exact_in_json() -> None:
    """A kernel address is beyond 2**53, where jq and JavaScript round: JSON gets the
    hex string the text shows, whatever the value (the field's type never changes)."""
    skaddr = 0xFFFF8881_2345_6781
    cols = [Column("SKADDR", 16, spec="x", hex=True), Column("COOKIE", hex=True), Column("BYTES")]
    buf = io.StringIO()
    JsonSink(cols, buf).write([(skaddr, 1 << 60, 5), (0x1000, 7, 6)])
    first, second = (json.loads(line) for line in buf.getvalue().splitlines())
    assert first == {"skaddr": "ffff888123456781", "cookie": "0x1000000000000000", "bytes": 5}
    assert second == {"skaddr": "1000", "cookie": "0x7", "bytes": 6}
    assert int(first["skaddr"], 16) == skaddr  # exact, to the last bit
    text = io.StringIO()
    TextSink(cols, text).write([(skaddr, 0, 0)])
    assert text.getvalue().split()[0] == first["skaddr"]  # the same string as the text


@pytest.mark.parametrize("sink_class", [TextSink, CsvSink, JsonSink])
def test_a_non_utf8_stream_gets_escapes_not_an_exception(sink_class: type, tmp_path: Any) -> None:
    path = tmp_path / "out"
    with open(path, "w", encoding="ascii") as f:  # what PYTHONIOENCODING=ascii gives stdout
        sink = sink_class(COLS, f)
        sink.header()
        sink.write(rows())
        sink.write([(99, "end", 0.0, "end")])
    data = path.read_bytes()
    assert max(data) < 0x80 and not TERMINAL_ACTIVE.search(data.decode())
    lines = data.decode().splitlines()
    if sink_class is JsonSink:  # \u escapes: the same characters, still exact
        records = [json.loads(line) for line in lines]
        assert records[11]["comm"] == "café" and records[-1]["pid"] == 99
    else:
        assert "caf\\xe9" in lines[12] and lines[-1].startswith("99")


# Layouts and values for the fast paths: what each must print is what Python's format()
# prints for the column's spec (the bcc layout), and what json.dumps prints.
LAYOUT = [Column("A", 5), Column("B", 10, truncate=True), Column("HIDDEN", text=False), Column("C", 6, align=">"),
          Column("D", 8, spec=".3f"), Column("E", 4, spec="x"), Column("F", 7), Column("LAST")]


def _formatted(cols: list[Column], row: tuple[Any, ...]) -> str:
    """One text line by the column rules written out: align, width (none for a last
    left-aligned column), a cut to the width, the spec; one space between columns."""
    shown = [(c, v) for c, v in zip(cols, row) if c.text]
    parts = []
    for n, (c, v) in enumerate(shown):
        width = "" if (n == len(shown) - 1 and c.align == "<") or not c.width else str(c.width)
        prec = f".{c.width}" if c.truncate and c.width else ""
        parts.append(format(v, f"{c.align}{width}{prec}{c.spec}"))
    return " ".join(parts)


VALUE_ROWS = [
    (1, "curl", 7, "x", 1.5, 255, 3, "end"),
    (-12345678, "averyverylongname", "hidden", 123456789, -0.0005, 0, 2.5, 1 << 70),
    (True, "café", None, False, 3, 4096, "ünï", "ü"),  # bools where ints are: str.format writes 1 and 0
    (0, "", None, "", float("nan"), 1, float("inf"), ""),
    (7, "8", 9, 10.25, 11, 12, -3, ""),
]


NAMED_LIKE_BOOLS = [(1, "True", 0, "False", 1.0, 2, "False", "True"), (2, "x", 1, "y", 2.0, 3, 4, "z")]


@pytest.mark.parametrize("batch", [VALUE_ROWS, VALUE_ROWS[:1], VALUE_ROWS[1:2] * 3, VALUE_ROWS[2:3], NAMED_LIKE_BOOLS,
                                   [NAMED_LIKE_BOOLS[0], VALUE_ROWS[2]]])
def test_text_lines_are_the_column_rules_whatever_the_values(batch: list[tuple[Any, ...]]) -> None:
    buf = io.StringIO()
    TextSink(LAYOUT, buf).write(batch)
    assert buf.getvalue() == "".join(_formatted(LAYOUT, r) + "\n" for r in batch)
    if batch is not NAMED_LIKE_BOOLS:
        assert buf.getvalue().count("True") == sum(v == "True" for r in batch for v in r)  # no bool shown as True


def test_text_escapes_a_batch_when_one_value_would_break_a_line() -> None:
    clean = (1, "curl", 0, 2, 0.5, 1, 3, "end")
    for bad in ("a\nb", "a\rb", "a\x1bb", "\x7f", "\x9b", "\u2028x", "\u202ex", "x\udcff"):
        buf = io.StringIO()
        TextSink(LAYOUT, buf).write([clean, (*clean[:7], bad)])
        out = buf.getvalue()
        assert out.count("\n") == 2 and not TERMINAL_ACTIVE.search(out), (bad, out)
        assert out.splitlines()[1].endswith(" " + printable(bad)) and out.startswith(_formatted(LAYOUT, clean))


def test_text_rows_of_another_length_are_refused_as_before() -> None:
    with pytest.raises(IndexError):
        TextSink(LAYOUT, io.StringIO()).write([(1, "a")])


JSON_ROWS = [
    (1, "curl", 7, "x", 1.5, 255, 3, "end"),
    (True, "café\u202e\x1b\n\"\\", None, False, float("nan"), -(1 << 70), [1, "a"], {"k": 2.5}),
    (0, "", 0.1, "", float("inf"), 1, float("-inf"), None),
    (None, None, None, None, None, None, None, None),
    (2.5, 3, "s", 4, 5, 6.0, 7, True),
]


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
@pytest.mark.parametrize("batch", [JSON_ROWS, JSON_ROWS[:1], JSON_ROWS[1:2] * 2, JSON_ROWS[3:]])
def test_json_lines_are_what_json_dumps_writes(batch: list[tuple[Any, ...]], encoding: str, tmp_path: Any) -> None:
    path = tmp_path / "out"
    with open(path, "w", encoding=encoding) as f:
        JsonSink(LAYOUT, f).write(batch)
    keys = [c.json_key for c in LAYOUT]
    expected = [json.dumps(dict(zip(keys, r)), separators=(",", ":"), ensure_ascii=encoding == "ascii")
                for r in batch]
    got = path.read_text(encoding=encoding).splitlines()
    assert len(got) == len(batch)
    for line, want, row in zip(got, expected, batch):
        # the sink writes U+202E as \u202e where json.dumps keeps it: the same value
        if any("\u202e" in v for v in row if isinstance(v, str)) and encoding == "utf-8":
            assert json.loads(line) == json.loads(want) and "\u202e" not in line
        else:
            assert line == want


def test_json_a_key_twice_is_one_key_as_in_a_dict() -> None:
    buf = io.StringIO()
    JsonSink([Column("A"), Column("B", key="a"), Column("C")], buf).write([(1, 2, 3)])
    assert buf.getvalue() == '{"a":2,"c":3}\n'


@pytest.mark.parametrize("batch", [
    [(1, "50%", 2.5, None), (1, "50%", 2.5, None)],  # every column one value: the template is the line
    [(1, "%s%%", 1, "x"), (True, "%s%%", 1.0, "y"), (1.0, "%s%%", True, "z")],  # equal, not of one type
    [(7, "a", 0.1, "%d"), (7, "b", 0.1, "%d"), (7, "c", 0.1, "%d")],
])
def test_json_columns_of_one_value_are_written_as_json_dumps_writes_them(batch: list[tuple[Any, ...]]) -> None:
    cols = [Column("N", key="n%"), Column("S"), Column("F"), Column("X")]
    buf = io.StringIO()
    JsonSink(cols, buf).write(batch)
    keys = ["n%", "s", "f", "x"]
    assert buf.getvalue() == "".join(json.dumps(dict(zip(keys, r)), separators=(",", ":")) + "\n" for r in batch)
