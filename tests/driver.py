"""One way to run a netsnoop subcommand in the background, for the tests and the
benchmarks alike: start it (with settings such as NETSNOOP_HOOKS or NETSNOOP_TRANSPORT
in its environment, behind a command such as ``ip netns exec NS``), wait for its ready
line, keep its output (stdout in a file or as lines, stderr as lines, both read as
they come so a chatty run never blocks on a full pipe), stop it with SIGINT, and read
what it says of itself: the summary, its CPU time and memory, its BPF programs.

It lives beside the tests rather than in the netsnoop package (the product carries no
test harness): tests/ is on the tests' import path already, and bench/run.py adds it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETSNOOP = [sys.executable, "-m", "netsnoop"]
READY_TIMEOUT = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class DidNotStart(RuntimeError):
    """The process ended, or stayed silent, before its ready line."""


class Netsnoop:
    """One netsnoop run: ``start()``, ``wait_ready()``, then whatever the caller does
    while it traces, then ``stop()`` (SIGINT, as Ctrl-C).

    ``args`` are netsnoop's arguments; ``command`` what runs them (netsnoop itself by
    default), ``prefix`` a command that execs it (unshare, ip netns exec); ``env`` is
    added to this process's environment. stdout goes to ``stdout_path`` when given
    (the benchmarks: a file costs netsnoop no reader), else into ``out_lines``.
    ``ready`` is how the line on stderr that says it is running begins.
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None, prefix: list[str] | None = None,
                 command: list[str] | None = None, stdout_path: str | None = None, ready: str = "Tracing") -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.cmd = (prefix or []) + (command or NETSNOOP) + args
        self.stdout_path = stdout_path
        self.ready_prefix = ready
        self.out_lines: list[str] = []
        self.err_lines: list[str] = []
        self.ready_at: float | None = None  # seconds from start to the ready line
        self.output_at: float | None = None  # ... to the first stdout line (piped stdout)
        self.cpu_at_exit: float | None = None  # CPU seconds of the whole run, read as it exited
        self.returncode: int | None = None
        self._ready = threading.Event()
        self._output = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- running ------------------------------------------------------------------------

    def start(self) -> "Netsnoop":
        out = open(self.stdout_path, "w") if self.stdout_path else None
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=out or subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT, env=self.env)
        if out is not None:
            out.close()
        else:
            self._pump(self.proc.stdout, self.out_lines, self._first_output, self._output)
        self._pump(self.proc.stderr, self.err_lines, self._ready_line, self._ready)
        return self

    def _pump(self, stream: IO[str] | None, sink: list[str], watch: Callable[[str], None],
              ended: threading.Event) -> None:
        def run() -> None:
            assert stream is not None
            for line in stream:
                sink.append(line)
                watch(line)
            ended.set()  # nobody waits for a line that can no longer come

        th = threading.Thread(target=run, daemon=True)
        th.start()
        self._threads.append(th)

    def _ready_line(self, line: str) -> None:
        if self.ready_at is None and line.startswith(self.ready_prefix):
            self.ready_at = time.perf_counter() - self.t0
            self._ready.set()

    def _first_output(self, line: str) -> None:
        if self.output_at is None:
            self.output_at = time.perf_counter() - self.t0
            self._output.set()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "Netsnoop":
        """Until the ready line; raises DidNotStart (after stopping it) when the process
        ends or stays silent instead."""
        if not self._ready.wait(timeout) or self.ready_at is None or self.proc.poll() is not None:
            self.stop()
            raise DidNotStart(f"netsnoop {' '.join(self.args)} did not start: rc={self.returncode} "
                              f"{self.stderr[-400:].strip()}")
        return self

    def wait_output(self, timeout: float) -> bool:
        """Until the first line on stdout (the header of a text run), for at most
        ``timeout`` seconds; whether it came."""
        if self.stdout_path is None:
            return self._output.wait(timeout) and self.output_at is not None
        deadline = time.monotonic() + timeout
        while os.path.getsize(self.stdout_path) == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def wait_drained(self, idle: float = 0.3, timeout: float = 60.0) -> None:
        """Until its CPU time stops growing: the backlog of events has been written out."""
        deadline = time.monotonic() + timeout
        last = cpu_seconds(self.proc.pid)
        while time.monotonic() < deadline:
            time.sleep(idle)
            now = cpu_seconds(self.proc.pid)
            if now is None or last is None or now - last < 0.01:
                return
            last = now

    def stop(self, sig: int = signal.SIGINT, settle: float = 0.0, timeout: float = 30.0) -> "Netsnoop":
        """``sig`` (after ``settle`` seconds for the last events to reach netsnoop),
        then the CPU time of the exited, not yet reaped, process; killed when it has not
        ended within ``timeout``. Sets ``returncode``."""
        if self.returncode is not None:
            return self
        time.sleep(settle)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:  # reaped already (poll() above saw it end)
                break
            if info is not None:
                self.cpu_at_exit = cpu_seconds(self.proc.pid)
                break
            time.sleep(0.01)
        else:
            self.proc.kill()
        self.returncode = self.proc.wait()
        for th in self._threads:
            th.join(5)
        return self

    def wait(self, timeout: float) -> "Netsnoop":
        """For a run that ends by itself (``-d``): until it has."""
        self.proc.wait(timeout)
        return self.stop()

    # -- what it says ---------------------------------------------------------------------

    @property
    def stdout(self) -> str:
        return "".join(self.out_lines)

    @property
    def stderr(self) -> str:
        return "".join(self.err_lines)

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    @property
    def all_records(self) -> list[dict[str, Any]]:
        """The JSON lines of stdout, the summary record included."""
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    @property
    def records(self) -> list[dict[str, Any]]:
        """The JSON lines of stdout without the summary record."""
        return [r for r in self.all_records if r.get("type") != "summary"]

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON summary record (``StopIteration`` when there is none)."""
        return next(r for r in self.all_records if r.get("type") == "summary")

    @property
    def hooks(self) -> dict[str, str | None]:
        """The kind of hook each group ran on, from the summary (JSON or text)."""
        summaries = [r for r in self.all_records if r.get("type") == "summary"]
        return summaries[-1]["hooks"] if summaries else parse_hooks(self.stderr)

    def bpf_fds(self) -> list[dict[str, str]]:
        return bpf_fds(self.proc.pid)


# -- reading a process from /proc --------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process (threads included), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def bpf_fds(pid: int) -> list[dict[str, str]]:
    """What the BPF file descriptors a process holds say of themselves (fdinfo): a
    program has ``prog_type`` (and ``run_cnt``/``run_time_ns``), a link (an attachment)
    ``link_type``. Read from the kernel: a netsnoop that only claimed to trace holds none."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError:
            continue
        if "prog_type" in info or "link_type" in info:
            out.append(info)
    return out


