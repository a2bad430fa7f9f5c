"""netsnoop overview: the network half of "Linux performance analysis in 60 seconds", for
every network namespace at once, in one screen.

The kernel's counters (``nstat``, ``/proc/net/dev``, ``ss``) are read inside each
namespace at the start and at the end of the sample; the BPF programs of ``connect``
(outcomes, with owner and latency) and ``drop`` (counted by namespace and reason in the kernel) add
who and why. Findings that need attention come first, each naming who and where and
the command to run next.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import click

from netsnoop import dns, netns
from netsnoop import options as o
from netsnoop.errors import NetsnoopError
from netsnoop.commands.drop import NORMAL_LABEL, NORMAL_REASONS
from netsnoop.fmt import addr, comm, printable, tcp_state
from netsnoop.runner import StopFlag, LoadSpec, ready

# Resets received, per namespace: the kernel counts only those it sends (TcpOutRsts).
RESETS = LoadSpec("resets")
TOP_ROWS = 5  # flows and destinations on the screen
DROP_ROWS = 10  # (namespace, reason) pairs of drops on the screen
JSON_ROWS = 100  # ... and in --json: a bound, so that a storm cannot make the record huge
RETRANS_SHARE_WARN = 0.01  # a namespace retransmitting more than 1 % of its segments
RETRANS_MIN_SEGMENTS = 100  # ... out of enough segments for the share to mean something
TCP_CLOSE_WAIT = 8
# A drop the kernel gives no reason for is shown, but is no finding: nothing says why.
NO_REASON = "NOT_SPECIFIED"


@dataclass
class Snapshot:
    """What the kernel's own counters say, per namespace (inode), at one moment."""

    at: float
    spaces: dict[int, netns.Netns]
    counters: dict[int, dict[str, int]] = field(default_factory=dict)
    interfaces: dict[int, list[netns.Interface]] = field(default_factory=dict)
    sockets: dict[int, list[netns.DiagSocket]] = field(default_factory=dict)
    softirqs: dict[str, int] = field(default_factory=dict)
    cpu_ticks: tuple[int, int] = (0, 0)  # (softirq, all) jiffies over all CPUs


def take_snapshot() -> Snapshot:
    snap = Snapshot(time.monotonic(), {n.inode: n for n in netns.namespaces()})
    for ino, ns in list(snap.spaces.items()):
        try:
            snap.counters[ino] = netns.counters(ns)
            snap.interfaces[ino] = netns.interfaces(ns)
            snap.sockets[ino] = netns.tcp_sockets(ns, info=True)
        except OSError:  # the namespace went away meanwhile
            del snap.spaces[ino]
    snap.softirqs = _softirqs()
    snap.cpu_ticks = _cpu_ticks()
    return snap


def _softirqs() -> dict[str, int]:
    """/proc/softirqs: each vector's count summed over CPUs."""
    try:
        with open("/proc/softirqs") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return {}
    return {line.split(":")[0].strip(): sum(int(x) for x in line.split(":")[1].split()) for line in lines}


def _cpu_ticks() -> tuple[int, int]:
    """(softirq, total) jiffies of all CPUs, from /proc/stat's first line."""
    try:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return (0, 0)
    return (values[6] if len(values) > 6 else 0, sum(values[:8]))


@dataclass
class Evidence:
    """What the BPF programs saw meanwhile: connect attempts as they resolved, and
    drops counted by namespace and reason; ``unavailable`` says why a part is missing."""

    connects: list[dict[str, Any]] = field(default_factory=list)
    drops: list[dict[str, Any]] = field(default_factory=list)  # netns, netns_inode, reason, count
    rtt: dict[tuple[int, str], Any] = field(default_factory=dict)  # (netns inode, remote address) -> Log2Hist (us)
    # --dns: (netns inode, remote address) -> the name last resolved to it there, for the
    # sockets of the end snapshot; None when names were not asked for (no "name" keys then)
    names: dict[tuple[int, str], str | None] | None = None
    resets_received: dict[int, int] = field(default_factory=dict)  # namespace inode -> resets
    lost_events: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)


