"""Facts about the running kernel and process that decide what netsnoop can do.

Everything here is cheap and side-effect free except :func:`ensure_tracefs`, which
mounts tracefs when a classic tracepoint needs it (as root, as perf and bpftool do).
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat
from functools import lru_cache

from netsnoop.errors import MissingFeature, MissingPrivilege

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def kernel_release() -> str:
    return platform.release()


def btf_path() -> str:
    """Kernel BTF to use: ``NETSNOOP_BTF`` (e.g. from BTFHub) or the kernel's own."""
    return os.environ.get("NETSNOOP_BTF") or VMLINUX_BTF


def has_kernel_btf() -> bool:
    """Whether the kernel shows its own BTF. Hooks attached through a BTF type id
    (tp_btf, fentry, iterators) need it: libbpf looks the id up there, and a kernel
    without it has no BTF to check a program against. ``NETSNOOP_BTF`` serves only
    CO-RE relocation (struct layouts), so without this the classic tracepoints and
    kprobes remain."""
    return os.path.exists(VMLINUX_BTF)


def require_btf() -> str:
    """The BTF file CO-RE relocates against; a bad ``NETSNOOP_BTF`` is one line
    naming the variable and the file (checked before anything opens it: a FIFO or
    a device would block the reader)."""
    custom = os.environ.get("NETSNOOP_BTF")
    if custom:
        return _check_btf_file(custom)
    if not os.path.exists(VMLINUX_BTF):
        raise MissingFeature(
            f"kernel BTF not found at {VMLINUX_BTF}: netsnoop needs a kernel built with "
            "CONFIG_DEBUG_INFO_BTF=y (or NETSNOOP_BTF=/path/to/vmlinux.btf)"
        )
    return VMLINUX_BTF


_FILE_TYPES = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


@lru_cache(maxsize=None)
def _check_btf_file(path: str) -> str:
    where = f"NETSNOOP_BTF={path}"
    try:
        st = os.stat(path)
    except OSError as err:
        raise MissingFeature(f"{where}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _FILE_TYPES.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise MissingFeature(f"{where}: is {kind}, not a BTF file")
    from netsnoop.libbpf import lib

    L = lib()
    handle = L.btf__parse(path.encode(), None)
    if not handle:
        code = ctypes.get_errno()
        reason = os.strerror(code) if 0 < code < 4000 else "no BTF data in it"
        raise MissingFeature(f"{where}: cannot be read as BTF (a raw BTF file or an ELF file with .BTF): {reason}")
    L.btf__free(handle)
    return path


def effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_caps() -> list[str]:
    """Capabilities still needed to load and attach tracing programs ([] when fine)."""
    caps = effective_caps()
    if caps & (1 << CAP_SYS_ADMIN):
        return []
    missing = [name for bit, name in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")) if not caps & (1 << bit)]
    return missing


def require_privileges() -> None:
    missing = missing_caps()
    if missing:
        raise MissingPrivilege(
            f"netsnoop needs root, or CAP_BPF and CAP_PERFMON (missing: {', '.join(missing)}); try: sudo netsnoop ..."
        )


def tracefs_dir() -> str | None:
    """The mounted tracefs, if any."""
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


def ensure_tracefs() -> str:
    """Mount tracefs at /sys/kernel/tracing if nothing is mounted yet."""
    found = tracefs_dir()
    if found:
        return found
    libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's own C library
    target = TRACEFS_DIRS[0]
    if libc.mount(b"nodev", target.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise MissingFeature(f"tracefs is not mounted and mounting it at {target} failed: {os.strerror(err)}")
    return target


def tracefs_event_exists(category: str, name: str) -> bool:
    """Whether tracefs lists the event, mounting tracefs first if it is not yet."""
    try:
        d = ensure_tracefs()
    except MissingFeature:
        return False
    return os.path.isdir(os.path.join(d, "events", category, name))


def fdinfo(fd: int) -> dict[str, str]:
    """The key/value lines of /proc/self/fdinfo/<fd>: how BPF maps and programs describe
    themselves (max_entries, recursion_misses...); {} if unreadable."""
    out = {}
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    out[key] = value.strip()
    except OSError:
        pass
    return out


def online_cpus() -> list[int]:
    """The CPUs that are up (/sys/devices/system/cpu/online, e.g. "0-3,6")."""
    with open("/sys/devices/system/cpu/online") as f:
        text = f.read().strip()
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus
