"""netsnoop export, end to end: the real Prometheus server scrapes a running exporter
while known traffic runs in private namespaces; every figure is then asked of
Prometheus (its HTTP query API) and compared with what the test did, with nft's rule
counters and with nstat inside those namespaces."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from functools import partial
from typing import Any, Callable, Iterator

import pytest
from helpers import ROOT, NetnsPair, Trace, free_port, run
from traffic_helpers import Sink, in_netns, nft_input_chain, wait_for

from netsnoop import metrics

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
ALERTS = os.path.join(ROOT, "deploy", "alerts.yml")


class Prometheus:
    """The real server, scraping ``target`` every second, with the sample alert rules."""

    def __init__(self, target: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="netsnoop-prom-")
        self.port = free_port()
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                    f"rule_files: [{json.dumps(ALERTS)}]\n"
                    f"scrape_configs:\n  - job_name: netsnoop\n    static_configs:\n"
                    f"      - targets: [{json.dumps(target)}]\n")
        self.proc = subprocess.Popen(
            [PROMETHEUS or "prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        data = self.get("/api/v1/query", query=expr)["data"]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return result[0][1] if result else None

    def settles_at(self, expr: str, expected: float, timeout: float = 10.0) -> float | None:
        """Waits until ``expr`` equals ``expected`` (a scrape after the traffic); returns
        the last value seen."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.value(expr)
            if got == expected or time.monotonic() > deadline:
                return got
            time.sleep(0.2)

    def agrees(self, expr: str, truth: Callable[[], float], timeout: float = 10.0) -> tuple[float | None, float]:
        """Waits until ``expr`` equals what ``truth`` reads now (a kernel counter that
        may still move: a segment retransmitted late); returns the last pair seen."""
        deadline = time.monotonic() + timeout
        while True:
            got, want = self.value(expr), truth()
            if got == want or time.monotonic() > deadline:
                return got, want
            time.sleep(0.2)

    def ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None
                raise AssertionError(f"prometheus exited: {self.proc.stderr.read()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def nstat(ns: str) -> dict[str, int]:
    """``nstat -az`` inside the namespace (absolute values), by nstat itself."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-az", "--json"], capture_output=True, text=True,
                         check=True).stdout
    return {k: int(v) for k, v in json.loads(out)["kernel"].items()}


def nstat_counter(ns: str, name: str) -> int:
    return nstat(ns).get(name, 0)


def nft_packets(net: NetnsPair, ns: str, comment: str) -> int:
    """Packets counted by the rule carrying ``comment`` (nft's own counter)."""
    out = json.loads(net.exec(ns, "nft -j list table inet netsnoop_test").stdout)
    for item in out["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") == comment:
            return next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    raise AssertionError(f"no rule {comment!r}")


@contextlib.contextmanager
def exporter(*args: str) -> Iterator[tuple[Trace, str]]:
    port = free_port()
    target = f"127.0.0.1:{port}"
    # every namespace its own label unless a test asks otherwise (a later --max-netns wins):
    # past the default 64 a busy host's other namespaces could push the test's into "other"
    with Trace(["export", "--listen", target, "--max-netns", "4096", *args]) as t:
        yield t, target


class Scraped(contextlib.ExitStack):
    """An exporter and the Prometheus server that scrapes it, closed together."""

    prom: Prometheus
    trace: Trace


def serve_scraped(*args: str) -> Scraped:
    stack = Scraped()
    t, target = stack.enter_context(exporter(*args))
    prom = Prometheus(target)
    stack.callback(prom.close)
    prom.ready()
    stack.prom = prom
    stack.trace = t
    return stack


@pytest.mark.skipif(PROMETHEUS is None and os.environ.get("CI") != "true",
                    reason="needs the prometheus server (apt package prometheus; make deps installs it)")
def test_prometheus_sees_the_traffic_of_private_namespaces() -> None:
    with NetnsPair() as net, nft_input_chain(net, net.b) as rule, NetnsPair() as rst, \
            nft_input_chain(rst, rst.a) as rst_rule:
        a, b = net.a, net.b
        with in_netns(b):
            lossy = Sink(net.addr_b)  # a transfer that loses packets
            dropped = Sink(net.addr_b)  # its SYNs are dropped by nft
            full = socket.socket()  # a listener nobody accepts from: its queue overflows
            full.bind((net.addr_b, 0))
            full.listen(7)  # a limit no other test uses: its histogram is this test's alone
            closed = socket.socket()  # bound, never listening: connects are refused
            closed.bind((net.addr_b, 0))
        full_port, closed_port = full.getsockname()[1], closed.getsockname()[1]
        ports = [lossy.port, dropped.port, full_port, closed_port]
        # one segment per buffer, so that a retransmit is one segment whether the
        # retrans object counts buffers or segments
        for ns, dev in ((a, net.dev_a), (b, net.dev_b)):
            net.exec(ns, f"ip link set dev {dev} gso_max_segs 1")
        rule(f"tcp dport {dropped.port} counter drop comment \"syn\"")
        rule(f"tcp dport {lossy.port} numgen inc mod 40 == 7 counter drop comment \"loss\"")
        # resets: a second pair where only refused connects happen, every reset that
        # arrives counted by nft
        with in_netns(rst.b):
            rst_closed = socket.socket()
            rst_closed.bind((rst.addr_b, 0))
        rst_rule("tcp flags & rst != 0 counter comment \"rst\"")

        with serve_scraped("--port-labels", ",".join(map(str, ports))) as stack:
            prom = stack.prom
            assert prom.settles_at('up{job="netsnoop"}', 1) == 1
            before = {ns: nstat(ns) for ns in (a, b, rst.a, rst.b)}

            # refused connects
            refused = 3
            waited = 0.0  # the refused connect() calls' own time: their handshakes fit in it
            for _ in range(refused):
                with in_netns(a):
                    c = socket.socket()
                with c, pytest.raises(ConnectionRefusedError):
                    start = time.perf_counter()
                    try:
                        c.connect((net.addr_b, closed_port))
                    finally:
                        waited += time.perf_counter() - start
            resets = 5
            for _ in range(resets):
                with in_netns(rst.a):
                    c = socket.socket()
                with c, pytest.raises(ConnectionRefusedError):
                    c.connect((rst.addr_b, rst_closed.getsockname()[1]))
            # a SYN dropped by nft (and its retransmit, after the 1 s initial RTO)
            with in_netns(a):
                syn = socket.socket()
            syn.setblocking(False)
            assert syn.connect_ex((net.addr_b, dropped.port)) == errno.EINPROGRESS
            # overflow: a backlog limit of 7 takes eight connections, the rest overflow
            clients = []
            for _ in range(10):
                with in_netns(a):
                    c = socket.socket()
                c.setblocking(False)
                c.connect_ex((net.addr_b, full_port))
                clients.append(c)
            # a lossy transfer
            size = 2_000_000
            with in_netns(a):
                sender = socket.create_connection((net.addr_b, lossy.port), timeout=10)
            sender.sendall(b"z" * size)
            sender.shutdown(socket.SHUT_WR)
            assert wait_for(lambda: lossy.received == size, timeout=15)
            sender.close()
            assert wait_for(lambda: nft_packets(net, b, "syn") >= 2, timeout=5)
            queue = prom.settles_at(f'netsnoop_tcp_listener_queue_length{{netns="{b}",port="{full_port}"}}', 8)
            ss = net.exec(b, f"ss -Hltn sport = :{full_port}").stdout.split()
            # the connect whose SYNs nft drops is still waiting for an answer
            assert prom.settles_at(f'netsnoop_tcp_connects_pending{{netns="{a}",port="{dropped.port}"}}', 1) == 1
            syn.close()
            for c in clients:
                c.close()
            time.sleep(0.3)  # the closes' own segments
            after = {ns: nstat(ns) for ns in (a, b, rst.a, rst.b)}

            def delta(ns: str, name: str) -> int:
                return after[ns].get(name, 0) - before[ns].get(name, 0)

            # the full listener's own drops: what ss -ltm shows for it ("d" in skmem),
            # and every listen drop of its namespace (no other listener there drops)
            def ss_drops() -> int:
                skmem = net.exec(b, f"ss -Hltm sport = :{full_port}").stdout
                return int(skmem.split(",d")[1].split(")")[0].split(",")[0])

            got, want = prom.agrees(f'netsnoop_tcp_listener_drops_total{{netns="{b}",port="{full_port}"}}', ss_drops)
            assert got == want == nstat(b)["TcpExtListenDrops"] - before[b]["TcpExtListenDrops"] > 0
            full.close()
            closed.close()
            rst_closed.close()
            lossy.close()
            dropped.close()

            # the listener's accept queue, as ss shows it there: 8 waiting, limit 7
            assert (queue, ss[1], ss[2]) == (8, "8", "7")
            assert prom.value(f'netsnoop_tcp_listener_queue_limit{{netns="{b}",port="{full_port}"}}') == 7
            # and as each connection found it when it joined: 0, 1, ... 7 waiting
            joined_q = f'netsnoop_tcp_accept_queue_length_%s{{netns="{b}",backlog_limit="7"}}'
            joined = {m["le"]: v for m, v in prom.query(joined_q % "bucket")}
            assert (joined["1.0"], joined["3.0"], joined["7.0"], joined["+Inf"]) == (2, 4, 8, 8), joined
            assert prom.value(joined_q % "sum") == sum(range(8))

            # connects by outcome, in the client's namespace, per destination port
            connects = f'netsnoop_tcp_connects_total{{netns="{a}",outcome="%s",port="%s"}}'
            assert prom.settles_at(connects % ("refused", closed_port), refused) == refused
            assert prom.settles_at(connects % ("established", lossy.port), 1) == 1
            # the one that got no answer was closed by its owner: aborted, and no longer pending
            assert prom.settles_at(connects % ("aborted", dropped.port), 1) == 1
            assert prom.settles_at(f'netsnoop_tcp_connects_pending{{netns="{a}",port="{dropped.port}"}}', 0) == 0
            # the kernel's count of handshakes that failed there: the refused ones
            # (the attempt that got no answer was closed by its owner, not failed)
            assert delta(a, "TcpAttemptFails") == refused
            # and per namespace, all ports together: every connect the kernel counted as
            # an active open there, the failed ones as its attempt fails; none from b
            assert prom.value(f'sum(netsnoop_tcp_connects_total{{netns="{a}"}})') == delta(a, "TcpActiveOpens") \
                == refused + 1 + len(clients) + 1
            failed = f'sum(netsnoop_tcp_connects_total{{netns="{a}",outcome!~"established|aborted"}})'
            assert prom.value(failed) == delta(a, "TcpAttemptFails")
            assert prom.value(f'sum(netsnoop_tcp_connects_total{{netns="{b}"}})') is None
            assert delta(b, "TcpActiveOpens") == 0
            # latency histograms by outcome: one sample per connect
            latency = 'netsnoop_tcp_connect_duration_seconds_count{netns="%s",outcome="%s",port="%s"}'
            assert prom.value(latency % (a, "established", lossy.port)) == 1
            assert prom.value(latency % (a, "refused", closed_port)) == refused
            took = prom.value(f'netsnoop_tcp_connect_duration_seconds_sum{{netns="{a}",outcome="refused"}}')
            assert took is not None and 0 < took < waited, (took, waited)
            buckets = {m["le"]: v for m, v in prom.query(
                f'netsnoop_tcp_connect_duration_seconds_bucket{{netns="{a}",outcome="refused"}}')}
            assert buckets["+Inf"] == refused and len(buckets) == len(metrics.CONNECT_SLOTS) + 1, buckets
            # log2 buckets: the first that holds all of them ends below twice the slowest
            # (a microsecond of rounding; 32 us at least), which took no longer than all
            # of them together
            first = min(float(le) for le, v in buckets.items() if v == refused)
            assert first <= max(2 * waited + 1e-6, 32e-6), (first, waited)
            assert prom.value(f'netsnoop_tcp_accepts_total{{netns="{b}",port="{lossy.port}"}}') == 1
            # accepts: the passive opens there, less the connections left in the full
            # listener's queue (opened, never accepted); none in a
            assert prom.value(f'sum(netsnoop_tcp_accepts_total{{netns="{b}"}})') == \
                delta(b, "TcpPassiveOpens") - (queue or 0) == 1
            assert prom.value(f'sum(netsnoop_tcp_accepts_total{{netns="{a}"}})') is None

            # resets received: the kernel keeps no counter of them; each refused connect
            # of the second pair got one, nft counted them arriving, the peer's
            # TcpOutRsts counted them sent; the peer itself received none
            received = f'netsnoop_tcp_resets_received_total{{netns="{rst.a}"}}'
            assert prom.settles_at(received, resets) == resets == nft_packets(rst, rst.a, "rst") \
                == delta(rst.b, "TcpOutRsts") == delta(rst.a, "TcpAttemptFails")
            assert prom.value(f'netsnoop_tcp_resets_received_total{{netns="{rst.b}"}}') is None

            # drops: what nft counted, under the kernel's reason, for that port
            for port, comment in ((dropped.port, "syn"), (lossy.port, "loss")):
                got, want = prom.agrees(f'netsnoop_tcp_drops_total{{reason="NETFILTER_DROP",port="{port}"}}',
                                        partial(nft_packets, net, b, comment))
                assert got == want > 0, comment

            # retransmits of our ports: every retransmit those two namespaces made
            # (only this test's sockets live there)
            def retransmitted() -> int:
                return sum(nstat(ns)["TcpRetransSegs"] - before[ns]["TcpRetransSegs"] for ns in (a, b))

            ours = f'sum(netsnoop_tcp_retransmits_total{{port=~"{"|".join(map(str, ports))}"}})'
            got, want = prom.agrees(ours, retransmitted)
            assert got == want >= nft_packets(net, b, "loss")

            # bytes: what the sender sent and the receiver read, each in its namespace
            assert prom.settles_at(f'netsnoop_tcp_sent_bytes_total{{netns="{a}",port="{lossy.port}"}}', size) == size
            assert prom.value(f'netsnoop_tcp_received_bytes_total{{netns="{b}",port="{lossy.port}"}}') == size

            # the namespaces' own counters, as nstat reads them there
            for metric, name in (("listen_overflows_total", "TcpExtListenOverflows"),
                                 ("resets_sent_total", "TcpOutRsts"),
                                 ("retransmitted_segments_total", "TcpRetransSegs"),
                                 ("active_opens_total", "TcpActiveOpens")):
                for ns in (a, b):
                    got, want = prom.agrees(f'netsnoop_netns_tcp_{metric}{{netns="{ns}"}}',
                                            partial(nstat_counter, ns, name))
                    assert got == want, (metric, ns)
            assert nstat(b)["TcpExtListenOverflows"] > 0

            # which namespace is which: inode, and the cgroup of the process in it
            with net.popen(b, ["sleep", "30"]) as sleeper:
                with open(f"/proc/{sleeper.pid}/cgroup") as f:
                    cgroup = next(line[3:] for line in f.read().splitlines() if line.startswith("0::"))
                info = {"netns": b, "inode": str(os.stat(f"/run/netns/{b}").st_ino), "cgroup": cgroup}
                assert wait_for(lambda: [{k: m.get(k, "") for k in info} for m, _v in
                                         prom.query(f'netsnoop_netns_info{{netns="{b}"}}')] == [info], timeout=10), \
                    (info, prom.query(f'netsnoop_netns_info{{netns="{b}"}}'))
                sleeper.kill()

            # RTT: samples were taken (every segment received by an established socket)
            assert (prom.value(f'netsnoop_tcp_rtt_seconds_count{{netns="{a}"}}') or 0) > 0

            # netsnoop's health: every source up, nothing lost, build info
            assert {m["source"]: v for m, v in prom.query("netsnoop_source_up")} == {
                s: 1.0 for s in metrics.SOURCES}
            assert all(v == 0 for _m, v in prom.query("netsnoop_lost_events_total"))
            kinds = {(m["source"], m["group"]): m["kind"] for m, _v in prom.query("netsnoop_hook_info")}
            assert kinds[("connects", "set_state")] in ("tp_btf", "tracepoint", "fentry", "kprobe")
            # the sample alert rules load and evaluate in the real server
            rules = [r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
            assert len(rules) == 6 and all(r["health"] == "ok" for r in rules), rules


def test_port_labels_only_on_request_and_bounded_namespaces() -> None:
    """Without --port-labels there is no port label; with --max-netns 1, refused connects
    from two namespaces give one namespace its own label and fold the other into
    "other"."""
    with NetnsPair() as net:
        closed = {}
        for ns, addr in ((net.a, net.addr_a), (net.b, net.addr_b)):
            with in_netns(ns):
                closed[ns] = socket.socket()
                closed[ns].bind((addr, 0))
        with exporter("--max-netns", "1", "--metrics", "connects") as (t, target):
            for ns, peer, addr in ((net.a, net.b, net.addr_b), (net.b, net.a, net.addr_a)):
                with in_netns(ns):
                    c = socket.socket()
                with c, pytest.raises(ConnectionRefusedError):
                    c.connect((addr, closed[peer].getsockname()[1]))

            def scrape() -> str:
                with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as r:
                    return r.read().decode()

            def refused() -> dict[str, float]:
                return {line.split('netns="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                        for line in scrape().splitlines()
                        if line.startswith("netsnoop_tcp_connects_total{") and 'outcome="refused"' in line}

            assert wait_for(lambda: "other" in refused() and sum(refused().values()) >= 2)
            text = scrape()
        for s in closed.values():
            s.close()
    lines = [line for line in text.splitlines() if line.startswith("netsnoop_tcp_connects_total{")]
    labels = {line.split('netns="')[1].split('"')[0] for line in lines}
    assert "other" in labels and len(labels - {"other"}) == 1, labels
    assert 'port="' not in "\n".join(line for line in text.splitlines() if line.startswith("netsnoop_tcp_"))
    # only the connects source was asked for
    assert 'netsnoop_source_up{source="connects"} 1.0' in text
    assert "netsnoop_tcp_drops_total" not in text


@pytest.mark.parametrize("args", [["--listen", "nowhere"], ["--listen", "127.0.0.1:0"], ["--listen", "bad:80"],
                                  ["--metrics", "connects,nope"], ["--port-labels", "1-100"],
                                  ["--max-netns", "0"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    done = run(["export", *args])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: Invalid value for '{args[0]}'"), done.stderr


def test_a_busy_port_is_one_line_and_exit_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = run(["export", "--listen", f"127.0.0.1:{port}", "-d", "1"])
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
        f"netsnoop: cannot listen on 127.0.0.1:{port}"), done.stderr


def test_classic_tracepoints_count_the_same() -> None:
    """Forced onto classic tracepoints (NETSNOOP_HOOKS), every BPF source says so in
    netsnoop_hook_info and still counts exactly: a refused connect, an accepted one
    and the bytes of its transfer."""
    from prometheus_client.parser import text_string_to_metric_families

    with NetnsPair() as net:
        with in_netns(net.b):
            sink = Sink(net.addr_b)
            closed = socket.socket()
            closed.bind((net.addr_b, 0))
        refused_port = closed.getsockname()[1]
        target = f"127.0.0.1:{free_port()}"
        with Trace(["export", "--listen", target, "--port-labels", f"{sink.port},{refused_port}"],
                   env={"NETSNOOP_HOOKS": "tracepoint"}):
            with in_netns(net.a):
                c = socket.socket()
            with c, pytest.raises(ConnectionRefusedError):
                c.connect((net.addr_b, refused_port))
            with in_netns(net.a):
                sender = socket.create_connection((net.addr_b, sink.port), timeout=5)
            sender.sendall(b"t" * 300_000)
            sender.close()
            assert wait_for(lambda: sink.received == 300_000)

            def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as r:
                    text = r.read().decode()
                return {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for f in text_string_to_metric_families(text) for s in f.samples}

            port = str(sink.port)
            want = {
                ("netsnoop_tcp_connects_total",
                 (("netns", net.a), ("outcome", "refused"), ("port", str(refused_port)))): 1,
                ("netsnoop_tcp_connects_total", (("netns", net.a), ("outcome", "established"), ("port", port))): 1,
                ("netsnoop_tcp_accepts_total", (("netns", net.b), ("port", port))): 1,
                ("netsnoop_tcp_sent_bytes_total", (("netns", net.a), ("port", port))): 300_000,
                ("netsnoop_tcp_received_bytes_total", (("netns", net.b), ("port", port))): 300_000,
            }
            assert wait_for(lambda: all(samples().get(k) == v for k, v in want.items()), timeout=10), \
                {k: samples().get(k) for k in want}
            got = samples()
        sink.close()
        closed.close()
    kinds = {dict(labels)["source"] + "/" + dict(labels)["group"]: dict(labels)["kind"]
             for (name, labels) in got if name == "netsnoop_hook_info"}
    assert kinds and all(kind in ("tracepoint", "none") for kind in kinds.values()), kinds
    for group in ("connects/set_state", "bytes/set_state", "drops/drop", "retrans/retransmit", "rtt/segment"):
        assert kinds[group] == "tracepoint", (group, kinds)


def test_a_source_without_hooks_is_down_and_the_rest_serve() -> None:
    """Allowed only tp_btf hooks, accept (classic tracepoints or a kretprobe) cannot
    load: it is reported once on stderr and as netsnoop_source_up 0; connects (tp_btf)
    still count."""
    from prometheus_client.parser import text_string_to_metric_families

    target = f"127.0.0.1:{free_port()}"
    with Trace(["export", "--listen", target, "--metrics", "connects,accepts"], env={"NETSNOOP_HOOKS": "tp_btf"}) as t:
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as r:
            text = r.read().decode()
    up = {s.labels["source"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
          if s.name == "netsnoop_source_up"}
    assert up == {"connects": 1.0, "accepts": 0.0}
    warnings = [line for line in t.stderr.splitlines() if line.startswith("netsnoop: warning: accepts:")]
    assert len(warnings) == 1 and "no hook" in warnings[0], t.stderr
    hooks = {(s.labels["source"], s.labels["group"]): s.labels["kind"] for f in text_string_to_metric_families(text)
             for s in f.samples if s.name == "netsnoop_hook_info"}
    assert hooks[("connects", "set_state")] == "tp_btf" and not [k for k in hooks if k[0] == "accepts"], hooks


def test_flow_maps_are_emptied_and_series_stay_bounded() -> None:
    """Hundreds of flows (a SYN to each of 300 ports, dropped by nft) fill the kernel's
    per-flow map until a poll empties it into two series per reason (the labelled port
    and "other"): what runs for days holds no per-flow state. The labelled port's
    count is nft's count for that port."""
    from netsnoop.runner import warn

    with NetnsPair() as net, nft_input_chain(net, net.b) as rule:
        rule("tcp dport 20007 counter drop comment \"one\"")
        rule("tcp dport 20000-20299 counter drop comment \"many\"")
        ctx = metrics.Context(metrics.PortLabels([20007]), metrics.NetnsLabels(8), 10)
        exp = metrics.Exporter(["drops"], ctx)
        exp.open(warn)
        try:
            drops = exp.sources[0]
            assert isinstance(drops, metrics.Drops) and drops.obj is not None
            socks = []
            for port in range(20000, 20300):
                with in_netns(net.a):
                    s = socket.socket()
                s.setblocking(False)
                s.connect_ex((net.addr_b, port))
                socks.append(s)
            assert wait_for(lambda: nft_packets(net, net.b, "one") + nft_packets(net, net.b, "many") >= 300)
            for s in socks:
                s.close()  # no retransmits from here on
            flows = len(list(drops.obj.map("counts").keys()))
            exp.poll()
            left = len(list(drops.obj.map("counts").keys()))  # only drops made since, elsewhere
            one = nft_packets(net, net.b, "one")
            mine = drops.counts.get((os.stat(f"/run/netns/{net.b}").st_ino, "NETFILTER_DROP", "20007"), 0)
        finally:
            exp.close()
    assert flows >= 300 and left < 30, (flows, left)
    assert mine == one >= 1
    assert all(port in ("20007", "other") for _netns, _reason, port in drops.counts), drops.counts
