"""Why a TCP connection attempt failed: plain Python over recorded evidence.

``netsnoop why`` records what the kernel showed (:class:`Record`: a SYN arriving, a
packet dropped with the kernel's reason, a SYN-ACK retransmitted, a route lookup that
failed, an ICMP error sent, a handshake state change) into one :class:`Flow` per
attempt (client address and port -> server address and port), and reads the state
around it (:class:`Facts`: listeners of every namespace, counter deltas, nftables
rules, sysctls, routes). :func:`decide` names one verdict per flow from both, and
:func:`group` folds flows with the same verdict and server into one report. Nothing
here touches the kernel, so every rule is tested from recorded evidence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

from netsnoop.verdict_names import FAILED
from netsnoop.verdict_names import VERDICTS as VERDICTS  # the rules and their names, from one module

# why.bpf.c: enum why_kind
SYN_IN, DROP, SYNACK_RETRANS, FIB_FAIL, STATE, ICMP_SEND, SK_ERROR = 1, 2, 3, 4, 5, 6, 7
# include/net/tcp_states.h
ESTABLISHED, SYN_SENT, SYN_RECV, CLOSE = 1, 2, 3, 7
TCP_SYN, TCP_ACK = 0x02, 0x10
ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH = 111, 110, 113, 101
ERRNO_NAMES = {ECONNREFUSED: "ECONNREFUSED", ETIMEDOUT: "ETIMEDOUT", EHOSTUNREACH: "EHOSTUNREACH",
               ENETUNREACH: "ENETUNREACH", 13: "EACCES", 1: "EPERM", 104: "ECONNRESET", 92: "ENOPROTOOPT",
               11: "EAGAIN", 22: "EINVAL"}
ICMP_UNREACH_CODES = {0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable",
                      3: "port unreachable", 9: "net prohibited", 10: "host prohibited",
                      13: "administratively prohibited"}
ICMP_DEST_UNREACH = 3


def printable(text: str) -> str:
    """Control characters (a process may name itself with escape sequences) as \\xNN."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def plural(n: int, word: str) -> str:
    """``1 SYN``, ``2 SYNs``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def errno_name(err: int) -> str:
    return ERRNO_NAMES.get(err, f"errno {err}")


class Record(NamedTuple):
    """One event from why.bpf.c with addresses as text (see ``struct event`` there); a
    tuple, made once per event of a storm (a frozen dataclass costs twice its time)."""

    kind: int
    ts_ns: int
    netns: int = 0
    family: int = 2
    saddr: str = ""
    sport: int = 0
    daddr: str = ""
    dport: int = 0
    value: int = 0
    extra: int = 0
    state: int = 0
    oldstate: int = 0
    tcpflags: int = 0
    sk: int = 0
    pid: int = 0
    comm: str = ""
    start_ns: int = 0  # STATE out of SYN_SENT: when its connect() began; SYN_RECV -> ESTABLISHED: its SYN's
    syn_netns: int = 0  # SYN_RECV -> ESTABLISHED: where the SYN it carries arrived
    syn_ifindex: int = 0


FlowKey = tuple[str, int, str, int]  # server address, server port, client address, client port


@dataclass
class Drop:
    reason: str
    netns: int
    synack: bool  # the dropped packet was the SYN-ACK (else the SYN)
    output: bool  # dropped on the way out of the client (its socket was in SYN_SENT)
    ifindex: int
    ts_ns: int


@dataclass
class Client:
    pid: int
    comm: str
    netns: int
    start_ns: int
    server: tuple[str, int] = ("", 0)  # where it connects to
    laddr: str = ""
    end_ns: int = 0
    state: int = 0  # ESTABLISHED or CLOSE once resolved
    err: int = 0
    retransmits: int = 0
    icmp_error: bool = False  # an error was reported before the socket closed: an ICMP error

    @property
    def resolved(self) -> bool:
        return self.state != 0

    @property
    def syns(self) -> int:
        return 1 + self.retransmits

    @property
    def latency_ms(self) -> float | None:
        return (self.end_ns - self.start_ns) / 1e6 if self.state == ESTABLISHED else None


@dataclass
class Flow:
    """Everything seen of one attempt."""

    key: FlowKey
    family: int = 2
    first_ns: int = 0
    last_ns: int = 0
    syns_in: int = 0
    syn_netns: int = 0
    syn_ifindex: int = 0
    first_syn_ns: int = 0
    drops: list[Drop] = field(default_factory=list)
    synack_retrans: int = 0
    synack_netns: int = 0
    fib_errors: list[int] = field(default_factory=list)
    icmp: list[tuple[int, int, int]] = field(default_factory=list)  # (netns, type, code)
    server_established_ns: int = 0
    server_netns: int = 0
    client: Client | None = None

    @property
    def server(self) -> tuple[str, int]:
        return self.key[0], self.key[1]

    @property
    def finished(self) -> bool:
        """The handshake completed, or the client on this host has its answer."""
        return bool(self.server_established_ns) or (self.client is not None and self.client.resolved)

    @property
    def netns(self) -> int:
        """The server's namespace as far as seen: where the SYN arrived or was dropped."""
        for ns in (self.server_netns, self.syn_netns, self.synack_netns):
            if ns:
                return ns
        for d in self.drops:
            if not d.synack and not d.output and d.netns:
                return d.netns
        return 0

    @property
    def syns(self) -> int:
        """SYNs of this attempt: as the client sent them when it is on this host, else
        as they arrived (or were dropped before arriving)."""
        if self.client is not None and self.client.resolved:
            return self.client.syns
        dropped = sum(1 for d in self.drops if not d.synack)
        return max(self.syns_in, dropped, 1 if self.client else 0)


