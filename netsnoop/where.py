"""Who and where, for the connection tools (states, life, connect, accept, tracer,
connlat): which network namespace each row happened in, and which container, pod or
systemd unit the process behind it runs in.

The kernel records two numbers per row: the socket's namespace inode and the process's
cgroup v2 id (the inode of its cgroup directory). Both become names here, in user
space, through bounded caches that are refreshed when an unknown number shows up (at
most once a second): no container runtime API is asked. A cgroup's name comes from its
path under the cgroup v2 mount, read the way runtimes write it:

- docker: ``docker-<64 hex>.scope`` (systemd driver) or ``/docker/<64 hex>`` ->
  ``docker:<first 12 hex>``; containerd/CRI ``cri-containerd-<id>.scope``, CRI-O
  ``crio-<id>.scope``, podman ``libpod-<id>.scope`` likewise;
- Kubernetes: ``kubepods[-<qos>]-pod<uid>.slice`` (or ``kubepods/<qos>/pod<uid>``) ->
  ``pod:<uid>/<qos>``, followed by the container when the path goes that deep
  (``container:<12 hex>`` when the path does not name the runtime);
- else the deepest systemd unit (``*.service``, ``*.scope``), else the path itself.

The namespace filter lives here too, as a click type, with the limit of the kernel's
table (where.h); the PID list is every tool's (options.py).
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from typing import Any, Callable

import click

from netsnoop import netns
# the PID list lives in options.py (every tool's -p); MAX_PIDS and PIDS stay importable from here
from netsnoop.options import MAX_PIDS as MAX_PIDS, PID_MAX, PIDS as PIDS, cgroup2_mounts, pid_option
from netsnoop.output import Column

MAX_NETNS = 8  # where.h

F = Callable[..., Any]

# ---- reading cgroup paths --------------------------------------------------------------

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\udc80-\udcff]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code - 0xDC00 if code >= 0xDC80 else code:02x}"


def printable(raw: bytes | str) -> str:
    """A name made safe to print: invalid UTF-8, control bytes and backslashes as
    ``\\xNN`` escapes (cgroup names are chosen by whoever may create cgroups)."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    return _UNPRINTABLE.sub(_escape, text)


# runtime prefix of a systemd scope -> the name rows use
_SCOPES = {"docker": "docker", "cri-containerd": "containerd", "crio": "crio", "libpod": "podman"}
_SCOPE = re.compile(r"^(docker|cri-containerd|crio|libpod)-([0-9a-f]{12,64})\.scope$")
_HEX_ID = re.compile(r"^[0-9a-f]{64}$")
_POD_SLICE = re.compile(r"^kubepods(?:-(besteffort|burstable))?-pod([0-9a-f_]{8,64})\.slice$")
_POD_DIR = re.compile(r"^pod([0-9a-f-]{8,64})$")
_UNIT = re.compile(r"\.(service|scope)$")


def describe(path: str) -> str:
    """What rows show for a process in the cgroup at ``path`` (relative to the cgroup
    v2 mount, starting with ``/``): its container, pod, systemd unit, or the path."""
    parts = [p for p in path.split("/") if p]
    container = pod = unit = ""
    for i, part in enumerate(parts):
        m = _SCOPE.match(part)
        if m:
            container = f"{_SCOPES[m.group(1)]}:{m.group(2)[:12]}"
            continue
        if _HEX_ID.match(part) and i > 0:
            parent = parts[i - 1]
            # under a pod the path does not say which runtime: "container", not a guess
            runtime = "docker" if parent == "docker" else "container" if pod else ""
            if runtime:
                container = f"{runtime}:{part[:12]}"
                continue
        m = _POD_SLICE.match(part)
        if m:
            pod = f"pod:{m.group(2).replace('_', '-')}/{m.group(1) or 'guaranteed'}"
            continue
        m = _POD_DIR.match(part)
        if m and i > 0 and parts[0] == "kubepods":
            qos = parts[i - 1] if parts[i - 1] in ("besteffort", "burstable") else "guaranteed"
            pod = f"pod:{m.group(1)}/{qos}"
            continue
        if _UNIT.search(part):
            unit = part
    if pod:
        return f"{pod}/{container}" if container else pod
    return container or unit or (path or "/")


def is_container(label: str) -> bool:
    """Whether ``describe()`` named a container or pod (not a unit or a path)."""
    return label.startswith("pod:") or label.split(":", 1)[0] in (*_SCOPES.values(), "container")


