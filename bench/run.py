#!/usr/bin/env python3
"""netsnoop benchmarks: start-up, memory, event throughput and the cost to the traced
workload, measured on this machine (`make bench`, or `python bench/run.py --help`).

What is measured, and how:

* **Start-up**: from just before exec to the first line on stdout (the header; the
  "Tracing..." line goes to stderr first). Tools that print nothing until their first
  interval are timed to the "Tracing..." line and marked so. Peak RSS is VmHWM from
  /proc/<pid>/status, read just before stopping.
* **Storm**: bench/loadgen makes N loopback connections (connect, accept, close with
  an RST) untraced, traced and untraced again, side by side in the same repeat; the
  ratio is traced connections per second over the mean of the two untraced runs.
  netsnoop writes to a file; events delivered are the rows in that file, events lost
  come from its own summary (stderr for text, the ``{"type":"summary"}`` record for
  JSON). CPU is utime+stime from /proc/<pid>/stat between "ready" and "drained" (its
  CPU time stopped growing), per 100k events delivered -- or, for tools that
  aggregate in the kernel, per 100k events counted there; us/event is the same from
  /proc/<pid>/task/*/sched, which is not rounded to 10 ms ticks.
* **Bulk**: the same ratio for a bulk transfer in small writes (many socket calls),
  for the tools that hook sends and receives.
* **Kernel side**: each storm and bulk tool once more with the kernel's BPF run-time
  statistics on (``kernel.bpf_stats_enabled``, restored after): nanoseconds per hook
  run and per connection or send/recv call, from /proc/<pid>/fdinfo of netsnoop's
  programs. Unlike the ratios it is not at the mercy of the machine's noise.
* **Accounting**: port-filtered tools under concurrent storms, where the expected
  count is exact: delivered + lost + reported missing (``life``'s sessions whose end
  no hook saw) must equal it, also with a ring small enough to lose -- or fall short
  by no more than the hook runs the kernel skipped (a hook nested in itself on one
  CPU is not run), which netsnoop reports on stderr.

Every figure is the median of the repeats, with min and max. Results go to a table on
the terminal and to bench/results/<time>-<commit>.json (and bench/results/latest.json).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import re
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
LOADGEN = os.path.join(BENCH, "loadgen")
RESULTS = os.path.join(BENCH, "results")
NETSNOOP = [sys.executable, "-m", "netsnoop"]
CLK_TCK = os.sysconf("SC_CLK_TCK")

sys.path.insert(0, ROOT)

HEADER_WINDOW_S = 0.5  # a header later than this after "Tracing..." is an interval's output

# Arguments a subcommand needs to start at all (everything else runs with defaults).
STARTUP_ARGS: dict[str, list[str]] = {"netqtop": ["-n", "lo"]}

# The storm matrix: label, netsnoop arguments, events per connection when
# that is exact (life: the client's and the server's session; connect: one attempt).
STORM: list[tuple[str, list[str], int | None]] = [
    ("states", ["states"], None),
    ("life", ["life"], 2),
    ("tracer", ["tracer"], None),
    ("connect", ["connect"], 1),
    ("connect -c", ["connect", "-c"], 1),
]
# Tools whose hooks fire on every send and receive call: judged on a bulk transfer.
BULK: list[tuple[str, list[str]]] = [
    ("top", ["top"]),
    ("life", ["life"]),
]
# Heavier load (concurrent storms), watching only the workload's port ({port}) so the
# expected count is exact: delivered + lost + reported missing must equal it, with the
# default ring and with a deliberately small one that must lose.
ACCOUNTING: list[tuple[str, list[str], int]] = [
    ("life -P", ["life", "-P", "{port}"], 2),
    ("connect -P", ["connect", "-P", "{port}"], 1),
    ("life -P, 16K ring", ["--ringbuf", "16K", "life", "-P", "{port}"], 2),
    ("connect -P, 16K ring", ["--ringbuf", "16K", "connect", "-P", "{port}"], 1),
]
FORMATS: dict[str, list[str]] = {"text": [], "json": ["--json"]}

TARGETS = {
    "startup_s": 0.30,
    "rss_mb": 40.0,
    "ratio_states": 0.5,
    "ratio_aggregating": 0.9,
    "us_per_event_text": 5.0,
}
AGGREGATING = {"connect -c", "top"}  # judged per event counted in the kernel
ZERO_LOSS = {"states", "life"}


# -- small helpers ------------------------------------------------------------------------


def stats(values: Iterable[float | None]) -> dict[str, float] | None:
    """median/min/max of the values that were measured (None when there are none)."""
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}


def cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process (threads included), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds_precise(pid: int) -> float | None:
    """CPU time summed over the process's threads from /proc/<pid>/task/*/sched
    (se.sum_exec_runtime, in ms with ns digits): /proc/<pid>/stat counts in 10 ms ticks,
    too coarse for the 20,000 events of a connect storm. None without CONFIG_SCHED_DEBUG."""
    total = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/sched") as f:
                for line in f:
                    if line.startswith("se.sum_exec_runtime"):
                        total += float(line.split(":")[1])
                        break
                else:
                    return None
    except OSError:
        return None
    return total / 1000


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM in MB (10^6 bytes would flatter us: MiB as the kernel counts)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def build_loadgen() -> None:
    """Build bench/loadgen with gcc when it is missing or older than its source."""
    src = LOADGEN + ".c"
    if os.path.exists(LOADGEN) and os.path.getmtime(LOADGEN) >= os.path.getmtime(src):
        return
    import shutil

    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang") or "cc"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-pthread", "-o", LOADGEN, src], check=True)


def loadgen(mode: str, *args: str) -> dict[str, Any]:
    """Run one workload to completion; its JSON report."""
    out = subprocess.run([LOADGEN, mode, *args], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {mode} failed: {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout)


# -- which subcommands exist --------------------------------------------------------------


def available(subcommand: str) -> str | None:
    """None if ``subcommand`` can be benchmarked here, else why not (a clear note)."""
    from netsnoop.commands import COMMANDS

    if subcommand not in COMMANDS:
        return f"'{subcommand}' is not a netsnoop subcommand"
    module = COMMANDS[subcommand][0]
    if importlib.util.find_spec(module) is None:
        return f"not implemented yet ({module.replace('.', '/')}.py does not exist)"
    try:
        tracer = getattr(importlib.import_module(module), "TRACER", None)
    except Exception as err:  # a module mid-edit by someone else: note it, go on
        return f"{module} does not import: {type(err).__name__}: {err}"
    if tracer is None:
        return "loads no BPF (no TRACER)"
    obj = os.path.join(ROOT, "netsnoop", "bpf", f"{tracer.obj}.bpf.o")
    if not os.path.exists(obj):
        return f"netsnoop/bpf/{tracer.obj}.bpf.o is not built (make bpf)"
    return None


def tracing_subcommands() -> list[str]:
    from netsnoop.commands import COMMANDS

    return [name for name in COMMANDS if name != "check"]


# -- one netsnoop process -----------------------------------------------------------------


class Netsnoop:
    """A netsnoop run we time and watch: stdout to a pipe or a file, stderr read by a
    thread (so the "Tracing..." line is seen as soon as it is written)."""

    def __init__(self, args: list[str], stdout_path: str | None = None) -> None:
        self.args = args
        self.stdout_path = stdout_path
        self.err_lines: list[str] = []
        self.ready_at: float | None = None
        self.header_at: float | None = None
        self.cpu_at_exit: float | None = None
        self.returncode: int | None = None
        self._ready = threading.Event()

    def start(self) -> "Netsnoop":
        out = open(self.stdout_path, "w") if self.stdout_path else subprocess.PIPE
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(NETSNOOP + self.args, stdout=out, stderr=subprocess.PIPE, cwd=ROOT,
                                     text=True, bufsize=1)
        if self.stdout_path:
            out.close()  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._thread.start()
        return self

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if self.ready_at is None and line.startswith("Tracing"):
                self.ready_at = time.perf_counter() - self.t0
                self._ready.set()
            self.err_lines.append(line)
        self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> None:
        if not self._ready.wait(timeout) or self.ready_at is None:
            self.stop()
            raise RuntimeError(f"netsnoop {' '.join(self.args)} did not start: {''.join(self.err_lines)[-400:].strip()}")

    def wait_header(self, timeout: float) -> bool:
        """The first stdout line (piped stdout only): sets ``header_at``."""
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if sel.select(timeout):
                line = self.proc.stdout.readline()
                if line:
                    self.header_at = time.perf_counter() - self.t0
                    return True
            return False
        finally:
            sel.close()

    def wait_file_header(self, timeout: float) -> None:
        """For stdout in a file: wait until the header line is there (text formats)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and os.path.getsize(self.stdout_path or "") == 0:  # type: ignore[arg-type]
            time.sleep(0.01)

    def wait_drained(self, idle: float = 0.3, timeout: float = 60.0) -> None:
        """Until netsnoop's CPU time stops growing: the backlog has been written out."""
        deadline = time.monotonic() + timeout
        last = cpu_seconds(self.proc.pid)
        while time.monotonic() < deadline:
            time.sleep(idle)
            now = cpu_seconds(self.proc.pid)
            if now is None or last is None or now - last < 0.01:
                return
            last = now

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT, then read the CPU time of the exited (not yet reaped) process."""
        if self.returncode is not None:
            return self.returncode
        if self.proc.stdout is not None:  # keep a piped stdout flowing while it stops
            threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:
                break
            if info is not None:
                self.cpu_at_exit = cpu_seconds(self.proc.pid)
                break
            time.sleep(0.01)
        else:
            self.proc.kill()
        self.returncode = self.proc.wait()
        self._thread.join(5)
        return self.returncode

    @property
    def stderr(self) -> str:
        return "".join(self.err_lines)


# -- start-up -----------------------------------------------------------------------------


def measure_startup(sub: str, runs: int) -> dict[str, Any]:
    """exec -> first stdout line (or -> "Tracing..." for interval tools), and VmHWM."""
    samples, rss, basis = [], [], "header"
    for _ in range(runs):
        ns = Netsnoop([sub, *STARTUP_ARGS.get(sub, [])]).start()
        try:
            ns.wait_ready()
            # a streaming tool prints its header right after "Tracing..."; an interval
            # tool prints nothing until its first interval, so its start-up ends at ready
            got = ns.wait_header(timeout=HEADER_WINDOW_S)
            if not got:
                basis = "ready"
            rss.append(peak_rss_mb(ns.proc.pid))
            samples.append(ns.header_at if got else ns.ready_at)
        finally:
            ns.stop()
    return {"basis": basis, "seconds": samples, "startup_s": stats(samples), "rss_mb": stats(rss)}


def interpreter_floor(runs: int) -> dict[str, Any]:
    """What any Python CLI pays before netsnoop does anything: the interpreter alone,
    and `netsnoop --help` (interpreter + click + our command table)."""
    def timed(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
        return time.perf_counter() - t0

    return {
        "python_s": stats(timed([sys.executable, "-c", "pass"]) for _ in range(runs)),
        "help_s": stats(timed(NETSNOOP + ["--help"]) for _ in range(runs)),
    }


# -- workloads under tracing --------------------------------------------------------------

SUMMARY_TEXT = re.compile(r"netsnoop: (\d+) events?, (\d+) lost events?")
MISSED_RUNS = re.compile(r"the kernel skipped (\d+) runs?")
ENDS_NOT_SEEN = re.compile(r"(\d+) ends not seen")


def parse_output(path: str, fmt: str, stderr: str, port: int) -> dict[str, Any]:
    """Rows delivered, rows about the workload's own port, lost events and sessions
    reported missing (from the summary)."""
    rows = own = unseen = 0
    lost: int | None = None
    summary_events: int | None = None
    port_s = str(port)
    with open(path, errors="replace") as f:
        if fmt == "json":
            for line in f:
                if not line.startswith("{"):
                    continue
                rec = json.loads(line)
                if rec.get("type") == "summary":
                    lost, summary_events = rec.get("lost_events"), rec.get("events")
                    unseen = rec.get("ends_not_seen", 0)
                    continue
                rows += 1
                if any(v == port for k, v in rec.items() if "port" in k):
                    own += 1
        else:
            next(f, None)  # header
            for line in f:
                rows += 1
                if port_s in line.split():
                    own += 1
    if fmt != "json":
        m = SUMMARY_TEXT.search(stderr)
        if m:
            summary_events, lost = int(m.group(1)), int(m.group(2))
        m = ENDS_NOT_SEEN.search(stderr)
        unseen = int(m.group(1)) if m else 0
    m = MISSED_RUNS.search(stderr)
    return {"rows": rows, "own_rows": own, "lost": lost, "summary_events": summary_events,
            "missed_runs": int(m.group(1)) if m else 0, "ends_not_seen": unseen}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Scenario:
    """One tool, format and workload, run ``repeats`` times."""

    section: str  # storm | bulk | accounting
    label: str
    args: list[str]  # netsnoop's; "{port}" becomes the workload's listening port
    fmt: str
    workload: list[str]  # loadgen's
    per_conn: int | None = None  # exact events per connection, if known
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    note: str | None = None  # why it was not run

    @property
    def name(self) -> str:
        return f"{self.label} ({self.fmt}, {' '.join(self.workload)})"

    @property
    def aggregating(self) -> bool:
        return self.label in AGGREGATING

    def kernel_events(self, report: dict[str, Any]) -> int | None:
        """Events the kernel side handled: send+receive calls of a bulk transfer, or
        the exact per-connection count."""
        if report["mode"] == "bulk":
            return 2 * report["bytes"] // report["chunk"]
        return self.per_conn * report["connections"] if self.per_conn else None


def run_traced(sc: Scenario, tmp: str) -> dict[str, Any]:
    """One repeat: the workload untraced, under netsnoop, and untraced again, back to
    back; the ratio is traced / the mean of the two untraced runs (cancels drift)."""
    wargs = list(sc.workload)
    args = list(sc.args)
    if any("{port}" in a for a in args):
        port = free_port()
        args = [a.replace("{port}", str(port)) for a in args]
        wargs += ["-p", str(port)]
    before = loadgen(*wargs)
    path = os.path.join(tmp, "out")
    ns = Netsnoop(args + FORMATS[sc.fmt], stdout_path=path).start()
    try:
        ns.wait_ready()
        if sc.fmt == "text":
            ns.wait_file_header(2.0)
        time.sleep(0.05)
        cpu0, exact0 = cpu_seconds(ns.proc.pid), cpu_seconds_precise(ns.proc.pid)
        traced = loadgen(*wargs)
        ns.wait_drained()
        cpu1, exact1 = cpu_seconds(ns.proc.pid), cpu_seconds_precise(ns.proc.pid)
        rss = peak_rss_mb(ns.proc.pid)
    finally:
        rc = ns.stop()
    after = loadgen(*wargs)  # untraced again: the traced run sits between two untraced ones
    untraced_rate = (before["rate"] + after["rate"]) / 2
    out = parse_output(path, sc.fmt, ns.stderr, traced["port"])
    busy = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
    exact = (exact1 - exact0) if exact0 is not None and exact1 is not None else busy
    counted = sc.kernel_events(traced) if sc.aggregating else out["rows"]
    enough = busy is not None and counted and counted >= 1000
    expected = sc.kernel_events(traced) if sc.section == "accounting" else None
    return {
        "untraced_rate": untraced_rate,
        "untraced_rates": [before["rate"], after["rate"]],
        "traced_rate": traced["rate"],
        "ratio": traced["rate"] / untraced_rate,
        "unit": traced["unit"],
        "events": out["rows"],
        "own_events": out["own_rows"],
        "kernel_events": sc.kernel_events(traced),
        "lost": out["lost"],
        "expected": expected,
        "missed_runs": out["missed_runs"],
        "ends_not_seen": out["ends_not_seen"],
        "accounted": accounted(out, expected),
        "summary_events": out["summary_events"],
        "cpu_s": busy,
        "cpu_precise_s": exact,
        "cpu_total_s": ns.cpu_at_exit,
        "cpu_s_per_100k": busy / counted * 1e5 if enough else None,  # type: ignore[operator]
        "us_per_event": exact / counted * 1e6 if enough and exact is not None else None,  # type: ignore[operator]
        "rss_mb": rss,
        "returncode": rc,
        "load": load_average(),
    }


def accounted(out: dict[str, Any], expected: int | None) -> str | None:
    """"exact" when delivered + lost + reported missing (``life``'s ends_not_seen) ==
    expected; "skipped" when the shortfall is no more than the hook runs the kernel
    said it skipped (reported by netsnoop); else "MISMATCH"."""
    if expected is None or out["lost"] is None:
        return None
    short = expected - out["rows"] - out["lost"] - out["ends_not_seen"]
    if short == 0:
        return "exact"
    return "skipped" if 0 < short <= out["missed_runs"] else "MISMATCH"


def summarise(sc: Scenario) -> dict[str, Any]:
    keys = ("untraced_rate", "traced_rate", "ratio", "events", "own_events", "lost", "expected", "cpu_s",
            "cpu_precise_s", "cpu_s_per_100k", "us_per_event", "rss_mb")
    out: dict[str, Any] = {k: stats(r[k] for r in sc.runs) for k in keys}
    verdicts = [r["accounted"] for r in sc.runs]
    out["accounted"] = None
    if sc.runs and sc.section == "accounting":
        out["accounted"] = "MISMATCH" if "MISMATCH" in verdicts else "skipped" if "skipped" in verdicts else "exact"
    out["missed_runs"] = stats(r["missed_runs"] for r in sc.runs)
    out["ends_not_seen"] = stats(r.get("ends_not_seen", 0) for r in sc.runs)
    return out


# -- reporting ----------------------------------------------------------------------------


def fmt_stat(s: dict[str, float] | None, spec: str = ".2f") -> str:
    if s is None:
        return "-"
    med, lo, hi = (format(s[k], spec) for k in ("median", "min", "max"))
    return med if s["n"] == 1 or lo == hi else f"{med} [{lo}-{hi}]"


def table(headers: list[str], rows: list[list[str]]) -> str:
    rows = [r + [""] * (len(headers) - len(r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def print_startup(results: dict[str, Any], floor: dict[str, Any] | None) -> None:
    rows = []
    for sub, r in results.items():
        if "skipped" in r:
            rows.append([sub, "skipped: " + r["skipped"], ""])
        elif "error" in r:
            rows.append([sub, "error: " + r["error"], ""])
        else:
            basis = "" if r["basis"] == "header" else " (to Tracing...)"
            rows.append([sub, fmt_stat(r["startup_s"], ".3f") + basis, fmt_stat(r["rss_mb"], ".1f")])
    print("\nStart-up: exec -> first header line, median [min-max]; peak RSS (VmHWM, MiB)")
    print(table(["subcommand", "start-up s", "peak RSS MiB"], rows))
    if floor:
        print(f"  for scale: python -c pass {fmt_stat(floor['python_s'], '.3f')} s, "
              f"netsnoop --help {fmt_stat(floor['help_s'], '.3f')} s")


def print_workloads(title: str, scenarios: list[Scenario]) -> None:
    rows = []
    accounting = any(sc.section == "accounting" for sc in scenarios)
    for sc in scenarios:
        if sc.note or not sc.runs:
            why = f"skipped: {sc.note}" if sc.note else f"failed: {sc.failures[-1] if sc.failures else '?'}"
            rows.append([sc.label, sc.fmt, why[:100]])
            continue
        s = summarise(sc)
        row = [
            sc.label, sc.fmt, fmt_stat(s["untraced_rate"], ".0f"), fmt_stat(s["traced_rate"], ".0f"),
            fmt_stat(s["ratio"], ".2f"), fmt_stat(s["events"], ".0f"), fmt_stat(s["lost"], ".0f"),
        ]
        if accounting:
            verdict = {"skipped": f"exact but {int(s['missed_runs']['max'])} skipped runs"}.get(s["accounted"], s["accounted"])
            unseen = int(s["ends_not_seen"]["max"]) if s["ends_not_seen"] else 0
            if verdict and unseen:
                verdict += f" ({unseen} reported not seen)"
            row += [fmt_stat(s["expected"], ".0f"), verdict or "-"]
        star = "*" if sc.aggregating else ""
        row += [fmt_stat(s["cpu_s"], ".2f"), fmt_stat(s["cpu_s_per_100k"], ".2f") + star,
                fmt_stat(s["us_per_event"], ".1f" if not sc.aggregating else ".3f") + star, fmt_stat(s["rss_mb"], ".1f")]
        rows.append(row)
    headers = ["tool", "fmt", "untraced", "traced", "ratio", "events", "lost"]
    headers += ["expected", "delivered+lost+reported"] if accounting else []
    headers += ["cpu s", "cpu s/100k", "us/event", "RSS MiB"]
    print(f"\n{title}")
    print(table(headers, rows))
    if any(sc.aggregating for sc in scenarios):
        print("  * aggregating in the kernel: CPU per event counted there (connects; send+receive calls)")


def check_targets(startup: dict[str, Any], scs: list[Scenario]) -> list[dict[str, Any]]:
    """The issue's targets against the medians (and the worst run for losses and RSS)."""
    checks: list[dict[str, Any]] = []

    def add(what: str, value: float | None, limit: float, ok: bool | None) -> None:
        checks.append({"target": what, "measured": value, "limit": limit, "ok": ok})

    for sub, r in startup.items():
        if r.get("startup_s"):
            v = r["startup_s"]["median"]
            add(f"start-up {sub} <= {TARGETS['startup_s']} s (median)", v, TARGETS["startup_s"], v <= TARGETS["startup_s"])
    done = [(sc, summarise(sc)) for sc in scs if sc.runs]
    rss = [r["rss_mb"]["max"] for r in startup.values() if r.get("rss_mb")]
    rss += [s["rss_mb"]["max"] for sc, s in done if s["rss_mb"] and "--ringbuf" not in sc.args]
    if rss:
        add(f"peak RSS <= {TARGETS['rss_mb']} MiB (worst run, any tool, default ring)", max(rss), TARGETS["rss_mb"],
            max(rss) <= TARGETS["rss_mb"])
    for sc, s in done:
        if sc.section == "storm" and sc.label in ZERO_LOSS and s["lost"]:
            worst = s["lost"]["max"]
            add(f"zero lost events: {sc.name} (worst run)", worst, 0, worst == 0)
        if sc.section == "storm" and sc.label == "states":
            v = s["ratio"]["median"]
            add(f"ratio >= {TARGETS['ratio_states']}: {sc.name}", v, TARGETS["ratio_states"], v >= TARGETS["ratio_states"])
            if sc.fmt == "text" and s["us_per_event"]:
                v = s["us_per_event"]["median"]
                add(f"user-space cost <= {TARGETS['us_per_event_text']} us/event: {sc.name}", v,
                    TARGETS["us_per_event_text"], v <= TARGETS["us_per_event_text"])
        if sc.section == "accounting":
            add(f"delivered + lost + reported missing == expected in every run (or short by no more than the skipped runs "
                f"netsnoop reported): {sc.name}", None, 0, s["accounted"] != "MISMATCH")
    for name, ratios in pooled_ratios(scs).items():
        v = statistics.median(ratios)
        add(f"ratio >= {TARGETS['ratio_aggregating']}: {name} (median of {len(ratios)} runs)", v,
            TARGETS["ratio_aggregating"], v >= TARGETS["ratio_aggregating"])
    return checks


def pooled_ratios(scs: list[Scenario]) -> dict[str, list[float]]:
    """Ratios of the tools that aggregate in the kernel, every output format's runs
    together: they write a few lines per interval, so the format makes no difference
    to the workload, and one median over all runs is steadier than one per format
    (a single run on this VM varies by about +-10 %)."""
    out: dict[str, list[float]] = {}
    for sc in scs:
        if sc.aggregating and sc.section in ("storm", "bulk"):
            name = f"{sc.label} ({'+'.join(x.fmt for x in scs if x.label == sc.label and x.workload == sc.workload)}, " \
                   f"{' '.join(sc.workload)})"
            out.setdefault(name, []).extend(r["ratio"] for r in sc.runs if r.get("ratio"))
    return {k: v for k, v in out.items() if v}


def print_targets(checks: list[dict[str, Any]]) -> None:
    print("\nTargets")
    for c in checks:
        mark = {True: "ok  ", False: "MISS", None: "?   "}[c["ok"]]
        v = "" if c["measured"] is None else f": {c['measured']:.3g}"
        print(f"  {mark} {c['target']}{v}")


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="repeats of each workload scenario (default 3)")
    p.add_argument("--startup-runs", type=int, default=5, help="start-up runs per subcommand (default 5)")
    p.add_argument("--full", action="store_true", help="more repeats: 7 per scenario, 9 start-ups")
    p.add_argument("--connections", type=int, default=20000, help="connections per storm (default 20000)")
    p.add_argument("--concurrency", type=int, default=1, help="client (and server) threads of the storm (default 1)")
    p.add_argument("--heavy-concurrency", type=int, default=2, help="threads of the accounting storms (default 2)")
    p.add_argument("--bulk-seconds", type=float, default=1.0, help="seconds per bulk transfer (default 1)")
    p.add_argument("--bulk-chunks", default="1024,16384", help="bytes per write()/read() in bulk, a list (default 1024,16384)")
    p.add_argument("--only", default="", help="comma-separated tools to run (e.g. states,life)")
    p.add_argument("--formats", default="text,json", help="output formats for storm and bulk (default text,json)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: startup,storm,bulk,accounting,kernel")
    p.add_argument("--out", default=None, help="JSON results file (default bench/results/<time>-<commit>.json)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a target is missed")
    opts = p.parse_args(argv)
    if opts.full:
        opts.repeats, opts.startup_runs = max(opts.repeats, 7), max(opts.startup_runs, 9)
    return opts


