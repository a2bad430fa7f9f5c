"""Decoding C layouts from BTF (netsnoop.btf), on BTF made by hand: the layouts are
written here in the kernel's encoding (include/uapi/linux/btf.h), and the bytes to
decode are packed by Python's struct module, independently of the decoder."""

from __future__ import annotations

import os
import struct

import pytest

from helpers import ROOT
from netsnoop.btf import BTF, StructDecoder, Variable, pack_globals

BTF_MAGIC = 0xEB9F
INT, ARRAY, STRUCT, UNION, ENUM = 1, 3, 4, 5, 6


class HandmadeBTF:
    """Types appended one by one (ids from 1), then the raw BTF bytes."""

    def __init__(self) -> None:
        self.types: list[bytes] = []
        self.strings = b"\0"

    def _name(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def _add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"") -> int:
        self.types.append(struct.pack("=III", self._name(name), kind << 24 | vlen, size_or_type) + extra)
        return len(self.types)

    def integer(self, name: str, size: int, signed: bool = False) -> int:
        return self._add(name, INT, 0, size, struct.pack("=I", (1 if signed else 0) << 24 | size * 8))

    def array(self, elem: int, index: int, count: int) -> int:
        return self._add("", ARRAY, 0, 0, struct.pack("=III", elem, index, count))

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], kind: int = STRUCT) -> int:
        """``members``: (name, type id, byte offset)."""
        extra = b"".join(struct.pack("=III", self._name(m), t, off * 8) for m, t, off in members)
        return self._add(name, kind, len(members), size, extra)

    def enum(self, name: str, values: dict[str, int]) -> int:
        extra = b"".join(struct.pack("=Ii", self._name(n), v) for n, v in values.items())
        return self._add(name, ENUM, len(values), 4, extra)

    def btf(self) -> BTF:
        types = b"".join(self.types)
        header = struct.pack("=HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return BTF.from_bytes(header + types + self.strings)


def tuple_btf(second_tuple: bool = False) -> BTF:
    """``struct event { u64 ts_ns; u32 pid; struct sock_tuple t; u8 state; }`` as
    netsnoop.h declares sock_tuple (``second_tuple``: a second one, ``peer``)."""
    b = HandmadeBTF()
    u8, u16, u32, u64 = b.integer("__u8", 1), b.integer("__u16", 2), b.integer("__u32", 4), b.integer("__u64", 8)
    addr = b.array(u8, u32, 16)
    tup = b.struct("sock_tuple", 38, [("saddr", addr, 0), ("daddr", addr, 16), ("sport", u16, 32),
                                      ("dport", u16, 34), ("family", u16, 36)])
    members = [("ts_ns", u64, 0), ("pid", u32, 8), ("t", tup, 12), ("state", u8, 50)]
    if second_tuple:
        members.append(("peer", tup, 52))
    b.struct("event", 96 if second_tuple else 56, members)
    return b.btf()


def test_a_nested_struct_member_flattens_into_its_fields() -> None:
    with tuple_btf() as btf:
        dec = StructDecoder(btf, "event")
    assert dec.names == ["ts_ns", "pid", "saddr", "daddr", "sport", "dport", "family", "state"]
    raw = struct.pack("=QI16s16sHHHB5x", 123456789, 42, b"\x7f\0\0\1", b"\x0a\0\0\2", 80, 51000, 2, 7)
    assert dec.size == len(raw) == 56
    e = dec.decode(raw)
    assert (e.ts_ns, e.pid, e.sport, e.dport, e.family, e.state) == (123456789, 42, 80, 51000, 2, 7)
    assert e.saddr == b"\x7f\0\0\1" + bytes(12) and e.daddr == b"\x0a\0\0\2" + bytes(12)
    # a run of them (a ring buffer's: 8-byte headers, 8-byte aligned) decodes the same
    stride = 8 + 56
    run = b"".join(struct.pack("=II", 56, 0) + raw for _ in range(3))
    assert dec.decode_run(run, 8, stride, 3) == [e, e, e]


def test_a_flattened_key_encodes_what_it_decodes() -> None:
    """Map keys (count keys) are encoded by name: the nested fields by theirs."""
    with tuple_btf() as btf:
        dec = StructDecoder(btf, "event")
    raw = dec.encode(pid=9, saddr=b"\1\2\3\4", dport=443, family=2)
    assert raw == struct.pack("=QI16s16sHHHB5x", 0, 9, b"\1\2\3\4", b"", 0, 443, 2, 0)
    assert dec.decode(raw)._asdict() == {"ts_ns": 0, "pid": 9, "saddr": b"\1\2\3\4" + bytes(12), "daddr": bytes(16),
                                         "sport": 0, "dport": 443, "family": 2, "state": 0}


def test_nesting_goes_all_the_way_down_and_anonymous_members_too() -> None:
    b = HandmadeBTF()
    u16, u32 = b.integer("__u16", 2), b.integer("__u32", 4)
    ports = b.struct("ports", 4, [("sport", u16, 0), ("dport", u16, 2)])
    ends = b.struct("", 8, [("netns", u32, 0), ("", ports, 4)])  # anonymous, inside an anonymous member
    b.struct("key", 12, [("pid", u32, 0), ("", ends, 4)])
    with b.btf() as btf:
        dec = StructDecoder(btf, "key")
    assert dec.names == ["pid", "netns", "sport", "dport"]
    assert dec.decode(struct.pack("=IIHH", 1, 2, 3, 4)) == (1, 2, 3, 4)


def test_a_nested_union_keeps_its_first_member() -> None:
    b = HandmadeBTF()
    u32, u64 = b.integer("__u32", 4), b.integer("__u64", 8)
    value = b.struct("value", 8, [("count", u64, 0), ("low", u32, 0)], kind=UNION)
    b.struct("slot", 16, [("v", value, 0), ("kind", u32, 8)])
    with b.btf() as btf:
        dec = StructDecoder(btf, "slot")
    assert dec.names == ["count", "kind"]
    assert dec.decode(struct.pack("=QI4x", 1 << 40, 3)) == (1 << 40, 3)


def test_two_fields_of_one_name_after_flattening_are_an_error_naming_both() -> None:
    with tuple_btf(second_tuple=True) as btf, pytest.raises(TypeError) as err:
        StructDecoder(btf, "event")
    assert str(err.value) == ("struct event: two fields named 'saddr' once nested structs are flattened "
                              "(event.t.saddr and event.peer.saddr)")


def test_enumerators_are_read_by_name() -> None:
    b = HandmadeBTF()
    b.enum("report_mode", {"REPORT_ATTEMPT": 0, "REPORT_LPORT": 1, "REPORT_OUTCOME": 2, "REPORT_COUNT": 3})
    b.enum("signed_kind", {"BELOW": -1, "ZERO": 0})
    with b.btf() as btf:
        assert btf.enumerators("report_mode") == {"REPORT_ATTEMPT": 0, "REPORT_LPORT": 1, "REPORT_OUTCOME": 2,
                                                  "REPORT_COUNT": 3}
        assert btf.enum_values("report_mode")[3] == "REPORT_COUNT"
        assert btf.enumerators("absent") == {}


def test_filters_are_written_where_btf_puts_them() -> None:
    """As .rodata's variables come from BTF: a scalar, an integer array (short lists
    zero-filled), a char array (NUL-padded), each at its own offset only."""
    variables = [Variable("filter_pid", 0, 4, "I", 1), Variable("filter_lports", 4, 32, "H", 16),
                 Variable("filter_comm", 36, 16, "s", 16), Variable("with_where", 52, 1, "B", 1)]
    image = bytearray(b"\xee" * 56)
    filters = {"filter_pid": 42, "filter_lports": [80, 443], "filter_comm": b"curl"}
    assert pack_globals(image, variables, filters) is None
    assert bytes(image) == struct.pack("=I16H16s", 42, 80, 443, *[0] * 14, b"curl") + b"\xee" * 4
    assert pack_globals(image, variables, {"with_where": 1, "filter_cgroup": 7}) == "filter_cgroup"
    assert image[52] == 1


def test_bytes_that_are_not_btf_are_refused() -> None:
    with pytest.raises(ValueError, match="not valid BTF"):
        BTF.from_bytes(b"\x9f\xeb" + bytes(30))


def test_every_shipped_struct_decodes() -> None:
    """Each object's exported structs (events, map keys and values) build a decoder:
    a layout the decoder cannot take fails here, without root, not at run time."""
    bpf = os.path.join(ROOT, "netsnoop", "bpf")
    objects = sorted(f for f in os.listdir(bpf) if f.endswith(".bpf.o"))
    if len(objects) != len([f for f in os.listdir(bpf) if f.endswith(".bpf.c")]):
        pytest.skip("BPF objects not built (make bpf)")
    decoded = 0
    for name in objects:
        with BTF.parse(os.path.join(bpf, name)) as btf:
            for var, *_rest in btf.section_variables(".bss"):
                if var.startswith("__export_"):
                    StructDecoder(btf, var.removeprefix("__export_"))
                    decoded += 1
    assert decoded >= len(objects)