def _walk(root: bytes, limit: int) -> dict[int, str]:
    """cgroup directory inode (the kernel's cgroup v2 id) -> its path from ``root``,
    for up to ``limit`` directories, breadth first."""
    found: dict[int, str] = {}
    queue = deque([(root, "")])
    while queue and len(found) < limit:
        directory, rel = queue.popleft()
        try:
            found[os.stat(directory).st_ino] = rel or "/"
            entries = list(os.scandir(directory))
        except OSError:
            continue  # removed meanwhile
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    queue.append((entry.path, f"{rel}/{printable(entry.name)}"))
            except OSError:
                continue
    return found


class Cgroups:
    """cgroup v2 id -> (path, what rows show), cached (at most ``limit`` entries).

    An id not in the cache makes the cgroup v2 tree be walked again, not more than
    once per ``interval`` seconds; cgroup ids are never reused, so one the walk does not
    find belonged to a cgroup already removed, shown as ``cgroup:<id>``.
    """

    def __init__(self, limit: int = 65536, interval: float = 1.0) -> None:
        self._limit = limit
        self._interval = interval
        self._paths: dict[int, str] = {}
        self._labels: dict[int, tuple[str, str]] = {}
        self._walked = -interval

    def __call__(self, cgroup_id: int) -> tuple[str, str]:
        """(path, label) of a cgroup id; ("", "-") for none (0: no process)."""
        try:
            return self._labels[cgroup_id]
        except KeyError:
            return self._miss(cgroup_id)

    def label(self, cgroup_id: int) -> str:
        return self(cgroup_id)[1]

    def path(self, cgroup_id: int) -> str:
        return self(cgroup_id)[0]

    def _miss(self, cgroup_id: int) -> tuple[str, str]:
        if cgroup_id == 0:
            return ("", "-")
        path = self._paths.get(cgroup_id)
        walked = False
        if path is None and time.monotonic() - self._walked >= self._interval:
            self._walked = time.monotonic()
            self._paths = {}
            for mount in cgroup2_mounts()[:1]:
                self._paths = _walk(os.fsencode(mount), self._limit)
            path, walked = self._paths.get(cgroup_id), True
        if path is None:
            answer = ("", f"cgroup:{cgroup_id}")
            if not walked:
                return answer  # asked again after the next walk
        else:
            answer = (path, describe(path))
        if len(self._labels) >= self._limit:
            self._labels.pop(next(iter(self._labels)))
        self._labels[cgroup_id] = answer
        return answer


def pid_container(pid: int) -> str:
    """The container or pod a process runs in (``describe()`` of its cgroup v2 path),
    or "" when it is not in one (or is gone)."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            for line in f:
                if line.startswith(b"0::"):
                    label = describe(printable(line[3:].rstrip(b"\n")))
                    return label if is_container(label) else ""
    except OSError:
        pass
    return ""


_cgroups: Cgroups | None = None
_netns: netns.NetnsLabels | None = None


def cgroups() -> Cgroups:
    global _cgroups
    if _cgroups is None:
        _cgroups = Cgroups()
    return _cgroups


def netns_label(inode: int) -> str:
    """What rows show for a namespace: its ``ip netns`` name, else the container that
    owns it, else ``host`` for the host's, else ``netns:<inode>``."""
    global _netns
    if _netns is None:
        _netns = netns.NetnsLabels(owner=pid_container)
    return _netns(inode)


# ---- columns ---------------------------------------------------------------------------

HEADERS = ("NETNS", "CONTAINER", "NETNS_INODE", "CGROUP")


def columns(text: bool, json: bool = True) -> list[Column]:
    """NETNS and CONTAINER in text with ``text`` (-w), always in JSON with the exact
    inode, and the cgroup path in JSON with -w too (each JSON field costs every row);
    none at all when nothing shows them, so that rows do not pay for names nobody
    sees. Always a tool's last columns, in this order (see :func:`values`):
    CONTAINER is unpadded."""
    if not (text or json):
        return []
    return [
        Column("NETNS", 14, text=text), Column("CONTAINER", text=text),
        Column("NETNS_INODE", text=False), Column("CGROUP", text=False, json=text),
    ]


_values: dict[tuple[int, int], tuple[str, str, int, str]] = {}
VALUES_LIMIT = 4096
VALUES_MAX_AGE = 5.0  # seconds: the kernel reuses a namespace's inode once it is gone
_values_until = 0.0
_monotonic = time.monotonic


