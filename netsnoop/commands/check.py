"""netsnoop check: what this kernel offers, each item actually tried."""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Callable

import click

from netsnoop import kernel, process
from netsnoop.commands import COMMANDS
from netsnoop.errors import NetsnoopError
from netsnoop.runner import LoadSpec, check_settings

PROBE_KINDS = ("tp_btf", "tracepoint", "fentry", "kprobe")


@dataclass
class Finding:
    item: str
    ok: bool
    detail: str


def _try(fn: Callable[[], str]) -> tuple[bool, str]:
    try:
        return True, fn() or "yes"
    except NetsnoopError as err:
        return False, str(err)
    except OSError as err:
        return False, str(err)


def _ringbuf() -> str:
    from netsnoop.libbpf import errno_message, last_errno, lib
    from netsnoop.transport import BPF_MAP_TYPE_RINGBUF

    fd = lib().bpf_map_create(BPF_MAP_TYPE_RINGBUF, b"ns_probe", 0, 0, 4096, None)
    if fd < 0:
        raise NetsnoopError(f"cannot create a ring buffer map: {errno_message(last_errno())}")
    os.close(fd)
    return "one buffer all CPUs share, events in time order (kernels from 5.8 on)"


def _perfbuf() -> str:
    from netsnoop.libbpf import errno_message, last_errno, lib
    from netsnoop.transport import BPF_MAP_TYPE_PERF_EVENT_ARRAY, perf_event_open

    ncpus = len(kernel.online_cpus())
    fd = lib().bpf_map_create(BPF_MAP_TYPE_PERF_EVENT_ARRAY, b"ns_probe", 4, 4, ncpus, None)
    if fd < 0:
        raise NetsnoopError(f"cannot create a perf event array map: {errno_message(last_errno())}")
    os.close(fd)
    os.close(perf_event_open(kernel.online_cpus()[0]))
    return (f"one buffer per CPU, --ringbuf split between {ncpus} CPUs (one busy CPU can lose "
            "events while the others have room); each event is copied once more, and events of "
            "different CPUs come in no common order")


def _transport(ring_ok: bool) -> tuple[bool, str]:
    from netsnoop.transport import PERF, forced

    how = forced()
    if how:
        return True, f"{'perf buffer' if how == PERF else 'ring buffer'}, as NETSNOOP_TRANSPORT={how} asks"
    if ring_ok:
        return True, "ring buffer (NETSNOOP_TRANSPORT=perf forces the perf buffer)"
    return True, "perf buffer: this kernel has no ring buffer"


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


def _tracepoints(modules: list[ModuleType]) -> list[Finding]:
    """Every tracepoint a subcommand hooks, looked up in kernel BTF and tracefs."""
    from netsnoop.btf import BTF, TYPEDEF
    from netsnoop.loader import BPFObject

    targets: set[str] = set()
    for module in modules:
        tracer = getattr(module, "TRACER", None)
        if tracer is None:
            continue
        for prog in BPFObject(tracer.object_name).inspect():
            if prog.kind == "tracepoint":
                targets.add(prog.target)
    vmlinux = BTF.vmlinux() if kernel.has_kernel_btf() else None  # tp_btf needs the kernel's own
    try:
        out = []
        for target in sorted(targets):
            category, _, event = target.partition(":")
            raw = bool(vmlinux and vmlinux.find(f"btf_trace_{event}", TYPEDEF))
            classic = kernel.tracefs_event_exists(category, event)
            how = ", ".join(w for w, ok in (("tp_btf", raw), ("tracefs", classic)) if ok) or "absent"
            out.append(Finding(f"tracepoint {target}", raw or classic, how))
        return out
    finally:
        if vmlinux:
            vmlinux.close()


def _kernel_btf() -> str:
    if kernel.has_kernel_btf():
        custom = os.environ.get("NETSNOOP_BTF")
        return kernel.VMLINUX_BTF + (f" (CO-RE from NETSNOOP_BTF={custom})" if custom else "")
    path = kernel.require_btf()  # NETSNOOP_BTF, checked; else the error
    return (f"{kernel.VMLINUX_BTF} missing; NETSNOOP_BTF={path} serves CO-RE only: "
            "tp_btf, fentry and iterators are unavailable")


def _hooks(tracer: LoadSpec) -> str:
    """The hooks ``tracer`` gets when loaded for real: ``set_state=tp_btf, tlp=none``, or
    ``tracepoint (8 hooks)`` when all agree."""
    chosen = tracer.probe()
    kinds = set(chosen.values())
    if len(chosen) > 2 and len(kinds) == 1 and None not in kinds:
        return f"via {kinds.pop()} ({len(chosen)} hooks)"
    return "via " + ", ".join(f"{g}={k or 'none'}" for g, k in chosen.items())


