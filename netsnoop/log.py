"""netsnoop's diagnostic lines: libbpf's own log and the loader's choices, shown on
stderr with ``--verbose`` only (as ``netsnoop: SOURCE: message``).

There are two sources and one switch, so the standard ``logging`` package (whose
import brings threading, traceback, string and more into every start) is not used.
"""

from __future__ import annotations

import sys

_verbose = False


def set_verbose(on: bool) -> None:
    global _verbose
    _verbose = on


def verbose() -> bool:
    """Whether diagnostic lines are shown (``--verbose``)."""
    return _verbose


def say(source: str, message: str) -> None:
    """One diagnostic line from ``source`` (``netsnoop.libbpf``, ``netsnoop.loader``),
    shown only with ``--verbose``."""
    if _verbose:
        print(f"netsnoop: {source}: {message}", file=sys.stderr, flush=True)
