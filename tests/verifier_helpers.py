"""What "the verifier accepted a variant" means, asserted from the kernel's side.

A variant chosen by name is chosen by construction; what the tests must see is that
the kernel holds each program (a file descriptor whose fdinfo says its program type)
and that what it would hook exists on this kernel (the kprobe's function in
kallsyms, the classic tracepoint in tracefs, the BTF tracepoint's type in vmlinux
BTF). On this machine kprobes cannot attach, so no traffic ever runs through them.
"""

from __future__ import annotations

from netsnoop import kernel
from netsnoop.btf import BTF
from netsnoop.libbpf import lib
from netsnoop.loader import BPFObject

PROG_TYPE = {"kprobe": 2, "kretprobe": 2, "tracepoint": 5, "tp_btf": 26, "fentry": 26, "fexit": 26}
BTF_KIND_TYPEDEF = 8


def fdinfo(fd: int) -> dict[str, str]:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def hook_exists(kind: str, target: str) -> bool:
    if kind in ("kprobe", "kretprobe", "fentry", "fexit"):
        return target in kernel.kallsyms_functions()
    if kind == "tracepoint":
        category, _, event = target.partition(":")
        return kernel.tracefs_event_exists(category, event)
    btf = BTF.vmlinux()
    try:
        return btf.find(f"btf_trace_{target}", BTF_KIND_TYPEDEF) > 0
    finally:
        btf.close()


def assert_kernel_holds(obj: BPFObject, kinds: dict[str, str]) -> None:
    """Every group's program of the kind in ``kinds`` is loaded in the kernel, with
    that program type, and its hook point exists here."""
    L = lib()
    held = {}
    for p in obj.programs():
        if not p.is_variant or not L.bpf_program__autoload(p.handle):
            continue
        fd = L.bpf_program__fd(p.handle)
        assert fd >= 0, f"{p.name} has no file descriptor: the kernel does not hold it"
        assert int(fdinfo(fd)["prog_type"]) == PROG_TYPE[p.kind], (p.name, fdinfo(fd))
        assert hook_exists(p.kind, p.target), f"{p.name}: {p.kind} {p.target} does not exist on this kernel"
        held[p.group] = p.kind
    assert held == kinds
