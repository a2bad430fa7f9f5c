"""What the netsnoop process arranges about its surroundings before it does anything
else: how signals stop it, and what its standard streams are.

Signals. SIGINT, SIGTERM and SIGHUP only set a flag, from the first line of netsnoop's
own code on (:func:`install`). A handler that raised KeyboardInterrupt could fire inside
a ctypes callback (libbpf's log function runs all through loading), where ctypes
prints and drops the exception, and a trace the user asked to stop would go on. The
run loop (:class:`netsnoop.runner.StopFlag`) and start-up look at the flag instead: a
signal during loading stops the trace as soon as it is attached, and cleanly.

Standard streams. A closed descriptor 0, 1 or 2 would be taken by the first file
netsnoop opens (a BPF map), and rows or messages written into it: the descriptor is
held with /dev/null instead. With stdout closed there is nowhere to show rows, which
is an error; with stderr closed messages are lost (Python would otherwise print them
to stdout, among the rows).

Output. Everything written to stdout goes through :func:`write_all`, which turns a
failed write into one line naming the cause, and gives up on a reader that has
stopped reading once the trace has been asked to stop, rather than hang there.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import select
import signal
import stat
import sys
import time
from types import FrameType
from typing import Any

from netsnoop.errors import NetsnoopError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STALL_S = 1.0  # after a stop: how long a reader may take nothing before it is given up on
STOP_GRACE_S = 5.0  # after a stop: how long output may take at most, even if it trickles

_signal: int | None = None
_stop_at: float | None = None  # when the trace stopped (a signal or its duration)
_installed = False


class CannotWrite(NetsnoopError):
    """stdout refuses what is written to it (a full disk, /dev/full, a closed file)."""


class OutputStalled(NetsnoopError):
    """Nobody reads stdout, and the trace was asked to stop: the rest is not written."""


def _handle(signum: int, frame: FrameType | None) -> None:
    global _signal
    if _signal is None:
        _signal = signum
    stopping()


def stop_requested() -> bool:
    """Whether a stop signal has come (at any time since :func:`install`)."""
    return _signal is not None


def stopping() -> None:
    """Note that the trace is stopping (a signal, or its duration is over): output
    from now on gets :data:`STOP_GRACE_S` at most."""
    global _stop_at
    if _stop_at is None:
        _stop_at = time.monotonic()


class handling:
    """Stop signals set the flag while the block runs. Handlers installed here are put
    back afterwards (netsnoop used as a library, tests); those :func:`install`
    installed for the whole process stay."""

    def __enter__(self) -> "handling":
        self._old = {} if _installed else {s: signal.signal(s, _handle) for s in STOP_SIGNALS[:2]}
        return self

    def __exit__(self, *exc: object) -> None:
        global _signal, _stop_at
        for s, h in self._old.items():
            signal.signal(s, h)
        if self._old:  # the next run in this process starts afresh
            _signal = _stop_at = None


def install() -> None:
    """For the netsnoop command, before anything else: the signal handlers, and
    standard streams that are open and written through :func:`write_all`."""
    global _installed
    if _installed:
        return
    for s in STOP_SIGNALS:
        if s == signal.SIGHUP and signal.getsignal(s) == signal.SIG_IGN:
            continue  # started with nohup: keep running when the terminal goes
        signal.signal(s, _handle)
    _installed = True
    closed = [fd for fd in (0, 1, 2) if not _is_open(fd)]
    for fd in closed:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    if 2 in closed:
        sys.stderr = open(2, "w", closefd=False)
    if 1 in closed:
        print("netsnoop: standard output is closed: there is nowhere to write the output to", file=sys.stderr)
        raise SystemExit(1)
    try:
        sys.stdout = guarded_stdout(sys.stdout)
    except (AttributeError, OSError, ValueError):  # not a file (embedded): left as it is
        pass


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


class _GuardedRaw(io.RawIOBase):
    """stdout's file descriptor, written with :func:`write_all`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        view = memoryview(data)
        write_all(self._fd, view)
        return len(view)


def guarded_stdout(stream: Any) -> io.TextIOWrapper:
    """A text stream like ``stream`` (same encoding and error handling) whose writes go
    through :func:`write_all`."""
    return io.TextIOWrapper(io.BufferedWriter(_GuardedRaw(stream.fileno())), encoding=stream.encoding,
                            errors=stream.errors, line_buffering=stream.line_buffering)


_modes: dict[int, int] = {}


def write_all(fd: int, data: Any) -> None:
    """Write all of ``data`` to ``fd``, resuming partial writes.

    A pipe or socket is written without blocking (O_NONBLOCK for the call, put back
    after: nothing else normally writes to netsnoop's end), and when it is full the
    wait is a poll in steps of 0.1 s, so that a signal is noticed; a terminal or a
    device is polled before each write. Once the trace is stopping, a reader that
    takes nothing for :data:`STALL_S`, or output that takes longer than
    :data:`STOP_GRACE_S`, is given up on (:class:`OutputStalled`). A write that fails
    (other than a reader gone away, BrokenPipeError, which callers handle) is
    :class:`CannotWrite`.
    """
    data = memoryview(data).cast("B")
    mode = _modes.get(fd)
    if mode is None:
        mode = _modes[fd] = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        kind = "file"
    elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        kind = "pipe"
    else:
        kind = "device"
    flags = fcntl.fcntl(fd, fcntl.F_GETFL) if kind == "pipe" else 0
    poller = None
    try:
        if kind == "pipe" and not flags & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        while data:
            if kind == "device":
                poller = poller or _poller(fd)
                _wait_writable(poller)
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                poller = poller or _poller(fd)
                _wait_writable(poller)
                continue
            data = data[n:]
    except BrokenPipeError:
        raise
    except OSError as err:
        if err.errno == errno.EPIPE:
            raise
        if fd == 1:
            discard_stdout()
        raise CannotWrite(f"cannot write output: {os.strerror(err.errno) if err.errno else err}") from None
    finally:
        if kind == "pipe" and not flags & os.O_NONBLOCK:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            except OSError:
                pass


def _poller(fd: int) -> Any:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return poller


def _wait_writable(poller: Any) -> None:
    since = None
    while not poller.poll(100):
        if _stop_at is None:
            continue
        now = time.monotonic()
        since = since or now
        if now - since >= STALL_S or now - _stop_at >= STOP_GRACE_S:
            discard_stdout()
            raise OutputStalled(f"the output was not read for {STALL_S:g} s after the trace stopped: "
                                "what was still to be written is lost")


def discard_stdout() -> None:
    """After a failed or given-up write, or when the reader went away (``| head``): what
    is still buffered for stdout goes nowhere, so that neither the exit's flush nor a
    later message fails again or blocks."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    _modes.pop(1, None)
