"""The verdict logic of ``netsnoop why`` over recorded evidence, without a kernel.

Each test feeds the records why.bpf.c would send for one cause (the same kinds,
fields and orders the integration tests see) and the facts around them, and checks
the verdict, its namespace, figures and words.
"""

from __future__ import annotations

import click
import pytest

from netsnoop import verdicts as V
from netsnoop.commands.why import Target, unmap

SERVER, CLIENT, PORT = "10.0.0.1", "10.0.0.2", 8080
NS_A, NS_B = 4026532001, 4026532002
MS = 1_000_000
S = 1_000_000_000
REASONS = {2: "NO_SOCKET", 3: "NETFILTER_DROP", 4: "IP_RPFILTER", 5: "NEIGH_FAILED"}
NFT_JSON = (
    '{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, '
    '{"table": {"family": "inet", "name": "filt", "handle": 1}}, '
    '{"chain": {"family": "inet", "table": "filt", "name": "input", "handle": 1, "type": "filter", "hook": "input", '
    '"prio": 0, "policy": "drop"}}, '
    '{"rule": {"family": "inet", "table": "filt", "chain": "input", "handle": 3, "expr": [{"match": {"op": "==", '
    '"left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, 8080]}}}, '
    '{"counter": {"packets": 7, "bytes": 420}}, {"reject": {"type": "tcp reset"}}]}}, '
    '{"rule": {"family": "inet", "table": "filt", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", '
    '"left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"range": [9000, 9010]}}}, '
    '{"drop": null}]}}, '
    '{"rule": {"family": "inet", "table": "filt", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", '
    '"left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, '
    '{"accept": null}]}}]}'
)


def syn_in(t: int, cport: int = 40000, client: str = CLIENT, ns: int = NS_A) -> V.Record:
    return V.Record(V.SYN_IN, t, ns, 2, client, cport, SERVER, PORT, extra=3, tcpflags=V.TCP_SYN)


def syn_drop(t: int, reason: int, cport: int = 40000, ns: int = NS_A, output: bool = False) -> V.Record:
    return V.Record(V.DROP, t, ns, 2, CLIENT, cport, SERVER, PORT, value=reason, extra=3,
                    state=V.SYN_SENT if output else 0, tcpflags=V.TCP_SYN)


def connect(t: int, sk: int = 0xAB, ns: int = NS_B, pid: int = 42, comm: str = "curl") -> V.Record:
    return V.Record(
        V.STATE, t, ns, 2, CLIENT, 0, SERVER, PORT, state=V.SYN_SENT, oldstate=V.CLOSE, sk=sk, pid=pid, comm=comm
    )


def connect_end(t: int, state: int, err: int = 0, retrans: int = 0, cport: int = 40000, sk: int = 0xAB,
                ns: int = NS_B) -> V.Record:
    return V.Record(V.STATE, t, ns, 2, CLIENT, cport, SERVER, PORT, value=err, extra=retrans, state=state,
                    oldstate=V.SYN_SENT, sk=sk)


def listener(
    addr: str = SERVER, ns: int = NS_A, queue: int = 0, backlog: int = 128, port: int = PORT
) -> V.ListenerView:
    return V.ListenerView(ns, f"ns{ns % 10}", 2, addr, port, queue, backlog, 777, "server")


def facts(**kw: object) -> V.Facts:
    f = V.Facts(labels={NS_A: "nsA", NS_B: "nsB"}, reason_names=dict(REASONS), now_ns=10 * S, ended=True)
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def verdicts(records: list[V.Record], f: V.Facts) -> list[V.Verdict]:
    rec = V.Recorder()
    for r in records:
        rec.add(r)
    rec.finish()
    return V.decide_all(rec, f)


def one(records: list[V.Record], f: V.Facts) -> V.Verdict:
    (v,) = verdicts(records, f)
    return v


def test_ok_carries_the_connect_latency_from_the_client() -> None:
    v = one(
        [connect(1 * S), syn_in(1 * S + MS), connect_end(1 * S + 3 * MS, V.ESTABLISHED)], facts(listeners=[listener()])
    )
    assert (v.name, v.netns, v.failed) == ("OK", NS_A, False)
    assert v.figures["latency_ms"] == pytest.approx(3.0)
    assert v.figures["client"]["pid"] == 42 and v.figures["listener"]["pid"] == 777


