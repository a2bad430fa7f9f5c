"""Kernel addresses to ``function+0xoffset``, from /proc/kallsyms.

Read once, lazily: only when the first stack has to be printed, since parsing the
table (over 100,000 lines) costs more than everything else a tool does at start.
Lookups are a bisection over the sorted addresses.
"""

from __future__ import annotations

import bisect
from typing import Sequence

KALLSYMS = "/proc/kallsyms"
TEXT_TYPES = frozenset("tTwW")
# Frames a BPF program sees above the hooked code: itself and the tracepoint glue.
TRACING_FRAMES = ("bpf_prog_", "bpf_trace_run", "__bpf_trace_", "__traceiter_", "trace_call_bpf", "perf_trace_")


class KernelSymbols:
    """The kernel's text symbols (modules included, as ``name [module]``)."""

    def __init__(self, path: str = KALLSYMS) -> None:
        self.path = path
        self._addrs: list[int] | None = None
        self._names: list[str] = []

    def _load(self) -> list[int]:
        pairs = []
        try:
            with open(self.path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) < 3 or parts[1] not in TEXT_TYPES:
                        continue
                    addr = int(parts[0], 16)
                    if addr:  # all zero when kptr_restrict hides addresses
                        name = parts[2] if len(parts) == 3 else f"{parts[2]} {parts[3]}"
                        pairs.append((addr, name))
        except OSError:
            pass
        pairs.sort()
        self._addrs = [a for a, _ in pairs]
        self._names = [n for _, n in pairs]
        return self._addrs

    def lookup(self, addr: int) -> tuple[str, int] | None:
        """(symbol, offset into it), or None below the first symbol / without symbols."""
        addrs = self._addrs if self._addrs is not None else self._load()
        i = bisect.bisect_right(addrs, addr) - 1
        if i < 0:
            return None
        return self._names[i], addr - addrs[i]

    def format(self, addr: int) -> str:
        """``tcp_v4_rcv+0x5a3`` (bcc's ksym with show_offset), or the hex address."""
        found = self.lookup(addr)
        if found is None:
            return f"0x{addr:x}"
        name, offset = found
        if " " in name:  # "func [module]" -> "func+0x10 [module]"
            func, module = name.split(" ", 1)
            return f"{func}+0x{offset:x} {module}"
        return f"{name}+0x{offset:x}"


    def stack(self, addrs: Sequence[int]) -> list[str]:
        """A stack captured by a BPF program, symbolised, starting at the traced
        code: the program's own frame and the tracing glue above it are dropped."""
        frames = [self.format(a) for a in addrs]
        skip = 0
        while skip < len(frames) and frames[skip].startswith(TRACING_FRAMES):
            skip += 1
        return frames[skip:]


_default: KernelSymbols | None = None


def kernel_symbols() -> KernelSymbols:
    """The process-wide table (loaded on its first lookup)."""
    global _default
    if _default is None:
        _default = KernelSymbols()
    return _default