def preflight() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: needs root (loads BPF programs)")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        sys.exit("bench: needs kernel BTF (/sys/kernel/btf/vmlinux)")
    build_loadgen()


def selected(label: str, args: list[str], only: set[str]) -> bool:
    sub = next(a for a in args if not a.startswith("-") and not a[0].isdigit())
    return not only or label in only or sub in only


def build_scenarios(opts: argparse.Namespace, skip: set[str]) -> list[Scenario]:
    only = {x.strip() for x in opts.only.split(",") if x.strip()}
    formats = [f for f in opts.formats.split(",") if f in FORMATS]
    storm = ["storm", "-n", str(opts.connections), "-c", str(opts.concurrency)]
    heavy = ["storm", "-n", str(opts.connections), "-c", str(opts.heavy_concurrency)]
    out: list[Scenario] = []
    if "storm" not in skip:
        out += [Scenario("storm", label, args, fmt, storm, per_conn)
                for label, args, per_conn in STORM if selected(label, args, only) for fmt in formats]
    if "bulk" not in skip:
        for chunk in [int(c) for c in opts.bulk_chunks.split(",") if c.strip()]:
            bulk = ["bulk", "-t", str(opts.bulk_seconds), "-s", str(chunk)]
            out += [Scenario("bulk", label, args, fmt, bulk) for label, args in BULK if selected(label, args, only)
                    for fmt in formats]
    if "accounting" not in skip:
        out += [Scenario("accounting", label, args, "text", heavy, per_conn)
                for label, args, per_conn in ACCOUNTING if selected(label, args, only)]
    for sc in out:
        sub = next(a for a in sc.args if not a.startswith("-") and not a[0].isdigit())
        sc.note = available(sub)
    return out


