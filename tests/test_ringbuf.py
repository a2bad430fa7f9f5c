"""The event readers and batch decoding: the hot path every streaming tool shares.

Each reader is checked against a buffer laid out by hand in a memfd, the way the kernel
lays it out (a ring: consumer page, producer page, data; a perf buffer: the
perf_event_mmap_page, data), so wrap-around, records still being written, discarded
records and lost-sample records are all exercised without needing the kernel to
produce them; then against the kernel itself, side by side with libbpf's reader.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from typing import Any

import pytest

from helpers import ROOT, PayloadServer, Trace, fetch
from netsnoop.transport import BUSY, DISCARD, PERF_RECORD_LOST, PERF_RECORD_SAMPLE, MappedRing, PerfRing

PAGE = mmap.PAGESIZE


class HandmadeRing:
    """A ring buffer's memory, written the way the kernel writes it."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.fd = os.memfd_create("ring")
        os.ftruncate(self.fd, 2 * PAGE + size)
        self.mem = mmap.mmap(self.fd, 2 * PAGE + size)
        self.prod = 0

    def put(self, data: bytes, flags: int = 0) -> int:
        """Append one record; returns its position."""
        pos = self.prod
        record = struct.pack("=II", len(data) | flags, 0) + data
        record += bytes(-len(record) % 8)
        for i, byte in enumerate(record):
            self.mem[2 * PAGE + (pos + i) % self.size] = byte
        self.prod += len(record)
        struct.pack_into("=Q", self.mem, PAGE, self.prod)
        return pos

    def set_flags(self, pos: int, length: int, flags: int) -> None:
        struct.pack_into("=I", self.mem, 2 * PAGE + pos % self.size, length | flags)

    @property
    def consumer(self) -> int:
        return struct.unpack_from("=Q", self.mem, 0)[0]

    def reader(self) -> MappedRing:
        return MappedRing(self.fd, self.size)

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


def read_all(ring: MappedRing | PerfRing, limit: int = 1 << 30) -> tuple[list[bytes], list[int]]:
    """(each record's data, the length of each run handed over)."""
    records: list[bytes] = []
    runs: list[int] = []

    def handle(buf: Any, offset: int, length: int, stride: int, count: int) -> None:
        runs.append(count)
        records.extend(bytes(buf[i * stride + offset : i * stride + offset + length]) for i in range(count))

    ring.read(limit, handle)
    return records, runs


@pytest.fixture
def ring() -> Any:
    r = HandmadeRing()
    yield r
    r.close()


def test_equal_records_come_as_one_run_and_are_given_back(ring: HandmadeRing) -> None:
    data = [bytes([i]) * 40 for i in range(10)]
    for d in data:
        ring.put(d)
    reader = ring.reader()
    records, runs = read_all(reader)
    assert records == data and runs == [10]
    assert ring.consumer == ring.prod == 10 * 48
    assert read_all(reader) == ([], [])
    reader.close()


def test_limit_leaves_the_rest_for_the_next_read(ring: HandmadeRing) -> None:
    for i in range(7):
        ring.put(bytes([i]) * 16)
    reader = ring.reader()
    first, _ = read_all(reader, limit=3)
    rest, _ = read_all(reader)
    assert [r[0] for r in first] == [0, 1, 2] and [r[0] for r in rest] == [3, 4, 5, 6]
    reader.close()


def test_records_wrapping_around_the_end_are_stitched_together(ring: HandmadeRing) -> None:
    reader = ring.reader()
    seen: list[bytes] = []
    written: list[bytes] = []
    for i in range(300):  # 300 x 56 bytes: the 4 KiB ring wraps four times
        d = bytes([i % 256]) * 44 + b"end."
        ring.put(d)
        written.append(d)
        if i % 7 == 0:
            seen += read_all(reader)[0]
    seen += read_all(reader)[0]
    assert seen == written
    reader.close()


def test_a_record_still_being_written_stops_the_reader(ring: HandmadeRing) -> None:
    ring.put(b"a" * 24)
    busy = ring.put(b"b" * 24, flags=BUSY)
    ring.put(b"c" * 24)
    reader = ring.reader()
    assert read_all(reader)[0] == [b"a" * 24]
    assert ring.consumer == busy  # not past the record in progress
    ring.set_flags(busy, 24, 0)  # submitted
    assert read_all(reader)[0] == [b"b" * 24, b"c" * 24]
    reader.close()


def test_discarded_records_are_skipped_and_lengths_split_runs(ring: HandmadeRing) -> None:
    ring.put(b"x" * 16)
    ring.put(b"y" * 16)
    ring.put(b"gone" * 4, flags=DISCARD)
    ring.put(b"z" * 32)
    ring.put(b"w" * 16)
    reader = ring.reader()
    records, runs = read_all(reader)
    assert records == [b"x" * 16, b"y" * 16, b"z" * 32, b"w" * 16]
    assert runs == [2, 1, 1]
    assert ring.consumer == ring.prod
    reader.close()