def per_second(delta: int, seconds: float) -> float:
    return delta / seconds if seconds > 0 else 0.0


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (the value at least ``q`` of the samples do not
    exceed), None without samples."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-int(q * 100) * len(ordered) // 100) - 1))]


def slot_percentile(hist: Any, q: float) -> int | None:
    """The upper bound of the log2 slot holding the ``q`` quantile of a histogram (the
    quantile is at most this), None when it is empty."""
    from netsnoop.hist import slot_range

    if not hist.count:
        return None
    need, seen = q * sum(hist.slots), 0
    for i, n in enumerate(hist.slots):
        seen += n
        if n and seen >= need:
            return slot_range(i)[1]
    return slot_range(len(hist.slots) - 1)[1]


def build_report(before: Snapshot, after: Snapshot, evidence: Evidence,
                 owners: dict[int, netns.Owner]) -> dict[str, Any]:
    """Everything the screen shows, as exact figures: pure, so it is tested from
    recorded snapshots without a kernel."""
    seconds = after.at - before.at
    # a namespace seen at both ends; one whose counters went down was deleted meanwhile and
    # its inode given to a new one (the kernel reuses them): its deltas would be nonsense
    spaces = {ino: ns for ino, ns in after.spaces.items() if ino in before.spaces
              and all(v >= before.counters.get(ino, {}).get(k, 0) for k, v in after.counters.get(ino, {}).items())}

    def who(inode: int) -> dict[str, Any]:
        o = owners.get(inode)
        return {"pid": o.pid, "comm": o.comm} if o else {"pid": None, "comm": None}

    interfaces = []
    for ino, ns in spaces.items():
        old = {i.name: i for i in before.interfaces.get(ino, [])}
        for i in after.interfaces.get(ino, []):
            p = old.get(i.name)
            if p is None:
                continue
            interfaces.append({
                "netns": ns.label, "netns_inode": ino, "interface": i.name,
                "rx_packets": i.rx_packets - p.rx_packets, "tx_packets": i.tx_packets - p.tx_packets,
                "rx_bytes": i.rx_bytes - p.rx_bytes, "tx_bytes": i.tx_bytes - p.tx_bytes,
                "rx_dropped": i.rx_dropped - p.rx_dropped, "tx_dropped": i.tx_dropped - p.tx_dropped,
                "rx_errors": i.rx_errors - p.rx_errors, "tx_errors": i.tx_errors - p.tx_errors,
            })

    tcp = []
    for ino, ns in spaces.items():
        a, b = after.counters.get(ino, {}), before.counters.get(ino, {})

        def d(name: str, a: dict[str, int] = a, b: dict[str, int] = b) -> int:
            return a.get(name, 0) - b.get(name, 0)

        states = Counter(tcp_state(s.state) for s in after.sockets.get(ino, []))
        tcp.append({
            "netns": ns.label, "netns_inode": ino,
            "active_opens": d("TcpActiveOpens"), "passive_opens": d("TcpPassiveOpens"),
            "failed_connects": d("TcpAttemptFails"), "resets_sent": d("TcpOutRsts"),
            "resets_received": evidence.resets_received.get(ino, 0),
            "established_resets": d("TcpEstabResets"),
            "segments_sent": d("TcpOutSegs"), "retransmitted_segments": d("TcpRetransSegs"),
            "listen_overflows": d("TcpExtListenOverflows"), "listen_drops": d("TcpExtListenDrops"),
            "states": dict(sorted(states.items())),
        })

    flows = []
    for ino, ns in spaces.items():
        old_socks = {(s.laddr, s.lport, s.raddr, s.rport): s for s in before.sockets.get(ino, [])}
        for s in after.sockets.get(ino, []):
            prev = old_socks.get((s.laddr, s.lport, s.raddr, s.rport))
            if prev is None or s.bytes_acked is None or prev.bytes_acked is None:
                continue
            sent, received = s.bytes_acked - prev.bytes_acked, (s.bytes_received or 0) - (prev.bytes_received or 0)
            if sent or received:
                samples = evidence.rtt.get((ino, s.raddr))
                flows.append({"netns": ns.label, "netns_inode": ino, "local": _endpoint(s.laddr, s.lport),
                              "remote": _endpoint(s.raddr, s.rport),
                              **({"name": evidence.names.get((ino, s.raddr))} if evidence.names is not None else {}),
                              "bytes_sent": sent, "bytes_received": received,
                              "srtt_ms": (s.rtt_us or 0) / 1000,
                              "rtt_p50_us_at_most": slot_percentile(samples, 0.5) if samples else None,
                              "rtt_p99_us_at_most": slot_percentile(samples, 0.99) if samples else None,
                              **who(s.inode)})
    flows.sort(key=lambda f: -(f["bytes_sent"] + f["bytes_received"]))

    listeners = []
    overflows = {t["netns_inode"]: t["listen_overflows"] for t in tcp}
    for ino, ns in spaces.items():
        for s in after.sockets.get(ino, []):
            if s.state == netns.TCP_LISTEN:
                listeners.append({"netns": ns.label, "netns_inode": ino, "local": _endpoint(s.laddr, s.lport),
                                  "port": s.lport, "queue": s.rqueue, "limit": s.wqueue,
                                  "namespace_listen_overflows": overflows[ino], **who(s.inode)})

    close_wait = []
    for ino, ns in spaces.items():
        earlier = {
            (s.laddr, s.lport, s.raddr, s.rport) for s in before.sockets.get(ino, []) if s.state == TCP_CLOSE_WAIT
        }
        for s in after.sockets.get(ino, []):
            if s.state == TCP_CLOSE_WAIT and (s.laddr, s.lport, s.raddr, s.rport) in earlier:
                close_wait.append({"netns": ns.label, "netns_inode": ino, "local": _endpoint(s.laddr, s.lport),
                                   "remote": _endpoint(s.raddr, s.rport), **who(s.inode)})

    destinations: dict[tuple[str, str], dict[str, Any]] = {}
    for c in evidence.connects:
        key = (c["netns"], c["remote"])
        dst = destinations.setdefault(key, {"netns": c["netns"], "remote": c["remote"], "attempts": 0,
                                            "latencies_ms": [], "failures": Counter(), "owners": Counter()})
        if "name" in c:  # the name last resolved to it when an attempt was made
            dst["name"] = c["name"] or dst.get("name")
        dst["attempts"] += 1
        dst["owners"][(c["pid"], c["comm"])] += 1
        if c["outcome"] == "ESTABLISHED":
            dst["latencies_ms"].append(c["latency_ms"])
        else:
            dst["failures"][c["outcome"]] += 1
    connects = []
    for dst in sorted(destinations.values(), key=lambda x: (-sum(x["failures"].values()), -x["attempts"])):
        (pid, name), _n = dst["owners"].most_common(1)[0]
        connects.append({"netns": dst["netns"], "remote": dst["remote"],
                         **({"name": dst["name"]} if "name" in dst else {}), "attempts": dst["attempts"],
                         "p50_ms": percentile(dst["latencies_ms"], 0.5),
                         "p99_ms": percentile(dst["latencies_ms"], 0.99),
                         "failures": dict(dst["failures"]), "pid": pid, "comm": name})

    softirq: dict[str, float] = {k: after.softirqs.get(k, 0) - before.softirqs.get(k, 0) for k in ("NET_RX", "NET_TX")}
    ticks = after.cpu_ticks[1] - before.cpu_ticks[1]
    softirq["cpu_share"] = (after.cpu_ticks[0] - before.cpu_ticks[0]) / ticks if ticks > 0 else 0.0

    report = {
        "seconds": round(seconds, 3), "namespaces": len(spaces), "interfaces": interfaces, "tcp": tcp,
        "flows": flows[:JSON_ROWS], "connects": connects[:JSON_ROWS], "drops": evidence.drops[:JSON_ROWS],
        "listeners": listeners, "close_wait": close_wait, "softirqs": softirq,
        "lost_events": evidence.lost_events, "unavailable": evidence.unavailable,
    }
    report["findings"] = findings(report)
    return report


def findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """What needs attention, worst first: each names who and where, and what to run next."""
    out: list[dict[str, Any]] = []

    def add(kind: str, text: str, next_step: str, **figures: Any) -> None:
        out.append({"kind": kind, "text": text, "next": next_step, **figures})

    for li in report["listeners"]:
        if li["queue"] > li["limit"]:  # the kernel's sk_acceptq_is_full()
            add("accept_queue_full",
                f"accept queue full: {li['local']} in {li['netns']} ({_owner(li)}): {li['queue']} queued, "
                f"limit {li['limit']}; {li['namespace_listen_overflows']} listen overflows in {li['netns']}",
                f"netsnoop why -P {li['port']}", netns=li["netns"], port=li["port"], pid=li["pid"],
                queue=li["queue"], limit=li["limit"], listen_overflows=li["namespace_listen_overflows"])
    for c in report["connects"]:
        for outcome, n in sorted(c["failures"].items()):
            add("connect_failed", f"{n} connect{'s' if n > 1 else ''} to {_remote(c)} {outcome} in {c['netns']} "
                f"({_owner(c)})", "netsnoop connect --outcome", netns=c["netns"], remote=c["remote"],
                **({"name": c["name"]} if "name" in c else {}), outcome=outcome, count=n, pid=c["pid"])
    for t in report["tcp"]:
        sent, retrans = t["segments_sent"], t["retransmitted_segments"]
        if sent >= RETRANS_MIN_SEGMENTS and retrans / sent > RETRANS_SHARE_WARN:
            add("retransmits", f"{retrans / sent:.1%} of segments retransmitted in {t['netns']} "
                f"({retrans} of {sent})", "netsnoop retrans", netns=t["netns"], retransmitted_segments=retrans,
                segments_sent=sent)
        if t["failed_connects"] and not any(c["netns"] == t["netns"] and c["failures"] for c in report["connects"]):
            add("connect_failed", f"{t['failed_connects']} connects failed in {t['netns']} (TcpAttemptFails)",
                "netsnoop connect --outcome", netns=t["netns"], count=t["failed_connects"])
    for d in report["drops"]:
        reason, n, where = d["reason"], d["count"], d["netns"]
        if reason not in NORMAL_REASONS and reason != NO_REASON:
            add("drops", f"{n} TCP packet{'s' if n > 1 else ''} dropped in {where}: {reason}",
                f"netsnoop drop --reason {reason} --netns {d['netns_inode']}", netns=where, reason=reason, count=n)
    for i in report["interfaces"]:
        bad = i["rx_dropped"] + i["tx_dropped"] + i["rx_errors"] + i["tx_errors"]
        if bad:
            add("interface", f"{i['interface']} in {i['netns']}: {i['rx_dropped'] + i['tx_dropped']} dropped, "
                f"{i['rx_errors'] + i['tx_errors']} errors", f"netsnoop netqtop -n {i['interface']}",
                netns=i["netns"], interface=i["interface"])
    owners = Counter((c["netns"], c["pid"], c["comm"]) for c in report["close_wait"])
    for (where, pid, name), n in owners.items():
        add("close_wait", f"{n} socket{'s' if n > 1 else ''} stuck in CLOSE_WAIT in {where} "
            f"({_owner({'pid': pid, 'comm': name})}): the peer closed, the application has not",
            f"ss -tanp state close-wait (in {where})", netns=where, pid=pid, count=n)
    return out