# -- the text summary -------------------------------------------------------------------

SUMMARY_PART = re.compile(r"(\d+) ([a-z][a-z ]*)|([a-z][a-z ]*):\s*(.*)|([a-z]+) (transport)")


def parse_hooks(text: str) -> dict[str, str | None]:
    """``hooks: set_state=tp_btf accept=none`` from a text summary line, as a dict."""
    for line in reversed(text.splitlines()):
        if line.startswith("netsnoop: ") and "hooks: " in line:
            pairs = line.split("hooks: ", 1)[1].split(",", 1)[0].split()
            return {k: (None if v == "none" else v) for k, v in (p.split("=", 1) for p in pairs)}
    raise AssertionError(f"no summary with hooks in: {text[-500:]!r}")


def parse_summary_text(stderr: str) -> dict[str, Any] | None:
    """The text summary, the last ``netsnoop: ...`` line on stderr naming lost events,
    back into the JSON summary's keys: ``netsnoop: 5 events, 0 lost events, 0 skipped
    hook runs, ring transport, hooks: set_state=tp_btf accept=none, 0 changes not seen``
    gives events, lost_events, skipped_hook_runs, transport, hooks ({group: kind or
    None}), changes_not_seen.
    None when there is no such line or a part of it is not understood."""
    line = next(
        (ln for ln in reversed(stderr.splitlines()) if ln.startswith("netsnoop: ") and "lost events" in ln), None
    )
    if line is None:
        return None
    out: dict[str, Any] = {}
    for part in line[len("netsnoop: "):].split(", "):
        m = SUMMARY_PART.fullmatch(part.strip())
        if not m:
            return None
        if m.group(1) is not None:
            out[m.group(2).replace(" ", "_")] = int(m.group(1))
        elif m.group(5) is not None:
            out["transport"] = m.group(5)
        else:
            pairs = [kv.partition("=") for kv in m.group(4).split()]
            if any(not sep for _, sep, _ in pairs):
                return None
            out[m.group(3).replace(" ", "_")] = {k: None if v == "none" else v for k, _, v in pairs}
    return out
