"""Shared fixtures. Integration tests need root and kernel BTF; without them they skip
with the reason, except under CI (CI=true), where a skip would hide a broken run and
so fails instead -- any skip, wherever it comes from: the marker, ``pytest.skip()`` in
a test's body or a fixture, or a module skipped at collection."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import bpf_unavailable_reason  # noqa: E402


def _under_ci() -> bool:
    return os.environ.get("CI") == "true"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is None:
        return
    reason = bpf_unavailable_reason()
    if reason:
        if _under_ci():
            pytest.fail(f"integration test cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)


def _fail_skip(report: Any) -> None:
    """A skipped report becomes a failure that still says why it skipped."""
    if _under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    _fail_skip(outcome.get_result())
