"""The one place that opens, configures, loads, attaches and tears down BPF objects.

A subcommand names its object (``netsnoop/bpf/<name>.bpf.o``) and hands over filter
values; everything else is decided here:

* **Hook variants**: which of a group's programs to load (and the companions and
  on-demand programs that come with it) is decided by :mod:`netsnoop.variants`; the
  loader asks the kernel and reports each refusal back, reloading until a choice
  loads and attaches. Programs run on demand are not attached with the rest:
  iterators (see :meth:`BPFObject.iterate`) and ``raw_tp`` programs without a
  tracepoint (see :meth:`BPFObject.run_on_each_cpu`).
* **Event channel.** The ``events`` map is a BPF ring buffer, or where the kernel has
  none (or ``NETSNOOP_TRANSPORT=perf``) a perf event array, set before load with the
  programs' ``use_perf`` flag; :mod:`netsnoop.transport` reads either.
* **Filters** are ``const volatile`` globals in ``.rodata``; their offsets and types
  come from the object's BTF, so Python never restates them.
* **Cleanup**: links, ring buffers and the object are released on ``close()``, which
  the context manager always runs. Nothing is pinned, so the kernel also detaches
  everything if the process is killed.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Any, Callable, Iterator

from netsnoop import kernel
from netsnoop.btf import BTF, StructDecoder, pack_globals
from netsnoop.errors import LoadError, MissingFeature
from netsnoop.libbpf import (
    BPF_F_TEST_RUN_ON_CPU,
    IterAttachOpts,
    IterLinkInfo,
    OpenOpts,
    TestRunOpts,
    capture_log,
    errno_message,
    last_errno,
    lib,
)
from netsnoop.log import say, verbose
from netsnoop.transport import BPF_MAP_TYPE_PERF_EVENT_ARRAY, DEFAULT_BYTES, PERF, Transport, choose, open_transport
from netsnoop.variants import KERNEL_BTF_KINDS, Program, VariantChooser, hook_order

BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_MAP_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}

__all__ = ["BPFObject", "Map", "Program", "hook_order", "object_path", "obstacle"]


def object_path(name: str) -> str:
    """Path of the compiled object shipped as package data (beside this module: a plain
    path, as importlib.resources would cost start-up its imports for nothing)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", f"{name}.bpf.o")
    if not os.path.isfile(path):
        raise MissingFeature(f"BPF object {name}.bpf.o is missing from the installation (was it built? try: make)")
    return path


KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"


def obstacle(program: Program, attaching: bool = True) -> str | None:
    """What this kernel lacks for ``program``, found without trying it (None: try it).
    Classic tracepoints need their event in tracefs, which is mounted here if it is not
    yet (as perf and bpftool do); BTF-typed kinds need the kernel's own BTF. A kprobe
    loads anywhere, but attaches only through the kprobe PMU or, before it (4.17),
    kprobe_events in tracefs; a kernel without CONFIG_KPROBES has neither, and telling
    it here saves loading the whole object once more without the variant."""
    if program.kind in KERNEL_BTF_KINDS and not kernel.has_kernel_btf():
        return f"needs the kernel's own BTF ({kernel.VMLINUX_BTF} is missing)"
    if attaching and program.kind in ("kprobe", "kretprobe") and not _has_kprobes():
        return f"cannot attach: no kprobes here (neither {KPROBE_PMU} nor kprobe_events in tracefs)"
    if program.kind == "tracepoint":
        try:
            events = os.path.join(kernel.ensure_tracefs(), "events")
        except MissingFeature as err:
            return str(err)
        category, _, event = program.target.partition(":")
        if not os.path.isdir(os.path.join(events, category, event)):
            return f"no event {program.target} in tracefs"
    return None


def _has_kprobes() -> bool:
    return os.path.isdir(KPROBE_PMU) or any(os.path.exists(os.path.join(d, "kprobe_events"))
                                            for d in kernel.TRACEFS_DIRS)


def _each(next_of: Callable[[int, int | None], int | None], owner: int) -> Iterator[int]:
    """Every item of a libbpf ``<owner>__next_<item>`` walk (programs, maps)."""
    item = None
    while item := next_of(owner, item):
        yield item


