"""netsnoop states: every TCP state change (bcc tcpstates), with -P for either port."""

from __future__ import annotations

from typing import Any

import click

from netsnoop import options as o
from netsnoop import where
from netsnoop.fmt import addr, comm, ip_version, tcp_state
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import Tracer, stream

TRACER = Tracer("states")


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
@o.duration_option
def command(out: OutputOptions, lports: Any, rports: Any, ports: Any, pids: list[int] | None, family: int | None,
            cgroup: int | None, netns: list[int] | None, duration: float | None) -> None:
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
    """
    rodata = {**o.port_filters(lports, rports, ports), **where.filters(pids, netns), "filter_family": family,
              "filter_cgroup": cgroup, "with_where": int(out.wide or out.json)}

    cols = columns(out.wide, out.json)
    named = where.values if out.wide or out.json else None  # as where.columns()

    def row(e: Any) -> tuple[Any, ...]:
        r = (
            f"{e.skaddr:x}", e.pid, comm(e.comm), ip_version(e.family),
            addr(e.family, e.saddr), e.sport, addr(e.family, e.daddr), e.dport,
            tcp_state(e.oldstate), "->", tcp_state(e.newstate), e.delta_ns / 1e6,
        )
        return r + named(e.netns, e.cgroup) if named else r

    with TRACER.open(rodata) as obj:
        def facts() -> dict[str, int]:
            return {"changes_not_seen": obj.counter("changes_not_seen")}

        stream(obj, cols, row, out, duration, facts=facts)
