"""What the connection tools' tests share beyond tests/helpers.py."""

from __future__ import annotations

import json
import subprocess


def assert_in_kernel(obj: object, name: str, prog_type: str) -> None:
    """The verifier accepted ``name``: the kernel holds a program of that type for
    the fd libbpf keeps (read from /proc/self/fdinfo and bpftool, not from the loader),
    with translated instructions."""
    from netsnoop.libbpf import lib

    prog = obj.loaded_program(name)  # type: ignore[attr-defined]
    assert prog is not None, f"{name} was not chosen"
    fd = lib().bpf_program__fd(prog.handle)
    assert fd >= 0, f"{name} has no program fd"
    with open(f"/proc/self/fdinfo/{fd}") as f:
        info = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", info["prog_id"]],
                                      capture_output=True, text=True, check=True).stdout)
    assert shown["type"] == prog_type and shown["name"] in (name, name[:15]), shown  # 15: the kernel's limit
    assert shown["bytes_xlated"] > 0
