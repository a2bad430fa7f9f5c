"""What connect, accept, tracer and connlat share: one event layout (conn.h), so one
way to turn an event into column values, the kernel filters they take, and the
names of connection outcomes.

Each tool only picks its columns (bcc's headers and widths); a column's header is the
key into :func:`fields`, so a new column is one line in one place.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Sequence

from netsnoop.fmt import addr, comm, ip_version, tcp_state
from netsnoop.loader import BPFObject
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import stream

# enum conn_kind in conn.h
CONNECT = 1
KINDS = {CONNECT: ("C", "connect"), 2: ("A", "accept"), 3: ("X", "close")}

TCP_ESTABLISHED, TCP_SYN_SENT, TCP_CLOSE = 1, 2, 7

# sk_err of a connect attempt that ended in CLOSE -> what the user sees
OUTCOMES = {
    0: "ABORTED",  # closed by its owner before the handshake resolved
    errno.ECONNREFUSED: "REFUSED",
    errno.ETIMEDOUT: "TIMEOUT",
    errno.EHOSTUNREACH: "UNREACHABLE",
    errno.ENETUNREACH: "NET_UNREACHABLE",
    errno.ECONNRESET: "RESET",
    errno.EACCES: "PROHIBITED",
    errno.EPERM: "PROHIBITED",
}


def outcome(state: int, err: int) -> str:
    """How a connect attempt resolved: the state it reached, or why it closed
    (PENDING: still unanswered when tracing stopped)."""
    if state == TCP_CLOSE:
        return OUTCOMES.get(err) or errno.errorcode.get(err, f"ERR{err}")
    if state == TCP_SYN_SENT:
        return "PENDING"
    return tcp_state(state)


def fields(e: Any) -> dict[str, Any]:
    """Every column any of the four tools shows, by header, for one event."""
    local, remote = addr(e.family, e.laddr), addr(e.family, e.raddr)
    letter, name = KINDS.get(e.kind, ("?", str(e.kind)))
    return {
        "T": letter, "TYPE": name, "PID": e.pid, "UID": e.uid, "COMM": comm(e.comm),
        "IP": ip_version(e.family),
        "SADDR": local, "LADDR": local, "DADDR": remote, "RADDR": remote,
        "SPORT": e.lport, "LPORT": e.lport, "DPORT": e.rport, "RPORT": e.rport,
        "RESULT": outcome(e.state, e.err), "LAT(ms)": e.lat_ns / 1e6, "NETNS": e.netns,
    }


def row_of(columns: Sequence[Column]) -> Callable[[Any], tuple[Any, ...]]:
    """The ``row`` function for :func:`runner.stream`: values in column order."""
    headers = [c.header for c in columns]

    def row(e: Any) -> tuple[Any, ...]:
        values = fields(e)
        return tuple(values[h] for h in headers)

    return row


def show(obj: BPFObject, columns: Sequence[Column], out: OutputOptions, duration: float | None, banner: str,
         at_stop: Callable[[], list[Any]] | None = None) -> None:
    """Stream the object's events as rows of ``columns`` until stopped."""
    stream(obj, columns, row_of(columns), out, duration, banner=banner, at_stop=at_stop)


def filters(pid: int | None = None, family: int | None = None, cgroup: int | None = None,
            uid: int | None = None, netns: int | None = None, lports: list[int] | None = None,
            rports: list[int] | None = None) -> dict[str, Any]:
    """The kernel-side filters (netsnoop.h, conn.h) as read-only globals; None = any."""
    return {
        "filter_pid": pid, "filter_family": family, "filter_cgroup": cgroup, "filter_uid": uid,
        "filter_netns": netns, "filter_lports": lports, "filter_rports": rports,
    }