def _owner(row: dict[str, Any]) -> str:
    return f"{row['comm']}, pid {row['pid']}" if row.get("pid") else "owner unknown"


def _remote(row: dict[str, Any]) -> str:
    """The remote end, with the name this machine last resolved to it (--dns) if any."""
    return f"{row['remote']} ({row['name']})" if row.get("name") else row["remote"]


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# ---- BPF evidence ---------------------------------------------------------------------

def gather(seconds: float, progress: Callable[[float], None],
           names: Any = None) -> tuple[Snapshot, Snapshot, Evidence]:
    """Snapshot, watch for ``seconds`` with the connect and drop programs, snapshot;
    ``names`` (a :class:`netsnoop.dns.Watcher`, --dns) names the remote ends."""
    from netsnoop import conn
    from netsnoop.commands import connect as connect_cmd
    from netsnoop.commands import drop as drop_cmd
    from netsnoop.commands import rtt as rtt_cmd

    evidence = Evidence()
    objects = []
    try:
        for name, opener in (("connects", lambda: connect_cmd.TRACER.open({"report_mode": connect_cmd.OUTCOME})),
                             ("drops", lambda: drop_cmd.TRACER.open({"count_only": 1, "with_stack": 0})),
                             ("rtt", lambda: rtt_cmd.TRACER.open({"key_by": rtt_cmd.KEY_RADDR, "unit_div": 1,
                                                                  "by_netns": 1})),
                             ("resets", lambda: RESETS.open())):
            try:
                objects.append((name, opener()))
            except NetsnoopError as err:
                evidence.unavailable[name] = str(err)
        before = take_snapshot()
        spaces = dict(before.spaces)
        connect_obj = next((obj for name, obj in objects if name == "connects"), None)
        feed = (connect_obj.ring_buffer(), connect_obj.decoder("event")) if connect_obj else None
        ready("Sampling... Hit Ctrl-C to end early.")
        with StopFlag(seconds) as stop:
            while not stop:
                progress(time.monotonic() - before.at)
                if feed is not None:
                    ring, decoder = feed
                    for e in ring.poll_events(stop.remaining_ms(100), decoder):
                        evidence.connects.append(_connect_record(e, spaces, conn, names))
                else:
                    time.sleep(min(0.1, stop.remaining_ms(100) / 1000))
        after = take_snapshot()
        if feed is not None:
            ring, decoder = feed
            while events := ring.read_events(decoder):
                evidence.connects.extend(_connect_record(e, spaces, conn, names) for e in events)
        for name, obj in objects:
            evidence.lost_events += obj.health()["lost_events"]
            if name == "drops":
                evidence.drops = _drops_by_reason(obj, drop_cmd, {**spaces, **after.spaces})
            if name == "resets":
                evidence.resets_received = {struct.unpack("=I", k)[0]: struct.unpack("=Q", v)[0]
                                            for k, v in obj.map("received").items()}
            if name == "rtt":
                from netsnoop.hist import read_hists

                evidence.rtt = {(k.netns, addr(k.family, k.addr)): h for k, h in read_hists(obj, "rtts", "rtt_key")}
        if names is not None:
            evidence.names = {(ino, s.raddr): names.name_of(s.family, s.raddr, ino)
                              for ino, socks in after.sockets.items() for s in socks if s.state != netns.TCP_LISTEN}
        return before, after, evidence
    finally:
        for _name, obj in objects:
            obj.close()


