"""netsnoop export's metrics against Prometheus' conventions: a real scrape goes through
``promtool check metrics``, and every metric's name, type, help and labels are checked
against the documented list (netsnoop.metrics.METRICS, which --help prints)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import urllib.request

import pytest
from helpers import ROOT, NetnsPair, Trace, free_port, run
from traffic_helpers import in_netns, wait_for
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from netsnoop import metrics
from netsnoop.hist import Log2Hist
from netsnoop.metrics import METRICS, NetnsLabels, PortLabels, log2_buckets

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None and os.environ.get("CI") != "true",
                                    reason="needs promtool (apt package prometheus; make deps installs it)")
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL or "promtool", *args], input=stdin, capture_output=True, text=True)


def scrape(target: str, openmetrics: bool = False) -> str:
    req = urllib.request.Request(f"http://{target}/metrics")
    if openmetrics:
        req.add_header("Accept", "application/openmetrics-text; version=1.0.0; charset=utf-8")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def scrapes() -> tuple[str, str, list[int]]:
    """A text and an OpenMetrics scrape of an exporter with port labels, after a refused
    and an established connect in a private namespace (so the labelled series exist)."""
    with NetnsPair() as net:
        with in_netns(net.b):
            listener = socket.socket()
            listener.bind((net.addr_b, 0))
            listener.listen(4)
            closed = socket.socket()
            closed.bind((net.addr_b, 0))
        ports = [listener.getsockname()[1], closed.getsockname()[1]]
        target = f"127.0.0.1:{free_port()}"
        with Trace(["export", "--listen", target, "--port-labels", ",".join(map(str, ports))]):
            for port in ports:
                with in_netns(net.a):
                    c = socket.socket()
                with c:
                    c.settimeout(5)
                    c.connect_ex((net.addr_b, port))
            assert wait_for(lambda: 'outcome="refused"' in scrape(target) and 'outcome="established"'
                            in scrape(target), timeout=10)
            text, om = scrape(target), scrape(target, openmetrics=True)
        listener.close()
        closed.close()
    return text, om, ports


@pytest.mark.integration
@needs_promtool
def test_a_real_scrape_passes_promtool_check_metrics(scrapes: tuple[str, str, list[int]]) -> None:
    text, _om, _ports = scrapes
    done = promtool("check", "metrics", stdin=text)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr
    # and promtool does find problems: a counter without _total is one
    bad = promtool("check", "metrics", stdin="# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests 1\n")
    assert bad.returncode != 0 and "_total" in bad.stdout + bad.stderr


@pytest.mark.integration
def test_every_metric_is_exposed_as_documented(scrapes: tuple[str, str, list[int]]) -> None:
    text, om, ports = scrapes
    for flavour, parsed in (("text", parse_text(text)), ("openmetrics", parse_openmetrics(om))):
        families = {f.name: f for f in parsed if f.name.startswith("netsnoop_")}
        for doc in METRICS:
            name = doc.name
            base = name[: -len("_total")] if doc.type == "counter" else name
            if doc.type == "info":
                base = name[: -len("_info")] if flavour == "openmetrics" else name
            fam = families.get(base)
            assert fam is not None, (flavour, name, sorted(families))
            expected = doc.type if flavour == "openmetrics" or doc.type != "info" else "gauge"
            assert fam.type == expected, (flavour, name)
            assert fam.documentation == doc.help, (flavour, name)
            extra = {"le"} if doc.type == "histogram" else set()
            for sample in fam.samples:
                if sample.name.endswith("_created"):
                    continue
                assert set(sample.labels) - extra == set(doc.labels), (flavour, sample)
        assert not set(families) - {(m.name[: -len("_total")] if m.type == "counter" else
                                     m.name[: -len("_info")] if m.type == "info" and flavour == "openmetrics"
                                     else m.name) for m in METRICS}, flavour
    # the port label takes the listed ports and "other", nothing else
    values = {m.group(1) for m in re.finditer(r'port="([^"]*)"', text)
              if not m.string[: m.start()].rsplit("\n", 1)[-1].startswith("netsnoop_tcp_listener")}
    assert values <= {str(p) for p in ports} | {"other"} and values & {str(p) for p in ports}, values


def test_names_follow_prometheus_conventions() -> None:
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    for m in METRICS:
        assert m.name.startswith("netsnoop_") and SNAKE.match(m.name), m.name
        assert m.type in ("counter", "gauge", "histogram", "info"), m
        assert m.name.endswith("_total") == (m.type == "counter"), m.name
        assert m.name.endswith("_info") == (m.type == "info"), m.name
        if any(word in m.name for word in ("duration", "latency", "rtt", "time")):
            assert m.name.removesuffix("_total").endswith("_seconds"), m.name  # times in seconds
        if "bytes" in m.name:
            assert m.name.removesuffix("_total").endswith("_bytes"), m.name
        for unit in ("_milliseconds", "_microseconds", "_kilobytes", "_percent"):
            assert unit not in m.name, m.name  # base units only
        assert m.help and m.help[0].isupper() and m.help.endswith("."), m
        assert all(SNAKE.match(label) and not label.startswith("__") for label in m.labels), m
        assert "le" not in m.labels and "quantile" not in m.labels
        assert m.source in metrics.SOURCES + ("health",), m
        # no per-client-port or per-process series: such labels do not exist
        assert not {"pid", "comm", "client_port", "sport", "lport", "rport", "laddr", "raddr"} & set(m.labels)


def test_help_lists_every_metric() -> None:
    done = run(["export", "--help"])
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())
    for m in METRICS:
        assert f"{m.name} {m.type} [{','.join(m.labels)}] {m.source}" in flat, m.name


@needs_promtool
def test_sample_alert_rules_and_scrape_config_are_valid() -> None:
    deploy = os.path.join(ROOT, "deploy")
    rules = promtool("check", "rules", os.path.join(deploy, "alerts.yml"))
    assert rules.returncode == 0 and "SUCCESS" in rules.stdout, rules.stdout + rules.stderr
    config = promtool("check", "config", os.path.join(deploy, "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    # every metric an alert uses is one netsnoop exports
    with open(os.path.join(deploy, "alerts.yml")) as f:
        used = set(re.findall(r"\bnetsnoop_[a-z0-9_]+", f.read()))
    exported = {m.name for m in METRICS}
    assert used and used <= exported, used - exported


def test_deployments_grant_the_same_capabilities() -> None:
    """The systemd unit and the DaemonSet give the same privileges (and say why)."""
    with open(os.path.join(ROOT, "deploy", "netsnoop-export.service")) as f:
        unit = f.read()
    with open(os.path.join(ROOT, "deploy", "netsnoop-export-daemonset.yaml")) as f:
        daemonset = f.read()
    bounding = next(line for line in unit.splitlines() if line.startswith("CapabilityBoundingSet="))
    unit_caps = {c.removeprefix("CAP_") for c in bounding.split("=", 1)[1].split()}
    added = daemonset.split("add:", 1)[1].split("seccompProfile", 1)[0]
    ds_caps = set(re.findall(r"^\s+- ([A-Z_]+)", added, re.M))
    assert unit_caps == ds_caps and {"BPF", "PERFMON", "SYS_ADMIN"} <= unit_caps, (unit_caps, ds_caps)
    assert "hostPID: true" in daemonset and "hostNetwork: true" in daemonset
    assert "/sys/kernel/btf" in daemonset and "/sys/kernel/tracing" in daemonset


# ---- the bounded label sets and histogram buckets, on their own ---------------------

def test_port_labels_are_the_listed_ports_or_other() -> None:
    assert PortLabels().of(80, 443) == ()
    ports = PortLabels([80, 443])
    assert ports.of(51234, 443) == ("443",)
    assert ports.of(80, 443) == ("80",)  # the first listed candidate: the local end
    assert ports.of(51234, 51235) == ("other",)
    assert ports.values() == [("80",), ("443",), ("other",)] and PortLabels().values() == [()]


def test_netns_labels_stay_bounded_and_make_room_for_live_namespaces() -> None:
    labels = NetnsLabels(2)
    counts, latency = labels.track({}), labels.track({})
    live = {n.inode for n in metrics.netns.namespaces()}
    dead = [i for i in range(1, 10) if i not in live][:3]
    for ino in dead[:2]:
        assert labels.key(ino) == ino
        counts[(ino, "refused")] = 1
        latency[(ino, "refused")] = Log2Hist((1,), 1, 1)
    # full: a namespace that still exists takes the place of the vanished ones, whose
    # series go from every tracked sum
    host = metrics.netns.HOST_NETNS_INODE
    assert labels.key(host) == host
    assert counts == {} and latency == {} and labels.label(host) == "host"
    other = next(iter(live - {host}), None)
    if other is not None:
        assert labels.key(other) == other
        # now full of live namespaces: the next one is "other"
        assert labels.key(dead[2]) == 0 and labels.label(0) == "other"
        assert labels.admitted == {host, other}


def test_histogram_buckets_are_cumulative_up_to_each_slots_largest_value() -> None:
    # hist.h slot i holds integers 2**i .. 2**(i+1) - 1 (slot 0: 0 and 1): a bucket's
    # bound is its largest value (so a value of 2 is not under le=2 unless it is);
    # the last slot also holds everything larger: +Inf
    slots = (1, 0, 3) + (0,) * 28 + (2,)
    buckets = log2_buckets(slots, 6, 1e6)
    assert buckets[:3] == [("1e-06", 1), ("3e-06", 1), ("7e-06", 4)]
    assert buckets[-2] == (repr((2**31 - 1) / 1e6), 4) and buckets[-1] == ("+Inf", 6) and len(buckets) == 32
    assert log2_buckets((2, 1), 3)[:3] == [("1.0", 2), ("3.0", 3), ("7.0", 3)]
    # slots of microseconds taken from nanoseconds (hist_add_scaled, div 1000): slot 0
    # holds 0 .. 1999 ns, slot 1 2000 .. 3999 ns; the bounds are those in seconds
    assert log2_buckets((1, 2), 3, 1e9, div=1000)[:2] == [(repr(1999 / 1e9), 1), (repr(3999 / 1e9), 3)]
