"""The choice of hook variants (netsnoop.variants), without a kernel: programs are
named as in the BPF sources, and what the kernel would refuse is said by hand."""

from __future__ import annotations

from typing import Callable

import pytest

from netsnoop.errors import BadSetting, LoadError, MissingFeature
from netsnoop.variants import DEFAULT_ORDER, Program, VariantChooser, companion_of, hook_order

SET_STATE = [
    Program("set_state__tp_btf", "tp_btf/inet_sock_set_state"),
    Program("set_state__tracepoint", "tracepoint/sock/inet_sock_set_state"),
    Program("set_state__kprobe", "kprobe/tcp_set_state"),
]
# top's design: send and recv share a per-CPU cache that only the typed hooks feed
TOP = [
    Program("send__tp_btf", "tp_btf/sock_send_length"),
    Program("send__tracepoint", "tracepoint/sock/sock_send_length"),
    Program("recv__tp_btf", "tp_btf/sock_recv_length"),
    Program("recv__tracepoint", "tracepoint/sock/sock_recv_length"),
    Program("send__tp_btf__switch", "tp_btf/sched_switch"),
    Program("send__tp_btf__drain", "raw_tp"),
    Program("flush", "iter/bpf_map_elem"),
]


def nothing_missing(_p: Program) -> str | None:
    return None


def missing(**why: str) -> Callable[[Program], str | None]:
    """An obstacle function: what the kernel lacks, by program name."""
    return lambda p: why.get(p.name)


def loaded(autoload: dict[str, bool]) -> set[str]:
    return {name for name, on in autoload.items() if on}


def test_default_order_puts_typed_tracepoints_first() -> None:
    assert hook_order({}) == DEFAULT_ORDER
    assert DEFAULT_ORDER[:2] == ("tp_btf", "tracepoint")


def test_netsnoop_prefer_moves_kinds_first_and_netsnoop_hooks_allows_only_its_own() -> None:
    assert hook_order({"NETSNOOP_PREFER": "kprobe"})[:2] == ("kprobe", "tp_btf")
    assert hook_order({"NETSNOOP_HOOKS": "kprobe, tracepoint"}) == ("tracepoint", "kprobe")
    assert hook_order({"NETSNOOP_HOOKS": "kprobe,tracepoint", "NETSNOOP_PREFER": "kprobe"}) == ("kprobe", "tracepoint")


def test_an_unknown_kind_is_a_usage_error_naming_the_variable() -> None:
    with pytest.raises(BadSetting, match=r"NETSNOOP_HOOKS: unknown hook kind 'kprob' \(valid: tp_btf, "):
        hook_order({"NETSNOOP_HOOKS": "kprob"})
    # a kind chosen outside variant groups is valid, and orders nothing
    assert hook_order({"NETSNOOP_HOOKS": "cgroup_skb"}) == DEFAULT_ORDER


def test_the_chosen_kind_follows_netsnoop_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    choices = {}
    for allowed in ("tp_btf", "tracepoint", "kprobe", "kprobe,tracepoint"):
        monkeypatch.setenv("NETSNOOP_HOOKS", allowed)
        choice = VariantChooser("states").choose(SET_STATE, nothing_missing)
        choices[allowed] = choice.chosen["set_state"]
        assert loaded(choice.autoload) == {f"set_state__{choice.chosen['set_state']}"}
    assert choices == {"tp_btf": "tp_btf", "tracepoint": "tracepoint", "kprobe": "kprobe",
                       "kprobe,tracepoint": "tracepoint"}


def test_a_refused_kind_falls_back_to_the_next() -> None:
    chooser = VariantChooser("states")
    assert chooser.choose(SET_STATE, nothing_missing, DEFAULT_ORDER).chosen == {"set_state": "tp_btf"}
    chooser.reject("set_state__tp_btf", "attach failed: Permission denied (errno 1)")
    choice = chooser.choose(SET_STATE, nothing_missing, DEFAULT_ORDER)
    assert choice.chosen == {"set_state": "tracepoint"}
    assert choice.autoload == {"set_state__tp_btf": False, "set_state__tracepoint": True, "set_state__kprobe": False}


def test_a_kind_the_kernel_lacks_is_passed_over_without_trying_it() -> None:
    chooser = VariantChooser("states")
    choice = chooser.choose(SET_STATE, missing(set_state__tp_btf="needs the kernel's own BTF"), DEFAULT_ORDER)
    assert choice.chosen == {"set_state": "tracepoint"}
    assert chooser.why == {"set_state__tp_btf": "needs the kernel's own BTF"}


