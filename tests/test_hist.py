"""Unit tests for netsnoop/hist.py: bucket ranges, bcc's bars and layout, JSON, CPUs
added up, and the interval loop."""

from __future__ import annotations

import io
import json
from collections import namedtuple

from netsnoop.hist import (
    EMPTY, Log2Hist, Section, add_cpus, average_line, render, slot_range, stars, to_json,
    write_sections,
)
from netsnoop.output import OutputOptions

# the shape of struct hist as StructDecoder returns it
CpuHist = namedtuple("CpuHist", "slots count sum")


def hist(*slots: int, total: int = 0) -> Log2Hist:
    return Log2Hist(tuple(slots) + (0,) * (32 - len(slots)), sum(slots), total)


def test_slot_ranges_match_bcc_rows() -> None:
    assert [slot_range(i) for i in range(4)] == [(0, 1), (2, 3), (4, 7), (8, 15)]
    assert slot_range(20) == (1 << 20, (1 << 21) - 1)


def test_stars_are_proportional_and_rounded_down() -> None:
    assert stars(10, 10) == "*" * 40
    assert stars(5, 10) == "*" * 20
    assert stars(1, 100) == ""  # 0.4 of a star: none, as in bcc
    assert stars(3, 100) == "*"
    assert stars(0, 0) == ""
    assert stars(4, 8, width=20) == "*" * 10


def test_render_is_bccs_print_log2_hist_layout() -> None:
    lines = render(hist(0, 0, 12, 0, 4), "usecs")
    assert lines == [
        "     usecs               : count     distribution",
        "         0 -> 1          : 0        |                                        |",
        "         2 -> 3          : 0        |                                        |",
        "         4 -> 7          : 12       |****************************************|",
        "         8 -> 15         : 0        |                                        |",
        "        16 -> 31         : 4        |*************                           |",
    ]


def test_render_stops_at_the_last_non_empty_slot_and_skips_empty() -> None:
    assert len(render(hist(1, 2, 3), "backlog")) == 4
    assert render(hist(), "usecs") == []
    assert render(EMPTY, "usecs") == []
    assert EMPTY.buckets() == [] and EMPTY.mean() == 0.0


def test_wide_values_keep_the_columns() -> None:
    line = render(hist(*([0] * 31 + [7])), "nsecs")[-1]
    assert line.startswith(f"{1 << 31:>10} -> {(1 << 32) - 1:<10} : 7 ")


def test_cpus_are_added_up() -> None:
    a = CpuHist((1, 2) + (0,) * 30, 3, 30)
    b = CpuHist((0, 5) + (0,) * 30, 5, 50)
    h = add_cpus([a, b])
    assert h.slots[:3] == (1, 7, 0) and h.count == 8 and h.total == 80
    assert h.buckets() == [(0, 1, 1), (2, 3, 7)]
    assert h.mean() == 10.0 and h.mean(div=10) == 1.0


def test_json_is_typed_and_scaled() -> None:
    h = hist(1, 0, 2, total=12_500)
    assert to_json(h, "usecs", div=1000) == {
        "unit": "usecs", "count": 3, "sum": 12.5, "avg": 4.167,
        "buckets": [{"low": 0, "high": 1, "count": 1}, {"low": 2, "high": 3, "count": 0},
                    {"low": 4, "high": 7, "count": 2}],
    }
    assert to_json(h, "nsecs")["sum"] == 12_500


def test_average_line() -> None:
    assert average_line(hist(0, 2, total=10), "usecs") == "avg = 5 usecs, total: 10 usecs, count: 2"


def test_text_sections_labels_extra_facts_and_time() -> None:
    buf = io.StringIO()
    sections = [Section(hist(3), {"backlog_max": 128}, {"overflows": 2})]
    write_sections(sections, "backlog", OutputOptions(time=True), facts={"listen_overflows": 5}, stream=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "" and len(lines[1]) == 8 and lines[1][2] == ":"  # HH:MM:SS
    assert lines[2:] == [
        "",
        "backlog_max = 128",
        "     backlog             : count     distribution",
        "         0 -> 1          : 3        |****************************************|",
        "overflows = 2",
        "listen_overflows = 5",
    ]


def test_json_sections_one_object_each_plus_facts() -> None:
    buf = io.StringIO()
    sections = [Section(hist(0, 1, total=3), {"Local Address": "::1"}),
                Section(hist(1, total=1), {"Local Address": "10.0.0.1"})]
    write_sections(sections, "usecs", OutputOptions(json=True), facts={"listen_overflows": 0}, stream=buf)
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [r.get("local_address") for r in records] == ["::1", "10.0.0.1", None]
    assert records[0]["buckets"] == [{"low": 0, "high": 1, "count": 0}, {"low": 2, "high": 3, "count": 1}]
    assert records[2]["listen_overflows"] == 0
    assert all(isinstance(r["timestamp"], float) for r in records)


def test_text_averages_under_each_histogram() -> None:
    buf = io.StringIO()
    write_sections([Section(hist(0, 4, total=12_000))], "msecs", OutputOptions(), div=1000, averages=True, stream=buf)
    assert buf.getvalue().splitlines()[-1] == "avg = 3 msecs, total: 12 msecs, count: 4"