class Recorder:
    """Folds records into flows, keyed by the attempt's four addresses and ports.

    At most ``max_flows`` attempts are held at once (current and archived together):
    past that, the oldest is let go and counted in ``evicted`` (its verdict is lost,
    and the command says so), so a storm costs bounded memory whatever its length.
    The command folds succeeded attempts away long before that (see why.py)."""

    def __init__(self, max_flows: int = 4096) -> None:
        self.flows: dict[FlowKey, Flow] = {}
        self._connecting: dict[int, Client] = {}  # sk -> client whose local port is not known yet
        self._ended: dict[int, Client] = {}  # sk -> client resolved, for an error reported after
        self.fib_unmatched = 0  # failed route lookups that matched no flow (a SYN-ACK's needs one)
        self._fib_waiting: dict[FlowKey, list[Record]] = {}
        self.archived: dict[int, Flow] = {}  # finished flows whose key a newer attempt took
        self.on_reuse: Callable[[FlowKey], None] = lambda key: None
        self.on_forget: Callable[[FlowKey], None] = lambda key: None
        self.max_flows = max(1, max_flows)
        self.evicted = 0  # attempts let go unjudged to stay within max_flows
        self.peak = 0  # the most attempts held at once
        self.created = 0  # attempts opened so far

    def _flow(self, key: FlowKey, r: Record, new_attempt: bool = False) -> Flow:
        """The flow of ``key``; a new one when ``new_attempt`` finds the current one
        finished (a client port reused for the next connection: a storm reuses them
        within a second)."""
        f = self.flows.get(key)
        if f is not None and new_attempt and f.finished:
            self.archived[id(f)] = f
            del self.flows[key]  # re-inserted below: the table stays oldest first
            self.on_reuse(key)
            f = None
        if f is None:
            held = len(self.flows) + len(self.archived)
            if held >= self.max_flows:
                self._evict()
            else:
                self.peak = max(self.peak, held + 1)
            f = self.flows[key] = Flow(key, r.family, r.ts_ns)
            self.created += 1
        f.last_ns = max(f.last_ns, r.ts_ns)
        return f

    def _evict(self) -> None:
        """Let the oldest held attempt go (archived ones first: they are finished)."""
        if self.archived:
            self.forget(next(iter(self.archived.values())))
        else:
            self.forget(next(iter(self.flows.values())))
        self.evicted += 1

    def __len__(self) -> int:
        return len(self.flows) + len(self.archived)

    def all_flows(self) -> list[Flow]:
        return [*self.archived.values(), *self.flows.values()]

    def forget(self, flow: Flow) -> None:
        """Drop a flow that needs no more evidence (it succeeded and was reported)."""
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        elif self.archived.pop(id(flow), None) is None:
            return
        self.on_forget(flow.key)

    def add(self, r: Record) -> Flow | None:
        """Fold one record in; returns the flow it belongs to (None when it opens no
        flow yet, e.g. a connect() whose local port is not chosen)."""
        if r.kind == SYN_IN:
            # a SYN the kernel held back comes late: it belongs to the attempt it precedes
            key = (r.daddr, r.dport, r.saddr, r.sport)
            cur = self.flows.get(key)
            f = self._flow(key, r, new_attempt=cur is None or r.ts_ns > cur.last_ns)
            self._syn(f, r.ts_ns, r.netns, r.extra)
            return f
        if r.kind == DROP:
            synack = bool(r.tcpflags & TCP_ACK)
            key = (r.saddr, r.sport, r.daddr, r.dport) if synack else (r.daddr, r.dport, r.saddr, r.sport)
            f = self._flow(key, r)
            f.drops.append(Drop(str(r.value), r.netns, synack, r.state == SYN_SENT, r.extra, r.ts_ns))
            return f
        if r.kind == SYNACK_RETRANS:
            f = self._flow((r.saddr, r.sport, r.daddr, r.dport), r)
            f.synack_retrans += 1
            f.synack_netns = r.netns
            return f
        if r.kind == FIB_FAIL:
            key = (r.saddr, r.sport, r.daddr, r.dport)  # a SYN-ACK's lookup: from the server
            if key in self.flows:
                f = self._flow(key, r)
                f.fib_errors.append(r.value)
                return f
            # its SYN may still be held in the kernel: kept (bounded) until it comes
            self._fib_waiting.setdefault(key, []).append(r)
            if len(self._fib_waiting) > 1024:
                self._fib_waiting.pop(next(iter(self._fib_waiting)))
                self.fib_unmatched += 1
            return None
        if r.kind == ICMP_SEND:
            f = self._flow((r.daddr, r.dport, r.saddr, r.sport), r)
            f.icmp.append((r.netns, r.value >> 8, r.value & 0xFF))
            return f
        if r.kind == STATE:
            return self._state(r)
        if r.kind == SK_ERROR:
            client = self._connecting.get(r.sk) or self._ended.get(r.sk)
            if client is not None:
                client.err = client.err or r.value
                client.icmp_error = client.icmp_error or r.state == SYN_SENT
            return None
        return None

    def _state(self, r: Record) -> Flow | None:
        if r.oldstate == SYN_RECV and r.state == ESTABLISHED:
            f = self._flow((r.saddr, r.sport, r.daddr, r.dport), r, new_attempt=bool(
                (cur := self.flows.get((r.saddr, r.sport, r.daddr, r.dport))) and cur.server_established_ns))
            f.server_established_ns, f.server_netns = r.ts_ns, r.netns
            if r.start_ns:  # the SYN the kernel held back, carried
                self._syn(f, r.start_ns, r.syn_netns, r.syn_ifindex)
            return f
        if r.state == SYN_SENT:
            self._connecting[r.sk] = Client(r.pid, r.comm, r.netns, r.ts_ns, (r.daddr, r.dport), r.saddr)
            return None
        if r.oldstate == SYN_SENT:
            client = self._connecting.pop(r.sk, None)
            if client is None:  # the kernel kept its start: the outcome carries it
                client = Client(r.pid, r.comm, r.netns, r.start_ns, (r.daddr, r.dport), r.saddr)
            client.icmp_error = client.icmp_error or bool(r.tcpflags & 1)
            client.end_ns, client.state, client.retransmits = r.ts_ns, r.state, r.extra
            client.err = client.err or r.value
            self._ended[r.sk] = client
            if len(self._ended) > 4096:  # a socket's error follows its CLOSE at once
                self._ended.pop(next(iter(self._ended)))
            key = (r.daddr, r.dport, r.saddr, r.sport)
            cur = self.flows.get(key)
            f = self._flow(key, r, new_attempt=cur is not None and cur.client is not None)
            f.client = client
            return f
        return None

    def _syn(self, f: Flow, ts_ns: int, netns: int, ifindex: int) -> None:
        f.syns_in += 1
        f.syn_netns, f.syn_ifindex = netns, ifindex
        f.first_syn_ns = min(f.first_syn_ns, ts_ns) if f.first_syn_ns else ts_ns
        f.first_ns = min(f.first_ns, ts_ns) if f.first_ns else ts_ns
        for fib in self._fib_waiting.pop(f.key, ()):  # its SYN-ACK's route lookup came first
            f.fib_errors.append(fib.value)

    def finish(self) -> None:
        """At the end: connect()s still waiting for an answer, whose local port no
        record gave, join the flow their SYNs opened (same server and client address,
        no client yet), or open their own (client port 0)."""
        for client in self._connecting.values():
            match = next((f for f in self.flows.values() if f.client is None and f.server == client.server
                          and f.key[2] == client.laddr), None)
            if match is None:
                match = self.flows.setdefault((*client.server, client.laddr, 0),
                                              Flow((*client.server, client.laddr, 0), first_ns=client.start_ns))
            match.client = client
        self._connecting.clear()


