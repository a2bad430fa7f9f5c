#!/usr/bin/env python3
"""What each of export's BPF programs costs on the bench's workloads, in the kernel's
own accounting (``python bench/export_cost.py``, as root).

The kernel counts, per program, how often it ran and the nanoseconds it spent when
``kernel.bpf_stats_enabled`` is 1; /proc/PID/fdinfo of each program's descriptor in the
exporter shows both. Around each workload (bench/loadgen's storm and bulk, as
bench/export_soak.py runs them) the counts are read twice; the differences, per
connection of the storm and per MB of the bulk transfer, are robust to a busy machine
in the way a wall-clock ratio is not (a preempted program still charges its own time,
but no other process's). Results go to the terminal (and JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from run import build_loadgen, free_port, loadgen  # noqa: E402
from driver import Netsnoop  # noqa: E402  (tests/driver.py: run.py puts tests/ on the path)

STATS = "/proc/sys/kernel/bpf_stats_enabled"


def programs(pid: int) -> dict[int, dict[str, int]]:
    """prog_id -> run_time_ns, run_cnt, recursion_misses of every BPF program pid holds."""
    out: dict[int, dict[str, int]] = {}
    fds = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fds):
        try:
            with open(os.path.join(fds, fd)) as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        if "run_cnt" not in fields:
            continue  # not a program (a link's fdinfo names its program too, without counts)
        out[int(fields["prog_id"])] = {k: int(fields.get(k, "0")) for k in
                                       ("run_time_ns", "run_cnt", "recursion_misses")}
    return out


def names() -> dict[int, str]:
    """prog_id -> the program's name, as bpftool shows it."""
    import subprocess

    shown = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
                                      check=True).stdout)
    return {p["id"]: p.get("name", "?") for p in shown}


def measure(pid: int, mode: str, args: list[str]) -> tuple[dict[str, Any], dict[int, dict[str, int]]]:
    """One workload run: loadgen's report, and what each program of pid ran meanwhile."""
    before = programs(pid)
    report = loadgen(mode, *args)
    after = programs(pid)
    diff = {i: {k: after[i][k] - before.get(i, {}).get(k, 0) for k in after[i]} for i in after}
    return report, diff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--connections", type=int, default=20000)
    p.add_argument("--metrics", default=None, help="export's --metrics (default: all)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--checkout", default=None,
                   help="run the netsnoop of another checkout (its .venv, from its directory): before/after")
    opts = p.parse_args(argv)
    if os.geteuid() != 0:
        print("export_cost: needs root", file=sys.stderr)
        return 2
    build_loadgen()
    with open(STATS) as f:
        was = f.read().strip()
    with open(STATS, "w") as f:
        f.write("1")
    target = f"127.0.0.1:{free_port()}"
    only = ["--metrics", opts.metrics] if opts.metrics else []
    command = None
    if opts.checkout:
        where = os.path.abspath(opts.checkout)
        command = ["env", "-C", where, os.path.join(where, ".venv", "bin", "python"), "-m", "netsnoop"]
    ns = Netsnoop(["export", "--listen", target, *only], command=command).start().wait_ready()
    result: dict[str, Any] = {}
    try:
        label = names()
        for mode, args, unit in (("storm", ["-n", str(opts.connections)], "conn"),
                                 ("bulk", ["-t", "1", "-s", "1024"], "MB")):
            runs = []
            for _ in range(opts.repeats):
                report, diff = measure(ns.proc.pid, mode, args)
                runs.append((opts.connections if mode == "storm" else report["bytes"] / 1e6, diff))
            rows: dict[str, Any] = {}
            for i in sorted(runs[0][1]):
                cnt = [d[i]["run_cnt"] / n for n, d in runs]
                ns_run = [d[i]["run_time_ns"] / max(d[i]["run_cnt"], 1) for n, d in runs]
                total = [d[i]["run_time_ns"] / n for n, d in runs]
                rows[f"{i}:{label.get(i, '?')}"] = {"runs_per_" + unit: statistics.median(cnt),
                                                    "ns_per_run": statistics.median(ns_run),
                                                    "ns_per_" + unit: statistics.median(total),
                                                    "misses": sum(d[i]["recursion_misses"] for _n, d in runs)}
            totals = [sum(d[i]["run_time_ns"] for i in d) / n for n, d in runs]
            result[mode] = {"programs": rows, "total_ns_per_" + unit: statistics.median(totals),
                            "totals": totals}
            print(f"\n{mode}: our programs' total {statistics.median(totals):.0f} ns per {unit} "
                  f"({', '.join(f'{t:.0f}' for t in totals)})")
            print(f"  {'program':<34} {'runs/' + unit:>10} {'ns/run':>8} {'ns/' + unit:>9}")
            for name, r in rows.items():
                if r["runs_per_" + unit]:
                    print(f"  {name:<34} {r['runs_per_' + unit]:>10.2f} {r['ns_per_run']:>8.0f} "
                          f"{r['ns_per_' + unit]:>9.0f}")
    finally:
        ns.stop(signal.SIGTERM)
        with open(STATS, "w") as f:
            f.write(was)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
