"""How events travel from the BPF programs to netsnoop: one interface, two channels.

Every object has one ``events`` map. Where the kernel has a BPF ring buffer (5.8 and
later) it is one; elsewhere -- or when ``NETSNOOP_TRANSPORT=perf`` asks -- the loader
turns it into a perf event array and the programs write through ``bpf_perf_event_output``
(netsnoop.h's ``submit_event``). :func:`choose` decides; :class:`Transport` is what a
tool reads from, whichever it is: ``wait``, ``read``, ``lost`` and ``close`` are the
backend's, the decoding on top is shared.

Both channels are read straight from their shared memory where the CPU keeps loads in
order and stores in order (x86's TSO), without a callback per record: libbpf's
readers call back into Python once per record, and that ctypes callback (plus copying
each record into a ``bytes``) costs more than everything else netsnoop does with an
event. Elsewhere (:func:`mapped_reading` says no) libbpf reads them, with the
acquire/release atomics those CPUs need.

The BPF ring buffer (include/uapi/linux/bpf.h, kernel/bpf/ringbuf.c):

* page 0: ``consumer_pos``, the only page user space writes;
* page 1: ``producer_pos``, then the data pages (``size`` bytes, a power of two);
* every record: a 4-byte length whose top bits mean BUSY (reserved, not yet
  submitted) and DISCARD, 4 bytes the kernel uses, then the data, padded to 8 bytes.

A perf buffer (include/uapi/linux/perf_event.h), one per CPU:

* page 0: ``struct perf_event_mmap_page``, with ``data_head`` (the kernel's) at byte
  1024 and ``data_tail`` (ours) at 1032;
* then the data pages (a power of two), records of a ``struct perf_event_header``
  (type, misc, size): PERF_RECORD_SAMPLE carries a 4-byte raw size and the event,
  padded so that the record is a multiple of 8 bytes; PERF_RECORD_LOST says how many
  samples the kernel dropped because the buffer was full.

Consecutive records of one length -- the normal case, one event struct per tool --
are handed over as one run, so a whole run is decoded by a single
``struct.iter_unpack`` call. Space is given back to the kernel after each run.

The data pages are mapped once (libbpf maps a ring's twice so that a record crossing
the end reads as contiguous); the rare record that crosses is stitched together here
instead, which keeps the mapping -- counted in the process's RSS -- at the size of the
buffer rather than twice that.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import mmap
import operator
import os
import platform
import struct
import sys
from typing import Any, Callable, Union

from netsnoop.errors import BadSetting, LoadError
from netsnoop.kernel import fdinfo

RING, PERF = "ring", "perf"
TRANSPORTS = (RING, PERF)
DEFAULT_BYTES = 8 << 20  # what --ringbuf sets: the ring's size, or all CPUs' perf buffers together
BATCH_EVENTS = 2048  # events decoded per read: bounds what a backlog costs in memory

BUSY = 1 << 31
DISCARD = 1 << 30
LENGTH_MASK = DISCARD - 1
HEADER = 8  # a ring record's header, before the data
PERF_DATA = 12  # a perf sample's header and raw size, before the data
EPOLLIN = 0x001
EPOLL_CTL_ADD = 1
EPOLL_CLOEXEC = 0o2000000
_TSO_MACHINES = {"x86_64", "amd64", "i386", "i686"}

BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4
BPF_MAP_TYPE_RINGBUF = 27
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
PERF_HEAD, PERF_TAIL = 1024, 1032  # data_head, data_tail in struct perf_event_mmap_page
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "i686": 336, "i386": 336}

# Positions and lengths must be read with single loads and the consumer position written
# with a single store: a native struct format reads a value with one memcpy ("=" formats
# assemble it byte by byte), and the store goes through ctypes, because
# ``Struct.pack_into`` zeroes its target before writing it -- a kernel that saw a
# consumer position of 0 for that instant would find the ring full and drop an event.
_U32 = struct.Struct("I")
_U64 = struct.Struct("Q")

Buffer = Union[memoryview, bytes]
# handle(buf, offset, length, stride, count): ``count`` records every ``stride`` bytes
# from the start of ``buf``, each ``offset`` bytes of header then ``length`` bytes of data.
RunHandler = Callable[[Buffer, int, int, int, int], None]
_TS = operator.attrgetter("ts_ns")


def mapped_reading() -> bool:
    """Whether to read from the mapping: on TSO CPUs, unless NETSNOOP_RINGBUF_READER=libbpf."""
    if os.environ.get("NETSNOOP_RINGBUF_READER", "") == "libbpf":
        return False
    return platform.machine().lower() in _TSO_MACHINES


def map_size(fd: int) -> int | None:
    """A ring buffer map's data size (its max_entries), from /proc/self/fdinfo."""
    value = fdinfo(fd).get("max_entries")
    return int(value) if value else None