def test_no_listener_from_no_socket_drop_and_a_refused_client() -> None:
    v = one([connect(S), syn_in(S), syn_drop(S, 2), connect_end(S + MS, V.CLOSE, err=V.ECONNREFUSED)], facts())
    assert (v.name, v.netns) == ("NO_LISTENER", NS_A)
    assert v.figures["client"]["error"] == "ECONNREFUSED" and v.figures["drop_reason"] == "NO_SOCKET"
    assert any("ECONNREFUSED" in e for e in v.evidence)


def test_listener_on_other_address_names_where_it_listens() -> None:
    v = one([syn_in(S), syn_drop(S, 2)], facts(listeners=[listener("127.0.0.1")]))
    assert v.name == "LISTENER_ON_OTHER_ADDRESS"
    assert "127.0.0.1:8080" in v.why and v.figures["listeners"][0]["address"] == "127.0.0.1"


def test_listener_in_other_namespace_names_that_namespace() -> None:
    v = one([syn_in(S), syn_drop(S, 2)], facts(listeners=[listener("0.0.0.0", ns=NS_B)]))
    assert (v.name, v.netns) == ("LISTENER_IN_OTHER_NAMESPACE", NS_A)
    assert "in netns nsB" in v.why


def test_a_listener_on_another_port_is_no_listener() -> None:
    v = one([syn_in(S), syn_drop(S, 2)], facts(listeners=[listener(port=PORT + 1)]))
    assert v.name == "NO_LISTENER"


def test_firewall_drop_picks_the_rule_that_names_the_port() -> None:
    rules = [V.Rule(NS_A, "inet", "t", "input", "input", 0, "drop", "policy drop"),
             V.Rule(NS_A, "inet", "t", "input", "input", 9, "drop", "tcp dport 22 drop", frozenset({22})),
             V.Rule(NS_A, "inet", "t", "input", "input", 7, "drop", "tcp dport 8080 drop", frozenset({PORT}))]
    v = one([syn_in(S), syn_drop(S, 3), syn_in(2 * S), syn_drop(2 * S, 3)], facts(rules={NS_A: rules}))
    assert (v.name, v.netns, v.figures["rule"]["handle"]) == ("FIREWALL_DROP", NS_A, 7)
    assert v.figures["syns"] == 2
    assert any("tcpdump" in e for e in v.evidence)
    assert "handle 7" in v.next_step and "ip netns exec nsA" in v.next_step


def test_firewall_rule_whose_counter_grew_wins_without_a_port_match() -> None:
    rules = [V.Rule(NS_A, "ip", "t", "in", "input", 3, "drop", "ip saddr 10.0.0.2 drop", packets=5),
             V.Rule(NS_A, "ip", "t", "in", "input", 4, "drop", "ip saddr 10.9.9.9 drop", packets=1)]
    before = {(NS_A, r.where, r.handle): 1 for r in rules}
    v = one([syn_in(S), syn_drop(S, 3)], facts(rules={NS_A: rules}, rules_before=before))
    assert v.figures["rule"]["handle"] == 3


def test_firewall_reject_from_an_icmp_sent_or_a_reject_rule() -> None:
    icmp = V.Record(V.ICMP_SEND, S, NS_A, 2, CLIENT, 40000, SERVER, PORT, value=(3 << 8) | 3, tcpflags=V.TCP_SYN)
    v = one([syn_in(S), syn_drop(S, 3), icmp], facts())
    assert v.name == "FIREWALL_REJECT" and v.figures["icmp"] == {"type": 3, "code": 3}
    rules = [V.Rule(NS_A, "inet", "t", "input", "input", 3, "reject", "tcp dport 8080 reject", frozenset({PORT}))]
    assert one([syn_in(S), syn_drop(S, 3)], facts(rules={NS_A: rules})).name == "FIREWALL_REJECT"


