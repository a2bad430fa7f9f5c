"""Sinks writing to real files and pipes: every byte arrives, in order, whatever the
kernel accepts per write() and whenever Ctrl-C comes."""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from helpers import ROOT
from netsnoop.output import Column, JsonSink, TextSink

COLUMNS = [Column("N", 6), Column("WORD")]


def test_partial_writes_are_resumed(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipe may take fewer bytes than offered: the rest is written, in order."""
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    path = tmp_path / "out"
    with open(path, "w", encoding="utf-8") as f:
        sink = TextSink(COLUMNS, f)
        sink.header()
        sink.write([(i, "héllo") for i in range(50)])
        sink.write([(50, "end")])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "N      WORD" and len(lines) == 52 and sink.count == 51
    assert lines[1] == "0      héllo" and lines[-1] == "50     end"


def test_in_memory_streams_still_work() -> None:
    buf = io.StringIO()
    sink = JsonSink(COLUMNS, buf)
    sink.write([(1, "a")])
    sink.summary({"events": 1})
    assert buf.getvalue() == '{"n":1,"word":"a"}\n{"type":"summary","events":1}\n'


WRITER = """
import signal, sys, time
from netsnoop.output import Column, TextSink
stop = False
def on_int(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGINT, on_int)
sink = TextSink([Column("N", 8), Column("X")])
sink.header()
n = after = 0
while after < 3:
    after += stop
    sink.write([(n + k, "x" * 60) for k in range(180)])  # 12 KiB: more than the 8 KiB buffer
    n += 180
    time.sleep(0.001)
print(n, file=sys.stderr)
"""


def wait_until_full(write_end: int) -> None:
    """Until the pipe takes nothing more (its write end, which the test holds too, no
    longer polls writable): the writer, which always has more, is blocked."""
    poller = select.poll()
    poller.register(write_end, select.POLLOUT)
    deadline = time.monotonic() + 20
    while poller.poll(0):
        assert time.monotonic() < deadline, "the writer never filled the pipe"
        time.sleep(0.001)


def test_ctrl_c_on_a_full_pipe_loses_no_rows() -> None:
    """With CPython's buffered writer, a write larger than its buffer could lose its
    tail when Ctrl-C interrupted the next write, blocked on a full pipe (about one run
    in ten); the sink's own writes must not."""
    for _ in range(8):
        r, w = os.pipe()
        proc = subprocess.Popen([sys.executable, "-c", WRITER], cwd=ROOT, stdout=w, stderr=subprocess.PIPE, text=True)
        wait_until_full(w)  # nobody reads: the writer is blocked now
        os.close(w)
        proc.send_signal(signal.SIGINT)
        with os.fdopen(r) as reader:
            out = reader.read()
        err = proc.communicate(timeout=20)[1]
        rows = out.splitlines()[1:]
        assert len(rows) == int(err.split()[-1])
        assert [int(r.split()[0]) for r in rows] == list(range(len(rows)))
