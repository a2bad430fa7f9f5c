"""Faults around the trace rather than in it: signals at any moment of start-up, standard
streams closed, full or never read, and settings with values netsnoop cannot use."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from typing import Any

import pytest

from helpers import NETSNOOP, ROOT, Trace, bpf_fds, bpf_prog_ids, fetch, PayloadServer, run

integration = pytest.mark.integration


def caught_signals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))


def wait_for_netsnoop(proc: subprocess.Popen[Any]) -> None:
    """Until netsnoop's own code runs: its first line installs its handlers (SIGTERM
    caught; before that, in Python's own start-up, a Ctrl-C is Python's), or, for a
    netsnoop that would handle signals only once tracing, it has begun to load BPF."""
    deadline = time.monotonic() + 20
    while not caught_signals(proc.pid) & (1 << (signal.SIGTERM - 1)) and not bpf_fds(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, "netsnoop never started"
        time.sleep(0.001)


class ProgWatch:
    """Collects the ids of every BPF program a process holds while it runs (its fdinfo,
    read every few ms), so that the test can tell afterwards that none outlived it, and
    when it was first seen holding an attachment (a link): ``attached_at``, monotonic."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ids: set[str] = set()
        self.attached_at: float | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                fds = bpf_fds(self.pid)
            except OSError:
                return
            self.ids |= {i["prog_id"] for i in fds if "prog_type" in i}
            if self.attached_at is None and any("link_type" in i for i in fds):
                self.attached_at = time.monotonic()
            time.sleep(0.003)

    def left_behind(self, timeout: float = 10) -> set[str]:
        self._thread.join(5)
        deadline = time.monotonic() + timeout
        while True:
            left = self.ids & {str(i) for i in bpf_prog_ids()}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)


@integration
@pytest.mark.parametrize("tool", ["retrans", "states"])
def test_ctrl_c_at_any_moment_of_start_up_stops_at_once_and_cleans_up(tool: str) -> None:
    """Issue 11.9: a Ctrl-C while libbpf was loading used to be swallowed (the
    KeyboardInterrupt was raised inside libbpf's log callback) and the trace went on;
    one very early printed a traceback. Delays cover the imports,
    loading, attaching and after, from the moment netsnoop's code runs."""
    watched: set[str] = set()
    before_attach = []
    for delay in (0, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3):
        proc = subprocess.Popen(
            NETSNOOP + [tool], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        watch = ProgWatch(proc.pid)
        wait_for_netsnoop(proc)
        time.sleep(delay)  # the moment under test, not a wait for something
        before_attach.append(not any("link_type" in i for i in bpf_fds(proc.pid)))
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:  # a swallowed Ctrl-C traces on for ever; the start-up it lets finish takes seconds when busy
            err = proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"{tool}: still running 30 s after a Ctrl-C {delay} s into start-up") from None
        # at once: a Ctrl-C during loading ends the trace as soon as it is attached (netsnoop.process)
        ended = time.monotonic()
        assert ended - max(sent, watch.attached_at or sent) < 3, (delay, watch.attached_at, sent, ended)
        assert proc.returncode == 0 and "Traceback" not in err, (delay, err)
        assert " lost events, " in err.splitlines()[-1], err  # it ended through its summary
        assert not watch.left_behind(), f"{tool}: BPF programs still loaded after the stop at {delay} s"
        watched |= watch.ids
    assert watched, "no BPF program was ever seen loaded: the watch proves nothing"
    assert any(before_attach), "every Ctrl-C came after the programs were attached"


def fill_pipe(read_fd: int, port: int) -> None:
    """Make connections (each gives the trace a few rows, ~600 bytes) until the pipe
    netsnoop writes to is half full, then 200 more: more than the rest of the pipe
    holds, so that rows wait behind it."""
    capacity = fcntl.fcntl(read_fd, 1032)  # F_GETPIPE_SZ
    queued = lambda: int.from_bytes(fcntl.ioctl(read_fd, termios.FIONREAD, b"\0" * 4), sys.byteorder)  # noqa: E731
    srv = socket.create_server(("127.0.0.1", port))
    try:
        for _ in range(20000):
            c = socket.create_connection(("127.0.0.1", port))
            s, _ = srv.accept()
            c.close()
            s.close()
            if queued() >= capacity // 2:
                break
        else:
            raise AssertionError(f"the pipe never filled: {queued()} of {capacity} bytes")
        for _ in range(200):
            c = socket.create_connection(("127.0.0.1", port))
            s, _ = srv.accept()
            c.close()
            s.close()
    finally:
        srv.close()


@integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_is_obeyed_when_nobody_reads_the_output(sig: int) -> None:
    """Issue 11.17: with stdout a pipe nobody reads, SIGINT/SIGTERM used to be ignored
    (the write blocked forever). Now the rows still queued are given up a bounded time
    after the stop, with a warning, and the summary still comes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    r, w = os.pipe()
    proc = subprocess.Popen(
        NETSNOOP + ["states", "-P", str(port)], cwd=ROOT, stdout=w, stderr=subprocess.PIPE, text=True
    )
    os.close(w)
    try:
        assert proc.stderr is not None and proc.stderr.readline().startswith("Tracing")
        fill_pipe(r, port)
        sent = time.monotonic()
        proc.send_signal(sig)
        try:
            err = proc.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"signal {sig} ignored while stdout was stalled") from None
        assert time.monotonic() - sent < 8  # the process's own bound is 1 s without progress, 5 s at most
        assert proc.returncode == 0 and "Traceback" not in err
        assert "the output was not read" in err and "lost events, " in err and "hooks: set_state=" in err, err
    finally:
        os.close(r)


def sh(cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


PY = " ".join(NETSNOOP)


@integration
def test_closed_stdout_is_one_clear_line() -> None:
    done = sh(f"exec {PY} states -d 0.3 >&-")
    assert done.returncode == 1
    assert done.stderr.strip() == "netsnoop: standard output is closed: there is nowhere to write the output to"


@integration
def test_closed_stderr_keeps_the_summary_out_of_the_rows() -> None:
    """Issue 11.17: with stderr closed, Python printed the summary (and warnings) to
    stdout, among the rows."""
    with PayloadServer(size=10) as srv:
        proc = subprocess.Popen(["bash", "-c", f"exec {PY} states -P {srv.port} 2>&-"], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().startswith("SKADDR")  # the header: tracing
        fetch("127.0.0.1", srv.port)
        rows = [proc.stdout.readline() for _ in range(3)]  # the traffic reached the output
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=20)[0]
    lines = rows + rest.splitlines()
    assert proc.returncode == 0 and all(str(srv.port) in line for line in rows)
    assert not [line for line in lines if line.startswith("netsnoop")], lines


@integration
def test_a_full_device_is_an_output_error_not_an_internal_one() -> None:
    done = sh(f"{PY} states -d 0.3 >/dev/full")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "netsnoop: cannot write output: No space left on device", done.stderr
    assert "internal error" not in done.stderr


@integration
def test_sighup_ends_like_sigterm_with_the_summary() -> None:
    with PayloadServer(size=10) as srv:
        with Trace(["states", "-P", str(srv.port)]) as t:
            fetch("127.0.0.1", srv.port)
            t.stop(signal.SIGHUP)
    assert t.returncode == 0
    assert any(str(srv.port) in line for line in t.lines[1:])  # it traced, then stopped on the HUP
    assert f"netsnoop: {len(t.lines) - 1} events, 0 lost events" in t.stderr


@pytest.mark.parametrize("value", ["abc", "nan", "-1", "inf", ""])
def test_bad_coalesce_setting_is_a_usage_error(value: str) -> None:
    done = run(["states", "-d", "0.1"], env={**os.environ, "NETSNOOP_COALESCE_MS": value})
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip() == f"netsnoop: NETSNOOP_COALESCE_MS={value!r}: not a number of milliseconds from 0 to 1000"
    )


@pytest.mark.parametrize("variable", ["NETSNOOP_HOOKS", "NETSNOOP_PREFER"])
def test_unknown_hook_kinds_are_a_usage_error(variable: str) -> None:
    for args in (["states", "-d", "0.1"], ["check"]):
        done = run(args, env={**os.environ, variable: "tp_btf,kprobes"})
        assert done.returncode == 2
        assert done.stderr.strip() == (f"netsnoop: {variable}: unknown hook kind 'kprobes' "
                                       "(valid: tp_btf, tracepoint, fentry, fexit, kprobe, kretprobe, cgroup_skb)")


@integration
def test_good_coalesce_setting_still_runs() -> None:
    """The positive control of the two above: a valid value is taken."""
    with PayloadServer(size=10) as srv:
        with Trace(["states", "-P", str(srv.port)], env={"NETSNOOP_COALESCE_MS": "0"}, hooks="tp_btf,tracepoint") as t:
            fetch("127.0.0.1", srv.port)
    assert t.returncode == 0 and any(str(srv.port) in line for line in t.lines[1:])


CONFTEST = os.path.join(ROOT, "tests", "conftest.py")
SKIPPING = """
import pytest

def test_skips_in_its_body():
    pytest.skip("no reason")

@pytest.mark.skip(reason="marked")
def test_marked():
    pass

def test_passes():
    pass
"""


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_skip_under_ci_is_a_failure(tmp_path: Any, ci: str) -> None:
    """Issue 19: a skip inside a test's body (not only the integration marker's) used
    to pass under CI=true. Run pytest on a file that skips, with this conftest."""
    (tmp_path / "conftest.py").write_text(open(CONFTEST).read())
    for helper in ("helpers.py", "driver.py"):
        (tmp_path / helper).write_text(open(os.path.join(ROOT, "tests", helper)).read())
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "CI": ci}, timeout=60)
    summary = done.stdout.strip().splitlines()[-1]
    if ci:
        assert done.returncode == 1 and "1 failed" in summary and "1 passed" in summary and "1 error" in summary, (
            summary
        )
        assert "skipped under CI=true" in done.stdout
    else:
        assert done.returncode == 0 and "1 passed, 2 skipped" in summary, summary
