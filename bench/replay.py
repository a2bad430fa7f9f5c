#!/usr/bin/env python3
"""Replay recorded events through a streaming tool's user-space path, to measure what
each event costs there without a storm's noise.

    replay.py record TOOL FILE [-n CONNECTIONS]     (root: loads TOOL's programs)
    replay.py run FILE [-r REPEATS] [-b BATCH] -- [TOOL OPTIONS]

``record`` loads TOOL's BPF object (its default filters, plus the storm's port),
runs ``bench/loadgen storm`` and keeps every event record the ring buffer held, as
the kernel wrote it. ``run`` then starts the real command line (``netsnoop TOOL
OPTIONS``, its own start-up and sink, stdout to /dev/null) with the object's loading
replaced by a stand-in whose event buffer hands back the recorded records, BATCH at a
time, in a ring buffer's layout (an 8-byte header before each). Decoding, the
tool's rows, the sink's formatting and the writes are the real ones; the poll loop's
waiting is not (no kernel, no sleep). It prints the process CPU time from the first
read to the last, per 100k events, min and median over REPEATS runs (each a new
process, as a trace is).

For a deterministic count, run one replay under ``valgrind --tool=callgrind``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

from netsnoop.transport import Transport  # noqa: E402

HEADER = 8


def record(tool: str, path: str, connections: int) -> None:
    """A storm's events, as the kernel wrote them (the tool's default filters)."""
    sys.path.insert(0, BENCH)
    import run as bench  # noqa: E402 - bench/run.py: loadgen and a free port

    from netsnoop import options as o
    from netsnoop.commands import life, states

    bench.build_loadgen()
    port = bench.free_port()
    rodata: dict[str, Any] = {**o.port_filters(None, None, [port])}
    if tool == "life":
        spec = life.TRACER
        rodata["own_netns"] = os.stat("/proc/self/ns/net").st_ino
    elif tool == "states":
        spec = states.TRACER
        rodata["with_where"] = 1
    else:
        raise SystemExit(f"replay: no recorder for {tool}")
    records: list[bytes] = []

    def keep(buf: Any, offset: int, length: int, stride: int, count: int) -> None:
        records.extend(bytes(buf[i + offset: i + offset + length]) for i in range(0, count * stride, stride))

    with spec.open(rodata) as obj:
        ring = obj.ring_buffer()
        proc = subprocess.Popen([bench.LOADGEN, "storm", "-n", str(connections), "-p", str(port)],
                                stdout=subprocess.PIPE)
        while proc.poll() is None:
            ring.wait(10)
            ring.read(1 << 30, keep)
        time.sleep(0.2)
        ring.read(1 << 30, keep)
        lost = obj.lost_events()
    with open(path, "wb") as f:
        pickle.dump({"tool": tool, "records": records}, f)
    print(f"{len(records)} records of {tool}, {lost} lost", file=sys.stderr)


class _Ring(Transport):
    """The recorded records, BATCH at a time; exhausted, it stops the trace as Ctrl-C does."""

    size = 8 << 20
    per_cpu = False

    def __init__(self, records: list[bytes], batch: int) -> None:
        self.events = len(records)
        self._batch = batch
        self._at = 0
        self._runs = []  # (buffer, header, length, stride, count): runs of one length, at most a batch each
        at = 0
        while at < len(records):
            length = len(records[at])
            n = at
            while n < len(records) and len(records[n]) == length and n - at < batch:
                n += 1
            stride = (length + HEADER + 7) & ~7
            head, pad = length.to_bytes(4, sys.byteorder) + bytes(4), bytes(stride - HEADER - length)
            self._runs.append((memoryview(b"".join(head + r + pad for r in records[at:n])), HEADER, length, stride,
                               n - at))
            at = n
        self.started: float | None = None
        self.ended: float | None = None

    def wait(self, timeout_ms: int) -> None:
        if self._at >= len(self._runs) and self.ended is None:
            self.ended = time.process_time()
            os.kill(os.getpid(), signal.SIGINT)

    def read(self, limit: int, handle: Any) -> int:
        if self.started is None:
            self.started = time.process_time()
        done = 0
        while self._at < len(self._runs) and done < min(limit, self._batch):
            run = self._runs[self._at]
            self._at += 1
            handle(*run)
            done += run[-1]
        return done

    def lost(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _replay_child(path: str, batch: int, argv: list[str]) -> None:
    """Inside the measured process: the command line, with loading replaced."""
    from netsnoop import runner
    from netsnoop.loader import BPFObject

    with open(path, "rb") as f:
        saved = pickle.load(f)
    tool = saved["tool"]
    ring = _Ring(saved["records"], batch)

    class _Obj:
        chosen: dict[str, str | None] = {}
        skipped: list[str] = []
        transport = "ring"

        def __init__(self, name: str) -> None:
            self._real = BPFObject(name)
            self._real._open()  # BTF only: nothing is loaded

        def __enter__(self) -> "_Obj":
            return self

        def __exit__(self, *exc: object) -> None:
            self._real.close()

        def decoder(self, name: str = "event") -> Any:
            return self._real.decoder(name)

        def ring_buffer(self) -> _Ring:
            return ring

        def health(self) -> dict[str, Any]:
            return {"lost_events": 0, "skipped_hook_runs": 0, "transport": "ring", "hooks": {}}

        def missed_runs(self) -> int:
            return 0

        def counter(self, name: str) -> int:
            return 0

        def iterate(self, *args: Any) -> bytes:
            return b""

        def run_once(self, *args: Any) -> int:
            return 0

    runner.LoadSpec.open = lambda self, rodata=None, quiet=False, **kw: _Obj(self.object_name)  # type: ignore
    import atexit

    def report() -> None:
        if ring.started is not None and ring.ended is not None:
            os.write(3, json.dumps({"cpu_s": ring.ended - ring.started, "events": ring.events}).encode())

    atexit.register(report)
    sys.argv = ["netsnoop", tool, *argv]
    from netsnoop.cli import main

    profile = os.environ.get("REPLAY_PROFILE")  # a file for cProfile's statistics
    if not profile:
        main()
        return
    import cProfile

    prof = cProfile.Profile()
    atexit.register(lambda: prof.dump_stats(profile))
    prof.enable()
    main()


def run(path: str, repeats: int, batch: int, argv: list[str]) -> None:
    per = []
    events = 0
    for _ in range(repeats):
        r, w = os.pipe()
        with open(os.environ.get("REPLAY_OUT") or os.devnull, "w") as null:  # REPLAY_OUT: keep the output
            proc = subprocess.Popen([sys.executable, __file__, "_child", path, str(batch), *argv],
                                    stdout=null, stderr=subprocess.PIPE, pass_fds=(w,),
                                    env={**os.environ, "REPLAY_FD": str(w)})
        os.close(w)
        got = os.read(r, 4096)
        os.close(r)
        _out, err = proc.communicate()
        if not got:
            raise SystemExit(f"replay failed: {err.decode(errors='replace')}")
        res = json.loads(got)
        events = res["events"]
        per.append(res["cpu_s"] / events * 1e5)
    print(f"{' '.join(argv) or '(text)'}: {events} events, batch {batch}: cpu s/100k min {min(per):.4f} "
          f"median {statistics.median(per):.4f} ({repeats} runs)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        fd = int(os.environ["REPLAY_FD"])
        if fd != 3:
            os.dup2(fd, 3)
        _replay_child(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("tool")
    rec.add_argument("file")
    rec.add_argument("-n", type=int, default=20000)
    rp = sub.add_parser("run")
    rp.add_argument("file")
    rp.add_argument("-r", "--repeats", type=int, default=5)
    rp.add_argument("-b", "--batch", type=int, default=512)
    args = sys.argv[1:]
    tail = args[args.index("--") + 1:] if "--" in args else []
    a = p.parse_args(args[: args.index("--")] if "--" in args else args)
    if a.cmd == "record":
        record(a.tool, a.file, a.n)
    else:
        run(a.file, a.repeats, a.batch, tail)


if __name__ == "__main__":
    main()
