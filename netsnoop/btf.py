"""Read types out of BTF, so that Python never restates a C layout by hand.

The event structs, read-only filter globals and map keys are declared once, in the
BPF C sources; clang records them in the object's BTF and this module turns them into
``struct`` formats (for decoding) and offsets (for setting filters). The kernel's own
BTF is read the same way, e.g. for the names of ``enum skb_drop_reason``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from collections import namedtuple
from dataclasses import dataclass
from typing import Any, Callable

from netsnoop.libbpf import lib

# BTF kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_QUALIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}
_INT_SIGNED = 1


@dataclass(frozen=True)
class Field:
    """One member of a struct, flattened to what decoding needs."""

    name: str
    offset: int  # bytes
    size: int  # bytes
    code: str  # struct-module code for one element
    count: int  # number of elements (1 for scalars); char/u8 arrays are one 's' element


@dataclass(frozen=True)
class Variable:
    """A global variable inside a data section (e.g. a ``const volatile`` filter)."""

    name: str
    offset: int
    size: int
    code: str
    count: int


class BTF:
    """A view over a libbpf ``struct btf *`` (not owned unless ``owned``)."""

    def __init__(self, handle: int, owned: bool = False) -> None:
        self._lib = lib()
        self.handle = handle
        self._owned = owned

    @classmethod
    def vmlinux(cls) -> "BTF":
        """The kernel's types: from ``NETSNOOP_BTF`` if set (checked, see
        :func:`netsnoop.kernel.require_btf`), else the kernel's own."""
        from netsnoop import kernel
        from netsnoop.errors import MissingFeature

        path = kernel.require_btf()
        handle = lib().btf__parse(path.encode(), None) if path != kernel.VMLINUX_BTF else lib().btf__load_vmlinux_btf()
        if not handle:
            raise MissingFeature(f"kernel BTF not available ({path}): need CONFIG_DEBUG_INFO_BTF=y")
        return cls(handle, owned=True)

    @classmethod
    def parse(cls, path: str) -> "BTF":
        """The types in a file: a compiled BPF object's ``.BTF`` section (no privilege
        needed: nothing is loaded) or a raw BTF file."""
        handle = lib().btf__parse(path.encode(), None)
        if not handle:
            raise OSError(ctypes.get_errno(), f"no BTF can be read from {path}")
        return cls(handle, owned=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> "BTF":
        """Types from raw BTF bytes (header, types, strings), e.g. made by hand in a test."""
        handle = lib().btf__new(data, len(data))
        if not handle:
            raise ValueError(f"not valid BTF: {os.strerror(ctypes.get_errno())}")
        return cls(handle, owned=True)

    def __enter__(self) -> "BTF":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned and self.handle:
            self._lib.btf__free(self.handle)
        self.handle = 0

    # -- raw access ---------------------------------------------------------------
    def find(self, name: str, kind: int) -> int:
        """Type id of ``name`` of ``kind``, or 0 if absent."""
        tid = self._lib.btf__find_by_name_kind(self.handle, name.encode(), kind)
        return tid if tid > 0 else 0

    def _raw(self, tid: int) -> tuple[int, int, int, int, int, int]:
        """(kind, vlen, kind_flag, name_off, size_or_type) and the address after the header."""
        ptr = self._lib.btf__type_by_id(self.handle, tid)
        name_off, info, size_or_type = struct.unpack("III", ctypes.string_at(ptr, 12))
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, name_off, size_or_type, ptr + 12

    def _name(self, off: int) -> str:
        return (self._lib.btf__name_by_offset(self.handle, off) or b"").decode()

    def name_of(self, tid: int) -> str:
        return self._name(self._raw(tid)[3])

    def resolve(self, tid: int) -> int:
        """Skip typedefs and qualifiers."""
        while True:
            kind, *_rest = self._raw(tid)
            if kind not in _QUALIFIERS:
                return tid
            tid = self._raw(tid)[4]

    def kind(self, tid: int) -> int:
        return self._raw(tid)[0]

    def size(self, tid: int) -> int:
        tid = self.resolve(tid)
        kind, vlen, _kf, _n, size, extra = self._raw(tid)
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, nelems = struct.unpack("III", ctypes.string_at(extra, 12))
            return self.size(elem) * nelems
        return size

    # -- composite types ------------------------------------------------------------
    def members(self, tid: int) -> list[tuple[str, int, int]]:
        """(name, type id, bit offset) of each member of a struct/union."""
        kind, vlen, kflag, _n, _size, extra = self._raw(self.resolve(tid))
        if kind not in (STRUCT, UNION):
            raise TypeError(f"BTF type {tid} is not a struct or union")
        out = []
        raw = ctypes.string_at(extra, 12 * vlen)
        for i in range(vlen):
            name_off, mtype, offset = struct.unpack_from("III", raw, 12 * i)
            bit_offset = offset & 0xFFFFFF if kflag else offset
            out.append((self._name(name_off), mtype, bit_offset))
        return out

    def enum_values(self, name: str) -> dict[int, str]:
        """Value -> name of the enumerators of ``enum name`` (ENUM or ENUM64)."""
        tid = self.find(name, ENUM) or self.find(name, ENUM64)
        return self.enum_by_id(tid) if tid else {}

    def enumerators(self, name: str) -> dict[str, int]:
        """Name -> value of the enumerators of ``enum name``: a constant declared in C
        once ({} if the enum is absent, e.g. never used in a type the object keeps)."""
        return {n: v for v, n in self.enum_values(name).items()}

    def enum_containing(self, enumerator: str) -> dict[int, str]:
        """Value -> name of the enum declaring ``enumerator``, for the kernel's anonymous
        enums (e.g. ``NET_RX_SOFTIRQ``'s); {} if none. Scans the types: call it once."""
        for tid in range(1, self._lib.btf__type_cnt(self.handle)):
            if self._raw(tid)[0] in (ENUM, ENUM64):
                values = self.enum_by_id(tid)
                if enumerator in values.values():
                    return values
        return {}

    def enum_by_id(self, tid: int) -> dict[int, str]:
        """Value -> name of the enumerators of the ENUM/ENUM64 type ``tid``."""
        kind, vlen, kflag, _n, _size, extra = self._raw(tid)
        out: dict[int, str] = {}
        if kind == ENUM:
            raw = ctypes.string_at(extra, 8 * vlen)
            fmt = "Ii" if kflag else "II"  # kind_flag marks a signed enum
            for i in range(vlen):
                name_off, value = struct.unpack_from(fmt, raw, 8 * i)
                out[value] = self._name(name_off)
        else:
            raw = ctypes.string_at(extra, 12 * vlen)
            for i in range(vlen):
                name_off, lo, hi = struct.unpack_from("III", raw, 12 * i)
                out[(hi << 32) | lo] = self._name(name_off)
        return out

    def scalar(self, tid: int) -> tuple[str, int]:
        """(struct code, element count) for a scalar or an array of scalars."""
        tid = self.resolve(tid)
        kind, _vlen, _kf, _n, size, extra = self._raw(tid)
        if kind == ARRAY:
            elem, _index, nelems = struct.unpack("III", ctypes.string_at(extra, 12))
            code, _ = self.scalar(elem)
            if code in ("b", "B", "c"):
                return "s", nelems
            return code, nelems
        if kind == INT:
            (encoding,) = struct.unpack("I", ctypes.string_at(extra, 4))
            signed = (encoding >> 24) & _INT_SIGNED
            code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
            return (code if signed else code.upper()), 1
        if kind in (ENUM, ENUM64):
            return {1: "B", 2: "H", 4: "I", 8: "Q"}[size], 1
        if kind == PTR:
            return "Q", 1
        if kind == FLOAT:
            return {4: "f", 8: "d"}[size], 1
        raise TypeError(f"BTF type {tid} ({self.name_of(tid)}) is not a scalar")

    def struct_fields(self, name: str) -> tuple[int, list[Field]]:
        """Size and flattened scalar fields of ``struct name``.

        A member that is itself a struct (or union) flattens into its own fields, under
        their own names, as C11 names an anonymous member's: an event that embeds
        ``struct sock_tuple`` decodes to ``saddr``, ``sport``... beside its other
        fields. Two fields of one name after flattening are an error naming both
        places (name the nested members apart)."""
        tid = self.find(name, STRUCT)
        if not tid:
            raise KeyError(f"struct {name} not found in BTF")
        fields = self._flattened(tid, 0, name)
        seen: dict[str, str] = {}
        for f, where in fields:
            if f.name in seen:
                raise TypeError(f"struct {name}: two fields named {f.name!r} once nested structs are flattened "
                                f"({seen[f.name]} and {where})")
            seen[f.name] = where
        return self.size(tid), [f for f, _where in fields]

    def _flattened(self, tid: int, base: int, path: str) -> list[tuple[Field, str]]:
        """The scalar fields of a struct/union at byte ``base``, nested ones flattened,
        each with where it was found (``event.t.saddr``) for messages."""
        out = []
        for mname, mtype, bit_offset in self.members(tid):
            offset, where = base + bit_offset // 8, f"{path}.{mname or '(anonymous)'}"
            if self.kind(self.resolve(mtype)) in (STRUCT, UNION):
                out.extend(self._flattened(mtype, offset, where))
                continue
            code, count = self.scalar(mtype)
            out.append((Field(mname, offset, self.size(mtype), code, count), where))
        return out

    def section_variables(self, name: str) -> list[tuple[str, int, int, int]]:
        """(name, type id, offset, size) of each variable in a data section such as
        ``.rodata`` or ``.bss``, whatever its type."""
        tid = self.find(name, DATASEC)
        if not tid:
            return []
        _kind, vlen, _kf, _n, _size, extra = self._raw(tid)
        raw = ctypes.string_at(extra, 12 * vlen)
        out = []
        for i in range(vlen):
            var_tid, offset, size = struct.unpack_from("III", raw, 12 * i)
            var_kind, _v, _k, name_off, var_type, _e = self._raw(var_tid)
            if var_kind == VAR:
                out.append((self._name(name_off), var_type, offset, size))
        return out

    def datasec(self, name: str) -> list[Variable]:
        """Scalar variables (and arrays of them) of a data section such as ``.rodata``."""
        out = []
        for var_name, var_type, offset, size in self.section_variables(name):
            code, count = self.scalar(var_type)
            out.append(Variable(var_name, offset, size, code, count))
        return out


def pack_globals(image: Any, variables: list[Variable], values: dict[str, Any]) -> str | None:
    """Write ``values`` into a data section's initial image (``.rodata`` before load)
    at the offsets and in the types BTF gives; returns the first name that is no
    variable there (None: all written). A char array takes one bytes value, NUL-padded;
    an array of integers a sequence, zero-filled."""
    by_name = {v.name: v for v in variables}
    for key, value in values.items():
        var = by_name.get(key)
        if var is None:
            return key
        if var.code == "s":
            struct.pack_into(f"={var.size}s", image, var.offset, value)
        elif var.count > 1:
            items = list(value)[: var.count]
            items += [0] * (var.count - len(items))
            struct.pack_into(f"={var.count}{var.code}", image, var.offset, *items)
        else:
            struct.pack_into(f"={var.code}", image, var.offset, int(value))
    return None


def _format(size: int, fields: list[Field]) -> tuple[str, list[str]]:
    """A native struct format with explicit padding, and the names it yields in order."""
    fmt, names, pos = ["="], [], 0
    for f in sorted(fields, key=lambda f: f.offset):
        if f.offset < pos:  # union member overlapping a previous one: not decoded
            continue
        if f.offset > pos:
            fmt.append(f"{f.offset - pos}x")
        fmt.append(f"{f.count}s" if f.code == "s" else (f"{f.count}{f.code}" if f.count > 1 else f.code))
        names.append(f.name)
        pos = f.offset + f.size
    if size > pos:
        fmt.append(f"{size - pos}x")
    return "".join(fmt), names


class StructDecoder:
    """Turns raw bytes laid out as a C struct into a namedtuple, in one unpack call.

    Built from BTF once per struct type; per record it costs one ``unpack_from`` and
    one tuple construction. Arrays of integers come back as tuples. A run of records
    at a fixed stride (a ring buffer's) is decoded by one ``iter_unpack`` call.
    """

    def __init__(self, btf: BTF, struct_name: str) -> None:
        self.size, self.fields = btf.struct_fields(struct_name)
        fmt, names = _format(self.size, self.fields)
        self.struct = struct.Struct(fmt)
        self.names = names
        # a namedtuple whose fields are read from BTF at run time, so unknown to the type checker
        self.type: type[Any] = namedtuple(struct_name, names)  # type: ignore[misc]
        by_name = {f.name: f for f in self.fields}
        groups = [by_name[n].count if by_name[n].code != "s" else 1 for n in names]
        # the struct's own unpack yields exactly len(names) values: no need for _make's check
        make = functools.partial(tuple.__new__, self.type)
        unpack = self.struct.unpack_from
        self._runs: dict[tuple[int, int], struct.Struct] = {}
        if all(g == 1 for g in groups):
            self._make: Callable[[tuple[Any, ...]], Any] = make
            self.decode: Callable[[bytes], Any] = lambda raw: make(unpack(raw))
        else:

            def regroup(flat: tuple[Any, ...]) -> Any:
                out, i = [], 0
                for g in groups:
                    out.append(flat[i] if g == 1 else flat[i : i + g])
                    i += g
                return make(out)

            self._make = regroup
            self.decode = lambda raw: regroup(unpack(raw))

    def decode_run(self, buf: Any, offset: int, stride: int, count: int) -> list[Any]:
        """``count`` records, one every ``stride`` bytes of ``buf`` starting ``offset`` bytes
        in (a ring buffer's run: an 8-byte header before each), decoded in one C loop."""
        run = self._runs.get((offset, stride))
        if run is None:
            pad = stride - offset - self.size
            if pad < 0:
                raise struct.error(
                    f"records of {stride - offset} bytes are too short for {self.size}-byte {self.type.__name__}"
                )
            run = self._runs[(offset, stride)] = struct.Struct(f"={offset}x{self.struct.format[1:]}{pad}x")
        if len(buf) != count * stride:
            buf = buf[: count * stride]
        return list(map(self._make, run.iter_unpack(buf)))

    def encode(self, **values: Any) -> bytes:
        """Pack a record (zero for omitted fields): used for map keys."""
        by_name = {f.name: f for f in self.fields}
        flat: list[Any] = []
        for n in self.names:
            v = values.get(n)
            f = by_name[n]
            if f.code == "s":
                flat.append(v or b"")
            elif f.count > 1:
                flat.extend(list(v or ()) + [0] * (f.count - len(v or ())))
            else:
                flat.append(v or 0)
        return self.struct.pack(*flat)
