"""netsnoop fdsnoop: file descriptors passed over Unix sockets (bcc sofdsnoop)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from netsnoop import options as o
from netsnoop import where
from netsnoop.fmt import comm
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec, stream

TRACER = LoadSpec("fdsnoop")

ACTIONS = ("SEND", "RECV")  # enum action in fdsnoop.bpf.c
TASK_COMM_LEN = 16



def columns(wide: bool, json: bool = True) -> list[Column]:
    return [
        Column("ACTION", 6),
        Column("TID", 6),
        Column("COMM", 16, truncate=True),
        Column("SOCKET", 25),
        Column("FD", 5),
        # unpadded unless NETNS and CONTAINER follow
        Column("NAME", 30 if wide else 0),
        Column("PID", text=False),
        Column("SOCK_FD", text=False),
        *where.columns(wide, json),
    ]


# The puzzle of bcc's sofdsnoop users (an HTTP server and curl, and no rows): said at
# the end of a trace that showed nothing.
NOTHING_PASSED = ("netsnoop: no file descriptor was passed over a Unix socket while tracing; ordinary "
                  "TCP/HTTP traffic (a web server and its clients) never passes any, so it shows nothing here")


def fd_name(tid: int, fd: int) -> str:
    """What ``fd`` of thread ``tid`` refers to now, or N/A once the fd or the thread
    is gone (read when the event is shown, so short-lived descriptors may be missed)."""
    try:
        return os.readlink(f"/proc/{tid}/fd/{fd}")
    except OSError:
        return "N/A"


def cgroup_id(pid: int) -> int:
    """The cgroup v2 id (its directory's inode) process ``pid`` is in now, or 0 once it
    is gone: read when the row is shown, like the names (the event carries no cgroup id:
    see emit_fds() in fdsnoop.bpf.c)."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            path = next((line[3:].rstrip(b"\n") for line in f if line.startswith(b"0::")), None)
        mounts = o.cgroup2_mounts()
        if path is None or not mounts:
            return 0
        return os.stat(os.fsencode(mounts[0]) + path).st_ino
    except OSError:
        return 0


def comm_filter(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
    """-n NAME becomes the kernel's substring filter; comm holds at most 15 bytes."""
    if value is None:
        return None
    raw = value.encode()
    if not raw or len(raw) >= TASK_COMM_LEN:
        raise click.BadParameter(f"must be 1-{TASK_COMM_LEN - 1} bytes (a process name is at most that long)")
    return raw


def row(e: Any) -> tuple[Any, ...]:
    return (
        ACTIONS[e.action], e.tid, comm(e.comm), f"{e.sock_fd}:{fd_name(e.tid, e.sock_fd)}",
        e.fd, fd_name(e.tid, e.fd), e.pid, e.sock_fd,
    )


@click.command("fdsnoop")
@click.option("-T", "--timestamp", is_flag=True, help="include TIME(s): seconds since the first event")
@o.output_options(csv=False, time=False, timestamp=False)
@o.pid_option()
@click.option("-t", "--tid", type=o.PID, default=None, help="only trace this thread ID")
@click.option(
    "-n", "--name", callback=comm_filter, default=None, metavar="NAME", help="only trace process names containing NAME"
)
@where.netns_option
@o.cgroup_option
@o.duration_option
def command(out: OutputOptions, pids: list[int] | None, tid: int | None, name: bytes | None,
            netns: list[int] | None, cgroup: int | None, duration: float | None) -> None:
    """Trace file descriptors passed over Unix sockets (SCM_RIGHTS).

    Only descriptor passing is shown: one row per descriptor a process sends or
    receives with sendmsg/recvmsg or sendmmsg/recvmmsg. Ordinary socket traffic (an
    HTTP server and its clients, for example) passes no descriptors and shows
    nothing. SOCKET is the socket's fd and what it refers to; NAME is the passed
    descriptor's file, both looked up in /proc when the row is printed (N/A when
    the process or the descriptor is already gone). Not seen: messages sent
    through io_uring, and 32-bit processes (their compat syscalls have no
    syscall tracepoints).

    NETNS is the network namespace of the sending or receiving socket, CONTAINER
    the container, pod or systemd unit of the process (-w; always in --json; read
    when the row is printed, like NAME: "-" once the process is gone). -N/--netns
    and --cgroup filter on them in the kernel, when the call is made.
    """
    rodata = {**where.filters(pids, netns), "filter_tid": tid, "filter_comm": name, "filter_cgroup": cgroup}
    named = out.wide or out.json  # as where.columns(): no names looked up for rows that show none

    def full_row(e: Any) -> tuple[Any, ...]:
        return row(e) + where.values(e.netns, cgroup_id(e.pid)) if named else row(e)

    with TRACER.open(rodata) as obj:
        if stream(obj, columns(out.wide, out.json), full_row, out, duration) == 0:
            print(NOTHING_PASSED, file=sys.stderr, flush=True)