def test_when_nothing_is_left_the_error_names_each_kind_and_its_cause() -> None:
    chooser = VariantChooser("states")
    chooser.reject("set_state__tp_btf", "attach failed: Permission denied (errno 1)")
    chooser.reject("set_state__kprobe", "attach failed: No such file or directory (errno 2)")
    obstacle = missing(set_state__tracepoint="no event sock:inet_sock_set_state in tracefs")
    with pytest.raises(MissingFeature) as err:
        chooser.choose(SET_STATE, obstacle, DEFAULT_ORDER)
    assert str(err.value) == (
        "states: no hook for set_state can be used here (tried: "
        "tp_btf inet_sock_set_state: attach failed: Permission denied (errno 1); "
        "tracepoint sock:inet_sock_set_state: no event sock:inet_sock_set_state in tracefs; "
        "kprobe tcp_set_state: attach failed: No such file or directory (errno 2))"
    )


def test_the_first_cause_given_for_a_variant_is_kept() -> None:
    chooser = VariantChooser("states")
    chooser.reject("set_state__tp_btf", "refused at load [libbpf: prog 'set_state__tp_btf': failed to load]")
    chooser.reject("set_state__tp_btf", "linked with a group that cannot use tp_btf")
    assert chooser.why["set_state__tp_btf"].startswith("refused at load")


def test_only_the_kinds_netsnoop_hooks_allows_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETSNOOP_HOOKS", "fentry")
    with pytest.raises(MissingFeature, match=r"\(NETSNOOP_HOOKS=fentry allows none of its kinds: "
                                             r"tp_btf, tracepoint, kprobe\)$"):
        VariantChooser("states").choose(SET_STATE, nothing_missing)


def test_an_optional_group_without_a_hook_is_none_and_one_not_wanted_is_not_tried() -> None:
    optional = VariantChooser("states", optional=frozenset({"set_state"}))
    for p in SET_STATE:
        optional.reject(p.name, "refused")
    assert optional.choose(SET_STATE, nothing_missing, DEFAULT_ORDER).chosen == {"set_state": None}
    tried: list[str] = []

    def record(p: Program) -> None:
        tried.append(p.name)

    unwanted = VariantChooser("states", optional=frozenset({"set_state"}), without=frozenset({"set_state"}))
    choice = unwanted.choose(SET_STATE, record, DEFAULT_ORDER)
    assert choice.chosen == {"set_state": None} and not loaded(choice.autoload) and tried == []
    # `without` leaves a required group alone
    required = VariantChooser("states", without=frozenset({"set_state"}))
    assert required.choose(SET_STATE, nothing_missing, DEFAULT_ORDER).chosen == {"set_state": "tp_btf"}


def test_a_forced_kind_is_taken_whatever_the_order_and_must_exist() -> None:
    chooser = VariantChooser("states", forced={"set_state": "kprobe"})
    assert chooser.choose(SET_STATE, nothing_missing, ("tp_btf",)).chosen == {"set_state": "kprobe"}
    with pytest.raises(LoadError, match="states: no fentry variant for set_state"):
        VariantChooser("states", forced={"set_state": "fentry"}).choose(SET_STATE, nothing_missing, DEFAULT_ORDER)


def test_companions_follow_their_variant() -> None:
    chooser = VariantChooser("top", linked=frozenset({"send", "recv"}))
    typed = chooser.choose(TOP, nothing_missing, DEFAULT_ORDER)
    assert loaded(typed.autoload) == {"send__tp_btf", "recv__tp_btf", "send__tp_btf__switch", "send__tp_btf__drain"}
    chooser.reject("send__tp_btf", "attach failed")
    classic = chooser.choose(TOP, nothing_missing, DEFAULT_ORDER)
    assert loaded(classic.autoload) == {"send__tracepoint", "recv__tracepoint"}
    assert not classic.autoload["send__tp_btf__switch"] and not classic.autoload["send__tp_btf__drain"]
    assert "flush" not in classic.autoload  # neither variant nor companion: left to its section's default