# -- kernel side ----------------------------------------------------------------------------

BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


def prog_stats(pid: int) -> tuple[int, int]:
    """Runs and nanoseconds of every BPF program that process ``pid`` holds (fdinfo)."""
    runs = ns = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError:
            continue
        if "prog_id" in info and "run_cnt" in info:
            runs += int(info["run_cnt"])
            ns += int(info["run_time_ns"])
    return runs, ns


def measure_kernel_cost(sc: Scenario, tmp: str) -> dict[str, Any]:
    """One traced run with the kernel's BPF run-time statistics on: what netsnoop's
    programs cost per hook run and per unit of work (connection, or send/recv call).
    The ratios above carry the machine's noise; this does not, so it is the figure
    that tells two designs of a BPF program apart. (The statistics themselves add
    some 20 ns per run: a program doing nothing reads about 45 ns here.)"""
    with open(BPF_STATS) as f:
        previous = f.read().strip()
    ns = Netsnoop(list(sc.args), stdout_path=os.path.join(tmp, "kernel-cost")).start()
    try:
        ns.wait_ready()
        with open(BPF_STATS, "w") as f:
            f.write("1")
        try:
            runs0, ns0 = prog_stats(ns.proc.pid)
            report = loadgen(*sc.workload)
            runs1, ns1 = prog_stats(ns.proc.pid)
        finally:
            with open(BPF_STATS, "w") as f:
                f.write(previous)
    finally:
        ns.stop()
    runs, spent = runs1 - runs0, ns1 - ns0
    units = 2 * report["bytes"] // report["chunk"] if report["mode"] == "bulk" else report["connections"]
    return {
        "hook_runs": runs,
        "ns_per_run": spent / runs if runs else None,
        "unit": "send/recv call" if report["mode"] == "bulk" else "connection",
        "ns_per_unit": spent / units if units else None,
        "cpu_share": spent / 1e9 / (report["seconds"] * (os.cpu_count() or 1)),
    }