def findings() -> list[Finding]:
    from netsnoop.libbpf import lib

    found = [Finding("kernel", True, kernel.kernel_release())]
    ok, detail = _try(lambda: f"libbpf {lib().version}")
    found.append(Finding("libbpf", ok, detail))
    if not ok:
        return found
    found.append(Finding("kernel BTF", *_try(_kernel_btf)))
    ok_priv, detail = _try(_privileges)
    found.append(Finding("privileges", ok_priv, detail))
    found.append(Finding("tracefs", *_try(_tracefs)))
    if not ok_priv:
        return found
    ring_ok, detail = _try(_ringbuf)
    found.append(Finding("ring buffer", ring_ok, detail))
    found.append(Finding("perf buffer", *_try(_perfbuf)))
    found.append(Finding("transport", *_transport(ring_ok)))
    for kind in PROBE_KINDS:
        _stop_if_asked()
        found.append(Finding(kind, *_try(partial(_hook, kind))))
    modules = [importlib.import_module(mod) for name, (mod, _h) in COMMANDS.items() if name != "check"]
    try:
        found.extend(_tracepoints(modules))
    except NetsnoopError as err:  # e.g. a bad NETSNOOP_BTF: the subcommands below say so too
        found.append(Finding("tracepoints", False, str(err)))
    for name, module in zip([n for n in COMMANDS if n != "check"], modules):
        tracer = getattr(module, "TRACER", None)
        if tracer is None:
            continue
        _stop_if_asked()
        ok, detail = _try(partial(_hooks, tracer))
        found.append(Finding(f"netsnoop {name}", ok, detail))
    return found


def _stop_if_asked() -> None:
    """Ctrl-C only sets a flag (netsnoop.process): between two tries, end here."""
    if process.stop_requested():
        raise SystemExit(130)


def verdict(results: list[Finding]) -> Finding:
    """One line: how many subcommands can run here, and why the others cannot."""
    tools = [f for f in results if f.item.startswith("netsnoop ")]
    cannot = [f for f in tools if not f.ok]
    line = f"{len(tools) - len(cannot)} of {len(tools)} subcommands can run here"
    if cannot:
        why: dict[str, list[str]] = {}
        for f in cannot:
            why.setdefault(_short(f.detail), []).append(f.item.split()[1])
        line += "; " + "; ".join(("none" if len(names) == len(tools) else ", ".join(names)) + f": {reason}"
                                 for reason, names in why.items())
    elif not tools:
        line = "no subcommand can run here: " + "; ".join(f"{f.item}: {_short(f.detail)}" for f in results if not f.ok)
    return Finding("verdict", bool(tools) and len(cannot) < len(tools), line)


def _short(detail: str) -> str:
    """A message without libbpf's quoted log (``--verbose`` and ``--json`` keep it)."""
    return detail.split(" [libbpf:", 1)[0]


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per finding, the verdict last")
def command(as_json: bool) -> None:
    """Show what this kernel offers and which subcommands can run here.

    Every hook kind is tried for real (loaded and attached, then detached), and every
    subcommand's programs are loaded exactly as the subcommand would load them. The
    last line is the verdict: how many subcommands can run, and why others cannot.
    Exits 0 when at least one subcommand can run.
    """
    check_settings()  # a bad NETSNOOP_* value is a usage error here too, not a "no" per row
    results = findings()
    last = verdict(results)
    try:
        if as_json:
            for f in [*results, last]:
                click.echo(json.dumps({"item": f.item, "ok": f.ok, "detail": f.detail}))
        else:
            _table(results, last)
    except BrokenPipeError:  # `check | head`: the reader has what it wanted
        process.discard_stdout()
    if not last.ok:
        raise SystemExit(1)


def _table(results: list[Finding], last: Finding) -> None:
    """At most 80 columns whatever the terminal, words kept whole; plain text (no
    markup: details quote the kernel and libbpf)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=min(80, Console().width), highlight=False)
    table = Table(title="netsnoop check", title_justify="left", box=None, pad_edge=False, show_edge=False)
    table.add_column("item", no_wrap=True, max_width=30)
    table.add_column("ok", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for f in results:
        item = f.item.replace("tracepoint ", "tp ") if f.item.startswith("tracepoint ") else f.item
        table.add_row(
            Text(item), Text("yes", style="green") if f.ok else Text("no", style="red"), Text(_short(f.detail))
        )
    console.print(table)
    console.print(Text(last.detail, style="bold"), soft_wrap=False)
