"""Which hook variant of each group an object loads: decisions only, no kernel.

The loader (:mod:`netsnoop.loader`) asks the kernel; this module decides what to ask
next, so every rule below is tested without root (tests/test_variants.py).

* **Attach variants.** A program named ``<group>__<kind>`` is one way to implement
  ``<group>``; only one variant per group is loaded. Kinds are tried in the order
  tp_btf, tracepoint, fentry, kprobe (``NETSNOOP_PREFER`` puts chosen kinds first,
  ``NETSNOOP_HOOKS`` allows only the kinds it lists), and a variant that the kernel
  refuses at load or attach time is rejected and the object reloaded without it. So
  a kernel without ``tp_btf`` falls back to the classic tracepoint, and one without
  the tracepoint to fentry or a kprobe.
* **Companions.** A program named ``<group>__<kind>__<role>`` belongs to the variant
  ``<group>__<kind>`` and is loaded only with it (what a design needs beside its hook,
  e.g. an iterator that only the typed variant's data structure calls for); a
  companion the kernel refuses takes its variant along.
* **On demand.** Iterators (``iter/...``) and ``raw_tp`` programs without a tracepoint
  are run by user space, never attached; one this kernel cannot run is skipped (and
  said), not an error.
* **Linked groups** must use the same kind of hook (a design that needs the typed
  socket in every one of them): if one group's best kind is rejected, the others give
  it up too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

from netsnoop.errors import BadSetting, LoadError, MissingFeature

HOOK_KINDS = ("tp_btf", "tracepoint", "fentry", "fexit", "kprobe", "kretprobe")
# kinds the kernel attaches through its own BTF (a type id in it): NETSNOOP_BTF cannot stand in
KERNEL_BTF_KINDS = ("tp_btf", "fentry", "fexit", "fmod_ret", "iter", "lsm")
DEFAULT_ORDER = ("tp_btf", "tracepoint", "fentry", "fexit", "kprobe", "kretprobe")
# kinds chosen elsewhere than among variant groups (netsnoop.dns picks its own programs)
OTHER_KINDS = ("cgroup_skb",)


def kinds_from(variable: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The variant kinds listed in an environment variable; an unknown one is a usage error."""
    env = os.environ if environ is None else environ
    kinds = [k.strip() for k in env.get(variable, "").split(",") if k.strip()]
    for k in kinds:
        if k not in HOOK_KINDS + OTHER_KINDS:
            raise BadSetting(f"{variable}: unknown hook kind {k!r} (valid: {', '.join(HOOK_KINDS + OTHER_KINDS)})")
    return [k for k in kinds if k in HOOK_KINDS]