def test_synack_dropped_by_the_clients_firewall() -> None:
    synack = V.Record(V.DROP, S, NS_B, 2, SERVER, PORT, CLIENT, 40000, value=3, tcpflags=V.TCP_SYN | V.TCP_ACK)
    rules = [V.Rule(NS_B, "inet", "c", "input", "input", 2, "drop", "tcp sport 8080 drop", frozenset({PORT}))]
    v = one([syn_in(S), synack], facts(rules={NS_B: rules}))
    assert (v.name, v.netns) == ("FIREWALL_DROP", NS_A)
    assert "SYN-ACK" in v.why and v.figures["rule"]["handle"] == 2


def test_output_rule_on_the_client_is_a_timeout_naming_the_rule() -> None:
    rules = [V.Rule(NS_B, "inet", "o", "out", "output", 2, "drop", "tcp dport 8080 drop", frozenset({PORT}))]
    v = one([connect(S), syn_drop(S, 3, ns=NS_B, output=True), connect_end(3 * S, V.CLOSE, retrans=1)],
            facts(rules={NS_B: rules}))
    assert (v.name, v.netns, v.figures["rule"]["hook"], v.figures["syns"]) == ("TIMEOUT", NS_B, "output", 2)
    assert not any("tcpdump" in e for e in v.evidence)


def test_rp_filter_with_device_sysctl_and_counter() -> None:
    f = facts(rp_filter={(NS_A, 3): ("eth0", 1)}, counters={NS_A: {"TcpExtIPReversePathFilter": 2}},
              routes={(NS_A, CLIENT): "RTNETLINK answers: Network is unreachable"})
    v = one([syn_in(S), syn_drop(S, 4), syn_in(2 * S), syn_drop(2 * S, 4)], f)
    assert (v.name, v.figures["device"], v.figures["rp_filter"], v.figures["ip_reverse_path_filter"]) == \
        ("RP_FILTER", "eth0", 1, 2)
    assert "Network is unreachable" in v.figures["route_back"]


def test_no_route_back_from_a_failed_lookup_of_the_reply() -> None:
    fib = V.Record(V.FIB_FAIL, S + 1, 0, 2, SERVER, PORT, CLIENT, 40000, value=-11)
    v = one([syn_in(S), fib], facts(listeners=[listener()], counters={NS_A: {"IpOutNoRoutes": 1}}))
    assert (v.name, v.netns, v.figures["ip_out_no_routes"], v.figures["route_lookup_failures"]) == \
        ("NO_ROUTE_BACK", NS_A, 1, 1)


def test_a_failed_lookup_of_another_flow_is_not_taken() -> None:
    fib = V.Record(V.FIB_FAIL, S + 1, 0, 2, SERVER, PORT, "10.9.9.9", 40000, value=-11)
    v = one([syn_in(S), V.Record(V.SYNACK_RETRANS, 2 * S, NS_A, 2, SERVER, PORT, CLIENT, 40000), fib],
            facts(listeners=[listener()]))
    assert v.name == "SYNACK_UNANSWERED"


def test_accept_queue_full_with_owner_queue_and_counters() -> None:
    f = facts(listeners=[listener(queue=2, backlog=1)],
              counters={NS_A: {"TcpExtListenOverflows": 2, "TcpExtListenDrops": 2}},
              queue_static={(NS_A, SERVER, PORT): 3.5})
    v = one([connect(S), syn_in(S), syn_in(2 * S), connect_end(3 * S, V.CLOSE, retrans=1)], f)
    assert (v.name, v.netns, v.figures["listen_overflows"], v.figures["no_accept_s"]) == \
        ("ACCEPT_QUEUE_FULL", NS_A, 2, 3.5)
    assert v.figures["listener"]["queue"] == 2 and "server (pid 777)" in v.why and v.figures["syns"] == 2


