"""Shared fixtures. Integration tests need root and kernel BTF; without them they skip
with the reason, except under CI (CI=true), where a skip would hide a broken run and
so fails instead."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import bpf_unavailable_reason  # noqa: E402


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is None:
        return
    reason = bpf_unavailable_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"integration test cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)