class HandmadePerf:
    """One CPU's perf buffer memory, written the way the kernel writes it."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.fd = os.memfd_create("perf")
        os.ftruncate(self.fd, PAGE + size)
        self.mem = mmap.mmap(self.fd, PAGE + size)
        self.head = 0

    def _append(self, record: bytes) -> None:
        for i, byte in enumerate(record):
            self.mem[PAGE + (self.head + i) % self.size] = byte
        self.head += len(record)
        struct.pack_into("=Q", self.mem, 1024, self.head)  # data_head

    def sample(self, data: bytes) -> None:
        """PERF_RECORD_SAMPLE with PERF_SAMPLE_RAW: header, raw size, data padded to 8."""
        raw = data + bytes(-(len(data) + 4) % 8)
        self._append(struct.pack("=IHHI", PERF_RECORD_SAMPLE, 1, 12 + len(raw), len(raw)) + raw)

    def lost(self, count: int) -> None:
        self._append(struct.pack("=IHHQQ", PERF_RECORD_LOST, 0, 24, 7, count))

    def other(self) -> None:
        """A record of a kind the reader skips (PERF_RECORD_THROTTLE, 5)."""
        self._append(struct.pack("=IHHQQQ", 5, 0, 32, 1, 2, 3))

    @property
    def tail(self) -> int:
        return struct.unpack_from("=Q", self.mem, 1032)[0]

    def reader(self) -> PerfRing:
        return PerfRing(os.dup(self.fd), self.size)

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


@pytest.fixture
def perf() -> Any:
    p = HandmadePerf()
    yield p
    p.close()


def test_perf_samples_of_one_size_come_as_one_run(perf: HandmadePerf) -> None:
    data = [bytes([i]) * 44 for i in range(9)]  # 44 + 4 bytes of raw size: no padding
    for d in data:
        perf.sample(d)
    perf.sample(b"q" * 20)  # another size: a run of its own, padded
    reader = perf.reader()
    records, runs = read_all(reader)
    assert records[:9] == data and records[9][:20] == b"q" * 20 and runs == [9, 1]
    assert perf.tail == perf.head and reader.lost == 0
    assert read_all(reader) == ([], [])
    reader.close()


def test_perf_limit_leaves_the_rest(perf: HandmadePerf) -> None:
    for i in range(6):
        perf.sample(bytes([i]) * 12)
    reader = perf.reader()
    first, _ = read_all(reader, limit=4)
    rest, _ = read_all(reader)
    assert [r[0] for r in first] == [0, 1, 2, 3] and [r[0] for r in rest] == [4, 5]
    reader.close()


def test_perf_records_wrapping_around_the_end_are_stitched_together(perf: HandmadePerf) -> None:
    reader = perf.reader()
    seen: list[bytes] = []
    written: list[bytes] = []
    lost = 0
    for i in range(300):  # 300 x 64 bytes and some LOST records: the 4 KiB buffer wraps 5 times
        d = bytes([i % 256]) * 48 + b"end."
        perf.sample(d)
        written.append(d)
        if i % 11 == 0:
            perf.lost(i)  # 24 bytes: puts later records, and some LOST ones, across the end
            lost += i
        if i % 5 == 0:
            perf.other()
        if i % 7 == 0:
            seen += read_all(reader)[0]
    seen += read_all(reader)[0]
    assert seen == written
    assert reader.lost == lost
    reader.close()


def test_perf_lost_records_are_counted_and_split_runs(perf: HandmadePerf) -> None:
    perf.sample(b"a" * 28)
    perf.sample(b"b" * 28)
    perf.lost(1000)
    perf.sample(b"c" * 28)
    perf.lost(234)
    reader = perf.reader()
    records, runs = read_all(reader)
    assert records == [b"a" * 28, b"b" * 28, b"c" * 28] and runs == [2, 1]
    assert reader.lost == 1234 and perf.tail == perf.head
    reader.close()


def test_perf_lost_record_across_the_end_is_read_whole(perf: HandmadePerf) -> None:
    """A PERF_RECORD_LOST whose count lies across the end of the data pages (its header
    never does: records are multiples of 8 bytes)."""
    reader = perf.reader()
    for i in range(170):  # 170 samples of 24 bytes: the next record starts 16 bytes before the end
        perf.sample(bytes([i]) * 12)
    assert len(read_all(reader)[0]) == 170 and perf.head % perf.size == perf.size - 16
    perf.lost(987654321)
    perf.sample(b"after-the-loss......")
    records, _ = read_all(reader)
    assert records == [b"after-the-loss......"] and reader.lost == 987654321
    assert perf.tail == perf.head
    reader.close()


def _states_decoder() -> Any:
    from netsnoop.btf import BTF, StructDecoder
    from netsnoop.libbpf import lib

    path = os.path.join(ROOT, "netsnoop", "bpf", "states.bpf.o")
    if not os.path.exists(path):
        pytest.skip("states.bpf.o not built (make bpf)")
    return StructDecoder(BTF(lib().btf__parse(path.encode(), None), owned=True), "event")


def test_decode_run_matches_decoding_each_record() -> None:
    """One iter_unpack over a run (8-byte headers, padding to the stride) gives what
    decoding the records one by one gives."""
    dec = _states_decoder()
    stride = (dec.size + 8 + 7) // 8 * 8
    raws = [bytes((i * 7 + j) % 256 for j in range(dec.size)) for i in range(5)]
    run = b"".join(struct.pack("=II", dec.size, 0) + r + bytes(stride - 8 - dec.size) for r in raws)
    assert dec.decode_run(memoryview(run), 8, stride, 5) == [dec.decode(r) for r in raws]
    assert dec.decode_run(run + b"extra", 8, stride, 5) == [dec.decode(r) for r in raws]
    with pytest.raises(struct.error):
        dec.decode_run(run, 8, dec.size, 1)  # records shorter than the struct


@pytest.mark.integration
def test_mapped_reader_and_libbpf_reader_see_the_same_events() -> None:
    """Both readers on a 16 KiB ring that wraps under real traffic: the same events, none
    lost. (Server side only and text, so that the output fits the 64 KiB stdout pipe
    that Trace reads only at the end; paced, so that a tiny ring is not a race.)"""
    with PayloadServer(size=100) as srv:
        args = ["--ringbuf", "16K", "states", "-L", str(srv.port)]
        with Trace(args) as mapped, Trace(args, env={"NETSNOOP_RINGBUF_READER": "libbpf"}) as libbpf:
            for _ in range(60):
                fetch("127.0.0.1", srv.port)
                time.sleep(0.002)

    def events(t: Trace) -> list[str]:  # each program reads its own clock: without MS
        return sorted(line.rsplit(None, 1)[0] for line in t.lines[1:])

    for t in (mapped, libbpf):
        assert "netsnoop: %d events, 0 lost events" % (len(t.lines) - 1) in t.stderr
    assert len(mapped.lines) - 1 >= 60 * 3  # ~100 bytes a record: the ring wrapped
    assert events(mapped) == events(libbpf)


GETPPID = {"x86_64": 110, "aarch64": 173}


@pytest.fixture(scope="module")
def recursion_object(tmp_path_factory: Any) -> str:
    """tests/bpf/recursion.bpf.c, built with the flags the Makefile uses."""
    import platform
    import shutil
    import subprocess

    clang = shutil.which("clang") or ""
    if not clang:
        pytest.skip("clang is needed to build the test's own BPF object")
    out = str(tmp_path_factory.mktemp("bpf") / "recursion.bpf.o")
    arch = {"x86_64": "x86", "aarch64": "arm64"}[platform.machine()]
    subprocess.run([clang, "-g", "-O2", "-Wall", "-target", "bpf", f"-D__TARGET_ARCH_{arch}",
                    "-I", os.path.join(ROOT, "netsnoop", "bpf"),
                    "-c", os.path.join(ROOT, "tests", "bpf", "recursion.bpf.c"), "-o", out], check=True)
    return out


@pytest.mark.integration
def test_ring_size_and_skipped_runs_come_from_fdinfo(recursion_object: str) -> None:
    """The reader sizes the ring from the map's own fdinfo; the kernel's count of
    skipped runs (recursion_misses) is summed over the programs. The expected count is
    made by the test: a hook that re-enters itself once for each getppid() this
    process makes (tests/bpf/recursion.bpf.c), so each call is one skipped run."""
    import platform

    from netsnoop.loader import BPFObject
    from netsnoop.runner import LoadSpec

    with LoadSpec("states").open(max_entries={"events": 1 << 16}) as obj:
        assert obj.ring_buffer().size == 1 << 16
    rodata = {"target_tgid": os.getpid(), "getppid_nr": GETPPID[platform.machine()]}
    with BPFObject("recursion", path=recursion_object, rodata=rodata) as obj:
        obj.attach()
        before = obj.missed_runs()
        for _ in range(37):
            os.getppid()
        assert obj.missed_runs() - before == 37
        assert obj.health()["skipped_hook_runs"] == obj.missed_runs()