def test_accept_queue_full_waits_for_the_grace_period_while_tracing() -> None:
    f = facts(listeners=[listener(queue=2, backlog=1)], ended=False, now_ns=S + S // 2)
    assert verdicts([syn_in(S)], f) == []
    f.now_ns = 3 * S
    assert [v.name for v in verdicts([syn_in(S)], f)] == ["ACCEPT_QUEUE_FULL"]


def test_syn_queue_full_from_the_request_queue_counters() -> None:
    v = one([syn_in(S)], facts(listeners=[listener(backlog=1)], counters={NS_A: {"TcpExtTCPReqQFullDrop": 3}}))
    assert (v.name, v.figures["reqq_full"]) == ("SYN_QUEUE_FULL", 3)
    cookies = one([syn_in(S)], facts(listeners=[listener()], counters={NS_A: {"TcpExtSyncookiesSent": 1}}))
    assert cookies.name == "SYN_QUEUE_FULL" and "cookies" in cookies.why


def test_synack_unanswered_with_and_without_a_drop_on_the_way() -> None:
    retrans = V.Record(V.SYNACK_RETRANS, 2 * S, NS_A, 2, SERVER, PORT, CLIENT, 40000)
    v = one([syn_in(S), retrans], facts(listeners=[listener()]))
    assert (v.name, v.figures["synack_retransmits"]) == ("SYNACK_UNANSWERED", 1)
    dropped = V.Record(V.DROP, 2 * S, NS_B, 2, SERVER, PORT, CLIENT, 40000, value=5, tcpflags=V.TCP_SYN | V.TCP_ACK)
    v = one([syn_in(S), retrans, dropped], facts(listeners=[listener()]))
    assert v.name == "SYNACK_UNANSWERED" and "NEIGH_FAILED" in v.why


def test_not_accepted_after_the_grace_period_only() -> None:
    child = V.Record(V.STATE, S, NS_A, 2, SERVER, PORT, CLIENT, 40000, state=V.ESTABLISHED, oldstate=V.SYN_RECV)
    key = (SERVER, PORT, CLIENT, 40000)
    v = one([syn_in(S), child], facts(listeners=[listener(queue=1)], unaccepted={key: 2.5}))
    assert (v.name, v.figures["unaccepted_s"], v.figures["listener"]["queue"]) == ("NOT_ACCEPTED", 2.5, 1)
    assert one([syn_in(S), child], facts(listeners=[listener()], unaccepted={key: 0.01})).name == "OK"
    assert one([syn_in(S), child], facts(listeners=[listener()], accepted={key})).name == "OK"


@pytest.mark.parametrize(("err", "icmp", "name"), [
    (V.ECONNREFUSED, False, "REFUSED"), (V.ETIMEDOUT, False, "TIMEOUT"), (0, False, "TIMEOUT"),
    (V.EHOSTUNREACH, False, "UNREACHABLE"), (0, True, "UNREACHABLE"), (V.EHOSTUNREACH, True, "UNREACHABLE"),
])
def test_client_only_verdicts(err: int, icmp: bool, name: str) -> None:
    records = [connect(S)]
    if icmp:
        records.append(
            V.Record(V.SK_ERROR, S + MS, NS_B, 2, CLIENT, 0, SERVER, PORT, value=err, state=V.SYN_SENT, sk=0xAB)
        )
        err = 0  # the woken connect() consumed it: CLOSE shows none
    records.append(connect_end(S + 2 * MS, V.CLOSE, err=err))
    v = one(records, facts())
    assert (v.name, v.netns) == (name, NS_B)
    assert v.figures["client"]["icmp_error"] is icmp


def test_a_connect_still_waiting_at_the_end_joins_its_flow() -> None:
    v = one([connect(S), syn_in(S + MS, cport=41000)], facts(listeners=[listener(queue=5, backlog=4)],
                                                          counters={NS_A: {"TcpExtListenOverflows": 1}}))
    assert v.name == "ACCEPT_QUEUE_FULL" and v.figures["client"]["pid"] == 42
    alone = one([connect(S)], facts())
    assert (alone.name, alone.flow.key) == ("TIMEOUT", (SERVER, PORT, CLIENT, 0))


def test_a_fresh_syn_has_no_verdict_yet() -> None:
    assert verdicts([syn_in(S)], facts(listeners=[listener()], ended=False, now_ns=S + MS)) == []


def test_grouping_counts_clients_attempts_and_syns() -> None:
    records = []
    for i in range(5):
        client = f"10.0.1.{i + 1}"
        for n in range(3):
            records.append(syn_in(S + n * S, cport=40000 + i, client=client))
            records.append(
                V.Record(V.DROP, S + n * S, NS_A, 2, client, 40000 + i, SERVER, PORT, value=3, tcpflags=V.TCP_SYN)
            )
    (g,) = V.group(verdicts(records, facts()))
    assert g.name == "FIREWALL_DROP" and len(g.clients) == 5 and g.syns == 15
    assert g.headline(facts()) == "FIREWALL_DROP  10.0.0.1:8080 in netns nsA (x5 clients, 5 attempts, 15 SYNs)"
    rec = g.record(facts())
    assert (rec["attempts"], rec["syns"], rec["netns"], len(rec["flows"])) == (5, 15, "nsA", 5)


def test_groups_put_failures_first_and_healthy_line() -> None:
    ok = [connect(S, sk=1), connect_end(S + MS, V.ESTABLISHED, sk=1, cport=40001)]
    bad = [syn_in(S, cport=40002), syn_drop(S, 2, cport=40002)]
    groups = V.group(verdicts(ok + bad, facts()))
    assert [g.name for g in groups] == ["NO_LISTENER", "OK"]
    assert (
        V.healthy_line([groups[1]]) == "OK: 1 connection attempt to port 8080, all connected (median connect 1.000 ms)"
    )
    assert V.healthy_line([]) == "OK: no TCP connection attempts seen"


def test_hostile_process_names_are_escaped_on_text() -> None:
    v = one([connect(S, comm="evil\x1b[2Jname"), connect_end(2 * S, V.CLOSE, err=V.ECONNREFUSED)], facts())
    lines = V.group([v])[0].lines(facts())
    assert any("evil\\x1b[2Jname" in line for line in lines)
    assert not any("\x1b" in line for line in lines)


def test_nft_rules_from_nft_json() -> None:
    rules = V.nft_rules(NFT_JSON, NS_A)
    policy, reject, drop = rules
    assert (policy.handle, policy.verdict, policy.hook, policy.where) == (0, "drop", "input", "inet filt input policy")
    assert (reject.handle, reject.verdict, reject.ports, reject.packets) == (3, "reject", frozenset({80, 8080}), 7)
    assert reject.text == "tcp dport { 80, 8080 } counter packets 7 reject with tcp reset"
    assert (drop.handle, 9005 in drop.ports, 9011 in drop.ports, drop.text) == \
        (4, True, False, "tcp dport 9000-9010 drop")
    assert V.nft_rules("not json", NS_A) == [] and V.nft_rules("", NS_A) == []


@pytest.mark.parametrize(("text", "parsed"), [
    ("10.0.0.1", ("10.0.0.1", None)), ("10.0.0.1:80", ("10.0.0.1", 80)), ("[fd00::1]:443", ("fd00::1", 443)),
    ("fd00::1", ("fd00::1", None)), (":8080", (None, 8080)), ("::ffff:10.1.2.3", ("10.1.2.3", None)),
])
def test_target_argument(text: str, parsed: tuple[str | None, int | None]) -> None:
    assert Target().convert(text, None, None) == parsed


@pytest.mark.parametrize(
    "text", ["10.0.0", "host.example:80", "10.0.0.1:0", "10.0.0.1:70000", "[fd00::1]x", "1.2.3.4:ab"]
)
def test_bad_target_is_a_usage_error(text: str) -> None:
    with pytest.raises(click.BadParameter):
        Target().convert(text, None, None)


def test_ipv4_mapped_addresses_name_ipv4_clients_alike() -> None:
    import socket

    raw = socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.2")
    assert unmap(10, raw) == (2, "10.0.0.2")
    assert unmap(10, socket.inet_pton(socket.AF_INET6, "fd00::2")) == (10, "fd00::2")


def test_help_explains_every_verdict_in_one_line() -> None:
    from helpers import run

    done = run(["why", "--help"])
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    for name, text in V.VERDICTS.items():
        (line,) = [x for x in lines if x.split()[:1] == [name]]
        assert line.split(None, 1)[1] == text


@pytest.mark.parametrize("args", [["10.0.0"], ["10.0.0.1:99999"], ["-P", "0"], ["-d", "0"],
                                  ["-P", ",".join(str(p) for p in range(1000, 1017))]])
def test_usage_errors_exit_2_in_one_line(args: list[str]) -> None:
    from helpers import run

    done = run(["why", *args])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "Traceback" not in done.stderr


def test_a_reused_client_port_is_a_new_attempt() -> None:
    """Loopback storms reuse client ports within a second: each connection is its own
    attempt once the previous one on the same ports finished."""
    records = []
    for n in range(3):
        t = (n + 1) * S
        child = V.Record(
            V.STATE, t + 2 * MS, NS_A, 2, SERVER, PORT, CLIENT, 40000, state=V.ESTABLISHED, oldstate=V.SYN_RECV
        )
        records += [connect(t, sk=n + 1), syn_in(t + MS), connect_end(t + 2 * MS, V.ESTABLISHED, sk=n + 1), child]
    vs = verdicts(records, facts(listeners=[listener()]))
    assert [v.name for v in vs] == ["OK"] * 3
    (g,) = V.group(vs)
    assert (g.attempts, g.syns, g.clients) == (3, 3, [CLIENT])


def test_folded_attempts_still_count() -> None:
    vs = verdicts([connect(S, sk=1), connect_end(S + MS, V.ESTABLISHED, sk=1)], facts())
    folded = V.Group()
    folded.fold(vs[0])
    more = verdicts([connect(3 * S, sk=2), connect_end(3 * S + 3 * MS, V.ESTABLISHED, sk=2, cport=40001)], facts())
    (g,) = V.group(more, {V.group_key(vs[0]): folded})
    assert (g.attempts, g.syns, sorted(g.all_latencies)) == (2, 2, [pytest.approx(1.0), pytest.approx(3.0)])
    assert "flows" not in g.record(facts()) and g.record(facts())["latency_ms"]["median"] == pytest.approx(2.0)
    assert folded.attempts == 1  # grouping copied it


def test_a_syn_routed_on_is_not_a_failure() -> None:
    """Nobody listens where the SYN arrived and nothing dropped it there: it was
    forwarded or NATed (a router namespace, a container's published port)."""
    v = one([syn_in(S)], facts(listeners=[listener(port=80)]))
    assert (v.name, v.failed, v.netns) == ("PASSED_ON", False, NS_A)


def test_next_step_runs_in_the_right_namespace() -> None:
    rules = [V.Rule(NS_A, "inet", "t", "input", "input", 7, "drop", "tcp dport 8080 drop", frozenset({PORT}))]
    recs = [syn_in(S), syn_drop(S, 3)]
    named = one(recs, facts(rules={NS_A: rules}))
    assert named.next_step.startswith("ip netns exec nsA nft -a list chain inet t input")
    host = one(recs, facts(rules={NS_A: rules}, labels={NS_A: "host"}))
    assert host.next_step.startswith("nft -a list chain inet t input")
    anon = one(recs, facts(rules={NS_A: rules}, labels={NS_A: f"netns:{NS_A}"}, paths={NS_A: "/proc/99/ns/net"}))
    assert anon.next_step.startswith("nsenter --net=/proc/99/ns/net nft -a list chain")


def test_a_failed_lookup_the_namespace_did_not_count_is_no_verdict_of_its_own() -> None:
    """With policy routing one table may miss and the next one hit: only a lookup the
    namespace counted as IpOutNoRoutes is a missing route."""
    fib = V.Record(V.FIB_FAIL, S + 1, 0, 2, SERVER, PORT, CLIENT, 40000, value=-11)
    v = one([syn_in(S), fib], facts(listeners=[listener()]))
    assert v.name == "NO_ANSWER"
    fib6 = V.Record(V.FIB_FAIL, S + 1, NS_A, 10, "fd00::1", PORT, "fd00::2", 40000, value=-113)
    syn6 = V.Record(V.SYN_IN, S, NS_A, 10, "fd00::2", 40000, "fd00::1", PORT, extra=3, tcpflags=V.TCP_SYN)
    six = one([syn6, fib6], facts(counters={NS_A: {"Ip6OutNoRoutes": 1}}))
    assert (six.name, six.figures["ip_out_no_routes"]) == ("NO_ROUTE_BACK", 1)
