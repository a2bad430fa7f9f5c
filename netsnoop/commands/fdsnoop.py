"""netsnoop fdsnoop: file descriptors passed over Unix sockets (bcc sofdsnoop)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from netsnoop import options as o
from netsnoop.fmt import comm
from netsnoop.output import Column, OutputOptions
from netsnoop.runner import LoadSpec, stream

TRACER = LoadSpec("fdsnoop")

ACTIONS = ("SEND", "RECV")  # enum action in fdsnoop.bpf.c
TASK_COMM_LEN = 16

COLUMNS = [
    Column("ACTION", 6),
    Column("TID", 6),
    Column("COMM", 16, truncate=True),
    Column("SOCKET", 25),
    Column("FD", 5),
    Column("NAME"),
    Column("PID", text=False),
    Column("SOCK_FD", text=False),
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
@o.output_options(csv=False, wide=False, time=False, timestamp=False)
@o.pid_option()
@click.option("-t", "--tid", type=o.PID, default=None, help="only trace this thread ID")
@click.option(
    "-n", "--name", callback=comm_filter, default=None, metavar="NAME", help="only trace process names containing NAME"
)
@o.duration_option
def command(out: OutputOptions, pids: list[int] | None, tid: int | None, name: bytes | None,
            duration: float | None) -> None:
    """Trace file descriptors passed over Unix sockets (SCM_RIGHTS).

    Only descriptor passing is shown: one row per descriptor a process sends or
    receives with sendmsg/recvmsg or sendmmsg/recvmmsg. Ordinary socket traffic (an
    HTTP server and its clients, for example) passes no descriptors and shows
    nothing. SOCKET is the socket's fd and what it refers to; NAME is the passed
    descriptor's file, both looked up in /proc when the row is printed (N/A when
    the process or the descriptor is already gone). Not seen: messages sent
    through io_uring, and 32-bit processes (their compat syscalls have no
    syscall tracepoints).
    """
    rodata = {"filter_pids": pids, "filter_tid": tid, "filter_comm": name}
    with TRACER.open(rodata) as obj:
        if stream(obj, COLUMNS, row, out, duration) == 0:
            print(NOTHING_PASSED, file=sys.stderr, flush=True)