def hook_order(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Kinds to try, best first. ``NETSNOOP_PREFER`` moves kinds to the front;
    ``NETSNOOP_HOOKS`` allows only the kinds it lists (to rule out a broken hook)."""
    preferred = kinds_from("NETSNOOP_PREFER", environ)
    order = tuple(preferred) + tuple(k for k in DEFAULT_ORDER if k not in preferred)
    allowed = kinds_from("NETSNOOP_HOOKS", environ)
    return tuple(k for k in order if k in allowed) if allowed else order


def companion_of(name: str) -> str | None:
    """``<group>__<kind>`` for a program named ``<group>__<kind>__<role>``, else None."""
    parts = name.split("__")
    return "__".join(parts[:2]) if len(parts) == 3 and parts[1] in HOOK_KINDS else None


@dataclass(frozen=True)
class Program:
    """A program of an object, known by its name and ELF section; ``handle`` is
    libbpf's ``struct bpf_program *`` for the loader (0 where only names matter)."""

    name: str
    section: str
    handle: int = field(default=0, compare=False)

    @property
    def kind(self) -> str:
        return self.section.split("/", 1)[0].replace(".s", "")

    @property
    def group(self) -> str:
        return self.name.rsplit("__", 1)[0] if "__" in self.name else self.name

    @property
    def is_variant(self) -> bool:
        return "__" in self.name and self.kind in HOOK_KINDS and self.belongs_to is None

    @property
    def belongs_to(self) -> str | None:
        """For a companion ``<group>__<kind>__<role>``: the variant it comes with."""
        return companion_of(self.name)

    @property
    def target(self) -> str:
        """What it hooks: ``category:event`` for tracepoints, else the kernel name."""
        rest = self.section.split("/", 1)[1] if "/" in self.section else ""
        return rest.replace("/", ":")

    @property
    def on_demand(self) -> bool:
        """Run by user space when it wants, never attached: an iterator, or a ``raw_tp``
        program that names no tracepoint."""
        return self.kind == "iter" or (self.kind in ("raw_tp", "raw_tracepoint") and not self.target)


@dataclass
class Choice:
    """What to load this time: one kind per group, and the programs whose autoload the
    choice decides (the others keep their section's default)."""

    chosen: dict[str, str | None]  # group -> kind (None: an optional group without a hook)
    autoload: dict[str, bool]  # program name -> load it
    skipped: list[str]  # on-demand programs this kernel cannot run


# A program libbpf's log names, e.g. "libbpf: prog 'set_state__tp_btf': failed to load: -22"
_FAILED_PROG = re.compile(r"prog '([^']+)'")


class VariantChooser:
    """The choice of variants for one object, across its reloads: what was rejected,
    and why each program is not used."""

    def __init__(
        self,
        object_name: str,
        forced: Mapping[str, str] | None = None,
        optional: frozenset[str] = frozenset(),
        linked: frozenset[str] = frozenset(),
        without: frozenset[str] = frozenset(),
    ) -> None:
        self.object_name = object_name
        self.forced = dict(forced or {})  # group -> kind: no fallback, a refusal is an error
        self.optional = optional
        self.linked = linked
        self.without = without  # optional groups not wanted this time: none of their variants loads
        self.rejected: set[str] = set()  # variant names refused by this kernel
        self.why: dict[str, str] = {}  # program name -> why it is not used
        self.chosen: dict[str, str | None] = {}
        self.skipped: list[str] = []
        self._programs: list[Program] = []

    def choose(self, programs: list[Program], obstacle: Callable[[Program], str | None],
               order: tuple[str, ...] | None = None) -> Choice:
        """One variant per group: forced, else the best kind neither rejected nor
        facing an ``obstacle`` (what the kernel lacks for it, found without trying)."""
        order = hook_order() if order is None else order
        self._programs = programs
        groups: dict[str, list[Program]] = {}
        for p in programs:
            if p.is_variant:
                groups.setdefault(p.group, []).append(p)
        while True:
            picks = {group: self._pick(group, progs, order, obstacle) for group, progs in groups.items()}
            kinds = {pick.kind for g in self.linked if (pick := picks.get(g))}
            if len(kinds) <= 1 or self.forced:
                break
            # linked groups disagree: none of them uses the best of those kinds
            best = min(kinds, key=order.index)
            for g in self.linked:
                self.reject(f"{g}__{best}", f"linked with a group that cannot use {best}")
        autoload: dict[str, bool] = {}
        self.chosen = {}
        for group, progs in groups.items():
            pick = picks[group]
            if pick is None and group not in self.optional:
                raise MissingFeature(f"{self.object_name}: no hook for {group} can be used here ({self.tried(group)})")
            autoload.update((p.name, p is pick) for p in progs)
            self.chosen[group] = pick.kind if pick else None
        self.skipped = []
        for p in programs:
            if p.belongs_to:
                group, kind = p.belongs_to.split("__")
                autoload[p.name] = self.chosen.get(group) == kind
            elif p.on_demand and (reason := obstacle(p)):  # an iterator without kernel BTF
                autoload[p.name] = False
                self.why[p.name] = reason
                self.skipped.append(p.name)
        return Choice(dict(self.chosen), autoload, list(self.skipped))

    def _pick(self, group: str, progs: list[Program], order: tuple[str, ...],
              obstacle: Callable[[Program], str | None]) -> Program | None:
        """The group's variant: the forced one, else the best kind not yet rejected
        (none for a group not wanted)."""
        if group in self.without and group in self.optional:
            return None
        if group in self.forced:
            pick = [p for p in progs if p.kind == self.forced[group]]
            if not pick:
                raise LoadError(f"{self.object_name}: no {self.forced[group]} variant for {group}")
            return pick[0]
        for p in sorted((p for p in progs if p.kind in order), key=lambda p: order.index(p.kind)):
            if p.name in self.rejected:
                continue
            why = obstacle(p)
            if why is None:
                return p
            self.why[p.name] = why
        return None

    def reject(self, variant: str, why: str) -> None:
        """The kernel refused ``variant`` (or a companion of it): the next choice goes
        without it. The first reason given is kept: it is the cause."""
        self.rejected.add(variant)
        self.why.setdefault(variant, why)

    def enabled(self) -> set[str]:
        """The variants of the current choice."""
        return {f"{g}__{k}" for g, k in self.chosen.items() if k}

    def refused_at_load(self, messages: list[str]) -> tuple[str | None, str]:
        """The chosen variant libbpf's load log names as refused, and that log line;
        (None, "") when the failure is no variant's (a real error)."""
        enabled = self.enabled()
        for line in reversed(messages):
            m = _FAILED_PROG.search(line)
            if not m or "fail" not in line:  # relocation notes name programs too
                continue
            owner = companion_of(m.group(1)) or m.group(1)  # a refused companion takes its variant along
            # the last program that failed decides: one that is no variant is a real error
            return (owner, line) if owner in enabled else (None, "")
        return None, ""

    def tried(self, group: str, order: tuple[str, ...] | None = None) -> str:
        """What was tried for ``group`` and why each failed, for messages."""
        order = hook_order() if order is None else order
        progs = [p for p in self._programs if p.is_variant and p.group == group]
        tried = sorted((p for p in progs if p.kind in order), key=lambda p: order.index(p.kind))
        if not tried:
            return (f"NETSNOOP_HOOKS={os.environ.get('NETSNOOP_HOOKS', '')} allows none of its kinds: "
                    + ", ".join(p.kind for p in progs))
        return "tried: " + "; ".join(f"{p.kind} {p.target}: {self.why.get(p.name, 'refused')}" for p in tried)
