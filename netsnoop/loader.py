"""The one place that opens, configures, loads, attaches and tears down BPF objects.

A subcommand names its object (``netsnoop/bpf/<name>.bpf.o``) and hands over filter
values; everything else is decided here:

* **Attach variants.** A program named ``<group>__<kind>`` is one way to implement
  ``<group>``; only one variant per group is loaded. Kinds are tried in the order
  tp_btf, tracepoint, fentry, kprobe (``NETSNOOP_PREFER`` puts chosen kinds first),
  and a variant that the kernel refuses at load or attach time is dropped and the
  object reloaded without it. So a kernel without ``tp_btf`` falls back to the
  classic tracepoint, and one without the tracepoint to fentry or a kprobe.
* **Companions.** A program named ``<group>__<kind>__<role>`` belongs to the variant
  ``<group>__<kind>`` and is loaded only with it (what a design needs beside its hook,
  e.g. an iterator that only the typed variant's data structure calls for). Programs
  run on demand are not attached with the rest: iterators (``iter/...``, see
  :meth:`BPFObject.iterate`) and ``raw_tp`` programs without a tracepoint (see
  :meth:`BPFObject.run_on_each_cpu`).
* **Linked groups** must use the same kind of hook (a design that needs the typed
  socket in every one of them): if one group's best kind is refused, the others give
  it up too.
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
import logging
import os
import re
import struct
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterator

from netsnoop import kernel
from netsnoop.btf import BTF, StructDecoder
from netsnoop.errors import BadSetting, LoadError, MissingFeature
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
from netsnoop.transport import BPF_MAP_TYPE_PERF_EVENT_ARRAY, DEFAULT_BYTES, PERF, Transport, choose, open_transport

log = logging.getLogger("netsnoop.loader")

HOOK_KINDS = ("tp_btf", "tracepoint", "fentry", "fexit", "kprobe", "kretprobe")
# kinds the kernel attaches through its own BTF (a type id in it): NETSNOOP_BTF cannot stand in
KERNEL_BTF_KINDS = ("tp_btf", "fentry", "fexit", "fmod_ret", "iter", "lsm")
DEFAULT_ORDER = ("tp_btf", "tracepoint", "fentry", "fexit", "kprobe", "kretprobe")
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_MAP_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}


def object_path(name: str) -> str:
    """Path of the compiled object shipped as package data."""
    path = resources.files("netsnoop") / "bpf" / f"{name}.bpf.o"
    if not path.is_file():
        raise MissingFeature(f"BPF object {name}.bpf.o is missing from the installation (was it built? try: make)")
    return str(path)


# kinds chosen elsewhere than among variant groups (netsnoop.dns picks its own programs)
OTHER_KINDS = ("cgroup_skb",)


def _kinds_from(variable: str) -> list[str]:
    """The variant kinds listed in an environment variable; an unknown one is a usage error."""
    kinds = [k.strip() for k in os.environ.get(variable, "").split(",") if k.strip()]
    for k in kinds:
        if k not in HOOK_KINDS + OTHER_KINDS:
            raise BadSetting(f"{variable}: unknown hook kind {k!r} (valid: {', '.join(HOOK_KINDS + OTHER_KINDS)})")
    return [k for k in kinds if k in HOOK_KINDS]


def hook_order() -> tuple[str, ...]:
    """Kinds to try, best first. ``NETSNOOP_PREFER`` moves kinds to the front;
    ``NETSNOOP_HOOKS`` allows only the kinds it lists (to rule out a broken hook)."""
    preferred = _kinds_from("NETSNOOP_PREFER")
    order = tuple(preferred) + tuple(k for k in DEFAULT_ORDER if k not in preferred)
    allowed = _kinds_from("NETSNOOP_HOOKS")
    return tuple(k for k in order if k in allowed) if allowed else order


def companion_of(name: str) -> str | None:
    """``<group>__<kind>`` for a program named ``<group>__<kind>__<role>``, else None."""
    parts = name.split("__")
    return "__".join(parts[:2]) if len(parts) == 3 and parts[1] in HOOK_KINDS else None


@dataclass
class Program:
    handle: int
    name: str
    section: str

    @property
    def kind(self) -> str:
        return self.section.split("/", 1)[0].replace(".s", "")

    @property
    def group(self) -> str:
        return self.name.rsplit("__", 1)[0] if "__" in self.name else self.name

    @property
    def is_variant(self) -> bool:
        return "__" in self.name and self.kind in HOOK_KINDS and self.variant is None

    @property
    def variant(self) -> str | None:
        """For a companion ``<group>__<kind>__<role>``: the variant it belongs to."""
        return companion_of(self.name)

    @property
    def target(self) -> str:
        """What it hooks: ``category:event`` for tracepoints, else the kernel name."""
        rest = self.section.split("/", 1)[1] if "/" in self.section else ""
        return rest.replace("/", ":")

    @property
    def on_demand(self) -> bool:
        """Run by user space when it wants, never attached: an iterator, or a ``raw_tp``
        program that names no tracepoint."""
        return self.kind == "iter" or (self.kind in ("raw_tp", "raw_tracepoint") and not self.target)

    def unavailable(self) -> str | None:
        """Why this program cannot work here, found without trying it (None: try it).
        Classic tracepoints need their event in tracefs; BTF-typed kinds need the
        kernel's own BTF."""
        if self.kind in KERNEL_BTF_KINDS and not kernel.has_kernel_btf():
            return f"needs the kernel's own BTF ({kernel.VMLINUX_BTF} is missing)"
        if self.kind == "tracepoint":
            try:
                events = os.path.join(kernel.ensure_tracefs(), "events")
            except MissingFeature as err:
                return str(err)
            category, _, event = self.target.partition(":")
            if not os.path.isdir(os.path.join(events, category, event)):
                return f"no event {self.target} in tracefs"
        return None


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

    def take_all(self) -> list[tuple[bytes, bytes]]:
        """Every entry of a (non per-CPU) hash map, each read and deleted in one step
        (lookup-and-delete), so a byte counted while we read lands either in this
        interval or in the next, never in neither."""
        from errno import ENOENT

        fn = lib().bpf_map_lookup_and_delete_elem
        out = []
        for key in list(self.keys()):
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