def _connect_record(e: Any, spaces: dict[int, netns.Netns], conn: Any, names: Any) -> dict[str, Any]:
    where = spaces.get(e.netns)
    return {"netns": where.label if where else f"netns:{e.netns}",
            "remote": _endpoint(addr(e.family, e.daddr), e.dport),
            **({"name": names.name_of(e.family, e.daddr, e.netns)} if names is not None else {}),
            "outcome": conn.outcome(e.state, e.err), "latency_ms": e.lat_ns / 1e6, "pid": e.pid, "comm": comm(e.comm)}


def _drops_by_reason(obj: Any, drop_cmd: Any, spaces: dict[int, netns.Netns]) -> list[dict[str, Any]]:
    """The drop program's counts summed per namespace and reason, most first."""
    from netsnoop.btf import StructDecoder

    key = StructDecoder(obj.btf, "drop_key")
    out: Counter[tuple[int, str]] = Counter()
    for raw_key, raw_value in obj.map("counts").items():
        k = key.decode(raw_key)
        out[k.netns, drop_cmd.reason_name(k.reason)] += struct.unpack_from("=Q", raw_value)[0]
    return [{"netns": spaces[ino].label if ino in spaces else f"netns:{ino}", "netns_inode": ino, "reason": reason,
             "count": n} for (ino, reason), n in out.most_common()]


# ---- the screen ----------------------------------------------------------------------

