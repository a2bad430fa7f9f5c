"""The command as a user meets it: errors, privileges, clean exits, hook fallback, check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import NETSNOOP, ROOT, PayloadServer, Trace, assert_verified, bpf_prog_ids, refused_connect, run

from netsnoop.loader import BPFObject

pytestmark = pytest.mark.integration


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_without_capabilities_says_what_is_missing() -> None:
    # still uid 0, but with every capability dropped from the bounding set
    result = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--", *NETSNOOP, "states"],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )
    assert_one_line_error(result, 1, "CAP_BPF", "CAP_PERFMON", "root")


def test_without_kernel_btf_names_it() -> None:
    result = run(["life"], env={"PATH": "/usr/bin:/bin", "NETSNOOP_BTF": "/nonexistent/vmlinux"})
    assert_one_line_error(result, 1, "BTF", "/nonexistent/vmlinux")


def test_no_usable_hook_names_the_tracepoint() -> None:
    # allow only fentry and kprobe: here fentry is refused (EPERM) and kprobes cannot
    # attach (known without trying: no kprobe PMU), so the loader gives up naming what
    # it tried and why each failed
    result = run(["states"], env={"PATH": "/usr/bin:/bin", "NETSNOOP_HOOKS": "fentry,kprobe"})
    assert_one_line_error(result, 1, "set_state", "fentry tcp_set_state", "kprobe tcp_set_state")


def test_a_kprobe_variant_is_passed_over_without_a_second_load_where_kprobes_cannot_attach(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """retrans's tail loss probes have only a kprobe. On a kernel without kprobes (this
    one) that is known before loading, so the object is loaded once, not loaded with
    the kprobe, refused at attach and loaded again. Control: told that kprobes exist,
    the loader tries and pays the second load."""
    from netsnoop import loader
    from netsnoop.commands.retrans import TRACER
    from netsnoop.libbpf import lib

    if loader._has_kprobes():
        pytest.skip("this kernel has kprobes: nothing to pass over")
    L = lib()
    real = L.bpf_object__load
    loads: list[int] = []

    def counted(handle: int) -> int:
        loads.append(handle)
        return int(real(handle))

    monkeypatch.setattr(L, "bpf_object__load", counted)
    with TRACER.open(quiet=True) as obj:
        assert obj.attached and obj.chosen["tlp"] is None
        assert obj.why["tlp__kprobe"].startswith("cannot attach: no kprobes here")
    assert len(loads) == 1
    loads.clear()
    monkeypatch.setattr(loader, "_has_kprobes", lambda: True)
    with TRACER.open(quiet=True) as obj:
        assert obj.attached and obj.chosen["tlp"] is None
        assert obj.why["tlp__kprobe"].startswith("attach failed: ")
    assert len(loads) == 2


@pytest.mark.parametrize("args", [["states", "-L", "70000"], ["life", "-p", "-5"], ["states", "-P", "abc"]])
def test_bad_values_are_usage_errors(args: list[str]) -> None:
    result = run(args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Invalid value" in result.stderr


def held_prog_ids(pid: int) -> set[int]:
    """The BPF programs a process holds (program and link fds), from the kernel's own
    /proc/PID/fdinfo: other tests' programs, loaded meanwhile, are not ours."""
    ids: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids.update(int(line.split()[1]) for line in f if line.startswith("prog_id:"))
        except OSError:
            continue
    return ids