# ---- the state around the flows ---------------------------------------------------------


@dataclass(frozen=True)
class ListenerView:
    """A listener as the verdicts need it (netns.Listener plus its owner)."""

    netns: int
    ns_label: str
    family: int
    addr: str
    port: int
    queue: int
    backlog: int
    pid: int = 0
    comm: str = ""

    def accepts(self, addr: str) -> bool:
        if self.addr in ("0.0.0.0", "::") or self.addr == addr:
            return self.family == 10 or ":" not in addr
        return False

    @property
    def endpoint(self) -> str:
        return f"[{self.addr}]:{self.port}" if self.family == 10 else f"{self.addr}:{self.port}"

    @property
    def owner(self) -> str:
        return f"{printable(self.comm)} (pid {self.pid})" if self.pid else "no process holds it"

    @property
    def full(self) -> bool:
        return self.queue > self.backlog or (self.backlog > 0 and self.queue >= self.backlog)

    def figures(self) -> dict[str, Any]:
        return {"netns": self.ns_label, "netns_inode": self.netns, "address": self.addr, "port": self.port,
                "queue": self.queue, "backlog": self.backlog, "pid": self.pid or None, "comm": self.comm or None}


@dataclass(frozen=True)
class Rule:
    """An nftables rule (or a chain's policy, handle 0) that can drop or reject."""

    netns: int
    family: str
    table: str
    chain: str
    hook: str
    handle: int
    verdict: str  # drop / reject
    text: str
    ports: frozenset[int] = frozenset()  # ports its tcp dport/sport matches name
    packets: int | None = None  # its counter, when it has one

    @property
    def where(self) -> str:
        what = f"handle {self.handle}" if self.handle else "policy"
        return f"{self.family} {self.table} {self.chain} {what}"

    def figures(self) -> dict[str, Any]:
        return {"family": self.family, "table": self.table, "chain": self.chain, "hook": self.hook,
                "handle": self.handle or None, "verdict": self.verdict, "rule": self.text, "packets": self.packets}


@dataclass
class Facts:
    """What :func:`decide` knows besides the flow; filled by the command (or a test)."""

    labels: dict[int, str] = field(default_factory=dict)  # netns inode -> name
    paths: dict[int, str] = field(default_factory=dict)  # netns inode -> a path setns/nsenter can open
    listeners: list[ListenerView] = field(default_factory=list)
    counters: dict[int, dict[str, int]] = field(default_factory=dict)  # netns -> deltas since start
    rules: dict[int, list[Rule]] = field(default_factory=dict)  # netns -> rules
    rules_before: dict[tuple[int, str, int], int] = field(default_factory=dict)  # counters at start
    rp_filter: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)  # (netns, ifindex) -> (dev, value)
    routes: dict[tuple[int, str], str] = field(default_factory=dict)  # (netns, client) -> `ip route get`
    unaccepted: dict[FlowKey, float] = field(default_factory=dict)  # child seen unaccepted for N s
    accepted: set[FlowKey] = field(default_factory=set)  # child seen with a file (accepted)
    queue_static: dict[tuple[int, str, int], float] = field(default_factory=dict)  # listener -> s without shrinking
    reason_names: dict[int, str] = field(default_factory=dict)  # skb_drop_reason value -> name
    ifnames: dict[tuple[int, int], str] = field(default_factory=dict)  # (netns, ifindex) -> name
    # --dns: (address, netns inode) -> the host name last resolved to it there, or None;
    # unset when names were not asked for
    name_of: Callable[[str, int], str | None] | None = None
    now_ns: int = 0
    grace_s: float = 1.0
    ended: bool = False  # the trace is over: what is still open is final

    def label(self, netns: int) -> str:
        return self.labels.get(netns, f"netns:{netns}" if netns else "?")

    def enter(self, netns: int) -> str:
        """The prefix that runs a command in ``netns``: none for the host's,
        ``ip netns exec NAME`` for a named one, ``nsenter --net=PATH`` otherwise."""
        label = self.labels.get(netns, "")
        if label == "host":
            return ""
        if label and not label.startswith("netns:"):
            return f"ip netns exec {label} "
        return f"nsenter --net={self.paths.get(netns, '/proc/PID/ns/net')} "

    def delta(self, netns: int, name: str) -> int:
        return self.counters.get(netns, {}).get(name, 0)


# ---- verdicts -----------------------------------------------------------------------------


@dataclass
class Verdict:
    name: str
    flow: Flow
    netns: int
    why: str  # one plain sentence
    evidence: list[str] = field(default_factory=list)
    next_step: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    final: bool = True  # False: may still change as evidence arrives

    @property
    def failed(self) -> bool:
        return self.name in FAILED


def _reason(facts: Facts, value: str) -> str:
    try:
        return facts.reason_names.get(int(value), value)
    except ValueError:
        return value


def _in_ns(facts: Facts, netns: int) -> str:
    return f"in netns {facts.label(netns)}"


def _match_rules(facts: Facts, netns: int, port: int, hooks: tuple[str, ...]) -> list[Rule]:
    """The rules of ``netns`` that could have dropped it, likeliest first: naming the
    port, counting more packets than at start, on the path's hooks; then policies."""
    rules = [r for r in facts.rules.get(netns, []) if r.hook in hooks or not r.hook]

    def rank(r: Rule) -> tuple[int, int, int]:
        grew = r.packets is not None and r.packets > facts.rules_before.get((netns, r.where, r.handle), 0)
        return (port in r.ports, grew, r.handle != 0)

    return sorted(rules, key=rank, reverse=True)


