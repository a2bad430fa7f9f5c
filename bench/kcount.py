#!/usr/bin/env python3
"""What a loadgen storm makes the kernel do, counted by the kernel's own tracing (a
private ftrace instance on the same tracepoints netsnoop hooks, filtered on the storm's
port), independently of netsnoop: the source of the per-connection counts run.py
expects (states' six fixed changes, tracer's two closes).

    python bench/kcount.py [-n COUNT] [-c CONCURRENCY] [--repeats N]

Prints, per run, every state change seen with its count per connection, and the
sockets destroyed. Needs root and tracefs (mounted here if it is not).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import socket
import subprocess
import sys
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
TRACEFS = "/sys/kernel/tracing"
EVENTS = ("sock/inet_sock_set_state", "tcp/tcp_destroy_sock")
CHANGE = re.compile(r"inet_sock_set_state: .*oldstate=TCP_(\w+) newstate=TCP_(\w+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def storm_counts(count: int, concurrency: int) -> dict[str, Any]:
    """One storm on a port of our own, traced by an ftrace instance of our own."""
    if not os.path.exists(os.path.join(TRACEFS, "instances")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)
    inst = os.path.join(TRACEFS, "instances", f"netsnoop-kcount-{os.getpid()}")
    os.mkdir(inst)
    try:
        port = free_port()
        with open(os.path.join(inst, "buffer_size_kb"), "w") as f:
            f.write(str(max(4096, count * 8 * 300 // 1024 // (os.cpu_count() or 1))))
        for ev in EVENTS:
            with open(os.path.join(inst, "events", ev, "filter"), "w") as f:
                f.write(f"sport == {port} || dport == {port}")
            with open(os.path.join(inst, "events", ev, "enable"), "w") as f:
                f.write("1")
        out = subprocess.run([os.path.join(BENCH, "loadgen"), "storm", "-n", str(count), "-c", str(concurrency),
                              "-p", str(port)], capture_output=True, text=True, check=True)
        with open(os.path.join(inst, "events", "enable"), "w") as f:
            f.write("0")
        with open(os.path.join(inst, "per_cpu", "cpu0", "stats")) as f:
            overrun = sum(int(line.split()[1]) for line in f if line.startswith("overrun"))
        with open(os.path.join(inst, "trace")) as f:
            text = f.read()
    finally:
        os.rmdir(inst)
    report = json.loads(out.stdout)
    changes = collections.Counter(f"{a}->{b}" for a, b in CHANGE.findall(text))
    return {"connections": report["connections"] - report["failures"], "changes": dict(changes),
            "destroyed": text.count("tcp_destroy_sock:"), "overrun_cpu0": overrun}


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("-n", type=int, default=20000, help="connections per storm (default 20000)")
    p.add_argument("-c", type=int, default=1, help="client (and server) threads (default 1)")
    p.add_argument("--repeats", type=int, default=1)
    opts = p.parse_args()
    if os.geteuid() != 0:
        print("kcount: needs root (tracefs)", file=sys.stderr)
        return 2
    for rep in range(opts.repeats):
        r = storm_counts(opts.n, opts.c)
        n = r["connections"]
        changes: dict[str, int] = r["changes"]
        listener = changes.get("CLOSE->LISTEN", 0) + changes.get("LISTEN->CLOSE", 0)
        fixed = sum(v for k, v in changes.items() if k in FIXED or (k.endswith("->CLOSE") and k != "LISTEN->CLOSE"))
        print(f"storm #{rep + 1}: {n} connections, {sum(changes.values())} state changes "
              f"({listener} the listener's), {fixed / n:.4f} fixed per connection, {r['destroyed']} sockets destroyed"
              f"{', ftrace overrun: ' + str(r['overrun_cpu0']) if r['overrun_cpu0'] else ''}")
        for k, v in sorted(changes.items(), key=lambda kv: -kv[1]):
            print(f"  {k:28} {v:8}  {v / n:.4f} per connection")
    return 0


FIXED = {"CLOSE->SYN_SENT", "SYN_SENT->ESTABLISHED", "LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED"}

if __name__ == "__main__":
    sys.exit(main())