class Map:
    """A loaded map: typed by the sizes libbpf reports, decoded by BTF-derived decoders."""

    def __init__(self, handle: int) -> None:
        L = lib()
        self.handle = handle
        self.name = L.bpf_map__name(handle).decode()
        self.fd = L.bpf_map__fd(handle)
        self.type = L.bpf_map__type(handle)
        self.key_size = L.bpf_map__key_size(handle)
        self.value_size = L.bpf_map__value_size(handle)
        self.ncpus = L.libbpf_num_possible_cpus() if self.type in PERCPU_MAP_TYPES else 1
        self._stride = (
            (self.value_size + 7) // 8 * 8 if self.ncpus > 1 or self.type in PERCPU_MAP_TYPES else self.value_size
        )

    def _value_buf(self) -> ctypes.Array:
        return ctypes.create_string_buffer(self._stride * self.ncpus)

    def lookup(self, key: bytes) -> list[bytes] | bytes | None:
        """The value (a list of per-CPU values for per-CPU maps), or None."""
        buf = self._value_buf()
        if lib().bpf_map_lookup_elem(self.fd, key, buf) != 0:
            return None
        raw = buf.raw
        if self.type in PERCPU_MAP_TYPES:
            return [raw[i * self._stride : i * self._stride + self.value_size] for i in range(self.ncpus)]
        return raw[: self.value_size]

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if lib().bpf_map_update_elem(self.fd, key, value, flags) != 0:
            raise LoadError(f"updating map {self.name} failed: {errno_message(last_errno())}")

    def delete(self, key: bytes) -> bool:
        return lib().bpf_map_delete_elem(self.fd, key) == 0

    def keys(self) -> Iterator[bytes]:
        L = lib()
        key = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        prev = None
        while L.bpf_map_get_next_key(self.fd, prev, nxt) == 0:
            yield nxt.raw
            ctypes.memmove(key, nxt, self.key_size)
            prev = key

    def items(self) -> list[tuple[bytes, Any]]:
        out = []
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                out.append((k, v))
        return out

    def pop_all(self) -> list[tuple[bytes, Any]]:
        """Read every entry and delete it: one interval's worth of an aggregation map."""
        out = self.items()
        for k, _ in out:
            self.delete(k)
        return out

    def take_all(self, wanted: Callable[[bytes], bool] | None = None) -> list[tuple[bytes, bytes]]:
        """Every entry of a (non per-CPU) hash map (those whose value is ``wanted``),
        each read and deleted in one step (lookup-and-delete), so a byte counted while
        we read lands either in this interval or in the next, never in neither."""
        from errno import ENOENT

        fn = lib().bpf_map_lookup_and_delete_elem
        out = []
        for key in list(self.keys()):
            if wanted is not None:
                value = self.lookup(key)
                if not isinstance(value, bytes) or not wanted(value):
                    continue
            buf = ctypes.create_string_buffer(self.value_size)
            rc = fn(self.fd, key, buf)
            if rc == 0:
                out.append((key, buf.raw))
                continue
            err = -rc if rc < 0 else last_errno()
            if err != ENOENT:  # ENOENT: gone meanwhile; anything else is a real failure
                raise LoadError(f"reading map {self.name} failed: {errno_message(err)}")
        return out

    def sum_u64(self, key: bytes) -> int:
        """Sum of a u64 value over CPUs (or the plain value)."""
        v = self.lookup(key)
        if v is None:
            return 0
        if isinstance(v, list):
            return sum(struct.unpack_from("=Q", x)[0] for x in v)
        return struct.unpack_from("=Q", v)[0]