def _client_words(flow: Flow, facts: Facts) -> str | None:
    c = flow.client
    if c is None:
        return None
    where = _in_ns(facts, c.netns)
    who = f"{printable(c.comm)} (pid {c.pid}, {where})" if c.pid else f"a client {where}"
    if not c.resolved:
        return f"client {who} still waiting after {c.syns} SYN{'s' if c.syns > 1 else ''}"
    if c.state == ESTABLISHED:
        return f"client {who} connected in {c.latency_ms:.3f} ms"
    syns = f"{c.syns} SYN{'s' if c.syns > 1 else ''}"
    if c.icmp_error:
        code = errno_name(c.err) if c.err else "code not kept by the socket"
        return f"client {who} was stopped by an ICMP error ({code}) after {syns}"
    if not c.err:
        return f"client {who} gave up (closed the socket) after {syns}, unanswered"
    return f"client {who} failed: {errno_name(c.err)} after {syns}"


def _listener_verdict(flow: Flow, facts: Facts, ns: int, v: Verdict) -> Verdict:
    addr, port = flow.server
    same_port = [lst for lst in facts.listeners if lst.port == port]
    here = [lst for lst in same_port if lst.netns == ns]
    if here:
        lst = here[0]
        v.name = "LISTENER_ON_OTHER_ADDRESS"
        v.why = (f"a server listens on port {port} {_in_ns(facts, ns)}, but bound to {lst.endpoint}, "
                 f"not to {addr}")
        v.evidence.append(f"listening there: {', '.join(f'{x.endpoint} {x.owner}' for x in here)}")
        v.next_step = f"make {lst.owner} listen on {addr} or on 0.0.0.0, or call {lst.endpoint}"
        v.figures["listeners"] = [x.figures() for x in here]
        return v
    elsewhere = sorted((lst for lst in same_port if lst.netns != ns), key=lambda x: not x.accepts(addr))
    if elsewhere:
        lst = elsewhere[0]
        v.name = "LISTENER_IN_OTHER_NAMESPACE"
        v.why = (f"nothing listens on port {port} {_in_ns(facts, ns)}, where the SYN arrived; "
                 f"{lst.owner} listens on {lst.endpoint} {_in_ns(facts, lst.netns)}")
        v.evidence.append("listening elsewhere: " + ", ".join(
            f"{x.endpoint} {x.owner} {_in_ns(facts, x.netns)}" for x in elsewhere))
        v.next_step = (f"run the server in netns {facts.label(ns)}, or route/forward the port to "
                       f"netns {facts.label(lst.netns)}")
        v.figures["listeners"] = [x.figures() for x in elsewhere]
        return v
    v.name = "NO_LISTENER"
    v.why = (f"nothing listens on port {port} {_in_ns(facts, ns)} (nor in any other namespace): "
             "the SYN was answered with a reset")
    v.next_step = f"start the server, or check the port (ss -ltnp in netns {facts.label(ns)})"
    return v


def _firewall_verdict(flow: Flow, facts: Facts, d: Drop, v: Verdict) -> Verdict:
    port = flow.server[1]
    if d.synack:
        hooks: tuple[str, ...] = ("prerouting", "input", "ingress")
        where = "the SYN-ACK on its way back into the client's namespace"
    elif d.output:
        hooks = ("output", "postrouting")
        where = "the SYN on its way out of the client"
    else:
        hooks = ("prerouting", "input", "ingress", "forward")
        where = "the SYN after it arrived"
    candidates = _match_rules(facts, d.netns, port, hooks)
    rejected = bool(flow.icmp) or (flow.client is not None and flow.client.resolved and (
        flow.client.icmp_error or flow.client.err in (ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, 13)))
    rule = candidates[0] if candidates else None
    if rule is not None and rule.verdict == "reject":
        rejected = True
    v.name = "FIREWALL_REJECT" if rejected else "FIREWALL_DROP"
    verb = "rejected" if rejected else "dropped"
    if rule is not None:
        v.why = f"a firewall rule {_in_ns(facts, d.netns)} {verb} {where}: {rule.where} \"{rule.text}\""
        v.figures["rule"] = rule.figures()
        v.next_step = (f"{facts.enter(d.netns)}nft -a list chain {rule.family} {rule.table} {rule.chain}; "
                       f"remove or narrow the rule" + (f" (nft delete rule {rule.family} {rule.table} {rule.chain} "
                                                      f"handle {rule.handle})" if rule.handle else ""))
    else:
        v.why = f"a netfilter rule {_in_ns(facts, d.netns)} {verb} {where} (nft shows no rule that names it)"
        v.next_step = f"list the rules in netns {facts.label(d.netns)}: nft -a list ruleset; iptables-save"
    if not d.synack and not d.output:
        v.evidence.append("tcpdump on the server still shows these SYNs: it taps packets before netfilter")
    for ns, typ, code in flow.icmp[:1]:
        v.evidence.append(f"ICMP sent back {_in_ns(facts, ns)}: type {typ} code {code} "
                          f"({ICMP_UNREACH_CODES.get(code, '?') if typ == ICMP_DEST_UNREACH else '?'})")
        v.figures["icmp"] = {"type": typ, "code": code}
    return v


