"""netsnoop states: every TCP state change (bcc tcpstates), with -P for either port."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import click

from netsnoop import options as o
from netsnoop import where
from netsnoop.journal import Journal
from netsnoop.conn import row_of
from netsnoop.fmt import addresses, comm, ip_version, printable, tcp_state
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec, stream

TRACER = LoadSpec("states")
JOURNAL_IDENTIFIER = "netsnoop"


def journal_fields(e: Any, r: tuple[Any, ...], named: tuple[str, str, int, str]) -> dict[str, Any]:
    """A state change as a journal entry: bcc tcpstates -Y's fields (journalctl
    OBJECT_TCP_NEW_STATE=CLOSE works as with bcc), and netsnoop's own."""
    ip = f"IPV{r[3]}"
    pid = e.pid or None  # 0: no task (softirq on an idle CPU)
    return {
        "MESSAGE": f"{printable(r[2])} {r[4]} {r[5]} -> {r[6]} {r[7]} {r[8]} -> {r[10]}",
        "PRIORITY": 5,
        "SYSLOG_IDENTIFIER": JOURNAL_IDENTIFIER,
        # journald adds OBJECT_COMM, OBJECT_UID... itself for a PID it may read
        "OBJECT_PID": pid,
        f"OBJECT_{ip}_SOURCE_ADDRESS": r[4],
        "OBJECT_TCP_SOURCE_PORT": r[5],
        f"OBJECT_{ip}_DESTINATION_ADDRESS": r[6],
        "OBJECT_TCP_DESTINATION_PORT": r[7],
        "OBJECT_TCP_OLD_STATE": r[8],
        "OBJECT_TCP_NEW_STATE": r[10],
        "OBJECT_TCP_SPAN_TIME": e.delta_ns // 1000,  # microseconds, as bcc
        "NETSNOOP_COMM": r[2],  # the name when it happened, exactly
        "NETSNOOP_SKADDR": r[0],
        "NETSNOOP_SPAN_NS": e.delta_ns,
        "NETSNOOP_NETNS": named[0],
        "NETSNOOP_NETNS_INODE": named[2],
        "NETSNOOP_CONTAINER": named[1],
    }


# Each column's value, from an event ``e`` (names from _SCOPE; ``a`` is the address
# lookup of the event's family, bound by LADDR, which comes before RADDR), compiled
# into one row function by conn.row_of.
FIELDS: dict[str, str] = {
    "SKADDR": 'f"{e.skaddr:x}"',
    "C-PID": "e.pid",
    "C-COMM": "comm(e.comm)",
    "IP": "ip_version(e.family)",
    "LADDR": "(a := addresses(e.family))(e.saddr)",
    "LPORT": "e.sport",
    "RADDR": "a(e.daddr)",
    "RPORT": "e.dport",
    "OLDSTATE": "tcp_state(e.oldstate)",
    "->": '"->"',
    "NEWSTATE": "tcp_state(e.newstate)",
    "MS": "e.delta_ns / 1e6",
}
_SCOPE = {"comm": comm, "ip_version": ip_version, "addresses": addresses, "tcp_state": tcp_state}


def columns(wide: bool, json: bool = True) -> list[Column]:
    a = 26 if wide else 15
    return [
        Column("SKADDR", 16),
        Column("C-PID", 5),
        Column("C-COMM", 16 if wide else 10, truncate=True),
        Column("IP", 2, text=wide, csv=True),
        Column("LADDR", a),
        Column("LPORT", 5),
        Column("RADDR", a),
        Column("RPORT", 5),
        Column("OLDSTATE", 11),
        Column("->", 2, json=False, csv=False),
        Column("NEWSTATE", 11),
        Column("MS", 10 if wide else 0, spec=".3f"),
        *where.columns(wide, json),
    ]


