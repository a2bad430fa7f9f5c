"""netsnoop check: what this kernel offers, each item actually tried."""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass

import click

from netsnoop import kernel
from netsnoop.commands import COMMANDS
from netsnoop.errors import NetsnoopError

BPF_MAP_TYPE_RINGBUF = 27
PROBE_KINDS = ("tp_btf", "tracepoint", "fentry", "kprobe")


@dataclass
class Finding:
    item: str
    ok: bool
    detail: str


def _try(fn) -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    try:
        return True, fn() or "yes"
    except NetsnoopError as err:
        return False, str(err)
    except OSError as err:
        return False, str(err)


def _ringbuf() -> str:
    from netsnoop.libbpf import errno_message, last_errno, lib

    fd = lib().bpf_map_create(BPF_MAP_TYPE_RINGBUF, b"ns_probe", 0, 0, 4096, None)
    if fd < 0:
        raise NetsnoopError(f"cannot create a ring buffer map: {errno_message(last_errno())}")
    os.close(fd)
    return "yes"


def _hook(kind: str) -> str:
    from netsnoop.loader import BPFObject

    with BPFObject("probe", variants={"probe": kind}) as obj:
        obj.attach()
    return "load + attach OK"


def _privileges() -> str:
    kernel.require_privileges()
    return "root" if os.geteuid() == 0 else "CAP_BPF + CAP_PERFMON"


def _tracefs() -> str:
    before = kernel.tracefs_dir()
    where = kernel.ensure_tracefs()
    return f"mounted at {where}" if before else f"was not mounted; mounted at {where}"


def _tracepoints(modules: list[object]) -> list[Finding]:
    """Every tracepoint a subcommand hooks, looked up in kernel BTF and tracefs."""
    from netsnoop.btf import TYPEDEF, BTF
    from netsnoop.loader import BPFObject

    targets: set[str] = set()
    for module in modules:
        tracer = getattr(module, "TRACER", None)
        if tracer is None:
            continue
        for prog in BPFObject(tracer.obj).inspect():
            if prog.kind == "tracepoint":
                targets.add(prog.target)
    vmlinux = BTF.vmlinux()
    try:
        out = []
        for target in sorted(targets):
            category, _, event = target.partition(":")
            raw = bool(vmlinux.find(f"btf_trace_{event}", TYPEDEF))
            classic = kernel.tracefs_event_exists(category, event)
            how = ", ".join(w for w, ok in (("tp_btf", raw), ("tracefs", classic)) if ok) or "absent"
            out.append(Finding(f"tracepoint {target}", raw or classic, how))
        return out
    finally:
        vmlinux.close()


def findings() -> list[Finding]:
    from netsnoop.libbpf import lib

    found = [Finding("kernel", True, kernel.kernel_release())]
    ok, detail = _try(lambda: f"libbpf {lib().version}")
    found.append(Finding("libbpf", ok, detail))
    if not ok:
        return found
    ok, detail = _try(lambda: kernel.require_btf())
    found.append(Finding("kernel BTF", ok, detail))
    ok_priv, detail = _try(_privileges)
    found.append(Finding("privileges", ok_priv, detail))
    found.append(Finding("tracefs", *_try(_tracefs)))
    if not (ok and ok_priv):
        return found
    found.append(Finding("ring buffer", *_try(_ringbuf)))
    for kind in PROBE_KINDS:
        found.append(Finding(kind, *_try(lambda kind=kind: _hook(kind))))
    modules = [importlib.import_module(mod) for name, (mod, _h) in COMMANDS.items() if name != "check"]
    found.extend(_tracepoints(modules))
    for name, module in zip([n for n in COMMANDS if n != "check"], modules):
        tracer = getattr(module, "TRACER", None)
        if tracer is None:
            continue

        def probe(tracer=tracer) -> str:  # type: ignore[no-untyped-def]
            chosen = tracer.probe()
            return "via " + ", ".join(f"{g}={k or 'unavailable'}" for g, k in chosen.items())

        ok, detail = _try(probe)
        found.append(Finding(f"netsnoop {name}", ok, detail))
    return found


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per finding")
def command(as_json: bool) -> None:
    """Show what this kernel offers and which subcommands can run here.

    Every hook kind is tried for real (loaded and attached, then detached), and every
    subcommand's programs are loaded exactly as the subcommand would load them.
    Exits 0 when at least one subcommand can run.
    """
    results = findings()
    if as_json:
        for f in results:
            click.echo(json.dumps({"item": f.item, "ok": f.ok, "detail": f.detail}))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="netsnoop check", title_justify="left")
        table.add_column("item")
        table.add_column("ok")
        table.add_column("detail", overflow="fold")
        for f in results:
            table.add_row(f.item, "[green]yes[/]" if f.ok else "[red]no[/]", f.detail)
        Console().print(table)
    runnable = [f for f in results if f.item.startswith("netsnoop ") and f.ok]
    if not runnable:
        raise SystemExit(1)