class BPFObject:
    """One compiled object, from open to close.

    >>> with BPFObject("states", rodata={"filter_pids": [42]}) as obj:
    ...     obj.attach()
    """

    def __init__(
        self,
        name: str,
        rodata: dict[str, Any] | None = None,
        max_entries: dict[str, int] | None = None,
        variants: dict[str, str] | None = None,
        optional: frozenset[str] = frozenset(),
        linked: frozenset[str] = frozenset(),
        path: str | None = None,
        without: frozenset[str] = frozenset(),
        ring_bytes: int = DEFAULT_BYTES,
        transport: str | None = None,
    ) -> None:
        self.name = name
        self.path = path or object_path(name)  # another path: tests' own objects
        self.rodata = {k: v for k, v in (rodata or {}).items() if v is not None}
        self.max_entries = {"events": ring_bytes, **(max_entries or {})}
        self.transport = transport or choose()  # how events travel: transport.RING or PERF
        self.chooser = VariantChooser(name, variants, optional, linked, without)
        self.handle = 0
        self.links: list[int] = []
        self.rings: list[Transport] = []
        self._maps: dict[str, Map] = {}
        self._btf: BTF | None = None
        self.loaded = False
        self.attached = False
        self._attaching = True  # whether the variants are chosen for attaching (see obstacle())

    # what the choice of variants came to (see netsnoop.variants)
    @property
    def chosen(self) -> dict[str, str | None]:
        """Hook group -> kind of hook it runs on (None: an optional group without one)."""
        return self.chooser.chosen

    @property
    def why(self) -> dict[str, str]:
        """Program name -> why it is not used."""
        return self.chooser.why

    @property
    def skipped(self) -> list[str]:
        """On-demand programs this kernel cannot run."""
        return self.chooser.skipped

    @property
    def without(self) -> frozenset[str]:
        return self.chooser.without

    def tried(self, group: str) -> str:
        """What was tried for ``group`` and why each failed, for messages."""
        return self.chooser.tried(group)

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> "BPFObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        L = lib()
        opts = OpenOpts(sz=ctypes.sizeof(OpenOpts))
        custom = os.environ.get("NETSNOOP_BTF")
        if custom:
            opts.btf_custom_path = kernel.require_btf().encode()
        with capture_log() as messages:
            handle = L.bpf_object__open_file(self.path.encode(), ctypes.byref(opts))
        if not handle:
            raise LoadError(f"opening {self.path} failed: {errno_message(last_errno())}" + _tail(messages))
        self.handle = handle
        self._btf = BTF(L.bpf_object__btf(handle))

    def inspect(self) -> list[Program]:
        """Open (without loading) to list the programs; leaves the object closed."""
        self._open()
        try:
            return self.programs()
        finally:
            self._close_object()

    def programs(self) -> list[Program]:
        L = lib()
        return [Program(L.bpf_program__name(p).decode(), L.bpf_program__section_name(p).decode(), p)
                for p in _each(L.bpf_object__next_program, self.handle)]

    def _map_handles(self) -> list[int]:
        return list(_each(lib().bpf_object__next_map, self.handle))

    def load(self) -> "BPFObject":
        """Open, pick variants, set filters, and load; retry without refused variants."""
        return self._start(attach=False)

    def attach(self) -> "BPFObject":
        """Load if not yet loaded, and attach every loaded program; retry without
        variants refused at load or attach time."""
        return self._start(attach=True)

    def _start(self, attach: bool) -> "BPFObject":
        """The one retry loop: each refusal of a variant (at load, at attach, or by an
        on-demand companion that cannot run) is reported to the choice, and the object
        opened again without it. A refusal that is no variant's, or of a forced one,
        is an error."""
        kernel.require_btf()
        self._attaching = attach
        while True:
            refused = None if self.loaded else self._load_once()
            if refused is None and attach and not self.attached:
                refused = self._attach_once()
            if refused is None:
                return self
            variant, why = refused
            say("netsnoop.loader", f"{self.name}: variant {variant} refused by the kernel ({why}), trying the next one")
            self.chooser.reject(variant, why)
            self._close_object()

    def _load_once(self) -> tuple[str, str] | None:
        """Open, choose, configure, load: None when loaded, else the variant refused."""
        L = lib()
        self._open()
        programs = self.programs()
        choice = self.chooser.choose(programs, lambda p: obstacle(p, attaching=self._attaching))
        for p in programs:
            if p.name in choice.autoload:
                L.bpf_program__set_autoload(p.handle, choice.autoload[p.name])
        self._configure()
        with capture_log() as messages:
            err = L.bpf_object__load(self.handle)
        if err == 0:
            self.loaded = True
            return None
        failed, line = self.chooser.refused_at_load(messages)
        self._close_object()
        if failed is None or self.chooser.forced:
            raise LoadError(f"loading {self.name} failed: {errno_message(err)}" + _tail(messages))
        return failed, f"refused at load [libbpf: {line.strip()[:120]}]"

    def _attach_once(self) -> tuple[str, str] | None:
        """Attach what was loaded: None when all is attached, else the variant refused."""
        L = lib()
        forced = bool(self.chooser.forced)
        for p in self.programs():
            if not L.bpf_program__autoload(p.handle) or p.on_demand:
                continue
            with capture_log() as messages:
                link = L.bpf_program__attach(p.handle)
            if not link:
                err = last_errno()
                if p.is_variant and not forced:
                    return p.name, f"attach failed: {errno_message(err)}"
                raise LoadError(f"attaching {p.name} ({p.section}) failed: {errno_message(err)}" + _tail(messages))
            self.links.append(link)
        refused = None if forced else self._refused_on_demand()
        if refused is not None:
            return refused, "its raw_tp companion cannot run on a chosen CPU"
        self.attached = True
        return None

    def _set_rodata(self) -> None:
        if not self.rodata:
            return
        L = lib()
        ro = next((m for m in self._map_handles() if L.bpf_map__name(m).decode().endswith(".rodata")), None)
        if ro is None:
            raise LoadError(f"{self.name}: object has no .rodata but filters were given: {sorted(self.rodata)}")
        size = ctypes.c_size_t()
        ptr = L.bpf_map__initial_value(ro, ctypes.byref(size))
        unknown = pack_globals((ctypes.c_char * size.value).from_address(ptr), self.btf.datasec(".rodata"),
                               self.rodata)
        if unknown:
            raise LoadError(f"{self.name}: no filter variable {unknown!r} in the object")

    def _configure(self) -> None:
        L = lib()
        perf = self.transport == PERF
        for m in self._map_handles():
            name = L.bpf_map__name(m).decode()
            if name == "events" and perf:  # one slot per CPU, sized by libbpf (max_entries 0)
                L.bpf_map__set_type(m, BPF_MAP_TYPE_PERF_EVENT_ARRAY)
                L.bpf_map__set_key_size(m, 4)
                L.bpf_map__set_value_size(m, 4)
                L.bpf_map__set_max_entries(m, 0)
            elif name in self.max_entries:
                L.bpf_map__set_max_entries(m, self.max_entries[name])
        if perf and any(v.name == "use_perf" for v in self.btf.datasec(".rodata")):
            self.rodata["use_perf"] = 1
        self._set_rodata()

    def _close_object(self) -> None:
        L = lib()
        for ring in self.rings:
            ring.close()
        self.rings = []
        for link in self.links:
            L.bpf_link__destroy(link)
        self.links = []
        self._maps = {}
        if self.handle:
            L.bpf_object__close(self.handle)
        self.handle = 0
        self._btf = None
        self.loaded = self.attached = False

    def close(self) -> None:
        self._close_object()

    # -- data -------------------------------------------------------------------------
    @property
    def btf(self) -> BTF:
        assert self._btf is not None, "object not open"
        return self._btf

    def decoder(self, struct_name: str = "event") -> StructDecoder:
        return StructDecoder(self.btf, struct_name)

    def map(self, name: str) -> Map:
        if name not in self._maps:
            L = lib()
            for m in self._map_handles():
                if L.bpf_map__name(m).decode() == name:
                    self._maps[name] = Map(m)
                    break
            else:
                raise KeyError(f"{self.name} has no map {name!r}")
        return self._maps[name]

    def has_map(self, name: str) -> bool:
        try:
            self.map(name)
            return True
        except KeyError:
            return False

    def ring_buffer(self, map_name: str = "events") -> Transport:
        """The reader of the events channel (a BPF ring buffer, or per-CPU perf buffers)."""
        ring = open_transport(self.map(map_name).fd, self.transport, self.max_entries.get(map_name, DEFAULT_BYTES))
        self.rings.append(ring)
        return ring

    def loaded_program(self, name: str) -> Program | None:
        """The program of that name if it was loaded (its variant was chosen)."""
        L = lib()
        return next((p for p in self.programs() if p.name == name and L.bpf_program__autoload(p.handle)), None)

    def iterate(self, program: str, map_name: str | None = None) -> bytes:
        """Run the iterator ``program`` once, over every element of ``map_name`` (map
        iterators) or over what its kind walks (``iter/tcp``: this namespace's TCP
        sockets); returns what it printed. The link lives only for the walk."""
        L = lib()
        if program in self.skipped:  # said at start (runner.LoadSpec.open): nothing to walk with
            return b""
        prog = self.loaded_program(program)
        if prog is None:
            raise LoadError(f"{self.name}: iterator {program} is not loaded")
        opts = None
        if map_name is not None:
            info = IterLinkInfo(map_fd=self.map(map_name).fd)
            opts = ctypes.byref(IterAttachOpts(sz=ctypes.sizeof(IterAttachOpts), link_info=ctypes.pointer(info),
                                               link_info_len=ctypes.sizeof(info)))
        with capture_log() as messages:
            link = L.bpf_program__attach_iter(prog.handle, opts)
        if not link:
            raise LoadError(f"attaching iterator {program} failed: {errno_message(last_errno())}" + _tail(messages))
        try:
            fd = L.bpf_iter_create(L.bpf_link__fd(link))
            if fd < 0:
                raise LoadError(f"running iterator {program} failed: {errno_message(-fd)}")
            chunks = []
            try:
                while chunk := os.read(fd, 1 << 16):
                    chunks.append(chunk)
            finally:
                os.close(fd)
            return b"".join(chunks)
        finally:
            L.bpf_link__destroy(link)

    def _refused_on_demand(self) -> str | None:
        """A variant whose ``raw_tp`` companion the kernel will not run on a chosen CPU
        (BPF_F_TEST_RUN_ON_CPU came in 5.10): tried once now, on CPU 0, so that such a
        kernel gets the next variant instead of an error at the first use."""
        L = lib()
        for p in self.programs():
            if p.belongs_to and p.on_demand and p.kind != "iter" and L.bpf_program__autoload(p.handle):
                if self._run_on_cpu(p, 0)[0]:
                    return p.belongs_to
        return None

    def run_once(self, program: str) -> int:
        """Run the ``raw_tp`` ``program`` once, on whichever CPU we are on; returns its
        return value."""
        prog = self.loaded_program(program)
        if prog is None:
            raise LoadError(f"{self.name}: program {program} is not loaded")
        err, retval = self._run_on_cpu(prog, None)
        if err:
            raise LoadError(f"running {program} failed: {errno_message(err)}")
        return retval

    def _run_on_cpu(self, prog: Program, cpu: int | None) -> tuple[int, int]:
        """(error, return value) of one BPF_PROG_TEST_RUN of ``prog`` on ``cpu`` (None:
        the current one)."""
        opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), flags=0 if cpu is None else BPF_F_TEST_RUN_ON_CPU,
                           cpu=cpu or 0)
        err = lib().bpf_prog_test_run_opts(lib().bpf_program__fd(prog.handle), ctypes.byref(opts))
        return err, opts.retval

    def run_on_each_cpu(self, program: str) -> list[int]:
        """Run the ``raw_tp`` ``program`` once on every online CPU (BPF_PROG_TEST_RUN,
        in an interrupt there): what per-CPU state only that CPU may touch needs.
        Returns its return values, in CPU order."""
        prog = self.loaded_program(program)
        if prog is None:
            raise LoadError(f"{self.name}: program {program} is not loaded")
        out = []
        for cpu in kernel.online_cpus():
            err, retval = self._run_on_cpu(prog, cpu)
            if err:
                raise LoadError(f"running {program} on CPU {cpu} failed: {errno_message(err)}")
            out.append(retval)
        return out

    def counter(self, map_name: str) -> int:
        """A one-slot per-CPU counter map (``lost_events`` and the tools' own), summed
        over CPUs."""
        return self.map(map_name).sum_u64(struct.pack("=I", 0))

    def lost_events(self) -> int:
        """Events the BPF side could not hand over (buffer full), over all CPUs.

        Through a perf buffer, a full buffer can be known twice: kernels that return
        the error to the program have it counted in perf_scratch's ``full``, and every
        kernel tells the reader in a PERF_RECORD_LOST -- but only with the next sample
        that fits, so the reader's count can lag. Where the program saw the error, its count
        is complete; elsewhere it is 0 and the reader's is all there is: the larger."""
        lost = self.counter("lost_events") if self.has_map("lost_events") else 0
        if self.transport == PERF and self.has_map("perf_scratch"):
            full = self.map("perf_scratch").sum_u64(struct.pack("=I", 0))
            lost += max(full, sum(r.lost() for r in self.rings))
        return lost

    def health(self) -> dict[str, Any]:
        """What every summary reports about the tracing itself: events the BPF side
        could not hand over, hook runs the kernel skipped, which kind of hook each group
        ran on (None: an optional group this kernel has no hook for), and the channel
        the events came through (ring or perf)."""
        return {"lost_events": self.lost_events(), "skipped_hook_runs": self.missed_runs(),
                "transport": self.transport, "hooks": dict(self.chosen)}

    def missed_runs(self) -> int:
        """Runs of this object's programs that the kernel skipped: a hook that fires while
        the same program is already running on that CPU (an interrupt inside it) is not
        run again. What those runs would have reported is in no count, so it is worth
        saying; from /proc/self/fdinfo (kernels from 5.12 on, else 0)."""
        L = lib()
        fds = [L.bpf_program__fd(p.handle) for p in self.programs() if L.bpf_program__autoload(p.handle)]
        return sum(int(kernel.fdinfo(fd).get("recursion_misses", 0)) for fd in fds if fd >= 0)


def _tail(messages: list[str]) -> str:
    """Point at libbpf's log (shown by --verbose) without breaking the one-line error."""
    if not messages or verbose():
        return ""
    last = next((m for m in reversed(messages) if m.strip() and not m.startswith(("processed", "verification"))), "")
    return f" [libbpf: {last.strip()[:160]}; --verbose shows its full log]" if last else ""
