"""netsnoop why: why TCP connections to a port fail, in plain words, with the evidence.

The kernel side (why.bpf.c) reports what happens to each attempt in every network
namespace; this module reads the state around it (listeners, queue fill, counters,
nftables rules, sysctls, routes: each inside its namespace) and hands both to
:mod:`netsnoop.verdicts`, which names the cause.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from netsnoop import netns as N
from netsnoop import options as o
from netsnoop.verdict_names import FAILED, VERDICTS
from netsnoop.fmt import Clock, addr, comm
from netsnoop.output import OutputOptions, make_sink
from netsnoop.runner import (POLL_MS, StopFlag, LoadSpec, coalesce_seconds, ready, silence_stdout, warn,
                             warn_missed_runs)
from netsnoop.transport import BATCH_EVENTS

if TYPE_CHECKING:
    from netsnoop import verdicts as V
else:
    def _on_first_use(name: str) -> Any:
        """The module, executed on first use: what only runs after the BPF load (the
        verdicts' rules, json) is then not in memory during libbpf's peak."""
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.find_spec(name)
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    V = _on_first_use("netsnoop.verdicts")

# Route lookups, ICMP sends and SYN-ACK retransmits sharpen verdicts; a kernel without
# one of these tracepoints still gets the others.
TRACER = LoadSpec("why", optional=frozenset({"fib", "fib6", "icmp", "synack", "error"}))
REFRESH_S = 0.5  # how often the state around the flows is read again
GRACE_S = 1.0  # how long an attempt may stay unexplained before it gets a verdict
HELD_SYN_NS = 250_000_000  # a SYN the kernel holds back longer is taken from it (see why.bpf.c)
MAX_FLOWS = 8192  # attempts held at once awaiting a verdict (see V.Recorder)
# Two CPUs may set two children ESTABLISHED in another order than they entered the
# accept queue: these many more than the queue holds wait for the next look.
REORDER_MARGIN = 16
RELEVANT_COUNTERS = ("TcpExtListenOverflows", "TcpExtListenDrops", "IpOutNoRoutes", "Ip6OutNoRoutes",
                     "TcpExtSyncookiesSent", "TcpExtTCPReqQFullDrop", "TcpExtTCPReqQFullDoCookies",
                     "TcpExtIPReversePathFilter", "TcpAttemptFails", "TcpExtTCPSynRetrans")


class Target(click.ParamType):
    """``ADDR``, ``ADDR:PORT``, ``[ADDR6]:PORT`` or ``:PORT``."""

    name = "ADDR[:PORT]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str | None, int | None]:
        if isinstance(value, tuple):
            return value
        text, port = str(value).strip(), None
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest and not rest.startswith(":"):
                self.fail(f"{value!r} is not ADDR[:PORT]", param, ctx)
            port_text = rest[1:] if rest else None
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host, port_text = text, None
        if port_text is not None:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                self.fail(f"{port_text!r} is not a port in 1-65535", param, ctx)
            port = int(port_text)
        if not host:
            return None, port
        import ipaddress  # only for an address on the command line

        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            self.fail(f"{host!r} is not an IP address", param, ctx)
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return str(ip), port


@functools.lru_cache(maxsize=4096)
def unmap(family: int, raw: bytes) -> tuple[int, str]:
    """An address as text; an IPv4-mapped IPv6 address (a dual-stack server's view of
    an IPv4 client) as the IPv4 address, so both ends of one attempt name it alike.
    Cached: a storm's events name the same few addresses over and over."""
    text = addr(family, raw)
    if family == 10 and text.startswith("::ffff:") and "." in text:
        return 2, text[7:]
    return family, text


def record(e: Any) -> V.Record:
    fam, src = unmap(e.family, e.saddr)
    _, dst = unmap(e.family, e.daddr)
    return V.Record(e.kind, e.ts_ns, e.netns, fam, src, e.sport, dst, e.dport, e.value, e.extra, e.state,
                    e.oldstate, e.tcpflags, e.sk, e.pid, comm(e.comm) if e.pid else "", e.start_ns, e.syn_netns,
                    e.syn_ifindex)


def held_syns(obj: Any, before_ns: int | None = None) -> list[V.Record]:
    """The SYNs the kernel holds back (why.bpf.c: syns) that arrived before
    ``before_ns`` (all: None), as their records, oldest first; each taken (read and
    deleted in one step: the kernel may take it at the same moment) at once."""
    m = obj.map("syns")
    key_of, seen_of = obj.decoder("syn_key"), obj.decoder("syn_seen")
    out = []
    for key, raw in m.take_all(lambda raw: before_ns is None or seen_of.decode(raw).ts_ns < before_ns):
        k, v = key_of.decode(key), seen_of.decode(raw)
        fam, src = unmap(k.family, k.saddr)
        _, dst = unmap(k.family, k.daddr)
        out.append(V.Record(V.SYN_IN, v.ts_ns, k.netns, fam, src, k.sport, dst, k.dport, 0, v.ifindex,
                            tcpflags=v.tcpflags))
    return sorted(out, key=lambda r: r.ts_ns)


def still_connecting(obj: Any) -> list[V.Record]:
    """The connect()s the kernel still holds as under way (why.bpf.c: connecting), as
    the records of their start; each taken (read and deleted) at once."""
    decoder = obj.decoder("connecting")
    out = []
    for key, raw in obj.map("connecting").take_all():
        c = decoder.decode(raw)
        fam, src = unmap(c.family, c.saddr)
        _, dst = unmap(c.family, c.daddr)
        out.append(V.Record(V.STATE, c.start_ns, c.netns, fam, src, c.sport, dst, c.dport, 0, 0, V.SYN_SENT,
                            V.CLOSE, 0, int.from_bytes(key, sys.byteorder), c.pid, comm(c.comm)))
        if c.reported:
            out.append(V.Record(V.SK_ERROR, c.start_ns, c.netns, fam, src, c.sport, dst, c.dport, c.err,
                                state=V.SYN_SENT, sk=int.from_bytes(key, sys.byteorder)))
    return out


def _run_in(ns: N.Netns, args: list[str]) -> str | None:
    """A command's stdout, run inside ``ns``: a child forked by a thread that has
    entered a namespace starts there."""
    import subprocess  # after the BPF load: not under libbpf's peak of memory

    try:
        with N.entered(ns):
            done = subprocess.run(args, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else (done.stderr.strip() or None)


class Watch:
    """The state of one run: flows recorded so far and the facts around them."""

    def __init__(self, ports: list[int], target: str | None, max_flows: int = MAX_FLOWS) -> None:
        self.ports, self.target = set(ports), target
        self.recorder = V.Recorder(max_flows)
        self.fold_step = max(1, max_flows // 16)
        self.next_fold_at = self.fold_step
        self.events = 0  # read from the kernel
        self.facts = V.Facts(grace_s=GRACE_S)
        self.namespaces: dict[int, N.Netns] = {}
        self._ns_read_at = 0.0
        self.baseline: dict[int, dict[str, int]] = {}
        self.owners: dict[int, N.Owner] = {}
        self.queue_seen: dict[tuple[int, str, int], tuple[int, float]] = {}
        self.nft_read: set[int] = set()
        self.no_ifname: set[tuple[int, int]] = set()
        self.recorder.on_reuse = self._forget_accept
        self.recorder.on_forget = self._forget_accept
        self.refresh_namespaces()
        for ns in self.namespaces.values():
            try:
                self.baseline[ns.inode] = N.all_counters(ns)
            except OSError:
                continue

    def _forget_accept(self, key: V.FlowKey) -> None:
        """What sock_diag said of a connection belongs to it, not to the next one on
        the same ports."""
        self.facts.accepted.discard(key)
        self.facts.unaccepted.pop(key, None)

    # -- namespaces and static state --------------------------------------------------
    def refresh_namespaces(self) -> None:
        self.namespaces = {n.inode: n for n in N.namespaces()}
        self.facts.labels = {i: n.label for i, n in self.namespaces.items()}
        self.facts.paths = {i: n.path for i, n in self.namespaces.items()}
        self._ns_read_at = time.monotonic()

    def ns(self, inode: int) -> N.Netns | None:
        if inode and inode not in self.namespaces and time.monotonic() - self._ns_read_at > 0.5:
            self.refresh_namespaces()
        return self.namespaces.get(inode)

    def watched_ports(self) -> set[int]:
        return self.ports | {f.server[1] for f in self.recorder.all_flows()}

    def read_listeners(self) -> None:
        ports = self.watched_ports()
        found: list[N.Listener] = []
        for ns in list(self.namespaces.values()):
            try:
                found.extend(lst for lst in N.listeners(ns) if lst.port in ports)
            except OSError:
                continue
        missing = {lst.inode for lst in found if lst.inode and lst.inode not in self.owners}
        if missing:
            self.owners.update(N.socket_owners(missing))
        now = time.monotonic()
        views = []
        for lst in found:
            owner = self.owners.get(lst.inode)
            views.append(V.ListenerView(lst.netns.inode, lst.netns.label, lst.family, lst.addr, lst.port, lst.queue,
                                        lst.backlog, owner.pid if owner else 0, owner.comm if owner else ""))
            key = (lst.netns.inode, lst.addr, lst.port)
            before = self.queue_seen.get(key)
            if before is None or lst.queue < before[0] or lst.queue == 0:
                self.queue_seen[key] = (lst.queue, now)
            else:
                self.queue_seen[key] = (lst.queue, before[1])
        self.facts.listeners = views
        self.facts.queue_static = {k: now - since for k, (q, since) in self.queue_seen.items() if q > 0}

    def read_rules(self, inodes: set[int]) -> None:
        """nftables rules of these namespaces, read in parallel (one nft each)."""
        todo = [self.namespaces[i] for i in inodes if i in self.namespaces and i not in self.nft_read]
        results: dict[int, list[V.Rule]] = {}

        def read(ns: N.Netns) -> None:
            text = _run_in(ns, ["nft", "-j", "list", "ruleset"])
            results[ns.inode] = V.nft_rules(text or "", ns.inode)

        threads = [threading.Thread(target=read, args=(ns,), daemon=True) for ns in todo]
        for t in threads:
            t.start()
        for t in threads:
            t.join(6)
        for inode, rules in results.items():
            self.nft_read.add(inode)
            first = inode not in self.facts.rules
            self.facts.rules[inode] = rules
            if first:
                for r in rules:
                    self.facts.rules_before[(inode, r.where, r.handle)] = r.packets or 0

    def reread_rules(self, inode: int) -> None:
        self.nft_read.discard(inode)
        self.read_rules({inode})

    # -- live state ---------------------------------------------------------------------
    def refresh(self, ended: bool = False) -> None:
        f = self.facts
        f.now_ns = time.monotonic_ns()
        f.ended = ended
        self.read_listeners()
        flows = self.recorder.all_flows()
        relevant = {fl.netns for fl in flows} | {lst.netns for lst in f.listeners}
        for inode in relevant:
            ns = self.ns(inode)
            if ns is None:
                continue
            try:
                now = N.all_counters(ns)
            except OSError:
                continue
            before = self.baseline.setdefault(inode, now)
            f.counters[inode] = {k: now.get(k, 0) - before.get(k, 0) for k in RELEVANT_COUNTERS}
        self._check_accepts(flows)
        firewalled: set[int] = set()
        for fl in flows:
            for d in fl.drops:
                if int(d.reason) not in f.reason_names:
                    f.reason_names.update(_reason_names())
                name = f.reason_names.get(int(d.reason), "")
                if name == "NETFILTER_DROP":
                    firewalled.add(d.netns)
                if name == "IP_RPFILTER":
                    self._rp_filter(fl, d)
            rp_filtered = any(f.reason_names.get(int(d.reason)) == "IP_RPFILTER" for d in fl.drops)
            if fl.fib_errors or fl.synack_retrans or rp_filtered:
                self._route(fl)
            where = (fl.syn_netns, fl.syn_ifindex)
            if fl.syns_in and where not in f.ifnames and where not in self.no_ifname:
                ns = self.ns(fl.syn_netns)
                ifname = N.ifname(ns, fl.syn_ifindex) if ns else None
                if ifname:
                    f.ifnames[where] = ifname
                else:
                    self.no_ifname.add(where)  # gone meanwhile: not asked again
        # rules are read where a firewall dropped something, and again at the end for
        # their final counters
        for inode in firewalled if ended else firewalled - self.nft_read:
            self.reread_rules(inode)

    def _check_accepts(self, flows: list[V.Flow]) -> None:
        """Whether each server-side child was accept()ed: it has a file (inode) then."""
        current = self.recorder.flows
        waiting = [fl for fl in flows if fl.server_established_ns and fl.key not in self.facts.accepted
                   and current.get(fl.key) is fl]
        by_ns: dict[int, list[V.Flow]] = {}
        for fl in waiting:
            by_ns.setdefault(fl.server_netns, []).append(fl)
        now_ns = time.monotonic_ns()
        for inode, group in by_ns.items():
            ns = self.ns(inode)
            if ns is None:
                continue
            try:
                conns = {}
                for c in N.connections(ns):
                    conns[(_plain(c.laddr), c.lport, _plain(c.raddr), c.rport)] = c
            except OSError:
                continue
            for fl in group:
                sock = conns.get(fl.key)
                if sock is not None and sock.inode:
                    self.facts.accepted.add(fl.key)
                elif sock is not None:
                    self.facts.unaccepted[fl.key] = (now_ns - fl.server_established_ns) / 1e9
                elif fl.key not in self.facts.unaccepted:
                    self.facts.accepted.add(fl.key)  # gone before we looked: accepted and closed

    def _rp_filter(self, fl: V.Flow, d: V.Drop) -> None:
        ifindex = fl.syn_ifindex or d.ifindex
        key = (d.netns, ifindex)
        ns = self.ns(d.netns)
        if key in self.facts.rp_filter or ns is None:
            return
        dev = N.ifname(ns, ifindex) or f"ifindex {ifindex}"
        values = [N.sysctl(ns, f"net/ipv4/conf/{name}/rp_filter") for name in ("all", dev)]
        value = max((int(v) for v in values if v is not None and v.isdigit()), default=-1)
        self.facts.rp_filter[key] = (dev, value)

    def _route(self, fl: V.Flow) -> None:
        ns_inode = fl.netns
        client = fl.key[2]
        ns = self.ns(ns_inode)
        if ns is None or (ns_inode, client) in self.facts.routes:
            return
        out = _run_in(ns, ["ip", "route", "get", client])
        if out:  # one line; the "cache" flag line says nothing here
            words = out.split()
            self.facts.routes[(ns_inode, client)] = " ".join(words[:-1] if words[-1:] == ["cache"] else words)

    # -- succeeded attempts, folded away ------------------------------------------------
    def fold_done(self, folded: dict[V.GroupKey, V.Group]) -> None:
        """Count and let go, without judging each in full, the attempts whose handshake
        completed on this host's server and which it accept()ed: nothing later can
        change their verdict (a client on this host turned ESTABLISHED before its ACK
        left, so its record is already in). The first of each group is judged in full
        and speaks for the rest. Attempts the command does not report are let go too."""
        rec, f = self.recorder, self.facts
        waiting: dict[tuple[int, int], list[V.Flow]] = {}
        for fl in rec.all_flows():
            if not self.keep(fl):
                rec.forget(fl)
            elif fl.server_established_ns and fl.key not in f.unaccepted:
                waiting.setdefault((fl.server_netns, fl.key[1]), []).append(fl)
        for where, flows in waiting.items():
            for fl in self._accepted(where, flows):
                gk = ("OK", fl.netns, fl.key[0], fl.key[1])
                g = folded.get(gk)
                if g is None or g.sample is None:
                    v = V.decide(fl, f)
                    if v is None or v.name != "OK":
                        continue
                    folded.setdefault(V.group_key(v), V.Group()).fold(v)
                else:
                    c = fl.client
                    lat = c.latency_ms if c is not None else None
                    if lat is None and fl.first_syn_ns:
                        lat = (fl.server_established_ns - fl.first_syn_ns) / 1e6
                    g.fold_counts(fl.syns, fl.key[2], lat)
                rec.forget(fl)
        self.next_fold_at = rec.created + self.fold_step

    def _accepted(self, where: tuple[int, int], flows: list[V.Flow]) -> list[V.Flow]:
        """Of these server-side children (one namespace and port), those known to be
        accept()ed: seen so by sock_diag, or by the accept queue. The queue is FIFO: of
        the children completed before a moment, all but the last Q (its length then)
        were accept()ed. Children whose records are not read yet can only be among
        those last Q (on a per-CPU buffer too), so of the ones read, all but their own
        last Q were."""
        known = [fl for fl in flows if fl.key in self.facts.accepted]
        rest = [fl for fl in flows if fl.key not in self.facts.accepted]
        if len(rest) <= REORDER_MARGIN:
            return known
        inode, port = where
        ns = self.ns(inode)
        if ns is None:
            return known
        at = time.monotonic_ns()
        try:
            queue = [lst.queue for lst in N.listeners(ns) if lst.port == port]
        except OSError:
            return known
        if not queue:  # the listener is gone: sock_diag tells (see _check_accepts)
            return known
        before = sorted((fl for fl in rest if fl.server_established_ns < at), key=lambda fl: fl.server_established_ns)
        return known + before[:max(0, len(before) - sum(queue) - REORDER_MARGIN)]

    def keep(self, fl: V.Flow) -> bool:
        return (self.target is None or fl.server[0] == self.target) and (not self.ports or fl.server[1] in self.ports)


def _plain(text: str) -> str:
    return text[7:] if text.startswith("::ffff:") and "." in text else text


def _reason_names() -> dict[int, str]:
    from netsnoop.commands.drop import drop_reasons

    try:
        return drop_reasons()
    except Exception:  # a kernel without the enum: reasons stay numbers
        return {}


# ---- output -----------------------------------------------------------------------------------


def static_picture(w: Watch, as_json: bool) -> list[str]:
    """Who listens on the watched ports, and the firewall rules that name them."""
    lines: list[str] = []
    ports = sorted(w.ports)
    listeners = w.facts.listeners
    rules = [r for inode in sorted(w.facts.rules) for r in w.facts.rules[inode] if r.ports & w.ports]
    if as_json:
        return [V.json.dumps({"type": "listener", **lst.figures()}) for lst in listeners] + \
               [V.json.dumps({"type": "rule", "netns": w.facts.label(r.netns), **r.figures()}) for r in rules]
    if not ports:
        return lines
    names = ",".join(map(str, ports))
    if listeners:
        lines.append(f"Listening on port {names}:")
        lines.append(f"  {'NETNS':<16} {'ADDRESS':<24} {'ACCEPT QUEUE':<13} OWNER")
        for lst in listeners:
            lines.append(f"  {lst.ns_label:<16} {lst.endpoint:<24} {f'{lst.queue}/{lst.backlog}':<13} {lst.owner}")
    else:
        lines.append(f"Nothing listens on port {names} in any network namespace.")
    if rules:
        lines.append(f"nftables rules that name port {names}:")
        for r in rules:
            lines.append(f"  {w.facts.label(r.netns):<16} {r.where}: {r.text}")
    return [V.printable(x) for x in lines]


def emit(lines: list[str]) -> None:
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


VERDICT_HELP = "\n".join(f"  {name:<28} {text}" for name, text in VERDICTS.items())


@click.command("why", epilog="\b\nVerdicts:\n" + VERDICT_HELP)
@click.argument("target", type=Target(), required=False, metavar="[ADDR[:PORT]]")
@o.ports_option("-P", "--port", "ports", help="the server port(s) to watch (e.g. 80,443); default: every port")
@o.duration_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per verdict, with every figure behind it")
@click.option("--max-flows", type=click.IntRange(16, 1 << 22), default=MAX_FLOWS, show_default=True,
              help="attempts held at once awaiting a verdict; past it the oldest are let go, counted in the summary")
@click.option("--dns", "dns_names", is_flag=True,
              help="name the server: the host name last resolved to its address (answers seen)")
def command(target: tuple[str | None, int | None] | None, ports: list[int] | None, duration: float | None,
            as_json: bool, max_flows: int, dns_names: bool) -> None:
    """Say why TCP connections fail: watch attempts to a local port (server side) or
    from this host to ADDR[:PORT] (client side), in every network namespace, and give
    one verdict per failing flow with the evidence and the next step.

    It starts with who listens on the port (namespace, address, owner, accept queue)
    and the nftables rules that name it, then follows attempts until Ctrl-C or -d.
    Exit status: 0 when every attempt seen succeeded, 1 when one failed.

    --dns names the server of each verdict with the host name this machine last
    resolved to its address (where the client asked), learnt from the DNS answers
    local sockets receive while tracing; no answer seen, no name.
    """
    addr_filter, target_port = target if target else (None, None)
    watch_ports = sorted(set(ports or []) | ({target_port} if target_port else set()))
    if len(watch_ports) > o.MAX_PORTS:
        raise click.UsageError(f"at most {o.MAX_PORTS} ports can be watched")
    with TRACER.open({"filter_ports": watch_ports}) as obj, \
            (_dns_watcher() if dns_names else contextlib.nullcontext()) as names:
        w = Watch(watch_ports, addr_filter, max_flows)
        if names is not None:
            w.facts.name_of = lambda address, netns: names.name_of(0, address, netns)
        decoder = obj.decoder("event")
        ring = obj.ring_buffer()
        clock = Clock()
        what = f"port {','.join(map(str, watch_ports))}" if watch_ports else "every port"
        ready(f"Tracing TCP connection attempts to {what}{' at ' + addr_filter if addr_filter else ''} "
              "in every network namespace ... Hit Ctrl-C to end.")
        try:
            w.read_listeners()
            w.read_rules({lst.netns for lst in w.facts.listeners})
            emit(static_picture(w, as_json))
            groups = _follow(w, obj, ring, decoder, clock, duration, as_json)
        except BrokenPipeError:
            silence_stdout()
            return
        failed = [g for g in groups if g.name in FAILED]
        try:
            _report(w, groups, failed, as_json, obj, {"dns": names.stats()} if names is not None else {})
        except BrokenPipeError:
            silence_stdout()
        warn_missed_runs(obj)
        if w.recorder.evicted:
            warn(f"{w.recorder.evicted} attempts were let go unjudged to hold at most {w.recorder.max_flows} "
                 "at once (raise --max-flows)")
    if failed:
        raise SystemExit(1)


def _dns_watcher() -> Any:
    from netsnoop import dns

    return dns.Watcher()


def _follow(w: Watch, obj: Any, ring: Any, decoder: Any, clock: Clock, duration: float | None,
            as_json: bool) -> list[V.Group]:
    """Record events until stopped; in text, print each new verdict as it is reached."""
    shown: set[tuple[str, int, str, int]] = set()
    next_refresh = 0.0

    folded: dict[V.GroupKey, V.Group] = {}

    def update(ended: bool = False) -> list[V.Group]:
        for r in held_syns(obj, time.monotonic_ns() - HELD_SYN_NS):
            rec.add(r)
        w.refresh(ended)
        w.fold_done(folded)
        kept = []
        for v in V.decide_all(w.recorder, w.facts, w.keep):
            # a connection that succeeded (and was accepted) is done with: counted, let go
            quiet = (w.facts.now_ns - v.flow.last_ns) / 1e9 > GRACE_S  # the other end's records are in
            if v.name == "OK" and quiet and (not v.flow.server_established_ns or v.flow.key in w.facts.accepted):
                folded.setdefault(V.group_key(v), V.Group()).fold(v)
                w.recorder.forget(v.flow)
            else:
                kept.append(v)
        groups = V.group(kept, folded)
        if not as_json:
            out = []
            for g in groups:
                key = (g.name, g.first.netns, *g.first.flow.server)
                if key not in shown and (g.name in FAILED or not ended):
                    shown.add(key)
                    if not ended:
                        out.append(f"{clock.hms(time.monotonic_ns())} {V.printable(g.headline(w.facts))}")
            emit(out)
        return groups

    rec = w.recorder
    add = rec.add
    coalesce = coalesce_seconds(ring)
    with StopFlag(duration) as stop:
        while not stop:
            events = ring.poll_events(stop.remaining_ms(POLL_MS), decoder)
            w.events += len(events)
            for e in events:
                add(record(e))
                if rec.created >= w.next_fold_at:  # a storm: let the succeeded go between refreshes
                    w.fold_done(folded)
            if events and len(events) < BATCH_EVENTS and coalesce:  # caught up: let the next ones gather
                time.sleep(coalesce)
            if time.monotonic() >= next_refresh:
                update()
                next_refresh = time.monotonic() + REFRESH_S
        for _ in range(64):
            events = ring.read_events(decoder)
            if not events:
                break
            w.events += len(events)
            for e in events:
                add(record(e))
                if rec.created >= w.next_fold_at:
                    w.fold_done(folded)
        for r in held_syns(obj) + still_connecting(obj):
            add(r)
    w.recorder.finish()
    return update(ended=True)


def _report(w: Watch, groups: list[V.Group], failed: list[V.Group], as_json: bool, obj: Any,
            more: dict[str, Any]) -> None:
    attempts = sum(g.attempts for g in groups)
    health = obj.health()
    summary = make_sink(OutputOptions(json=as_json), [])
    rec = w.recorder
    facts = {"attempts": attempts, "failed": sum(g.attempts for g in failed), "attempts_held_peak": rec.peak,
             "attempts_evicted": rec.evicted, "kernel_events": w.events, **health, **more}
    if as_json:
        emit([V.json.dumps(g.record(w.facts)) for g in groups])
        summary.summary(facts)
        return
    ok = [g for g in groups if g.name == "OK"]
    passed_on = [g for g in groups if g.name != "OK" and g not in failed]
    lines: list[str] = []
    for g in failed + passed_on:  # a block each, failures first
        lines.append("")
        lines.extend(g.lines(w.facts))
    if not failed and (ok or not passed_on):
        lines.append(V.healthy_line(ok))  # a healthy host: this one line
    elif ok:
        lines.append("")
        lines.append(V.healthy_line(ok).replace(", all connected", " connected").replace("OK: ", "OK: also "))
    emit(lines if failed or passed_on else lines[-1:])
    summary.summary(facts)
    if health.get("lost_events"):
        warn("events were lost: some verdicts may lack evidence (raise --ringbuf)")