def decide(flow: Flow, facts: Facts) -> Verdict | None:
    """The verdict for one flow, or None while it is too early to say (a SYN that
    arrived moments ago with nothing else seen yet)."""
    ns = flow.netns
    addr, port = flow.server
    v = Verdict("NO_ANSWER", flow, ns, "")
    c = flow.client
    syn_drops = [d for d in flow.drops if not d.synack]
    synack_drops = [d for d in flow.drops if d.synack]
    age_s = (facts.now_ns - flow.first_ns) / 1e9
    settled = facts.ended or age_s >= facts.grace_s
    v.figures.update({"syns": flow.syns, "syns_arrived": flow.syns_in, "synack_retransmits": flow.synack_retrans})
    client_words = _client_words(flow, facts)
    if c is not None:
        v.figures["client"] = {"pid": c.pid or None, "comm": c.comm or None, "netns": facts.label(c.netns),
                               "error": errno_name(c.err) if c.resolved and c.state != ESTABLISHED and c.err else None,
                               "gave_up": c.resolved and c.state != ESTABLISHED and not c.err and not c.icmp_error,
                               "icmp_error": c.icmp_error,
                               "syns_sent": c.syns if c.resolved else None, "latency_ms": c.latency_ms}

    def done(v: Verdict) -> Verdict:
        if flow.syns_in:
            v.evidence.insert(0, f"{plural(flow.syns_in, 'SYN')} arrived {_in_ns(facts, flow.syn_netns)}"
                              + (f" on {facts.ifnames[(flow.syn_netns, flow.syn_ifindex)]}"
                                 if (flow.syn_netns, flow.syn_ifindex) in facts.ifnames else ""))
        if client_words:
            v.evidence.append(client_words)
        v.netns = v.netns or ns
        # the namespace's own counters since the trace began (all its sockets, not this flow's)
        v.figures["netns_counters"] = {k: n for k, n in sorted(facts.counters.get(v.netns, {}).items()) if n}
        lst = _listener_for(facts, v.netns, addr, port)
        if lst is not None and "listener" not in v.figures:
            v.figures["listener"] = lst.figures()
            v.evidence.append(f"listener {lst.endpoint} {_in_ns(facts, lst.netns)}: {lst.owner}, "
                              f"accept queue {lst.queue}/{lst.backlog}")
        return v

    # 1. the handshake completed
    if flow.server_established_ns or (c is not None and c.state == ESTABLISHED):
        if flow.server_established_ns and flow.key not in facts.accepted:
            waited = facts.unaccepted.get(flow.key)
            if waited is not None and waited >= facts.grace_s:
                lst = _listener_for(facts, flow.server_netns, addr, port)
                v.name = "NOT_ACCEPTED"
                v.netns = flow.server_netns
                owner = lst.owner if lst else "the server"
                v.why = (f"the handshake completed, but {owner} has not accept()ed the connection "
                         f"in {waited:.1f} s: it waits in the accept queue")
                if lst:
                    v.evidence.append(
                        f"listener {lst.endpoint} {_in_ns(facts, lst.netns)}: accept queue {lst.queue}/{lst.backlog}"
                    )
                    v.figures["listener"] = lst.figures()
                v.figures["unaccepted_s"] = round(waited, 3)
                v.next_step = f"check why {owner} does not call accept() (blocked? busy? stack: cat /proc/PID/stack)"
                return done(v)
        v.name = "OK"
        lat = c.latency_ms if c is not None else None
        if lat is None and flow.server_established_ns and flow.first_syn_ns:
            lat = (flow.server_established_ns - flow.first_syn_ns) / 1e6
        v.figures["latency_ms"] = lat
        v.why = "connected" + (f" in {lat:.3f} ms" if lat is not None else "")
        return done(v)

    # 2. the kernel dropped the SYN and said why
    for d in syn_drops:
        reason = _reason(facts, d.reason)
        v.figures["drop_reason"] = reason
        v.netns = d.netns if not d.output else ns or d.netns
        if reason == "NETFILTER_DROP" and d.output:
            v.name = "TIMEOUT"
            v.netns = d.netns
            v.evidence.append(f"{plural(len(syn_drops), 'SYN')} dropped {_in_ns(facts, d.netns)} on the way out, "
                              "reason NETFILTER_DROP")
            v = _firewall_verdict(flow, facts, d, v)
            v.name = "TIMEOUT"
            v.why = f"the SYNs never left: {v.why}"
            return done(v)
        if reason == "NETFILTER_DROP":
            v.evidence.append(
                f"{plural(len(syn_drops), 'SYN')} dropped {_in_ns(facts, d.netns)}, reason NETFILTER_DROP"
            )
            return done(_firewall_verdict(flow, facts, d, v))
        if reason == "IP_RPFILTER":
            dev, value = facts.rp_filter.get((d.netns, flow.syn_ifindex or d.ifindex), ("?", -1))
            v.name = "RP_FILTER"
            route = facts.routes.get((d.netns, flow.key[2]))
            back = ("there is no route back to the client" if route and "unreachable" in route.lower()
                    else f"the route back to the client does not leave by {dev}")
            v.why = (f"reverse-path filtering {_in_ns(facts, d.netns)} dropped the SYN from {flow.key[2]} "
                     f"arriving on {dev}: {back}")
            v.evidence.append(
                f"{plural(len(syn_drops), 'SYN')} dropped, reason IP_RPFILTER; rp_filter={value} on {dev} "
                f"(the higher of conf/all and conf/{dev} applies)"
            )
            if route:
                v.evidence.append(f"route back to {flow.key[2]}: {route}")
            n = facts.delta(d.netns, "TcpExtIPReversePathFilter")
            if n:
                v.evidence.append(f"TcpExtIPReversePathFilter +{n} {_in_ns(facts, d.netns)}")
            v.figures.update({"device": dev, "rp_filter": value, "route_back": route,
                              "ip_reverse_path_filter": n})
            v.next_step = (f"add a route to {flow.key[2]} via {dev}, or set net.ipv4.conf.{dev}.rp_filter=2 "
                           f"(loose) in netns {facts.label(d.netns)}")
            return done(v)
        if reason == "NO_SOCKET":
            v.evidence.append(f"{plural(len(syn_drops), 'SYN')} dropped {_in_ns(facts, d.netns)}, reason NO_SOCKET")
            return done(_listener_verdict(flow, facts, d.netns, v))
        v.name = "DROPPED"
        v.why = f"the kernel dropped the SYN {_in_ns(facts, d.netns)}, reason {reason}"
        v.next_step = "look the reason up in the kernel's enum skb_drop_reason (include/net/dropreason-core.h)"
        return done(v)

    # 3. the SYN-ACK was dropped on this host
    for d in synack_drops:
        reason = _reason(facts, d.reason)
        v.figures["drop_reason"] = reason
        v.netns = ns or d.netns
        v.evidence.append(f"{plural(len(synack_drops), 'SYN-ACK')} dropped {_in_ns(facts, d.netns)}, reason {reason}")
        if reason == "NETFILTER_DROP":
            return done(_firewall_verdict(flow, facts, d, v))
        v.name = "SYNACK_UNANSWERED"
        v.why = f"the server answered, but its SYN-ACK was dropped {_in_ns(facts, d.netns)} ({reason}) on the way back"
        _route_back(v, facts, ns, flow.key[2])
        v.next_step = f"follow the SYN-ACK's path to {flow.key[2]} (neighbour entry, forwarding, the client's firewall)"
        return done(v)

    # 4. no route for the SYN-ACK: a failed lookup the namespace also counted (with
    # policy routing a lookup may miss one table and find the route in the next)
    no_routes = "Ip6OutNoRoutes" if flow.family == 10 else "IpOutNoRoutes"
    if flow.fib_errors and facts.delta(ns, no_routes) and not flow.synack_retrans:
        v.name = "NO_ROUTE_BACK"
        n = facts.delta(ns, no_routes)
        v.why = f"the SYN arrived {_in_ns(facts, ns)}, but the SYN-ACK has no route back to {flow.key[2]}"
        v.evidence.append(
            f"{plural(len(flow.fib_errors), 'failed route lookup')} from {addr}:{port} to {flow.key[2]}:{flow.key[3]} "
            f"(fib_table_lookup error {flow.fib_errors[0]})"
        )
        v.evidence.append(f"{no_routes} +{n} {_in_ns(facts, ns)}")
        route = facts.routes.get((ns, flow.key[2]))
        if route:
            v.evidence.append(f"ip route get {flow.key[2]}: {route}")
        v.figures.update({"ip_out_no_routes": n, "route_lookup_failures": len(flow.fib_errors), "route_back": route})
        v.next_step = (
            f"add a route to {flow.key[2]} in netns {facts.label(ns)} (ip route add {flow.key[2]} via GATEWAY)"
        )
        return done(v)

    # 5. a listener took the SYN, silently
    if flow.syns_in:
        lst = _listener_for(facts, ns, addr, port)
        overflows = facts.delta(ns, "TcpExtListenOverflows")
        if lst is not None and not flow.synack_retrans and (lst.full or overflows):
            if not settled:
                return None
            v.name = "ACCEPT_QUEUE_FULL"
            still = facts.queue_static.get((lst.netns, lst.addr, lst.port))
            v.why = (f"the accept queue of {lst.endpoint} {_in_ns(facts, ns)} is full ({lst.queue}/{lst.backlog}): "
                     f"{lst.owner} does not accept() fast enough, so new SYNs are ignored")
            v.evidence.append(f"accept queue {lst.queue}/{lst.backlog}; TcpExtListenOverflows +{overflows}, "
                              f"TcpExtListenDrops +{facts.delta(ns, 'TcpExtListenDrops')} {_in_ns(facts, ns)}")
            if still is not None:
                v.evidence.append(f"the queue did not shrink in the {still:.1f} s watched: no accept() meanwhile")
                v.figures["no_accept_s"] = round(still, 3)
            v.evidence.append("the SYNs are freed without a drop reason, so `drop` and tcpdump show nothing wrong")
            v.figures.update({"listener": lst.figures(), "listen_overflows": overflows,
                              "listen_drops": facts.delta(ns, "TcpExtListenDrops")})
            v.next_step = (f"make {lst.owner} accept() faster or raise its listen() backlog "
                           f"(and net.core.somaxconn, now capping it)")
            return done(v)
        cookies = facts.delta(ns, "TcpExtSyncookiesSent")
        qfull = facts.delta(ns, "TcpExtTCPReqQFullDrop") + facts.delta(ns, "TcpExtTCPReqQFullDoCookies")
        if lst is not None and (cookies or qfull) and not flow.synack_retrans:
            if not settled:
                return None
            v.name = "SYN_QUEUE_FULL"
            v.why = (f"the SYN queue of {lst.endpoint} {_in_ns(facts, ns)} is full: "
                     + ("SYNs are answered with SYN cookies" if cookies else "SYNs are dropped"))
            v.evidence.append(
                f"TcpExtSyncookiesSent +{cookies}, TcpExtTCPReqQFullDrop +{facts.delta(ns, 'TcpExtTCPReqQFullDrop')}, "
                f"TcpExtTCPReqQFullDoCookies +{facts.delta(ns, 'TcpExtTCPReqQFullDoCookies')}"
            )
            v.figures.update({"listener": lst.figures(), "syncookies_sent": cookies, "reqq_full": qfull})
            v.next_step = "raise the listen() backlog and net.ipv4.tcp_max_syn_backlog; look for a SYN flood"
            return done(v)
        if flow.synack_retrans:
            if not settled:
                return None
            v.name = "SYNACK_UNANSWERED"
            v.why = (
                f"the server {_in_ns(facts, ns)} answered with a SYN-ACK and retransmitted it "
                f"{plural(flow.synack_retrans, 'time')}; no ACK came back: "
                f"the reply is lost on the way to {flow.key[2]}"
            )
            v.next_step = (
                f"follow the path back to {flow.key[2]}: routes, the client's firewall, NAT, asymmetric routing"
            )
            _route_back(v, facts, ns, flow.key[2])
            if lst:
                v.figures["listener"] = lst.figures()
            return done(v)
        if not settled:
            return None
        if lst is None:
            # not dropped (no NO_SOCKET) and nobody here listens: routed on, or NATed
            v.name = "PASSED_ON"
            v.why = (
                f"{plural(flow.syns_in, 'SYN')} arrived {_in_ns(facts, ns)}, which has no listener for {addr}:{port} "
                f"and did not drop them: they were forwarded or NATed elsewhere"
            )
            v.next_step = "watch the port the SYNs are forwarded or NATed to (-P), or run why where they go"
            return done(v)
        v.name = "NO_ANSWER"
        v.why = (f"{plural(flow.syns_in, 'SYN')} arrived {_in_ns(facts, ns)} "
                 "and nothing on this host answered or dropped them")
        v.next_step = "capture on both ends (tcpdump) and compare: the loss is outside what the kernel reports"
        return done(v)

    # 6. only the client is on this host
    if c is not None:
        if not c.resolved:
            if not facts.ended:
                return None
            v.name = "TIMEOUT"
            v.netns = c.netns
            v.why = f"no answer to {plural(c.syns, 'SYN')} to {addr}:{port} yet when the trace ended"
            v.next_step = f"check the path to {addr}: ping, traceroute -T -p {port}; is the server up?"
            return done(v)
        if c.icmp_error:
            v.name = "UNREACHABLE"
            v.why = (f"an ICMP error stopped the connect() to {addr}:{port}"
                     + (f" ({errno_name(c.err)})" if c.err else "")
                     + ": a router or the host says it cannot be reached")
            v.next_step = f"check routes and firewalls towards {addr} (tcpdump -n icmp shows the error's type and code)"
        elif c.state == CLOSE and c.err == ECONNREFUSED:
            v.name = "REFUSED"
            v.why = f"{addr}:{port} refused the connection: nothing listens there, or a firewall rejects it"
            v.next_step = f"check that the server listens on {addr}:{port}"
        elif c.err in (ETIMEDOUT, 0):
            v.name = "TIMEOUT"
            v.why = (f"{plural(c.syns, 'SYN')} to {addr}:{port} got no answer"
                     + (" before the client gave up" if not c.err else ""))
            v.next_step = (
                f"check the path to {addr} (a firewall that drops, a host that is down): traceroute -T -p {port}"
            )
        elif c.err in (EHOSTUNREACH, ENETUNREACH, 13):
            v.name = "UNREACHABLE"
            v.why = f"an ICMP error says {addr} cannot be reached ({errno_name(c.err)})"
            v.next_step = f"check routes and firewalls towards {addr}"
        else:
            v.name = "UNREACHABLE"
            v.why = f"the connect() to {addr}:{port} ended with {errno_name(c.err)}"
            v.next_step = f"check the path to {addr}"
        v.netns = c.netns
        return done(v)
    return None