_FAILED_PROG = re.compile(r"prog '([^']+)'")


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
        self.forced = dict(variants or {})
        self.optional = optional
        self.linked = linked
        self.without = without  # optional groups not wanted this time: none of their variants loads
        self.handle = 0
        self.links: list[int] = []
        self.rings: list[Transport] = []
        self.chosen: dict[str, str | None] = {}
        self._maps: dict[str, Map] = {}
        self._btf: BTF | None = None
        self._rejected: set[str] = set()
        self.why: dict[str, str] = {}  # program name -> why it is not used
        self.skipped: list[str] = []  # on-demand programs this kernel cannot run (see _choose_variants)
        self.loaded = False

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
        L, prog = lib(), None
        out: list[Program] = []
        while True:
            prog = L.bpf_object__next_program(self.handle, prog)
            if not prog:
                return out
            out.append(Program(prog, L.bpf_program__name(prog).decode(), L.bpf_program__section_name(prog).decode()))

    def _choose_variants(self) -> None:
        """Enable one variant per group: forced, else the first not yet rejected."""
        L, order = lib(), hook_order()
        groups: dict[str, list[Program]] = {}
        for p in self.programs():
            if p.is_variant:
                groups.setdefault(p.group, []).append(p)
        while True:
            picks = {group: self._pick(group, progs, order) for group, progs in groups.items()}
            kinds = {pick.kind for g in self.linked if (pick := picks.get(g))}
            if len(kinds) <= 1 or self.forced:
                break
            # linked groups disagree: none of them uses the best of those kinds
            best = min(kinds, key=order.index)
            self._rejected.update(f"{g}__{best}" for g in self.linked)
        self.chosen = {}
        for group, progs in groups.items():
            pick = picks[group]
            if pick is None and group not in self.optional:
                raise MissingFeature(f"{self.name}: no hook for {group} can be used here ({self.tried(group)})")
            for p in progs:
                L.bpf_program__set_autoload(p.handle, p is pick)
            self.chosen[group] = pick.kind if pick else None
        self.skipped = []
        for p in self.programs():
            if p.variant:
                group, kind = p.variant.split("__")
                L.bpf_program__set_autoload(p.handle, self.chosen.get(group) == kind)
            elif p.on_demand and (reason := p.unavailable()):  # an iterator without kernel BTF
                L.bpf_program__set_autoload(p.handle, False)
                self.why[p.name] = reason
                self.skipped.append(p.name)

    def tried(self, group: str) -> str:
        """What was tried for ``group`` and why each failed, for messages."""
        order = hook_order()
        progs = [p for p in self.programs() if p.is_variant and p.group == group]
        tried = sorted((p for p in progs if p.kind in order), key=lambda p: order.index(p.kind))
        if not tried:
            return (f"NETSNOOP_HOOKS={os.environ.get('NETSNOOP_HOOKS', '')} allows none of its kinds: "
                    + ", ".join(p.kind for p in progs))
        return "tried: " + "; ".join(f"{p.kind} {p.target}: {self.why.get(p.name, 'refused')}" for p in tried)

    def _pick(self, group: str, progs: list[Program], order: tuple[str, ...]) -> Program | None:
        """The group's variant: the forced one, else the best kind not yet rejected
        (none for a group not wanted)."""
        if group in self.without and group in self.optional:
            return None
        if group in self.forced:
            pick = [p for p in progs if p.kind == self.forced[group]]
            if not pick:
                raise LoadError(f"{self.name}: no {self.forced[group]} variant for {group}")
            return pick[0]
        ranked = sorted((p for p in progs if p.kind in order), key=lambda p: order.index(p.kind))
        for p in ranked:
            if p.name in self._rejected:
                continue
            why = p.unavailable()
            if why is None:
                return p
            self.why[p.name] = why
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
        buf = (ctypes.c_char * size.value).from_address(ptr)
        variables = {v.name: v for v in self.btf.datasec(".rodata")}
        for key, value in self.rodata.items():
            var = variables.get(key)
            if var is None:
                raise LoadError(f"{self.name}: no filter variable {key!r} in the object")
            if var.code == "s":  # char arrays (count > 1 too): one bytes value, NUL-padded
                struct.pack_into(f"={var.size}s", buf, var.offset, value)
            elif var.count > 1:
                values = list(value)[: var.count]
                values += [0] * (var.count - len(values))
                struct.pack_into(f"={var.count}{var.code}", buf, var.offset, *values)
            else:
                struct.pack_into(f"={var.code}", buf, var.offset, int(value))

    def _map_handles(self) -> list[int]:
        L, m = lib(), None
        out: list[int] = []
        while True:
            m = L.bpf_object__next_map(self.handle, m)
            if not m:
                return out
            out.append(m)

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

    def load(self) -> "BPFObject":
        """Open, pick variants, set filters, and load; retry without refused variants."""
        kernel.require_btf()
        L = lib()
        while True:
            self._open()
            self._choose_variants()
            self._configure()
            with capture_log() as messages:
                err = L.bpf_object__load(self.handle)
            if err == 0:
                self.loaded = True
                return self
            failed, line = self._failed_variant(messages)
            self._close_object()
            if failed is None or self.forced:
                raise LoadError(f"loading {self.name} failed: {errno_message(err)}" + _tail(messages))
            log.info("%s: variant %s refused by the kernel, trying the next one", self.name, failed)
            self._rejected.add(failed)
            self.why[failed] = f"refused at load [libbpf: {line.strip()[:120]}]"

    def _failed_variant(self, messages: list[str]) -> tuple[str | None, str]:
        """The enabled variant libbpf's log names as refused, and that log line."""
        enabled = {f"{g}__{k}" for g, k in self.chosen.items() if k}
        for line in reversed(messages):
            m = _FAILED_PROG.search(line)
            if not m or "fail" not in line:  # relocation notes name programs too
                continue
            name = m.group(1)
            owner = companion_of(name) or name  # a refused companion takes its variant along
            # the last program that failed decides: one that is no variant is a real error
            return (owner, line) if owner in enabled else (None, "")
        return None, ""

    def attach(self) -> "BPFObject":
        """Attach every loaded program; a refused variant triggers a reload without it."""
        if not self.loaded:
            self.load()
        L = lib()
        while True:
            failed = None
            for p in self.programs():
                if not L.bpf_program__autoload(p.handle) or p.on_demand:
                    continue
                with capture_log() as messages:
                    link = L.bpf_program__attach(p.handle)
                if not link:
                    err = last_errno()
                    if p.is_variant and not self.forced:
                        failed = p.name
                        self.why[failed] = f"attach failed: {errno_message(err)}"
                        break
                    raise LoadError(f"attaching {p.name} ({p.section}) failed: {errno_message(err)}" + _tail(messages))
                self.links.append(link)
            if failed is None and not self.forced:
                failed = self._refused_on_demand()
                if failed:
                    self.why[failed] = "its raw_tp companion cannot run on a chosen CPU"
            if failed is None:
                return self
            log.info("%s: attaching %s failed, trying the next variant", self.name, failed)
            self._rejected.add(failed)
            self._close_object()
            self.load()

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
        self.loaded = False

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
        if program in self.skipped:  # said at start (runner.Tracer.open): nothing to walk with
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
            if p.variant and p.on_demand and p.kind != "iter" and L.bpf_program__autoload(p.handle):
                if self._run_on_cpu(p, 0)[0]:
                    return p.variant
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
    if not messages or log.isEnabledFor(logging.INFO):
        return ""
    last = next((m for m in reversed(messages) if m.strip() and not m.startswith(("processed", "verification"))), "")
    return f" [libbpf: {last.strip()[:160]}; --verbose shows its full log]" if last else ""