@functools.lru_cache(maxsize=None)
def kernel_has_ring() -> bool:
    """Whether this kernel creates BPF ring buffer maps (5.8 and later)."""
    from netsnoop.libbpf import lib

    fd = lib().bpf_map_create(BPF_MAP_TYPE_RINGBUF, b"ns_probe", 0, 0, mmap.PAGESIZE, None)
    if fd < 0:
        return False
    os.close(fd)
    return True


def forced() -> str | None:
    """``NETSNOOP_TRANSPORT`` (ring or perf), or None; another value is a usage error."""
    value = os.environ.get("NETSNOOP_TRANSPORT", "").strip()
    if value and value not in TRANSPORTS:
        raise BadSetting(f"NETSNOOP_TRANSPORT: unknown transport {value!r} (valid: {', '.join(TRANSPORTS)})")
    return value or None


def choose() -> str:
    """The channel for this run: the forced one, else the ring buffer where the kernel has it."""
    return forced() or (RING if kernel_has_ring() else PERF)


def perf_bytes_per_cpu(total: int, ncpus: int) -> int:
    """Each CPU's perf buffer: its share of ``total``, rounded down to a power of two
    pages (what the kernel maps), at least one page. So ``--ringbuf`` bounds the memory
    either channel takes, whatever the number of CPUs."""
    share = max(mmap.PAGESIZE, total // max(1, ncpus))
    return 1 << (share.bit_length() - 1)


class _EpollEvent(ctypes.Structure):
    _pack_ = 1  # struct epoll_event is packed on x86-64, the only place this module maps buffers
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


class _Epoll:
    """epoll through libc rather than ``select.epoll``: Python retries an interrupted
    ``select.epoll.poll()`` (PEP 475), while a C call returns at once on EINTR, so
    Ctrl-C stops a waiting reader immediately, as it did with libbpf's poll."""

    def __init__(self, fds: list[int]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.epoll_create1(EPOLL_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "epoll_create1")
        for fd in fds:
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


class Transport:
    """What a tool reads events from. A backend supplies ``wait``, ``read``, ``lost`` and
    ``close``, and ``size`` (bytes the kernel can hold before it drops events); the
    decoding into events or records is done here, once."""

    size: int | None = None
    # one buffer per CPU (perf): a batch is merged by the events' ts_ns, so that events
    # come in time order as from a ring buffer -- tools that pair an event with a later
    # one (why: a connect and its answer) rely on it. An event that a CPU finished
    # writing just after its buffer was read comes with the next batch.
    per_cpu = False

    def wait(self, timeout_ms: int) -> None:
        """Block until records are available (or at least look so), or the timeout."""
        raise NotImplementedError

    def read(self, limit: int, handle: RunHandler) -> int:
        """Hand up to ``limit`` records to ``handle`` in runs of one length; returns how many."""
        raise NotImplementedError

    def lost(self) -> int:
        """Events the kernel dropped that only the reader learns of (0 for a ring buffer,
        whose losses the BPF side counts)."""
        return 0

    def close(self) -> None:
        raise NotImplementedError

    def poll_events(self, timeout_ms: int, decoder: Any, limit: int = BATCH_EVENTS) -> list[Any]:
        """Wait up to ``timeout_ms`` for records; return up to ``limit`` of them, decoded."""
        self.wait(timeout_ms)
        return self.read_events(decoder, limit)

    def read_events(self, decoder: Any, limit: int = BATCH_EVENTS) -> list[Any]:
        """Up to ``limit`` records already there, decoded (no waiting)."""
        out: list[Any] = []
        decode, decode_run, size = decoder.decode, decoder.decode_run, decoder.size

        def run(buf: Buffer, offset: int, length: int, stride: int, count: int) -> None:
            if length >= size:
                out.extend(decode_run(buf, offset, stride, count))
            else:  # shorter than the struct: fails exactly as decoding the bytes would
                out.extend(decode(bytes(buf[i + offset : i + offset + length]))
                           for i in range(0, count * stride, stride))

        self.read(limit, run)
        if self.per_cpu and len(out) > 1 and "ts_ns" in decoder.names:
            out.sort(key=_TS)
        return out

    def consume(self) -> list[bytes]:
        """Every record already there, as bytes (records of varying length: DNS messages)."""
        out: list[bytes] = []

        def run(buf: Buffer, offset: int, length: int, stride: int, count: int) -> None:
            out.extend(bytes(buf[i + offset : i + offset + length]) for i in range(0, count * stride, stride))

        self.read(sys.maxsize, run)
        return out


def open_transport(fd: int, kind: str, total: int) -> Transport:
    """The reader of the ``events`` map ``fd``, of the kind the object was loaded with;
    ``total`` is what a perf buffer may take over all CPUs (a ring's size is its own)."""
    mapped = mapped_reading()
    if kind == PERF:
        return PerfBuffer(fd, total) if mapped else LibbpfPerf(fd, total)
    size = map_size(fd)
    return MappedRing(fd, size) if size and mapped else LibbpfRing(fd)


class MappedRing(Transport):
    """One ring buffer map, read from its pages (see the module's docstring)."""

    def __init__(self, fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self.size, self._size, self._mask = size, size, size - 1
        self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._pages = mmap.mmap(fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._producer = memoryview(self._pages)[:8]
        self._data = memoryview(self._pages)[page:]
        self._consumer_pos = ctypes.c_uint64.from_buffer(self._consumer)
        self._cons = self._consumer_pos.value
        self._fd = fd
        self._epoll: _Epoll | None = None

    def wait(self, timeout_ms: int) -> None:
        if self._cons == _U64.unpack_from(self._producer)[0]:
            if self._epoll is None:
                self._epoll = _Epoll([self._fd])
            self._epoll.wait(timeout_ms)

    def read(self, limit: int, handle: RunHandler) -> int:
        """Stops at the first record still being written."""
        data, mask, size = self._data, self._mask, self._size
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
                handle(bytes(data[off:]) + bytes(data[: off + stride - size]), HEADER, length, stride, 1)
            else:
                n = self._run_length(off, length, stride, min(prod - cons, size - off) // stride, limit - done)
                handle(data[off : off + n * stride], HEADER, length, stride, n)
            cons += n * stride
            done += n
            self._release(cons)
        return done

    def _run_length(self, off: int, length: int, stride: int, fits: int, wanted: int) -> int:
        """How many records from ``off`` on are submitted and ``length`` long (at least 1)."""
        return _same_from(self._data[off : off + min(fits, wanted) * stride].cast("I")[:: stride // 4], length)

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


def _same_from(words: memoryview, first: int) -> int:
    """How many of ``words`` from the start equal ``first`` (at least 1)."""
    n = len(words)
    if n <= 1:
        return 1
    values = words.tolist()
    if values.count(first) == n:
        return n
    for i, value in enumerate(values):
        if value != first:
            return max(1, i)
    return n  # pragma: no cover - count() said otherwise


class PerfRing:
    """One CPU's perf buffer, read from its pages (see the module's docstring)."""

    def __init__(self, fd: int, data_size: int) -> None:
        page = mmap.PAGESIZE
        self.fd, self.size, self._mask = fd, data_size, data_size - 1
        self._mem = mmap.mmap(fd, page + data_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._head = memoryview(self._mem)[PERF_HEAD : PERF_HEAD + 8]
        self._data = memoryview(self._mem)[page:]
        self._tail_pos = ctypes.c_uint64.from_buffer(self._mem, PERF_TAIL)
        self._tail = self._tail_pos.value
        self.lost = 0

    def pending(self) -> bool:
        return self._tail != _U64.unpack_from(self._head)[0]

    def read(self, limit: int, handle: RunHandler) -> int:
        data, mask, size = self._data, self._mask, self.size
        tail, done = self._tail, 0
        head = _U64.unpack_from(self._head)[0]
        while done < limit and tail < head:
            off = tail & mask
            kind, info = _U32.unpack_from(data, off)[0], _U32.unpack_from(data, off + 4)[0]
            stride = info >> 16  # header.size; headers never wrap: records are 8-byte multiples
            if stride < 8:  # cannot happen; never spin on it
                tail = head
                break
            if kind == PERF_RECORD_SAMPLE:
                if off + stride > size:  # wraps around the end of the data pages
                    record = bytes(data[off:]) + bytes(data[: off + stride - size])
                    handle(record, PERF_DATA, _U32.unpack_from(record, 8)[0], stride, 1)
                    n = 1
                else:
                    fits = min(head - tail, size - off) // stride
                    words = data[off : off + min(fits, limit - done) * stride].cast("I")
                    n = min(_same_from(words[:: stride // 4], kind), _same_from(words[1 :: stride // 4], info))
                    handle(data[off : off + n * stride], PERF_DATA, _U32.unpack_from(data, off + 8)[0], stride, n)
                done += n
                tail += n * stride
            else:
                if kind == PERF_RECORD_LOST:
                    if off + stride > size:
                        record = bytes(data[off:]) + bytes(data[: off + stride - size])
                        self.lost += _U64.unpack_from(record, 16)[0]
                    else:
                        self.lost += _U64.unpack_from(data, off + 16)[0]
                tail += stride
            self._release(tail)
        return done

    def _release(self, tail: int) -> None:
        self._tail = self._tail_pos.value = tail

    def close(self) -> None:
        for view in (self._head, self._data):
            view.release()
        del self._tail_pos
        self._mem.close()
        os.close(self.fd)


class _PerfEventAttr(ctypes.Structure):
    """The first 64 bytes of struct perf_event_attr (PERF_ATTR_SIZE_VER0, every kernel)."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64)]


PERF_WATERMARK = 1 << 14  # perf_event_attr.watermark: wake at wakeup_watermark bytes, not per sample


def perf_event_open(cpu: int, watermark: int = 0) -> int:
    """A BPF-output perf event on ``cpu``: where bpf_perf_event_output() writes for that
    CPU. With ``watermark`` the reader is woken once that many bytes wait, else at every
    sample."""
    nr = _PERF_EVENT_OPEN.get(platform.machine().lower())
    if nr is None:
        raise LoadError(f"perf buffer: perf_event_open's number on {platform.machine()} is unknown")
    attr = _PerfEventAttr(type=PERF_TYPE_SOFTWARE, size=ctypes.sizeof(_PerfEventAttr),
                          config=PERF_COUNT_SW_BPF_OUTPUT, sample_period=1, sample_type=PERF_SAMPLE_RAW,
                          flags=PERF_WATERMARK if watermark else 0, wakeup_events=watermark or 1)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.byref(attr), ctypes.c_int(-1), ctypes.c_int(cpu), ctypes.c_int(-1),
                      ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise LoadError(f"perf buffer: perf_event_open on CPU {cpu} failed: {os.strerror(err)}")
    return int(fd)


class PerfBuffer(Transport):
    """A perf event array map, one perf buffer per online CPU, read from their pages.
    ``size`` is all CPUs' buffers together."""

    per_cpu = True

    def __init__(self, map_fd: int, total: int, cpus: list[int] | None = None) -> None:
        from netsnoop import kernel
        from netsnoop.libbpf import errno_message, lib

        cpus = kernel.online_cpus() if cpus is None else cpus
        per_cpu = perf_bytes_per_cpu(total, len(cpus))
        self.rings: list[PerfRing] = []
        self._epoll: _Epoll | None = None
        try:
            for cpu in cpus:
                # woken per quarter buffer, not per sample (a wake-up per event halves
                # a storm's rate); what arrives slower is read at the caller's poll timeout
                fd = perf_event_open(cpu, per_cpu // 4)
                try:
                    ring = PerfRing(fd, per_cpu)
                except BaseException:
                    os.close(fd)
                    raise
                self.rings.append(ring)
                fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
                key, value = ctypes.c_uint32(cpu), ctypes.c_uint32(fd)
                err = lib().bpf_map_update_elem(map_fd, ctypes.byref(key), ctypes.byref(value), 0)
                if err:
                    raise LoadError(f"perf buffer: cannot attach CPU {cpu}'s buffer: {errno_message(err)}")
        except BaseException:
            self.close()
            raise
        self.size = per_cpu * len(self.rings)

    def wait(self, timeout_ms: int) -> None:
        if not any(r.pending() for r in self.rings):
            if self._epoll is None:
                self._epoll = _Epoll([r.fd for r in self.rings])
            self._epoll.wait(timeout_ms)

    def read(self, limit: int, handle: RunHandler) -> int:
        """Each CPU's buffer in turn, each first up to its share of ``limit`` (so that a
        backlog on one CPU does not hold back the others' events)."""
        done = 0
        share = -(-limit // max(1, len(self.rings)))
        for ring in self.rings:
            done += ring.read(min(share, limit - done), handle)
        for ring in self.rings:
            if done >= limit:
                break
            done += ring.read(limit - done, handle)
        return done

    def lost(self) -> int:
        return sum(r.lost for r in self.rings)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        for ring in self.rings:
            ring.close()
        self.rings = []


class _Libbpf(Transport):
    """A channel read by libbpf (CPUs that are not TSO): a C callback copies each record."""

    def __init__(self) -> None:
        self.handle = 0
        self._batch: list[bytes] = []
        self._lost = 0

    def read(self, limit: int, handle: RunHandler) -> int:
        self._consume(limit)
        batch = self._batch[:]
        del self._batch[:]
        for record in batch:
            handle(record, 0, len(record), len(record), 1)
        return len(batch)

    def _consume(self, limit: int) -> None:
        raise NotImplementedError

    def lost(self) -> int:
        return self._lost


class LibbpfRing(_Libbpf):
    def __init__(self, fd: int) -> None:
        from netsnoop.libbpf import SAMPLE_FN, errno_message, last_errno, lib

        super().__init__()
        self.size = map_size(fd)
        self._limit = [0]  # records per read, 0 = all (a cell the callback sees)
        limit, string_at = self._limit, ctypes.string_at

        def sample(_ctx: int, data: int, size: int) -> int:
            self._batch.append(string_at(data, size))
            return -1 if limit[0] and len(self._batch) >= limit[0] else 0  # < 0: libbpf stops here

        self._cb = SAMPLE_FN(sample)  # kept alive as long as the ring buffer
        self.handle = lib().ring_buffer__new(fd, self._cb, None, None)
        if not self.handle:
            raise LoadError(f"creating the ring buffer failed: {errno_message(last_errno())}")

    def wait(self, timeout_ms: int) -> None:
        from netsnoop.libbpf import lib

        self._limit[0] = 1  # wake only; the records are taken by read()
        lib().ring_buffer__poll(self.handle, timeout_ms)
        self._limit[0] = 0

    def _consume(self, limit: int) -> None:
        from netsnoop.libbpf import lib

        self._limit[0] = limit if limit < sys.maxsize else 0
        lib().ring_buffer__consume(self.handle)
        self._limit[0] = 0

    def close(self) -> None:
        from netsnoop.libbpf import lib

        if self.handle:
            lib().ring_buffer__free(self.handle)
            self.handle = 0


class LibbpfPerf(_Libbpf):
    per_cpu = True

    def __init__(self, fd: int, total: int) -> None:
        from netsnoop import kernel
        from netsnoop.libbpf import LOST_FN, PERF_SAMPLE_FN, errno_message, last_errno, lib

        super().__init__()
        per_cpu = perf_bytes_per_cpu(total, len(kernel.online_cpus()))
        string_at = ctypes.string_at

        def sample(_ctx: int, _cpu: int, data: int, size: int) -> None:
            self._batch.append(string_at(data, size))

        def lost(_ctx: int, _cpu: int, count: int) -> None:
            self._lost += count

        self._cbs = (PERF_SAMPLE_FN(sample), LOST_FN(lost))
        self.handle = lib().perf_buffer__new(fd, per_cpu // mmap.PAGESIZE, *self._cbs, None, None)
        if not self.handle:
            raise LoadError(f"creating the perf buffer failed: {errno_message(last_errno())}")
        self.size = per_cpu * len(kernel.online_cpus())

    def wait(self, timeout_ms: int) -> None:
        from netsnoop.libbpf import lib

        if not self._batch:
            lib().perf_buffer__poll(self.handle, timeout_ms)

    def _consume(self, limit: int) -> None:
        from netsnoop.libbpf import lib

        if not self._batch:
            lib().perf_buffer__consume(self.handle)

    def close(self) -> None:
        from netsnoop.libbpf import lib

        if self.handle:
            lib().perf_buffer__free(self.handle)
            self.handle = 0