def test_linked_groups_give_up_a_kind_together_and_say_why() -> None:
    chooser = VariantChooser("top", linked=frozenset({"send", "recv"}))
    chooser.reject("send__tp_btf", "attach failed: Invalid argument (errno 22)")
    choice = chooser.choose(TOP, nothing_missing, DEFAULT_ORDER)
    assert choice.chosen == {"send": "tracepoint", "recv": "tracepoint"}
    assert chooser.why["send__tp_btf"] == "attach failed: Invalid argument (errno 22)"
    assert chooser.why["recv__tp_btf"] == "linked with a group that cannot use tp_btf"
    # the same groups, not linked: each takes its own best
    alone = VariantChooser("top")
    alone.reject("send__tp_btf", "attach failed")
    assert alone.choose(TOP, nothing_missing, DEFAULT_ORDER).chosen == {"send": "tracepoint", "recv": "tp_btf"}


def test_an_on_demand_program_the_kernel_cannot_run_is_skipped_with_its_cause() -> None:
    chooser = VariantChooser("top", linked=frozenset({"send", "recv"}))
    choice = chooser.choose(TOP, missing(flush="needs the kernel's own BTF"), DEFAULT_ORDER)
    assert choice.skipped == ["flush"] and choice.autoload["flush"] is False
    assert chooser.why["flush"] == "needs the kernel's own BTF"
    assert chooser.choose(TOP, nothing_missing, DEFAULT_ORDER).skipped == []


LOAD_LOG = [
    "libbpf: prog 'set_state__tp_btf': BPF program load failed: Permission denied",
    "libbpf: prog 'set_state__tp_btf': -- BEGIN PROG LOAD LOG --",
    "libbpf: prog 'set_state__tp_btf': failed to load: -13",
    "libbpf: failed to load object 'states'",
]


def test_the_variant_named_in_the_load_log_is_the_one_refused() -> None:
    chooser = VariantChooser("states")
    chooser.choose(SET_STATE, nothing_missing, DEFAULT_ORDER)
    assert chooser.refused_at_load(LOAD_LOG) == ("set_state__tp_btf", LOAD_LOG[2])


def test_a_refused_companion_takes_its_variant_along() -> None:
    chooser = VariantChooser("top", linked=frozenset({"send", "recv"}))
    chooser.choose(TOP, nothing_missing, DEFAULT_ORDER)
    line = "libbpf: prog 'send__tp_btf__drain': failed to load: -22"
    assert chooser.refused_at_load(["libbpf: prog 'send__tp_btf__drain': relocating", line]) == ("send__tp_btf", line)


def test_a_failure_of_no_chosen_variant_is_a_real_error() -> None:
    chooser = VariantChooser("top", linked=frozenset({"send", "recv"}))
    chooser.choose(TOP, nothing_missing, DEFAULT_ORDER)
    assert chooser.refused_at_load(["libbpf: prog 'flush': failed to load: -22"]) == (None, "")
    assert chooser.refused_at_load(["libbpf: prog 'send__tracepoint': failed to load: -22"]) == (None, "")
    assert chooser.refused_at_load(["libbpf: map 'events': failed to create: -1"]) == (None, "")


@pytest.mark.parametrize(("name", "section", "kind", "group", "belongs_to", "target", "on_demand"), [
    ("set_state__tp_btf", "tp_btf/inet_sock_set_state", "tp_btf", "set_state", None, "inet_sock_set_state", False),
    ("accept4__tracepoint", "tracepoint/syscalls/sys_exit_accept4", "tracepoint", "accept4", None,
     "syscalls:sys_exit_accept4", False),
    ("send__tp_btf__drain", "raw_tp", "raw_tp", "send__tp_btf", "send__tp_btf", "", True),
    ("life__tp_btf__alive", "iter/tcp", "iter", "life__tp_btf", "life__tp_btf", "tcp", True),
    ("recv__fentry", "fentry.s/tcp_recvmsg", "fentry", "recv", None, "tcp_recvmsg", False),
    ("raw_state", "raw_tp/inet_sock_set_state", "raw_tp", "raw_state", None, "inet_sock_set_state", False),
])
def test_a_programs_role_is_read_from_its_name_and_section(name: str, section: str, kind: str, group: str,
                                                          belongs_to: str | None, target: str, on_demand: bool) -> None:
    p = Program(name, section)
    assert (p.kind, p.group, p.belongs_to, p.target, p.on_demand) == (kind, group, belongs_to, target, on_demand)
    assert p.is_variant == (name.count("__") == 1)
    assert companion_of(name) == belongs_to