def _route_back(v: Verdict, facts: Facts, ns: int, client: str) -> None:
    route = facts.routes.get((ns, client))
    if route:
        v.evidence.append(f"the SYN-ACK leaves by: {route}")
        v.figures["route_back"] = route


def _listener_for(facts: Facts, ns: int, addr: str, port: int) -> ListenerView | None:
    for lst in facts.listeners:
        if lst.netns == ns and lst.port == port and lst.accepts(addr):
            return lst
    return None


# ---- grouping and reporting -------------------------------------------------------------


class Latencies:
    """Connect latencies, bounded whatever their number: a count per value rounded
    to three significant digits (of nanoseconds; at most ~900 values a decade), with
    the exact minimum and maximum. The median is the middle of those values (of the
    two middle ones when even), within 0.5 % of the exact one."""

    __slots__ = ("counts", "n", "low", "high")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.low = self.high = 0.0

    def add(self, ms: float) -> None:
        ns = max(0, round(ms * 1e6))
        if ns >= 1000:
            step = 10 ** (len(str(ns)) - 3)
            ns = (ns + step // 2) // step * step
        self.counts[ns] = self.counts.get(ns, 0) + 1
        self.low, self.high = (min(self.low, ms), max(self.high, ms)) if self.n else (ms, ms)
        self.n += 1

    def merge(self, other: "Latencies") -> "Latencies":
        out = Latencies()
        for src in (self, other):
            for ns, k in src.counts.items():
                out.counts[ns] = out.counts.get(ns, 0) + k
        if self.n and other.n:
            out.low, out.high = min(self.low, other.low), max(self.high, other.high)
        else:
            out.low, out.high = (self.low, self.high) if self.n else (other.low, other.high)
        out.n = self.n + other.n
        return out

    def values(self) -> list[float]:
        """Every latency as kept (rounded), ascending."""
        return [ns / 1e6 for ns in sorted(self.counts) for _ in range(self.counts[ns])]

    @property
    def median(self) -> float:
        want, seen = ((self.n - 1) // 2, self.n // 2), 0
        middle: list[int] = []
        for ns in sorted(self.counts):
            seen += self.counts[ns]
            while len(middle) < 2 and seen > want[len(middle)]:
                middle.append(ns)
            if len(middle) == 2:
                break
        return sum(middle) / 2 / 1e6


@dataclass
class Group:
    """Attempts with the same verdict, server and namespace: those kept whole, and
    succeeded ones folded into counts (a storm of good connections costs no memory
    per connection)."""

    verdicts: list[Verdict] = field(default_factory=list)
    folded: int = 0
    folded_syns: int = 0
    folded_clients: set[str] = field(default_factory=set)
    latencies: Latencies = field(default_factory=Latencies)  # of the folded attempts
    sample: Verdict | None = None  # a folded attempt, to speak for them

    def fold(self, v: Verdict) -> None:
        self.fold_counts(v.flow.syns, v.flow.key[2], v.figures.get("latency_ms"))
        if self.sample is None:
            self.sample = v

    def fold_counts(self, syns: int, client: str, latency_ms: float | None) -> None:
        """Count one succeeded attempt without keeping it (a sample is set apart)."""
        self.folded += 1
        self.folded_syns += syns
        self.folded_clients.add(client)
        if latency_ms is not None:
            self.latencies.add(latency_ms)

    def copy(self) -> "Group":
        return Group([], self.folded, self.folded_syns, self.folded_clients, self.latencies, self.sample)

    @property
    def first(self) -> Verdict:
        """The attempt that speaks for the group: the one with the most evidence."""
        if not self.verdicts:
            assert self.sample is not None
            return self.sample
        return max(reversed(self.verdicts), key=lambda v: len(v.evidence))

    @property
    def name(self) -> str:
        return self.first.name

    @property
    def attempts(self) -> int:
        return len(self.verdicts) + self.folded

    @property
    def clients(self) -> list[str]:
        return sorted({v.flow.key[2] for v in self.verdicts} | self.folded_clients)

    @property
    def syns(self) -> int:
        return sum(v.flow.syns for v in self.verdicts) + self.folded_syns

    @property
    def all_latencies(self) -> list[float]:
        return self.latency_summary().values()

    def latency_summary(self) -> Latencies:
        """The folded attempts' latencies and those of the attempts kept whole."""
        kept = Latencies()
        for v in self.verdicts:
            if v.figures.get("latency_ms") is not None:
                kept.add(v.figures["latency_ms"])
        return self.latencies.merge(kept)

    def server_name(self, facts: Facts) -> str | None:
        """The host name this machine last resolved to the server's address, where the
        client asked (its namespace; the verdict's when the client is not on this host)."""
        if facts.name_of is None:
            return None
        v = self.first
        client = v.flow.client
        return facts.name_of(v.flow.server[0], client.netns if client is not None and client.netns else v.netns)

    def headline(self, facts: Facts) -> str:
        addr, port = self.first.flow.server
        n, clients = self.attempts, self.clients
        count = (f"x{len(clients)} client{'s' if len(clients) > 1 else ''}, {n} attempt{'s' if n > 1 else ''}, "
                 f"{self.syns} SYN{'s' if self.syns != 1 else ''}")
        name = self.server_name(facts)
        named = f" ({name})" if name else ""
        return f"{self.name}  {addr}:{port}{named} {_in_ns(facts, self.first.netns)} ({count})"

    def record(self, facts: Facts) -> dict[str, Any]:
        v = self.first
        lats = self.latency_summary()
        out = {"type": "verdict", "verdict": v.name, "netns": facts.label(v.netns), "netns_inode": v.netns,
               "address": v.flow.server[0], "port": v.flow.server[1],
               **({"name": self.server_name(facts)} if facts.name_of is not None else {}), "clients": self.clients,
               "attempts": self.attempts, "syns": self.syns, "why": v.why, "evidence": v.evidence,
               "next": v.next_step or None, **{k: x for k, x in v.figures.items() if k not in ("syns",)}}
        if lats.n:
            out["latency_ms"] = {"min": lats.low, "median": lats.median, "max": lats.high}
        if v.name != "OK":  # every failing attempt; succeeded ones are only counted
            out["flows"] = [{"client": f"{x.flow.key[2]}:{x.flow.key[3]}", "syns": x.flow.syns} for x in self.verdicts]
        return out

    def lines(self, facts: Facts) -> list[str]:
        v = self.first
        out = [self.headline(facts), f"  {v.why}"]
        if self.attempts > 1:
            out.append(f"  evidence from one attempt of {self.attempts} (--json lists them all):")
        out += [f"  evidence: {e}" for e in v.evidence]
        if v.next_step:
            out.append(f"  next: {v.next_step}")
        return [printable(line) for line in out]


GroupKey = tuple[str, int, str, int]  # verdict, netns, server address, server port


def group_key(v: Verdict) -> GroupKey:
    return (v.name, v.netns, v.flow.server[0], v.flow.server[1])


def group(verdicts: Iterable[Verdict], folded: dict[GroupKey, Group] | None = None) -> list[Group]:
    """Verdicts by verdict, namespace and server, failures first; ``folded`` holds
    the counts of attempts already folded away (see :meth:`Group.fold`)."""
    groups: dict[GroupKey, Group] = {k: g.copy() for k, g in (folded or {}).items()}
    for v in verdicts:
        groups.setdefault(group_key(v), Group()).verdicts.append(v)
    return sorted(groups.values(), key=lambda g: (g.name == "OK", g.name, g.first.flow.server))


def healthy_line(groups: list[Group]) -> str:
    """One line for a run where every attempt succeeded (or none was seen)."""
    attempts = sum(g.attempts for g in groups)
    if not attempts:
        return "OK: no TCP connection attempts seen"
    lats = Latencies()
    for g in groups:
        lats = lats.merge(g.latency_summary())
    median = f" (median connect {lats.median:.3f} ms)" if lats.n else ""
    ports = sorted({g.first.flow.server[1] for g in groups})
    return (f"OK: {attempts} connection attempt{'s' if attempts > 1 else ''} to port{'s' if len(ports) > 1 else ''} "
            f"{','.join(map(str, ports))}, all connected{median}")


# ---- nftables ---------------------------------------------------------------------------


def nft_rules(text: str, netns: int) -> list[Rule]:
    """The rules (and chain policies) that drop or reject, from ``nft -j list ruleset``."""
    try:
        items = json.loads(text).get("nftables", [])
    except (ValueError, AttributeError):
        return []
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    out: list[Rule] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if "chain" in item:
            ch = item["chain"]
            chains[(ch.get("family", ""), ch.get("table", ""), ch.get("name", ""))] = ch
            if ch.get("policy") == "drop":
                out.append(Rule(netns, ch.get("family", ""), ch.get("table", ""), ch.get("name", ""),
                                ch.get("hook", ""), 0, "drop", "policy drop"))
        elif "rule" in item:
            r = item["rule"]
            exprs = r.get("expr", [])
            verdict = next((k for e in exprs if isinstance(e, dict) for k in e if k in ("drop", "reject")), None)
            if verdict is None:
                continue
            ch = chains.get((r.get("family", ""), r.get("table", ""), r.get("chain", "")), {})
            packets = next((e["counter"].get("packets") for e in exprs
                            if isinstance(e, dict) and isinstance(e.get("counter"), dict)), None)
            out.append(Rule(netns, r.get("family", ""), r.get("table", ""), r.get("chain", ""), ch.get("hook", ""),
                            int(r.get("handle", 0)), verdict, _rule_text(exprs), frozenset(_rule_ports(exprs)),
                            packets))
    return out


def _operand(x: Any) -> str:
    if isinstance(x, dict):
        if "payload" in x:
            p = x["payload"]
            return f"{p.get('protocol', '')} {p.get('field', '')}".strip()
        if "meta" in x:
            return f"meta {x['meta'].get('key', '')}"
        if "set" in x:
            return "{ " + ", ".join(_operand(i) for i in x["set"]) + " }"
        if "range" in x:
            return "-".join(_operand(i) for i in x["range"])
        if "prefix" in x:
            return f"{x['prefix'].get('addr')}/{x['prefix'].get('len')}"
        return next(iter(x), "?")
    if isinstance(x, list):
        return ",".join(_operand(i) for i in x)
    return str(x)


def _rule_text(exprs: list[Any]) -> str:
    parts = []
    for e in exprs:
        if not isinstance(e, dict):
            continue
        if "match" in e:
            m = e["match"]
            op = m.get("op", "==")
            parts.append(
                f"{_operand(m.get('left'))} {'' if op in ('==', 'in') else op + ' '}{_operand(m.get('right'))}"
            )
        elif "counter" in e:
            c = e["counter"] if isinstance(e["counter"], dict) else {}
            parts.append(f"counter packets {c.get('packets', 0)}")
        elif "reject" in e:
            r = e["reject"] if isinstance(e["reject"], dict) else {}
            parts.append("reject" + (f" with {r.get('type')}" if r.get("type") else ""))
        elif "drop" in e:
            parts.append("drop")
    return " ".join(parts)


def _rule_ports(exprs: list[Any]) -> set[int]:
    ports: set[int] = set()
    for e in exprs:
        m = e.get("match") if isinstance(e, dict) else None
        if not m:
            continue
        left = m.get("left")
        if not (isinstance(left, dict) and "payload" in left and left["payload"].get("field") in ("dport", "sport")):
            continue
        ports |= _ports_of(m.get("right"))
    return ports


def _ports_of(x: Any) -> set[int]:
    if isinstance(x, int):
        return {x}
    if isinstance(x, dict):
        if "set" in x:
            return set().union(*(_ports_of(i) for i in x["set"])) if x["set"] else set()
        if "range" in x and len(x["range"]) == 2 and all(isinstance(i, int) for i in x["range"]):
            lo, hi = x["range"]
            return set(range(lo, min(hi, lo + 4096) + 1))
    if isinstance(x, list):
        return set().union(*(_ports_of(i) for i in x)) if x else set()
    return set()


def decide_all(recorder: Recorder, facts: Facts, keep: Callable[[Flow], bool] = lambda f: True) -> list[Verdict]:
    out = []
    for flow in recorder.all_flows():
        if not keep(flow):
            continue
        v = decide(flow, facts)
        if v is not None:
            out.append(v)
    return out
