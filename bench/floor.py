#!/usr/bin/env python3
"""The bench's floor: netsnoop/bpf/floor.bpf.c's empty programs on the hooks named on
the command line (default: all of them), held until SIGINT, behaving like a netsnoop
tool towards bench/run.py ("Tracing..." on stderr, a header line, a summary with the
hooks used), so it runs in the same scenarios and its ratio is the hooks' own price.

    python bench/floor.py [--json] [GROUP ...]   groups: set_state send recv accept4 accept connect_exit
"""

from __future__ import annotations

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netsnoop.loader import BPFObject  # noqa: E402

GROUPS = ("set_state", "send", "recv", "accept4", "accept", "connect_exit")


class Floor(BPFObject):
    """floor.bpf.o with only the wanted groups loaded (every group is optional, so the
    loader's choice of kinds, and its report of them, stay the tools')."""

    def __init__(self, groups: set[str]) -> None:
        super().__init__("floor", optional=frozenset(GROUPS), without=frozenset(GROUPS) - groups)
        self.groups = groups

    def health(self) -> dict[str, object]:
        health = super().health()
        health["hooks"] = {g: k for g, k in health["hooks"].items() if g in self.groups}
        return health


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    groups = {a for a in argv if not a.startswith("-")} or set(GROUPS)
    unknown = groups - set(GROUPS)
    if unknown:
        print(f"floor: unknown hook group(s) {', '.join(sorted(unknown))} (known: {' '.join(GROUPS)})", file=sys.stderr)
        return 2
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with Floor(groups) as obj:
        obj.attach()
        print("Tracing... (floor: empty programs) Hit Ctrl-C to end.", file=sys.stderr, flush=True)
        if not as_json:
            print("FLOOR", flush=True)
        while not stop:
            signal.pause()
        health = obj.health()
    summary = {"events": 0, **health}
    if as_json:
        print(json.dumps({"type": "summary", **summary}), flush=True)
    else:
        hooks = " ".join(f"{g}={k}" for g, k in summary["hooks"].items())
        print(f"netsnoop: 0 events, {summary['lost_events']} lost events, {summary['skipped_hook_runs']} skipped hook "
              f"runs, hooks: {hooks}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
