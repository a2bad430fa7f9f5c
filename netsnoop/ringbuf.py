"""Reading a BPF ring buffer straight from its shared memory, without a callback per record.

libbpf's ``ring_buffer__poll()`` calls back into Python once per record, and that
ctypes callback (plus copying each record into a ``bytes``) cost more than everything
else netsnoop does with an event. The ring's layout is a stable kernel ABI
(include/uapi/linux/bpf.h, kernel/bpf/ringbuf.c), so this module maps it the way
libbpf does and walks it in Python instead:

* page 0: ``consumer_pos``, the only page user space writes;
* page 1: ``producer_pos``, then the data pages (``size`` bytes, a power of two);
* every record: a 4-byte length whose top bits mean BUSY (reserved, not yet
  submitted) and DISCARD, 4 bytes the kernel uses, then the data, padded to 8 bytes.

Consecutive committed records of one length -- the normal case, one event struct
per tool -- are handed over as one run, so a whole run is decoded by a single
``struct.iter_unpack`` call. Space is given back to the kernel after each run.

The data pages are mapped once (libbpf maps them twice so that a record crossing
the end reads as contiguous); the rare record that crosses is stitched together
here instead, which keeps the mapping -- counted in the process's RSS -- at the size
of the buffer rather than twice that.

Reading the positions and headers with plain loads is correct where the CPU keeps
loads in order and stores in order (x86's TSO); elsewhere :func:`mapped_reading`
says no and the caller keeps libbpf's reader, which uses acquire/release atomics.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import struct
from typing import Callable, Union

from netsnoop.kernel import fdinfo

BUSY = 1 << 31
DISCARD = 1 << 30
LENGTH_MASK = DISCARD - 1
HEADER = 8
EPOLLIN = 0x001
EPOLL_CTL_ADD = 1
EPOLL_CLOEXEC = 0o2000000
_TSO_MACHINES = {"x86_64", "amd64", "i386", "i686"}

# Positions and lengths must be read with single loads and the consumer position written
# with a single store: a native struct format reads a value with one memcpy ("=" formats
# assemble it byte by byte), and the store goes through ctypes, because
# ``Struct.pack_into`` zeroes its target before writing it -- a kernel that saw a
# consumer position of 0 for that instant would find the ring full and drop an event.
_U32 = struct.Struct("I")
_U64 = struct.Struct("Q")

Buffer = Union[memoryview, bytes]
# handle(buf, length, stride, count): ``count`` records every ``stride`` bytes from the
# start of ``buf``, each an 8-byte header then ``length`` bytes of data.
RunHandler = Callable[[Buffer, int, int, int], None]


def mapped_reading() -> bool:
    """Whether to read rings from their mapping: on TSO CPUs, unless NETSNOOP_RINGBUF_READER=libbpf."""
    if os.environ.get("NETSNOOP_RINGBUF_READER", "") == "libbpf":
        return False
    return platform.machine().lower() in _TSO_MACHINES


def map_size(fd: int) -> int | None:
    """A ring buffer map's data size (its max_entries), from /proc/self/fdinfo."""
    value = fdinfo(fd).get("max_entries")
    return int(value) if value else None


class _EpollEvent(ctypes.Structure):
    _pack_ = 1  # struct epoll_event is packed on x86-64, the only place this module reads rings
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


class _Epoll:
    """epoll through libc rather than ``select.epoll``: Python retries an interrupted
    ``select.epoll.poll()`` (PEP 475), while a C call returns at once on EINTR, so
    Ctrl-C stops a waiting reader immediately, as it did with libbpf's poll."""

    def __init__(self, fd: int) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.epoll_create1(EPOLL_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "epoll_create1")
        ev = _EpollEvent(EPOLLIN, fd)
        if self._libc.epoll_ctl(self.fd, EPOLL_CTL_ADD, fd, ctypes.byref(ev)) != 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, "epoll_ctl")
        self._event = _EpollEvent()

    def wait(self, timeout_ms: int) -> None:
        self._libc.epoll_wait(self.fd, ctypes.byref(self._event), 1, int(timeout_ms))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MappedRing:
    """One ring buffer map, read from its pages (see the module's docstring)."""

    def __init__(self, fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self.size, self._mask = size, size - 1
        self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._pages = mmap.mmap(fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._producer = memoryview(self._pages)[:8]
        self._data = memoryview(self._pages)[page:]
        self._consumer_pos = ctypes.c_uint64.from_buffer(self._consumer)
        self._cons = self._consumer_pos.value
        self._fd = fd
        self._epoll: _Epoll | None = None

    def wait(self, timeout_ms: int) -> None:
        """Block until records are available (or at least look so), or the timeout."""
        if self._cons == _U64.unpack_from(self._producer)[0]:
            if self._epoll is None:
                self._epoll = _Epoll(self._fd)
            self._epoll.wait(timeout_ms)

    def read(self, limit: int, handle: RunHandler) -> int:
        """Hand up to ``limit`` submitted records to ``handle`` in runs of one length;
        returns how many. Stops at the first record still being written."""
        data, mask, size = self._data, self._mask, self.size
        cons, done = self._cons, 0
        prod = _U64.unpack_from(self._producer)[0]
        while done < limit:
            if cons >= prod:
                prod = _U64.unpack_from(self._producer)[0]
                if cons >= prod:
                    break
            off = cons & mask
            length = _U32.unpack_from(data, off)[0]
            if length & BUSY:
                break
            stride = ((length & LENGTH_MASK) + HEADER + 7) & ~7
            n = 1
            if length & DISCARD:
                pass
            elif off + stride > size:  # wraps around the end of the data pages
                handle(bytes(data[off:]) + bytes(data[: off + stride - size]), length, stride, 1)
            else:
                n = self._run_length(off, length, stride, min(prod - cons, size - off) // stride, limit - done)
                handle(data[off : off + n * stride], length, stride, n)
            cons += n * stride
            done += n
            self._release(cons)
        return done

    def _run_length(self, off: int, length: int, stride: int, fits: int, wanted: int) -> int:
        """How many records from ``off`` on are submitted and ``length`` long (at least 1)."""
        n = min(fits, wanted)
        if n <= 1:
            return 1
        lengths = self._data[off : off + n * stride].cast("I")[:: stride // 4].tolist()
        if lengths.count(length) == n:
            return n
        for i, value in enumerate(lengths):
            if value != length:
                return i
        return n  # pragma: no cover - count() said otherwise

    def _release(self, cons: int) -> None:
        self._cons = self._consumer_pos.value = cons

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        for view in (self._producer, self._data):
            view.release()
        del self._consumer_pos  # its export of the page must go before the page can
        self._pages.close()
        self._consumer.close()