def progs_still_loaded(ours: set[int], timeout: float = 10.0) -> set[int]:
    """Which of ``ours`` are still loaded after ``timeout`` (the kernel frees them
    asynchronously once the last reference is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = ours & bpf_prog_ids()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_cleanly_and_detaches(sig: int) -> None:
    port = refused_connect()
    with Trace(["states", "--json", "-D", str(port)]) as t:
        ours = held_prog_ids(t.proc.pid)
        assert ours and ours <= bpf_prog_ids(), "no program loaded while tracing"
        refused_connect(port=port)
        t.stop(sig)
    assert t.returncode == 0
    assert t.summary == {"type": "summary", "events": 2, "lost_events": 0, "skipped_hook_runs": 0,
                         "transport": "ring", "hooks": {"set_state": "tp_btf"}, "changes_not_seen": 0}
    assert not progs_still_loaded(ours)


def test_text_summary_on_stderr() -> None:
    port = refused_connect()
    with Trace(["states", "-D", str(port)]) as t:
        refused_connect(port=port)
    assert t.returncode == 0
    assert "2 events, 0 lost events" in t.stderr


def test_sigkill_leaves_nothing_attached() -> None:
    with Trace(["life"]) as t:
        ours = held_prog_ids(t.proc.pid)
        assert ours and ours <= bpf_prog_ids()
        t.stop(signal.SIGKILL, settle=0)
    assert t.returncode == -signal.SIGKILL
    assert not progs_still_loaded(ours)


def test_duration_stops_by_itself() -> None:
    result = run(["states", "-d", "0.5", "--json"])
    assert result.returncode == 0
    assert json.loads(result.stdout.splitlines()[-1])["type"] == "summary"


@pytest.mark.parametrize("name,groups", [("states", ["set_state"]), ("life", ["set_state", "send", "recv"])])
def test_kprobe_fallbacks_pass_the_verifier(name: str, groups: list[str]) -> None:
    for group in groups:
        with BPFObject(name, variants={group: "kprobe"}) as obj:
            obj.load()
            assert_verified(obj, group, "kprobe")


def test_check_reports_hooks_and_runnable_subcommands() -> None:
    result = run(["check", "--json"])
    assert result.returncode == 0, result.stderr
    found = {r["item"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert found["kernel BTF"]["ok"] and found["ring buffer"]["ok"]
    for kind in ("tp_btf", "tracepoint", "fentry", "kprobe"):
        assert isinstance(found[kind]["ok"], bool)
    assert found["tp_btf"]["ok"]
    assert found["tracepoint sock:inet_sock_set_state"]["ok"]
    assert found["netsnoop states"]["ok"] and "set_state=" in found["netsnoop states"]["detail"]
    assert found["netsnoop life"]["ok"]


def test_lost_events_are_counted_exactly() -> None:
    """A reader that cannot keep up loses events, and says exactly how many: a stalled
    trace with a one-page buffer, beside a reference trace of the same traffic."""
    from helpers import PayloadServer, fetch

    with PayloadServer(size=10) as srv:
        port = str(srv.port)
        with Trace(["states", "--json", "-P", port]) as ref, \
                Trace(["--ringbuf", "4K", "states", "--json", "-P", port]) as tiny:
            tiny.proc.send_signal(signal.SIGSTOP)
            for _ in range(200):
                fetch("127.0.0.1", srv.port)
            tiny.proc.send_signal(signal.SIGCONT)
    assert ref.summary["lost_events"] == 0
    assert tiny.summary["lost_events"] > 0
    assert len(tiny.records) + tiny.summary["lost_events"] == len(ref.records) >= 200 * 8
    for trace in (ref, tiny):  # nothing delivered twice, also across the ring's wrap-around
        keys = [(r["skaddr"], r["oldstate"], r["newstate"], r["timestamp"]) for r in trace.records]
        assert len(keys) == len(set(keys))


@pytest.mark.parametrize("size", ["5K", "abc", "1K"])
def test_bad_ringbuf_size_is_a_usage_error(size: str) -> None:
    result = run(["--ringbuf", size, "states"])
    assert result.returncode == 2 and "--ringbuf" in result.stderr and "Traceback" not in result.stderr


def ring_sizes(pid: int) -> list[int]:
    """max_entries of the ring buffer maps (map_type 27) a process holds, from the
    kernel's own /proc/PID/fdinfo."""
    sizes = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if info.get("map_type", "").strip() == "27":
            sizes.append(int(info["max_entries"]))
    return sizes


@pytest.mark.parametrize("args", [["life", "--ringbuf", "16K", "-v"], ["--ringbuf", "16K", "-v", "life"]])
def test_global_options_work_after_the_subcommand_too(args: list[str]) -> None:
    with Trace(args) as t, Trace(["life"]) as plain:
        assert set(ring_sizes(t.proc.pid)) == {16384}  # the kernel's map, as asked
        assert set(ring_sizes(plain.proc.pid)) == {8 << 20}  # the default, beside it
    assert t.returncode == 0 and plain.returncode == 0
    assert "libbpf:" in t.stderr and "libbpf:" not in plain.stderr  # -v: libbpf's log


def test_bcc_name_runs_the_subcommand() -> None:
    port = refused_connect()
    with Trace(["tcpstates", "--json", "-D", str(port)]) as t:
        refused_connect(port=port)
    assert t.returncode == 0
    assert [(r["oldstate"], r["newstate"]) for r in t.records] == [("CLOSE", "SYN_SENT"), ("SYN_SENT", "CLOSE")]


@pytest.mark.parametrize("args,needles", [
    (["states", "-d", "inf"], ["-d", "finite"]),
    (["connlat", "-d", "nan"], ["-d", "finite"]),
    (["rtt", "-i", "1e309"], ["-i", "finite"]),
    (["top", "nan"], ["INTERVAL", "finite"]),
    (["states", "-4", "-6"], ["-4", "-6"]),
    (["life", "-L", ",".join(["1-65535"] * 1000)], ["-L", "at most 16 ports"]),
    (["life", "-L", "80-"], ["-L", "80-"]),
    (["connect", "--cgroup", ""], ["--cgroup"]),
    (["--ringbuf", "4G", "states"], ["--ringbuf", "2G"]),
    (["tcplfie"], ["Did you mean 'life'?"]),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], needles: list[str]) -> None:
    result = run(args, timeout=20)
    errors = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(errors) == 1 and errors[0].startswith("Error:"), result.stderr
    assert result.stdout == ""
    assert all(n in errors[0] for n in needles), errors[0]


# ---- -p: a list of PIDs wherever there is a -p ----------------------------------------------

