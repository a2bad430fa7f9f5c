#!/usr/bin/env python3
"""netsnoop export under churn: what it costs the workload, how long a scrape takes,
and whether its memory stays flat (``python bench/export_soak.py``, as root).

* **Workload**: bench/loadgen's connection storm and bulk transfer, untraced, with the
  exporter running, and untraced again; the ratio is the middle run's rate over the
  mean of the other two (as bench/run.py measures the subcommands).
* **Soak**: rounds of a storm (new connections, each its own flow) plus network
  namespaces made and deleted (each with a refused connect, so each gets a netns
  label), one scrape after another between them. Per round: the exporter's VmRSS,
  the series in a scrape, the scrape's wall time (median of a few). Flat memory and a
  flat series count are the claim; anything growing round after round is a leak.

Results go to the terminal and to bench/results/export-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

from run import RESULTS, build_loadgen, free_port, loadgen  # noqa: E402
from driver import Netsnoop, cpu_seconds  # noqa: E402  (tests/driver.py: run.py puts tests/ on the path)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def scrape(target: str) -> tuple[float, int]:
    """Wall time of one scrape, and the number of samples in it."""
    start = time.perf_counter()
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=30) as r:
        text = r.read().decode()
    took = time.perf_counter() - start
    return took, sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def churn_namespaces(count: int) -> None:
    """Namespaces that live for one refused connect each, then go."""
    for _ in range(count):
        name = f"nssoak{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        try:
            subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c",
                            "import socket,subprocess\n"
                            "subprocess.run(['ip','link','set','lo','up'])\n"
                            "s=socket.socket()\n"
                            "try: s.connect(('127.0.0.1', 9))\n"
                            "except OSError: pass\n"], check=True)
        finally:
            subprocess.run(["ip", "netns", "del", name], check=True)


def start_exporter(target: str, metrics: str | None = None) -> Netsnoop:
    only = ["--metrics", metrics] if metrics else []
    return Netsnoop(["export", "--listen", target, *only]).start().wait_ready()


def ratio(mode: str, args: list[str], target: str, metrics: str | None = None) -> dict[str, Any]:
    """The workload untraced, with the exporter, untraced again; and the exporter's own
    CPU time during the traced run (what reading the kernel's counts costs it)."""
    before = loadgen(mode, *args)["rate"]
    ns = start_exporter(target, metrics)
    try:
        spent = cpu_seconds(ns.proc.pid) or 0.0
        traced = loadgen(mode, *args)["rate"]
        spent = (cpu_seconds(ns.proc.pid) or 0.0) - spent
        scrape(target)
    finally:
        ns.stop(signal.SIGTERM)
    after = loadgen(mode, *args)["rate"]
    return {"untraced": [before, after], "traced": traced, "ratio": traced / ((before + after) / 2),
            "exporter_cpu_s": spent}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--connections", type=int, default=20000, help="storm connections per round")
    p.add_argument("--namespaces", type=int, default=10, help="namespaces made and deleted per round")
    p.add_argument("--repeats", type=int, default=3, help="workload ratio repeats")
    p.add_argument("--metrics", default=None,
                   help="export only these sources in the workload runs (its --metrics): which one costs what")
    p.add_argument("--workload-only", action="store_true", help="only the workload ratios, no soak rounds")
    opts = p.parse_args(argv)
    if os.geteuid() != 0:
        print("export_soak: needs root", file=sys.stderr)
        return 2
    build_loadgen()
    result = soak(0 if opts.workload_only else opts.rounds, opts.connections, opts.namespaces, opts.repeats,
                  opts.metrics)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"export-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written: {path}")
    return 0


def soak(rounds: int, connections: int, namespaces: int, repeats: int, metrics: str | None = None) -> dict[str, Any]:
    """The workload ratios (with only the ``metrics`` sources, if given), then the
    soak's rounds; printed as they come (make bench runs this as its export section)."""
    target = f"127.0.0.1:{free_port()}"
    result: dict[str, Any] = {"rounds": [], "workload": {}, "metrics": metrics or "all"}

    for mode, args in (("storm", ["-n", str(connections)]), ("bulk", ["-t", "1", "-s", "1024"])):
        runs = [ratio(mode, args, target, metrics) for _ in range(repeats)]
        result["workload"][mode] = {"ratios": [r["ratio"] for r in runs],
                                    "median": statistics.median(r["ratio"] for r in runs),
                                    "exporter_cpu_s": [r["exporter_cpu_s"] for r in runs]}
        print(f"{mode}: traced/untraced median {result['workload'][mode]['median']:.2f} "
              f"({', '.join(f'{r:.2f}' for r in result['workload'][mode]['ratios'])}); the exporter's CPU "
              f"meanwhile {', '.join(f'{c:.2f}' for c in result['workload'][mode]['exporter_cpu_s'])} s", flush=True)

    if not rounds:
        return result
    ns = start_exporter(target)
    try:
        print(f"{'round':>5} {'RSS MiB':>8} {'samples':>8} {'scrape ms':>10}", flush=True)
        for n in range(rounds):
            loadgen("storm", "-n", str(connections))
            churn_namespaces(namespaces)
            times, samples = [], 0
            for _ in range(5):
                took, samples = scrape(target)
                times.append(took)
            row = {"round": n + 1, "rss_mib": rss_mib(ns.proc.pid), "samples": samples,
                   "scrape_ms": statistics.median(times) * 1000}
            result["rounds"].append(row)
            print(f"{row['round']:>5} {row['rss_mib']:>8.1f} {row['samples']:>8} {row['scrape_ms']:>10.1f}", flush=True)
    finally:
        ns.stop(signal.SIGTERM)
    return result


if __name__ == "__main__":
    sys.exit(main())