def values(netns_inode: int, cgroup_id: int) -> tuple[str, str, int, str]:
    """The values of :func:`columns`, in order. Rows come from few (namespace, cgroup)
    pairs: each pair is named once (bounded, and for a few seconds, as namespace
    inodes are reused), unless a name is still a number (an inode or id not found
    yet), which is looked up again next time."""
    global _values_until
    if _monotonic() < _values_until:
        try:
            return _values[netns_inode, cgroup_id]
        except KeyError:
            pass
    else:
        _values.clear()
        _values_until = _monotonic() + VALUES_MAX_AGE
    path, label = cgroups()(cgroup_id)
    answer = (printable(netns_label(netns_inode)), label, netns_inode, path)
    if not answer[0].startswith("netns:") and not label.startswith("cgroup:"):
        if len(_values) >= VALUES_LIMIT:
            _values.pop(next(iter(_values)))
        _values[netns_inode, cgroup_id] = answer
    return answer



# ---- options ---------------------------------------------------------------------------

def _ip_netns_names() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except OSError:
        return []


class NetnsList(click.ParamType):
    """``NAME``, ``PID`` or ``INODE``, or a comma list of them (up to 8): the network
    namespaces to trace, as inodes for the kernel's ``filter_netns``."""

    name = "NETNS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        found: list[int] = []
        for part in (p.strip() for p in str(value).split(",")):
            inode = self._one(part, param, ctx)
            if inode not in found:
                found.append(inode)
        if len(found) > MAX_NETNS:
            self.fail(f"at most {MAX_NETNS} network namespaces can be filtered in the kernel, got {len(found)}",
                      param, ctx)
        return found

    def _one(self, part: str, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if not part:
            self.fail("an empty namespace in the list", param, ctx)
        if "/" not in part and part not in (".", ".."):
            try:
                return os.stat(os.path.join("/run/netns", part)).st_ino
            except OSError:
                pass
        if part == "host":
            return netns.HOST_NETNS_INODE
        if not part.isdigit():
            names = ", ".join(printable(n) for n in _ip_netns_names()) or "none"
            self.fail(f"no network namespace named {printable(part)!r} (ip netns names: {names}; "
                      "or give a PID or a namespace inode)", param, ctx)
        number = int(part)
        if 1 <= number <= PID_MAX:
            try:
                return os.stat(f"/proc/{number}/ns/net").st_ino
            except OSError:
                self.fail(f"no process {number} to take a network namespace from (a number up to {PID_MAX} "
                          "is a PID; a namespace inode is larger)", param, ctx)
        if number > 0xFFFFFFFF or number not in netns.by_inode():
            self.fail(f"no network namespace has inode {number} (see ls -l /proc/*/ns/net)", param, ctx)
        return number

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        """Every namespace that exists now, once, by the spelling convert() takes:
        ``host``, its `ip netns` name, else its inode (a container's, say); the inodes
        of all of them once a number is being typed. The help is how rows name it."""
        from click.shell_completion import CompletionItem

        head, _, last = incomplete.rpartition(",")
        prefix = head + "," if head else ""
        items = []
        for ns in netns.namespaces():
            spelling = str(ns.inode) if last.isdigit() else "host" if ns.host else ns.name or str(ns.inode)
            if spelling.startswith(last):
                items.append(CompletionItem(prefix + spelling, help=printable(netns_label(ns.inode))))
        return items


NETNS = NetnsList()


def netns_option(f: F) -> F:
    """-N/--netns NAME|PID|INODE[,...] -> ``netns`` (a list of inodes, or None)."""
    return click.option(
        "-N", "--netns", "netns", type=NETNS, default=None, metavar="NETNS",
        help="only trace these network namespaces: an `ip netns` name, a PID (its namespace), "
             "an inode, or host; a comma list of up to 8",
    )(f)


def pids_option(help: str = "only trace these process IDs") -> Callable[[F], F]:
    """-p/--pid PID[,PID...] -> ``pids``: :func:`netsnoop.options.pid_option`."""
    return pid_option(help)


def filters(pids: list[int] | None, netns_inodes: list[int] | None) -> dict[str, Any]:
    """The where.h filters and netsnoop.h's process list as read-only globals; None = any."""
    return {"filter_pids": pids, "filter_netns": netns_inodes}

