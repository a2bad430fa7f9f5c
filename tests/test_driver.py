"""The process driver the tests and the bench share (tests/driver.py), on a stand-in
for netsnoop that needs no root: a script that says it is tracing, writes rows, and
on SIGINT writes a summary and exits, as every netsnoop subcommand does."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from driver import DidNotStart, Netsnoop, parse_summary_text

# Writes a header and NETSNOOP_TEST_ROWS rows (from its environment), then says it
# is tracing and waits; SIGINT: the JSON summary on stdout, the text one on stderr,
# exit 0. The rows come before the ready line so that a test which stops it once it
# is ready knows every row was written: a SIGINT between two rows would end it there.
STAND_IN = r"""
import json, os, signal, sys, time
def stop(*_):
    print(json.dumps({"type": "summary", "events": rows, "hooks": {"set_state": "tp_btf"}}), flush=True)
    print(f"netsnoop: {rows} events, 0 lost events, 0 skipped hook runs, ring transport, "
          "hooks: set_state=tp_btf accept=none", file=sys.stderr, flush=True)
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
rows = int(os.environ["NETSNOOP_TEST_ROWS"])
print("HEADER", flush=True)
for n in range(rows):
    print(json.dumps({"n": n}), flush=True)
print("Tracing ... Hit Ctrl-C to end.", file=sys.stderr, flush=True)
while True:
    time.sleep(1)
"""
PYTHON = [sys.executable, "-c", STAND_IN]


def test_ready_output_and_sigint_stop_with_summary() -> None:
    ns = Netsnoop([], env={"NETSNOOP_TEST_ROWS": "3"}, command=PYTHON).start().wait_ready()
    assert ns.ready_at is not None and ns.wait_output(5) and ns.output_at is not None
    assert ns.stop().returncode == 0
    assert [r["n"] for r in ns.records] == [0, 1, 2]
    assert ns.summary["events"] == 3 and ns.hooks == {"set_state": "tp_btf"}
    assert ns.cpu_at_exit is not None  # read from the exited process before it was reaped
    assert parse_summary_text(ns.stderr) == {"events": 3, "lost_events": 0, "skipped_hook_runs": 0,
                                             "transport": "ring", "hooks": {"set_state": "tp_btf", "accept": None}}


def test_stdout_to_a_file(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "out")
    ns = Netsnoop([], env={"NETSNOOP_TEST_ROWS": "2"}, command=PYTHON, stdout_path=path).start().wait_ready()
    assert ns.wait_output(5)
    ns.stop()
    with open(path) as f:
        assert f.read().splitlines()[:3] == ["HEADER", '{"n": 0}', '{"n": 1}']


def test_a_process_that_ends_before_its_ready_line_did_not_start() -> None:
    ns = Netsnoop([], command=[sys.executable, "-c", "import sys; sys.exit('no BTF here')"]).start()
    with pytest.raises(DidNotStart, match="no BTF here"):
        ns.wait_ready(5)
    assert ns.returncode == 1


def test_stop_kills_what_ignores_the_signal() -> None:
    ignore = "import signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); " \
             "print('Tracing', file=sys.stderr, flush=True); time.sleep(60)"
    ns = Netsnoop([], command=[sys.executable, "-c", ignore]).start().wait_ready()
    assert ns.stop(timeout=0.5).returncode == -signal.SIGKILL