def host_line(report: dict[str, Any]) -> str:
    load = _read_first("/proc/loadavg").split()[:3]
    uptime = float(_read_first("/proc/uptime").split()[0] or 0)
    return (f"netsnoop overview: {report['seconds']:.1f} s sampled; kernel {os.uname().release}, "
            f"{os.cpu_count()} CPUs, load {' '.join(load)}, up {uptime / 3600:.1f} h, "
            f"{report['namespaces']} network namespace{'s' if report['namespaces'] != 1 else ''}")


def _read_first(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline()
    except OSError:
        return ""


def render(report: dict[str, Any]) -> list[str]:
    """The text screen: findings first, then each section that has something."""
    s = report["seconds"] or 1.0
    lines = [host_line(report), ""]
    for f in report["findings"]:
        lines.append(f"! {f['text']}  -> {f['next']}")
    if not report["findings"]:
        lines.append("No problem found: no failed connect, overflowing listener, retransmission storm, "
                     "unusual drop or interface error in any namespace.")
    busy = [i for i in report["interfaces"] if i["rx_packets"] or i["tx_packets"]]
    if busy:
        lines += ["", "INTERFACES (every namespace)   rx pkt/s  rx Mb/s  tx pkt/s  tx Mb/s  dropped  errors"]
        for i in busy:
            lines.append(
                f"  {_cut(i['netns'] + '/' + i['interface'], 28):28} {i['rx_packets'] / s:9.0f} "
                f"{i['rx_bytes'] * 8 / s / 1e6:8.2f} {i['tx_packets'] / s:9.0f} {i['tx_bytes'] * 8 / s / 1e6:8.2f} "
                f"{i['rx_dropped'] + i['tx_dropped']:8d} {i['rx_errors'] + i['tx_errors']:7d}"
            )
    active = [t for t in report["tcp"] if t["active_opens"] or t["passive_opens"] or t["segments_sent"]
              or t["failed_connects"] or t["resets_sent"] or t["resets_received"]]
    if active:
        lines += ["", "TCP PER SECOND (every namespace)  active passive  failed  rst-out  rst-in retrans  retrans%  "
                  "estab  close_wait"]
        for t in active:
            share = t["retransmitted_segments"] / t["segments_sent"] if t["segments_sent"] else 0.0
            lines.append(f"  {_cut(t['netns'], 31):31} {t['active_opens'] / s:6.1f} {t['passive_opens'] / s:7.1f} "
                         f"{t['failed_connects'] / s:7.1f} {t['resets_sent'] / s:8.1f} {t['resets_received'] / s:7.1f} "
                         f"{t['retransmitted_segments'] / s:7.1f} {share:9.2%} {t['states'].get('ESTABLISHED', 0):6d} "
                         f"{t['states'].get('CLOSE_WAIT', 0):11d}")
    if report["flows"]:
        shown = [(f, f"{f['netns']} {f['local']} > {_remote(f)}") for f in report["flows"][:TOP_ROWS]]
        width = _width((text for _f, text in shown), 43)
        lines += ["", "TOP FLOWS (open at both ends of the sample)".ljust(width + 3)
                  + "KB sent  KB recv  RTT p50/p99 us  owner"]
        for f, text in shown:
            p50, p99 = f["rtt_p50_us_at_most"], f["rtt_p99_us_at_most"]
            rtt = f"<={p50}/<={p99}" if p50 is not None else f"~{f['srtt_ms'] * 1000:.0f} (srtt)"
            lines.append(f"  {_cut(text, width):{width}} "
                         f"{f['bytes_sent'] / 1024:8.0f} {f['bytes_received'] / 1024:8.0f} {rtt:>14}  "
                         f"{printable(_owner(f))}")
    if report["connects"]:
        dests = [(c, f"{c['netns']} {_remote(c)}") for c in report["connects"][:TOP_ROWS]]
        width = _width((text for _c, text in dests), 29)
        lines += ["", "CONNECTS BY DESTINATION".ljust(width + 2) + "attempts  p50 ms  p99 ms  failed"]
        for c, text in dests:
            failed = ", ".join(f"{n} {k}" for k, n in c["failures"].items()) or "-"
            p50 = "-" if c["p50_ms"] is None else f"{c['p50_ms']:.2f}"
            p99 = "-" if c["p99_ms"] is None else f"{c['p99_ms']:.2f}"
            lines.append(f"  {_cut(text, width):{width}} {c['attempts']:8d} {p50:>7} {p99:>7}  {failed}")
    if report["drops"]:
        lines += ["", "TCP DROPS BY NAMESPACE AND REASON"]
        for d in report["drops"][:DROP_ROWS]:
            reason = d["reason"]
            label = NORMAL_LABEL if reason in NORMAL_REASONS else " (no reason given)" if reason == NO_REASON else ""
            lines.append(f"  {_cut(d['netns'], 20):20} {reason:30} {d['count']:8d}{label}")
        if len(report["drops"]) > DROP_ROWS:
            lines.append(f"  ... {len(report['drops']) - DROP_ROWS} more (--json has them)")
    if report["listeners"]:
        filling = [li for li in report["listeners"] if li["queue"]]
        lines += ["", f"LISTENERS: {len(report['listeners'])} in every namespace"
                  + (f"; with a queue: {len(filling)}" if filling else "; none has connections waiting")]
        for li in filling:
            lines.append(f"  {li['netns']} {li['local']}: {li['queue']} queued, limit {li['limit']} "
                         f"({printable(_owner(li))})")
    net = report["softirqs"]
    lines += ["", f"SOFT IRQS: NET_RX {net['NET_RX'] / s:.0f}/s, NET_TX {net['NET_TX'] / s:.0f}/s; "
              f"{net['cpu_share']:.1%} of all CPU time in soft IRQs (every type; netsnoop softirqs splits it)"]
    for part, why in report["unavailable"].items():
        lines.append(f"(no {part}: {why})")
    if report["lost_events"]:
        lines.append(f"({report['lost_events']} events lost: connect figures are incomplete)")
    return [printable(line) for line in lines]


def _width(texts: Iterable[str], least: int, most: int = 64) -> int:
    """A column as wide as its longest cell (names make them longer), within bounds."""
    return max(least, min(most, max((len(t) for t in texts), default=0)))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@click.command("overview")
@click.option("-d", "--duration", type=o.FiniteFloatRange(min=0, min_open=True, max=3600), default=5.0,
              show_default=True, metavar="SECONDS", help="how long to sample")
@click.option("--dns", "dns_names", is_flag=True,
              help="name remote ends: the host name last resolved to each (answers seen)")
@o.output_options(csv=False, wide=False, time=False, timestamp=False)
def command(duration: float, dns_names: bool, out: o.OutputOptions) -> None:
    """Sample every network namespace for a few seconds, then show one screen: what
    needs attention first ("!" lines, each naming who and where and the command to run
    next), then interfaces, TCP per second, top flows, connects by destination, drops
    by namespace and reason, listeners and soft IRQs.

    Counters are the kernel's own, read inside each namespace (nstat, /proc/net/dev,
    ss); connect outcomes and drop reasons come from the connect and drop programs.
    Flows are those open at both ends of the sample. --json gives every figure exactly.
    Exit status: 1 when something needs attention, else 0.

    --dns names each remote end of the flows, connects and findings with the host name
    this machine last resolved to it (in that namespace), learnt from the DNS answers
    local sockets receive during the sample; no answer seen, no name.
    """
    tty = sys.stderr.isatty()

    def progress(elapsed: float) -> None:
        if tty:
            sys.stderr.write(f"\rsampling {elapsed:4.1f}/{duration:g} s")
            sys.stderr.flush()

    with (dns.Watcher() if dns_names else contextlib.nullcontext()) as names:
        before, after, evidence = gather(duration, progress, names)
        dns_stats = names.stats() if names is not None else None
    if tty:
        sys.stderr.write("\r" + " " * 30 + "\r")
    inodes = {s.inode for socks in after.sockets.values() for s in socks
              if s.state in (netns.TCP_LISTEN, TCP_CLOSE_WAIT) or s.bytes_acked or s.bytes_received}
    report = build_report(before, after, evidence, netns.socket_owners(inodes))
    if dns_stats is not None:
        report["dns"] = dns_stats
    if out.json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write("\n".join(render(report)) + "\n")
    sys.stdout.flush()
    if report["findings"]:
        sys.exit(1)
