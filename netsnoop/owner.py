"""The socket owner that bpf/owner.h records (the process seen sending, receiving or
changing a socket's state): the hook groups that record it, and how a row shows it."""

from __future__ import annotations

from typing import Any

from netsnoop.fmt import comm

# The hook groups of bpf/owner.h, optional everywhere: without them rows have no owner.
OWNER_GROUPS = frozenset({"send", "recv", "set_state", "forget"})


def owner(e: Any) -> tuple[int | None, str | None]:
    """An event's socket owner (``pid``, ``comm`` filled from bpf/owner.h's map), or
    (None, None) when no process was seen using the socket."""
    return (e.pid, comm(e.comm)) if e.pid else (None, None)
