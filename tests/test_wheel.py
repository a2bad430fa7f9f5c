"""The wheel is all a host needs: built here, installed into a fresh venv, it traces in a
mount namespace where clang, bpftool and the system libbpf are hidden."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT, refused_connect

ALLOWED_NEEDS = {"libelf.so.1", "libz.so.1", "libc.so.6"}


def system_libbpf() -> str:
    """The system's libbpf.so.1, as the dynamic linker would find it."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    paths = [line.split("=>")[1].strip() for line in out.splitlines() if line.strip().startswith("libbpf.so.1 ")]
    assert paths, "no system libbpf.so.1 to hide"
    return os.path.realpath(paths[0])


def needed_libraries(path: str) -> set[str]:
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return {line.split("[")[1].split("]")[0] for line in out.splitlines() if "(NEEDED)" in line}


@pytest.mark.integration
def test_wheel_traces_without_compiler_bpftool_or_system_libbpf(tmp_path: os.PathLike) -> None:
    dist = os.path.join(tmp_path, "dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, ROOT], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = os.listdir(dist)
    # an honest tag: any Python 3, this architecture, not manylinux (libelf is outside its policy)
    assert wheel.endswith(f"-py3-none-linux_{platform.machine()}.whl"), wheel

    with zipfile.ZipFile(os.path.join(dist, wheel)) as z:
        names = z.namelist()
        bundled = next(n for n in names if n.endswith("netsnoop/bpf/libbpf.so.1"))
        z.extract(bundled, tmp_path)
    assert needed_libraries(os.path.join(tmp_path, bundled)) <= ALLOWED_NEEDS
    assert any(n.endswith("netsnoop/bpf/states.bpf.o") for n in names)
    assert any(n.endswith(".data/data/share/man/man8/netsnoop-life.8") for n in names)

    venv = os.path.join(tmp_path, "venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", os.path.join(dist, wheel)], check=True,
                   capture_output=True, timeout=300)

    assert os.path.exists(os.path.join(venv, "share", "man", "man8", "netsnoop.8"))

    hidden = [system_libbpf()] + [
        os.path.realpath(p) for p in map(shutil.which, ("clang", "bpftool", "llvm-strip")) if p
    ]
    port = refused_connect()
    script = "".join(f"mount --bind /dev/null {h} && " for h in hidden)
    script += (
        "! clang --version >/dev/null 2>&1 && ! bpftool version >/dev/null 2>&1 && "
        f"! {venv}/bin/python -c 'import ctypes; ctypes.CDLL(\"libbpf.so.1\")' 2>/dev/null && "
        f"exec {venv}/bin/netsnoop states --json -D {port} -d 4"
    )
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.stderr is not None
    banner = proc.stderr.readline()
    assert banner.startswith("Tracing"), banner + proc.stderr.read()
    refused_connect(port=port)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    rows = [r for r in records if r.get("type") != "summary"]
    # a refused connect: CLOSE -> SYN_SENT, then SYN_SENT -> CLOSE, both toward the port
    assert [(r["oldstate"], r["newstate"], r["rport"]) for r in rows] == [
        ("CLOSE", "SYN_SENT", port), ("SYN_SENT", "CLOSE", port)]
    assert records[-1]["events"] == 2 and records[-1]["lost_events"] == 0
