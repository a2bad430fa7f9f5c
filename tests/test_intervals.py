"""The interval tools' one run (runner.every_interval): the loop, and one summary shape
for all six, the keys of stream()'s summary with ``intervals`` for ``events``."""

from __future__ import annotations

import contextlib
import json
from typing import Any, cast

import pytest
from helpers import Trace

from netsnoop.loader import BPFObject
from netsnoop.output import OutputOptions
from netsnoop.runner import every_interval

HEALTH = {"lost_events": 0, "skipped_hook_runs": 0, "hooks": {"x": "tp_btf"}}


class FakeObject:
    """What every_interval asks of a loaded object."""

    def health(self) -> dict[str, Any]:
        return dict(HEALTH)

    def missed_runs(self) -> int:
        return 0


OBJ = cast(BPFObject, FakeObject())


def test_every_interval_reports_then_one_summary(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[bool] = []
    order: list[str] = []

    def report(last: bool) -> bool:
        calls.append(last)
        return not last  # the cut-short interval had nothing to show: not counted

    shown = every_interval(OBJ, report, OutputOptions(json=True), 0.02, duration=0.07, banner="Tracing x",
                           facts=lambda: {"only": {"cpu": 1}}, finish=lambda: order.append("finish"))
    out, err = capsys.readouterr()
    assert calls[-1] is True and not any(calls[:-1]) and shown == len(calls) - 1 >= 1
    assert json.loads(out) == {"type": "summary", "intervals": shown, **HEALTH, "only": {"cpu": 1}}
    assert err.startswith("Tracing x") and order == ["finish"]


def test_every_interval_stops_after_count(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[bool] = []
    shown = every_interval(OBJ, calls.append, OutputOptions(), 0.01, count=3)
    assert (shown, calls) == (3, [False, False, False])
    assert "netsnoop: 3 intervals, 0 lost events, 0 skipped hook runs, hooks: x=tp_btf" in capsys.readouterr().err


@pytest.mark.integration
def test_the_six_tools_end_with_one_summary_shape() -> None:
    # each must still run when Trace reads its attached programs, just after its ready
    # line: on a busy machine that read can come a few hundred ms late
    runs = {
        "top": ["top", "--json", "0.6", "2"],
        "subnet": ["subnet", "--json", "-i", "0.6", "-d", "1.5"],
        "netqtop": ["netqtop", "-n", "lo", "--json", "-i", "0.6", "-d", "1.5"],
        "rtt": ["rtt", "--json", "-d", "1.5"],
        "synbl": ["synbl", "--json", "-d", "1.5"],
        "softirqs": ["softirqs", "--json", "-d", "1.5"],
    }
    with contextlib.ExitStack() as stack:
        traces = {tool: stack.enter_context(Trace(args)) for tool, args in runs.items()}
        for t in traces.values():
            t.proc.wait(timeout=30)  # each stops by itself
    for tool, t in traces.items():
        assert t.returncode == 0, (tool, t.stderr)
        shape = {"type", "intervals", "lost_events", "skipped_hook_runs", "transport", "hooks"}
        assert set(t.summary) == shape, (tool, t.summary)
        assert t.summary["intervals"] >= 1 and t.summary["lost_events"] == 0, (tool, t.summary)