@click.command("states")
@o.output_options()
@o.ports_option("-L", "--localport", "lports", help="only trace these local ports (e.g. 80,81)")
@o.ports_option("-D", "--remoteport", "rports", help="only trace these remote ports")
@o.ports_option("-P", "--port", "ports", help="only trace these ports at either end (local OR remote)")
@where.pids_option("only trace state changes made in the context of these processes")
@o.family_option
@o.cgroup_option
@where.netns_option
@click.option("-Y", "--journal", is_flag=True, help="also log each state change to the systemd journal")
@o.duration_option
def command(out: OutputOptions, lports: Any, rports: Any, ports: Any, pids: list[int] | None, family: int | None,
            cgroup: int | None, netns: list[int] | None, journal: bool, duration: float | None) -> None:
    """Trace TCP state changes, and how long each socket spent in the old state.

    C-PID/C-COMM are the task on the CPU when the state changed: for changes driven by
    incoming packets (SYN_RECV, ESTABLISHED on the passive side) that may be another
    process or a kernel thread. `netsnoop life` names sockets' owners. -p and --cgroup
    judge that task too; --netns the socket.

    NETNS is the socket's network namespace, CONTAINER the container, pod or systemd
    unit of the task on the CPU (-w; always in --json).

    SKADDR is the socket's kernel address in hex (a string in --json too: it does not
    fit a JSON number exactly).

    close() after shutdown(SHUT_WR) makes the kernel set the state the socket is
    already in (FIN_WAIT1 -> FIN_WAIT1, FIN_WAIT2 -> FIN_WAIT2...): not a change, so
    not shown; MS of the next change counts from when that state was entered.

    Under storms the kernel at times does not run the hook for a change, without saying
    so; a socket's next change then shows it (it leaves a state it was not seen
    entering). Its MS is 0 (unknown), and the summary counts these (changes_not_seen:
    each stands for one hidden change or more).

    -Y also writes each change to the systemd journal (as bcc tcpstates -Y), with
    bcc's fields (OBJECT_TCP_OLD_STATE, OBJECT_TCP_NEW_STATE, OBJECT_PID,
    OBJECT_IPV4_SOURCE_ADDRESS...) and netsnoop's (NETSNOOP_NETNS,
    NETSNOOP_CONTAINER, NETSNOOP_SKADDR...), under SYSLOG_IDENTIFIER=netsnoop:
    journalctl -t netsnoop OBJECT_TCP_NEW_STATE=CLOSE. Rows still go to stdout; the
    summary counts the entries the journal did not take (journal_lost).
    """
    rodata = {**o.port_filters(lports, rports, ports), **where.filters(pids, netns), "filter_family": family,
              "filter_cgroup": cgroup, "with_where": int(out.wide or out.json or journal)}

    cols = columns(out.wide, out.json)
    named = where.values if out.wide or out.json else None  # as where.columns()

    with contextlib.ExitStack() as stack:
        log = stack.enter_context(Journal()) if journal else None  # before loading: no journal, no trace
        obj = stack.enter_context(TRACER.open(rodata))
        names = obj.decoder().names
        row: Callable[[Any], tuple[Any, ...]]
        if log is None:
            if not (out.json or out.csv):  # text: the rows hold only what it shows, SKADDR as a number
                cols = [c if c.header != "SKADDR" else Column("SKADDR", 16, spec="x") for c in cols if c.text]
            row = row_of(cols, fields={**FIELDS, "SKADDR": "e.skaddr"} if cols[0].spec else FIELDS, scope=_SCOPE,
                         names=names)
        else:
            full = row_of(columns(False, False), fields=FIELDS, scope=_SCOPE, names=names)  # journal_fields() reads it
            journal_log = log

            def row(e: Any) -> tuple[Any, ...]:
                r = full(e)
                journal_log.send(journal_fields(e, r, where.values(e.netns, e.cgroup)))
                return r + named(e.netns, e.cgroup) if named else r

        def facts() -> dict[str, int]:
            more = {"journal_entries": log.sent, "journal_lost": log.lost} if log is not None else {}
            return {"changes_not_seen": obj.counter("changes_not_seen"), **more}

        stream(obj, cols, row, out, duration, facts=facts)
