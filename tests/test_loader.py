"""The loader's choices where the system is short of something: hook kinds forced or
missing, tracefs that cannot be mounted, no kernel BTF (NETSNOOP_BTF), and what the
verifier's acceptance of each fallback variant really means."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from helpers import NETSNOOP, ROOT, PayloadServer, Trace, assert_verified, fetch, run
from netsnoop.commands import COMMANDS

integration = pytest.mark.integration

# A private mount namespace where tracefs is absent and cannot be mounted (no
# CAP_SYS_ADMIN), while CAP_BPF and CAP_PERFMON, which the README says suffice, remain.
NO_TRACEFS = ["unshare", "-m", "--propagation", "private", "sh", "-c",
              "for d in /sys/kernel/tracing /sys/kernel/debug/tracing /sys/kernel/debug; do "
              "umount -l $d 2>/dev/null; done;"
              " exec setpriv --bounding-set -sys_admin --inh-caps -sys_admin \"$@\"", "sh"]
# A private mount namespace where the kernel's BTF is hidden, as on a kernel without it.
NO_KERNEL_BTF = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 "mount -t tmpfs none /sys/kernel/btf && exec \"$@\"", "sh"]
MOUNT_FAILED = "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: Operation not permitted"


def variants() -> list[tuple[str, str, str]]:
    """(object, group, kind) of every fallback variant this kernel can at least load:
    kprobes (never attached here: CONFIG_KPROBES is off) and classic tracepoints."""
    from netsnoop.loader import BPFObject

    out = []
    for module, _help in COMMANDS.values():
        tracer = getattr(__import__(module, fromlist=["TRACER"]), "TRACER", None)
        if tracer is None:
            continue
        for p in BPFObject(tracer.object_name).inspect():
            if p.is_variant and p.kind in ("kprobe", "kretprobe", "tracepoint"):
                out.append((tracer.object_name, p.group, p.kind))
    return sorted(set(out))


@integration
def test_every_fallback_variant_passes_the_verifier_and_its_target_exists() -> None:
    """Acceptance seen from the kernel: a program with an id of the kind's type, and an
    attach point that exists here (assert_verified). Loading only: these paths run with
    traffic on no machine the tests run on (no kprobes here)."""
    from netsnoop.loader import BPFObject

    found = variants()
    assert {k for _o, _g, k in found} == {"kprobe", "kretprobe", "tracepoint"} and len(found) > 20
    rodata = {"rtt": {"unit_div": 1, "key_by": 2}}
    for obj_name, group, kind in found:
        with BPFObject(obj_name, rodata=rodata.get(obj_name), variants={group: kind}) as obj:
            obj.load()
            assert_verified(obj, group, kind)


@integration
def test_tracefs_that_cannot_be_mounted_is_named_as_the_cause() -> None:
    """Issue 11.16: accept said "this kernel offers no hook" when the real cause was a
    tracefs mount refused for lack of CAP_SYS_ADMIN."""
    done = subprocess.run(NO_TRACEFS + NETSNOOP + ["accept", "-d", "0.2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "offers no hook" not in done.stderr
    assert done.stderr.startswith("netsnoop: accept: no hook for accept4 can be used here (tried: "
                                  f"tracepoint syscalls:sys_exit_accept4: {MOUNT_FAILED}; kretprobe inet_csk_accept: "
                                  "cannot attach: "), done.stderr


@integration
def test_a_missing_optional_hook_is_a_warning_naming_its_cost() -> None:
    """tracer without its accept hooks (tracefs unmountable) used to drop its A rows in
    silence. Positive control: the same run with tracefs gives the A row."""
    mine = ["tracer", "--json", "-p", str(os.getpid())]  # the test's own connection (and its port, below)
    with PayloadServer(size=10) as srv:
        with Trace(mine, prefix=NO_TRACEFS) as degraded:
            fetch("127.0.0.1", srv.port)
        with Trace(mine) as full:
            fetch("127.0.0.1", srv.port)
    for group in ("accept4", "accept"):
        assert (f"netsnoop: warning: tracer: no hook for {group} here, so connections returned by {group}() have no "
                f"A row (tried: tracepoint syscalls:sys_exit_{group}: {MOUNT_FAILED}") in degraded.stderr
    assert degraded.hooks == {"set_state": "tp_btf", "accept4": None, "accept": None}
    assert sorted(r["type"] for r in degraded.records if srv.port in (r["sport"], r["dport"])) == \
        ["close", "close", "connect"]
    assert full.hooks == {"set_state": "tp_btf", "accept4": "tracepoint", "accept": "tracepoint"}
    assert "warning" not in full.stderr
    assert sorted(r["type"] for r in full.records if srv.port in (r["sport"], r["dport"])) == \
        ["accept", "close", "close", "connect"]


@integration
def test_forced_kinds_are_the_only_ones_named_in_the_error() -> None:
    done = run(["states", "-d", "0.2"], env={**os.environ, "NETSNOOP_HOOKS": "kprobe"})
    assert done.returncode == 1
    assert done.stderr.startswith("netsnoop: states: no hook for set_state can be used here "
                                  "(tried: kprobe tcp_set_state: cannot attach: no kprobes here"), done.stderr
    assert "tp_btf" not in done.stderr and "tracepoint" not in done.stderr


@pytest.fixture(scope="module")
def btf_copy(tmp_path_factory: Any) -> str:
    path = str(tmp_path_factory.mktemp("btf") / "vmlinux")
    shutil.copyfile("/sys/kernel/btf/vmlinux", path)
    return path


@integration
def test_without_kernel_btf_netsnoop_btf_gives_the_classic_tracepoints(btf_copy: str) -> None:
    """Issue 11.13: with /sys/kernel/btf/vmlinux hidden every subcommand failed ("No such
    process"). NETSNOOP_BTF serves CO-RE; tp_btf needs the kernel's own BTF, so the
    classic tracepoint takes over, and traces (own traffic seen)."""
    with PayloadServer(size=10) as srv:
        with Trace(["states", "-P", str(srv.port)], env={"NETSNOOP_BTF": btf_copy}, prefix=NO_KERNEL_BTF) as t:
            fetch("127.0.0.1", srv.port)
    assert t.hooks == {"set_state": "tracepoint"} and t.prog_types == {"tracepoint"}
    assert sum(str(srv.port) in line for line in t.lines[1:]) >= 6
    without = subprocess.run(NO_KERNEL_BTF + NETSNOOP + ["states", "-d", "0.2"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "NETSNOOP_BTF"})
    assert without.returncode == 1 and without.stderr.startswith(
        "netsnoop: kernel BTF not found at /sys/kernel/btf/vmlinux"
    )


@integration
def test_without_kernel_btf_iterators_are_skipped_with_a_warning(btf_copy: str) -> None:
    with PayloadServer(size=10) as srv:
        with Trace(["life", "-P", str(srv.port)], env={"NETSNOOP_BTF": btf_copy}, prefix=NO_KERNEL_BTF) as t:
            fetch("127.0.0.1", srv.port)
    assert set(t.hooks.values()) == {"tracepoint"}
    assert "netsnoop: warning: life: mark_alive is skipped: it needs the kernel's own BTF" in t.stderr
    ends = sorted((f[3] == str(srv.port), f[5] == str(srv.port)) for f in map(str.split, t.lines[1:]))
    assert ends == [(False, True), (True, False)]  # one row per end of the session: it traced


@integration
def test_drop_reasons_come_from_netsnoop_btf(btf_copy: str) -> None:
    """`drop --reason` reads the reason names from kernel BTF: with the kernel's hidden it
    works only by reading NETSNOOP_BTF; with a bad NETSNOOP_BTF it names the file."""
    ok = subprocess.run(NO_KERNEL_BTF + NETSNOOP + ["drop", "--reason", "NO_SOCKET", "-d", "0.2"], cwd=ROOT,
                        capture_output=True, text=True, timeout=60, env={**os.environ, "NETSNOOP_BTF": btf_copy})
    assert ok.returncode == 0 and "hooks: drop=tracepoint" in ok.stderr, ok.stderr
    bad = run(["drop", "--reason", "NO_SOCKET", "-d", "0.2"], env={**os.environ, "NETSNOOP_BTF": "/proc/version"})
    assert bad.returncode == 1 and bad.stderr.startswith("netsnoop: NETSNOOP_BTF=/proc/version: cannot be read as BTF")


@pytest.mark.parametrize("kind", ["missing", "not BTF", "FIFO", "directory"])
def test_a_bad_netsnoop_btf_is_one_line_naming_it(tmp_path: Any, kind: str) -> None:
    """These gave "Unknown error 4001" or "Input/output error" without naming the
    variable or the file; a FIFO hung."""
    path = tmp_path / "btf"
    expected = {"missing": "No such file or directory", "directory": "is a directory, not a BTF file",
                "FIFO": "is a FIFO, not a BTF file", "not BTF": "cannot be read as BTF"}[kind]
    if kind == "not BTF":
        path.write_bytes(b"\x7fELF not really" * 100)
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    for args in (["states", "-d", "0.1"], ["check", "--json"]):
        done = run(args, env={**os.environ, "NETSNOOP_BTF": str(path)}, timeout=30)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        if args[0] == "states":
            assert done.stderr.strip().startswith(f"netsnoop: NETSNOOP_BTF={path}: {expected}"), done.stderr
            assert len(done.stderr.strip().splitlines()) == 1
        else:
            verdict = json.loads(done.stdout.splitlines()[-1])
            assert verdict["item"] == "verdict" and not verdict["ok"]
            tools = sum(hasattr(__import__(m, fromlist=["TRACER"]), "TRACER") for m, _h in COMMANDS.values())
            assert verdict["detail"].startswith(
                f"0 of {tools} subcommands can run here; none: NETSNOOP_BTF={path}: {expected}"
            )


@integration
def test_variants_refused_at_load_and_at_attach_give_way_in_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Here fentry is refused at load (EPERM) and a kprobe at attach (no kprobes):
    preferring both, the one retry loop passes both, names each refusal's stage, and
    the tool traces on tp_btf (its own connection seen)."""
    from netsnoop import loader
    from netsnoop.loader import BPFObject

    env = {"NETSNOOP_PREFER": "fentry,kprobe"}
    monkeypatch.setenv("NETSNOOP_PREFER", env["NETSNOOP_PREFER"])
    monkeypatch.setattr(loader, "_has_kprobes", lambda: True)  # tried, not known beforehand: refused at attach
    with BPFObject("states") as obj:
        obj.attach()
        assert obj.chosen == {"set_state": "tp_btf"}
        assert obj.why["set_state__fentry"].startswith("refused at load [libbpf: "), obj.why
        assert obj.why["set_state__kprobe"].startswith("attach failed: No such file or directory"), obj.why
        assert obj.loaded_program("set_state__fentry") is None and obj.loaded_program("set_state__kprobe") is None
    with PayloadServer(size=10) as srv:
        with Trace(["states", "-P", str(srv.port)], env=env) as t:
            fetch("127.0.0.1", srv.port)
    assert t.hooks == {"set_state": "tp_btf"} and t.prog_types == {"tracing"}
    assert sum(str(srv.port) in line for line in t.lines[1:]) >= 6