def test_every_pid_option_takes_a_list() -> None:
    import click

    from netsnoop.cli import cli
    from netsnoop.options import PidList

    ctx = click.Context(cli)
    types = {}
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        for param in command.params:
            if "-p" in getattr(param, "opts", ()) and not getattr(param, "hidden", False):
                types[name] = param.type
    assert {"states", "life", "connect", "accept", "tracer", "connlat", "top", "fdsnoop", "solisten"} <= set(types)
    assert all(isinstance(t, PidList) for t in types.values()), types


# Waits for a line on stdin, then does one thing the tool under test sees.
PID_CHILD = r"""
import socket, sys
sys.stdin.readline()
what, port = sys.argv[1], int(sys.argv[2])
if what == "listen":
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(3)
elif what == "send":
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"x" * 5000)
elif what == "fds":
    a, b = socket.socketpair()
    socket.send_fds(a, [b"x"], [0])
    socket.recv_fds(b, 1, 1)
"""


@pytest.mark.parametrize("tool,what,args", [
    ("solisten", "listen", []), ("fdsnoop", "fds", []), ("top", "send", ["0.2"]),
])
def test_pid_list_keeps_the_processes_listed(tool: str, what: str, args: list[str]) -> None:
    """Three processes do the same thing; -p A,B shows A and B, and the same trace
    without -p, running alongside, shows all three (the positive control)."""
    with PayloadServer(request_bytes=5000) as srv:
        procs = [subprocess.Popen([sys.executable, "-c", PID_CHILD, what, str(srv.port)], stdin=subprocess.PIPE,
                                  text=True) for _ in range(3)]
        a, b, c = procs
        listed = [tool, "--json", "-p", f"{a.pid},{b.pid}", *args]
        with Trace(listed) as only, Trace([tool, "--json", *args]) as everyone:
            for p in procs:
                p.communicate("go\n", timeout=20)
                assert p.returncode == 0
        ours = {p.pid for p in procs}
        assert {r["pid"] for r in everyone.records} & ours == ours
        assert {r["pid"] for r in only.records} == {a.pid, b.pid}


# ---- completion of values ------------------------------------------------------------------

def complete(words: str) -> list[str]:
    """What the real CLI's completion offers for the last of ``words``, as bash asks
    click for it (``_NETSNOOP_COMPLETE=bash_complete``)."""
    env = {**os.environ, "_NETSNOOP_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1)}
    done = subprocess.run(NETSNOOP, capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    items = [line for line in done.stdout.splitlines() if line]  # "plain,VALUE" each; nothing offered: one blank
    assert all(line.startswith("plain,") for line in items), (words, done.stdout)
    return [line.split(",", 1)[1] for line in items]


def netns_options() -> dict[str, str]:
    """Every subcommand with a namespace filter, and its long option."""
    import click

    from netsnoop.cli import cli
    from netsnoop.where import NetnsList

    ctx = click.Context(cli)
    found = {}
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        for param in command.params:
            if isinstance(param.type, NetnsList):
                found[name] = next(o for o in getattr(param, "opts", ()) if o.startswith("--"))
    return found


def test_every_namespace_filter_completes_namespace_names() -> None:
    from helpers import NetnsPair

    tools = netns_options()
    assert {"states", "life", "connect", "accept", "tracer", "connlat", "solisten"} <= set(tools)
    with NetnsPair() as pair:
        inode = str(os.stat(f"/run/netns/{pair.a}").st_ino)
        for tool, option in tools.items():
            offered = complete(f"netsnoop {tool} {option} ")
            assert {pair.a, pair.b, "host"} <= set(offered), (tool, offered)
            assert complete(f"netsnoop {tool} {option} host,{pair.a[:-1]}") == [f"host,{pair.a}"], tool
            assert inode in complete(f"netsnoop {tool} {option} {inode[:-2]}"), tool
    assert pair.a not in complete(f"netsnoop states --netns {pair.a[:-1]}")  # gone with the namespace


def kernel_drop_reasons() -> set[str]:
    """enum skb_drop_reason's names as bpftool prints the kernel's BTF."""
    dump = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
                          capture_output=True, text=True, check=True).stdout
    block = dump[dump.index("enum skb_drop_reason {"):]
    block = block[: block.index("};")]
    names = [line.split("=")[0].strip() for line in block.splitlines()[1:] if "=" in line]
    return {n.removeprefix("SKB_DROP_REASON_").removeprefix("SKB_") for n in names}


def test_drop_reason_completes_the_kernels_reason_names() -> None:
    # CONSUMED is a packet used up, not dropped: drop never shows it, so it is not offered
    assert set(complete("netsnoop drop --reason ")) == kernel_drop_reasons() - {"CONSUMED"}
    assert complete("netsnoop drop --reason NETFILTER_D") == ["NETFILTER_DROP"]
    assert complete("netsnoop drop --reason NO_SOCKET,!NETFILTER_D") == ["NO_SOCKET,!NETFILTER_DROP"]
    assert "NO_SOCKET" in complete("netsnoop drop --exclude-reason NO_SO")
    assert complete("netsnoop drop --reason ZZ_NO_SUCH") == []