def run_kernel_costs(scs: list[Scenario], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Each storm and bulk tool once (text), the programs' own cost measured."""
    out = []
    with tempfile.TemporaryDirectory(prefix="netsnoop-bench-") as tmp:
        for sc in scs:
            if sc.note or sc.section not in ("storm", "bulk") or sc.fmt != "text":
                continue
            try:
                r = measure_kernel_cost(sc, tmp)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as err:
                log(f"  kernel cost {sc.name}: FAILED: {err}")
                continue
            out.append({"name": f"{sc.label} ({' '.join(sc.workload)})", **r})
    return out


def print_kernel_costs(costs: list[dict[str, Any]]) -> None:
    rows = [[c["name"], f"{c['hook_runs']:,}", f"{c['ns_per_run']:.0f}" if c["ns_per_run"] else "-",
             f"{c['ns_per_unit']:.0f} per {c['unit']}" if c["ns_per_unit"] else "-", f"{100 * c['cpu_share']:.1f} %"]
            for c in costs]
    print("\nKernel side: netsnoop's BPF programs under each workload (bpf_stats_enabled, one run)")
    print(table(["tool (workload)", "hook runs", "ns/run", "ns per unit", "of all CPUs"], rows))


def run_scenarios(scs: list[Scenario], repeats: int, log: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="netsnoop-bench-") as tmp:
        for rep in range(repeats):
            for sc in scs:  # interleaved, so that drifts in the machine's load hit all alike
                if sc.note:
                    continue
                try:
                    r = run_traced(sc, tmp)
                except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as err:
                    sc.failures.append(f"{type(err).__name__}: {err}")
                    log(f"  {sc.name} #{rep + 1}: FAILED: {err}")
                    continue
                sc.runs.append(r)
                log(f"  {sc.name} #{rep + 1}: ratio {r['ratio']:.2f}, {r['events']} events, {r['lost']} lost, "
                    f"{r['us_per_event'] or 0:.1f} us/event, load {r['load'][0]}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    preflight()
    skip = {x.strip() for x in opts.skip.split(",")}
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started = time.time()
    meta = {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": load_average(),
        "options": vars(opts),
    }
    log(f"bench: commit {meta['commit']}{' (dirty)' if meta['dirty'] else ''}, load average {meta['load_before']}")

    startup: dict[str, Any] = {}
    floor = None
    if "startup" not in skip:
        floor = interpreter_floor(opts.startup_runs)
        only = {x.strip() for x in opts.only.split(",") if x.strip()}
        for sub in tracing_subcommands():
            if only and sub not in only:
                continue
            why = available(sub)
            if why:
                startup[sub] = {"skipped": why}
                continue
            log(f"  start-up: {sub}")
            try:
                startup[sub] = measure_startup(sub, opts.startup_runs)
            except RuntimeError as err:
                startup[sub] = {"error": str(err)}
        print_startup(startup, floor)

    scs = build_scenarios(opts, skip)
    if scs:
        log(f"workloads: {len(scs)} scenarios x {opts.repeats} repeats")
        run_scenarios(scs, opts.repeats, log)
    sections = {
        "storm": f"Storm of {opts.connections} connections, concurrency {opts.concurrency} (conn/s)",
        "bulk": f"Bulk transfer for {opts.bulk_seconds} s (MB/s)",
        "accounting": f"Heavier load: storms of {opts.connections} connections, concurrency {opts.heavy_concurrency}, "
                      "port-filtered (conn/s)",
    }
    for section, title in sections.items():
        part = [sc for sc in scs if sc.section == section]
        if section == "bulk":
            for chunk in sorted({sc.workload[-1] for sc in part}, key=int):
                print_workloads(f"{title}, {chunk}-byte calls, median [min-max] of {opts.repeats}",
                                [sc for sc in part if sc.workload[-1] == chunk])
        elif part:
            print_workloads(f"{title}, median [min-max] of {opts.repeats}", part)

    costs: list[dict[str, Any]] = []
    if "kernel" not in skip and scs:
        log("kernel side: one run per tool with bpf_stats_enabled")
        costs = run_kernel_costs(scs, log)
        print_kernel_costs(costs)

    checks = check_targets(startup, scs)
    print_targets(checks)
    meta["load_after"] = load_average()
    meta["seconds"] = round(time.time() - started, 1)
    print(f"\nload average before {meta['load_before']}, after {meta['load_after']}; {meta['seconds']} s")
    result = {
        "meta": meta,
        "startup": startup,
        "interpreter": floor,
        "scenarios": [{**vars(sc), "name": sc.name, "summary": summarise(sc) if sc.runs else None} for sc in scs],
        "kernel": costs,
        "targets": checks,
    }
    write_results(result, opts.out)
    return 1 if opts.strict and any(c["ok"] is False for c in checks) else 0


def write_results(result: dict[str, Any], path: str | None) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    if path is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = os.path.join(RESULTS, f"{stamp}-{result['meta']['commit'] or 'nogit'}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    latest = os.path.join(RESULTS, "latest.json")
    if os.path.abspath(path) != latest:
        with open(latest, "w") as f:
            json.dump(result, f, indent=1)
    print(f"results: {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
