"""netsnoop check: its table, its verdict, and how it ends when its reader goes away."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from helpers import NETSNOOP, ROOT, run
from netsnoop.commands import COMMANDS

integration = pytest.mark.integration
# the subcommands that load BPF (check tries each): those with a TRACER
TOOLS = [n for n, (module, _h) in COMMANDS.items() if hasattr(importlib.import_module(module), "TRACER")]


@integration
def test_the_table_fits_80_columns_and_ends_with_a_verdict() -> None:
    """Issue 11.25: no verdict, and a table that wrapped badly at 80 columns."""
    done = run(["check"], env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.rstrip("\n").splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert lines[-1].strip() == f"{len(TOOLS)} of {len(TOOLS)} subcommands can run here"
    assert lines[0].strip() == "netsnoop check"
    names = [line.split()[1] for line in lines[1:] if line.startswith("netsnoop ")]
    assert names == TOOLS  # one row each, its name whole on its own line


@integration
def test_the_verdict_names_what_cannot_run_and_why() -> None:
    """With kprobes the only kind allowed, nothing runs here (no CONFIG_KPROBES): the
    verdict says so with the reason; with tracepoints only, those that have them run."""
    none = run(["check", "--json"], env={**os.environ, "NETSNOOP_HOOKS": "kprobe,kretprobe"})
    found = [json.loads(line) for line in none.stdout.splitlines()]
    assert none.returncode == 1 and found[-1]["item"] == "verdict" and not found[-1]["ok"]
    assert found[-1]["detail"].startswith(f"0 of {len(TOOLS)} subcommands can run here; ")
    for tool in TOOLS:
        assert tool in found[-1]["detail"] or "; none: " in found[-1]["detail"]
    some = run(["check", "--json"], env={**os.environ, "NETSNOOP_HOOKS": "tracepoint"})
    found = [json.loads(line) for line in some.stdout.splitlines()]
    runnable = [f["item"].split()[1] for f in found if f["item"].startswith("netsnoop ") and f["ok"]]
    assert some.returncode == 0 and "states" in runnable and "fdsnoop" in runnable
    assert found[-1]["detail"].startswith(f"{len(runnable)} of {len(TOOLS)} subcommands can run here")


@integration
def test_check_into_head_ends_quietly() -> None:
    """Issue 11.17: `check --json | head -1` printed a BrokenPipeError."""
    script = f"{' '.join(NETSNOOP)} check --json | head -1; echo \"${{PIPESTATUS[0]}}\" >&2"
    done = subprocess.run(["bash", "-c", script],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout)["item"] == "kernel"
    assert done.stderr.strip() == "0", done.stderr


@integration
def test_check_without_kernel_btf_still_shows_its_table(tmp_path: Any) -> None:
    """Issue 11.13: check stopped without its table when the kernel's BTF was missing."""
    copy = tmp_path / "vmlinux"
    shutil.copyfile("/sys/kernel/btf/vmlinux", copy)
    hide = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            "mount -t tmpfs none /sys/kernel/btf && exec \"$@\"", "sh"]
    done = subprocess.run(hide + NETSNOOP + ["check", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NETSNOOP_BTF": str(copy)})
    found = {r["item"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert done.returncode == 0, done.stderr
    assert found["kernel BTF"]["detail"].startswith(
        f"/sys/kernel/btf/vmlinux missing; NETSNOOP_BTF={copy} serves CO-RE only"
    )
    assert not found["tp_btf"]["ok"] and found["tracepoint"]["ok"]
    assert found["netsnoop states"]["detail"] == "via set_state=tracepoint"
    assert found["verdict"]["detail"] == f"{len(TOOLS)} of {len(TOOLS)} subcommands can run here"
