"""The perf-buffer transport: what kernels without a BPF ring buffer (before 5.8) get.

NETSNOOP_TRANSPORT=perf forces it here, and the tests that hold netsnoop to exact
figures -- rows per state change, payload bytes per session, connects counted against
those made, events lost under a one-page buffer in a storm, the mapped reader against
libbpf's, why's verdict per connection -- run again through it, unchanged. Every trace they start must then say in its
summary that the perf buffer carried its events (the same runs in their own modules
say "ring").
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Callable

import pytest
import test_cli
import test_connect
import test_life
import test_ringbuf
import test_states
import test_why

import helpers
from helpers import NETSNOOP, ROOT, Trace, refused_connect

integration = pytest.mark.integration


def transport_of(t: Trace) -> str | None:
    """The transport a finished trace names in its summary (JSON or text), or None."""
    summaries = [r for r in t.all_records if r.get("type") == "summary"]
    if summaries:
        return summaries[-1].get("transport")
    for line in reversed(t.stderr.splitlines()):
        if line.startswith("netsnoop: ") and " transport" in line:
            return line.split(" transport", 1)[0].rsplit(" ", 1)[-1]
    return None


@pytest.fixture
def through_perf(monkeypatch: pytest.MonkeyPatch) -> Any:
    """NETSNOOP_TRANSPORT=perf for every trace the test starts; yields the transports
    their summaries named."""
    monkeypatch.setenv("NETSNOOP_TRANSPORT", "perf")
    seen: list[str | None] = []
    stop = helpers.Trace.stop

    def stop_and_note(self: Trace, *args: Any, **kw: Any) -> Trace:
        done = self.returncode is not None
        out = stop(self, *args, **kw)
        if not done and self.links:
            seen.append(transport_of(self))
        return out

    monkeypatch.setattr(helpers.Trace, "stop", stop_and_note)
    yield seen


EXACT: list[Callable[[], None]] = [
    test_states.test_full_session_both_ends_and_ms_in_state,
    test_states.test_classic_tracepoint_variant_sees_the_same,  # a classic tracepoint's ctx for the output
    test_life.test_bytes_are_payload_bytes_exactly_at_both_ends,
    test_connect.test_count_equals_the_connects_made,
    test_connect.test_load_20000_connects_are_counted_exactly,
    test_cli.test_lost_events_are_counted_exactly,
    test_ringbuf.test_mapped_reader_and_libbpf_reader_see_the_same_events,
    # pairs each connect with its answer: events of different CPUs must come in time order
    test_why.test_every_connection_counts_even_on_one_reused_client_port,
]


@integration
@pytest.mark.parametrize("test", EXACT, ids=[f"{t.__module__}.{t.__name__}" for t in EXACT])
def test_exact_figures_through_the_perf_buffer(test: Callable[[], None], through_perf: list[str | None]) -> None:
    test()
    assert through_perf and set(through_perf) == {"perf"}, through_perf


@integration
def test_unset_the_ring_buffer_carries_events_where_the_kernel_has_one() -> None:
    """The positive control of the tests above: without the switch this kernel (which has
    ring buffers) gets the ring, and the summary says so."""
    port = refused_connect()
    with Trace(["states", "-D", str(port)], env={"NETSNOOP_TRANSPORT": ""}) as t:
        refused_connect(port=port)
    assert transport_of(t) == "ring"


def perf_mappings(pid: int) -> list[int]:
    """Sizes of the perf event buffers process ``pid`` has mapped (/proc/PID/maps)."""
    sizes = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if "[perf_event]" in line:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                sizes.append(end - start)
    return sizes


@integration
def test_ringbuf_size_is_shared_between_the_cpus_perf_buffers(through_perf: list[str | None]) -> None:
    """--ringbuf bounds what the perf buffers take together: one per online CPU, each its
    share (a power of two pages) plus the control page -- as the kernel's own maps show."""
    import mmap

    from netsnoop.kernel import online_cpus

    ncpus = len(online_cpus())
    share = 1 << ((64 * 1024 // ncpus).bit_length() - 1)
    with Trace(["--ringbuf", "64K", "states"]) as t:
        sizes = perf_mappings(t.proc.pid)
    assert sizes == [mmap.PAGESIZE + max(share, mmap.PAGESIZE)] * ncpus
    assert through_perf == ["perf"]


def test_unknown_transport_is_a_usage_error() -> None:
    result = subprocess.run(NETSNOOP + ["states"], env={**os.environ, "NETSNOOP_TRANSPORT": "pipe"}, cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "NETSNOOP_TRANSPORT" in result.stderr and "Traceback" not in result.stderr


@integration
def test_check_names_the_transport_and_every_subcommand_loads_through_perf() -> None:
    """`netsnoop check` says which transport a run gets; forced onto the perf buffer,
    every subcommand's object still passes the verifier and attaches (check loads each
    as the subcommand would), and the ring buffer it did not choose is still reported."""
    def check(transport: str) -> dict[str, dict[str, Any]]:
        result = subprocess.run(NETSNOOP + ["check", "--json"], env={**os.environ, "NETSNOOP_TRANSPORT": transport},
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return {f["item"]: f for f in map(json.loads, result.stdout.splitlines())}

    found = check("perf")
    assert found["transport"]["ok"] and found["transport"]["detail"].startswith("perf buffer")
    assert found["perf buffer"]["ok"] and found["ring buffer"]["ok"]
    tools = {k: f for k, f in found.items() if k.startswith("netsnoop ")}
    assert len(tools) >= 17 and all(f["ok"] for f in tools.values()), [f for f in tools.values() if not f["ok"]]
    assert found["verdict"]["detail"] == f"{len(tools)} of {len(tools)} subcommands can run here"
