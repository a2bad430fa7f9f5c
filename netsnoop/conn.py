"""What connect, accept, tracer and connlat share: one event layout (conn.h), so one
way to turn an event into column values, the kernel filters they take, and the
names of connection outcomes.

An attempt (conn.h) is defined once for connect --outcome and connlat: it begins when
connect() moves a TCP socket from CLOSE to SYN_SENT and resolves when the socket
leaves SYN_SENT, with the state it reached or the error the connecting socket
received (soft errors included); its latency runs from connect() to that moment.
connect --outcome shows every attempt; connlat those the peer answered (a SYN-ACK or
a reset).

Each tool only picks its columns (bcc's headers and widths); a column's header is the
key into :data:`FIELDS`, so a new column is one line in one place.
"""

from __future__ import annotations

import errno
import re
from typing import Any, Callable, Sequence

from netsnoop import where
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


# Every column any of the four tools shows, by header: the expression that computes it
# from an event ``e`` (names from :data:`_SCOPE`). :func:`row_of` compiles the shown
# columns into one function, so that a row costs one Python call rather than one per
# column (a getter per column was two fifths of tracer's CPU per event).
FIELDS: dict[str, str] = {
    "T": '(KINDS.get(e.kind) or ("?",))[0]',
    "TYPE": "(KINDS.get(e.kind) or (None, str(e.kind)))[1]",
    "PID": "e.pid",
    "UID": "e.uid",
    "COMM": "comm(e.comm)",
    "IP": "ip_version(e.family)",
    "SADDR": "addr(e.family, e.saddr)",
    "LADDR": "addr(e.family, e.saddr)",
    "DADDR": "addr(e.family, e.daddr)",
    "RADDR": "addr(e.family, e.daddr)",
    "SPORT": "e.sport",
    "LPORT": "e.sport",
    "DPORT": "e.dport",
    "RPORT": "e.dport",
    "RESULT": "outcome(e.state, e.err)",
    "LAT(ms)": "e.lat_ns / 1e6",
}
_SCOPE = {"KINDS": KINDS, "comm": comm, "ip_version": ip_version, "addr": addr, "outcome": outcome}


def row_of(
    columns: Sequence[Column], extra: dict[str, Callable[[Any], Any]] | None = None,
    fields: dict[str, str] | None = None, scope: dict[str, Any] | None = None, names: Sequence[str] = (),
) -> Callable[[Any], tuple[Any, ...]]:
    """The ``row`` function for :func:`runner.stream`: values in column order; the
    where columns (NETNS...), when there, are the last, as many as are shown.
    ``extra`` adds columns that need more than the event (NAME: a DNS watcher).
    The function is compiled from the expressions of ``fields`` (default
    :data:`FIELDS`; our own text, nothing from outside), whose names come from
    ``scope`` (default the names FIELDS uses), one tuple display for the whole row.
    ``names``, the event's fields in order (its decoder's ``names``), turns ``e.NAME``
    into ``e[i]``: an index into the decoded tuple costs a third of a field lookup."""
    named = [c for c in columns if c.header in where.HEADERS]
    shown = [c.header for c in columns if c.header not in where.HEADERS]
    assert [c.header for c in named] == list(where.HEADERS[: len(named)]) and list(columns[len(shown):]) == named
    scope = {**(_SCOPE if scope is None else scope), "values": where.values}
    fields = FIELDS if fields is None else fields
    parts = []
    for n, header in enumerate(shown):
        if extra and header in extra:
            scope[f"extra_{n}"] = extra[header]
            parts.append(f"extra_{n}(e)")
        else:
            parts.append(fields[header])
    body = "(" + "".join(f"{p}, " for p in parts) + ")"
    if named:  # where.values() gives all of where.HEADERS; text shows the first ones
        body += " + values(e.netns, e.cgroup)" + ("" if len(named) == len(where.HEADERS) else f"[:{len(named)}]")
    if names:
        at = {name: i for i, name in enumerate(names)}
        body = re.sub(r"\be\.([A-Za-z_]\w*)", lambda m: f"e[{at[m.group(1)]}]" if m.group(1) in at else m.group(), body)
    row: Callable[[Any], tuple[Any, ...]] = eval(f"lambda e: {body}", scope)  # noqa: S307 - our own text
    return row


def show(obj: BPFObject, columns: Sequence[Column], out: OutputOptions, duration: float | None, banner: str,
         at_stop: Callable[[], list[Any]] | None = None, names: Any = None) -> None:
    """Stream the object's events as rows of ``columns`` until stopped; with ``names``
    (a :class:`netsnoop.dns.Watcher`), a NAME column before the where columns: the host
    name this machine last resolved to the remote address."""
    extra, facts = None, None
    if names is not None:
        columns = list(columns)
        at = next((i for i, c in enumerate(columns) if c.header in where.HEADERS), len(columns))
        columns.insert(at, Column("NAME", 24, truncate=True))
        blank = None if out.json else ""  # a width spec needs a str; JSON keeps null
        extra = {"NAME": lambda e: names.name_of(e.family, e.daddr, e.netns or None) or blank}
        facts = lambda: {"dns": names.stats()}  # noqa: E731
    stream(obj, columns, row_of(columns, extra), out, duration, banner=banner, at_stop=at_stop, facts=facts)


def filters(pids: list[int] | None = None, family: int | None = None, cgroup: int | None = None,
            uid: int | None = None, netns: list[int] | None = None, lports: list[int] | None = None,
            rports: list[int] | None = None) -> dict[str, Any]:
    """The kernel-side filters (netsnoop.h, where.h, conn.h) as read-only globals; None = any."""
    return {
        **where.filters(pids, netns), "filter_family": family, "filter_cgroup": cgroup, "filter_uid": uid,
        "filter_lports": lports, "filter_rports": rports,
    }
