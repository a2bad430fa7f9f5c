"""Man pages and completion scripts come from the click definitions: one page per
subcommand, rendered by man, listing exactly the options --help lists."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from helpers import NETSNOOP, ROOT
from netsnoop.commands import COMMANDS


@pytest.fixture(scope="module")
def man_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    target = str(tmp_path_factory.mktemp("man"))
    subprocess.run(NETSNOOP[:1] + ["-m", "netsnoop.manpages", target], cwd=ROOT, check=True)
    return target


def help_options(args: list[str]) -> set[str]:
    """The option spellings --help shows (``-p, --pid``), from the real command line."""
    out = subprocess.run(NETSNOOP + args + ["--help"], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**os.environ, "COLUMNS": "200"}).stdout
    section = out.split("Options:", 1)[1].split("Commands:", 1)[0]
    return {m.group(1) for m in re.finditer(r"^  (-[^ ].*?)(?:  |$)", section, re.M)}


def rendered(path: str) -> str:
    """What ``man -l`` shows of the page (it must render without complaint)."""
    done = subprocess.run(["man", "-l", path], capture_output=True, text=True,
                          env={**os.environ, "MANWIDTH": "100"})
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout


def page_options(path: str) -> set[str]:
    """The option spellings the page lists under OPTIONS (each ``.TP`` tag)."""
    with open(path) as f:
        source = f.read()
    section = source.split(".SH OPTIONS\n", 1)[1].split(".SH COMMANDS\n", 1)[0]
    return {m.group(1).replace("\\-", "-") for m in re.finditer(r"^\.TP\n\.B (.*)$", section, re.M)}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_has_a_page_with_the_options_of_its_help(man_dir: str, name: str) -> None:
    path = os.path.join(man_dir, f"netsnoop-{name}.8")
    text = rendered(path)
    assert text.startswith(f"NETSNOOP-{name.upper()}(8)") and "\nOPTIONS\n" in text
    assert page_options(path) == help_options([name])


def test_the_main_page_lists_every_subcommand_and_the_global_options(man_dir: str) -> None:
    path = os.path.join(man_dir, "netsnoop.8")
    text = rendered(path)
    assert text.startswith("NETSNOOP(8)")
    for name in COMMANDS:
        assert re.search(rf"^       {name}\b", text, re.M), name
    assert page_options(path) == help_options([])


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_what_click_generates(shell: str) -> None:
    printed = subprocess.run(NETSNOOP + ["completion", shell], capture_output=True, text=True, cwd=ROOT, check=True)
    generated = subprocess.run(NETSNOOP, capture_output=True, text=True, cwd=ROOT,
                               env={**os.environ, "_NETSNOOP_COMPLETE": f"{shell}_source"})
    assert printed.stdout == generated.stdout and "_NETSNOOP_COMPLETE" in printed.stdout


def test_bash_completion_completes_subcommands() -> None:
    script = subprocess.run(NETSNOOP + ["completion", "bash"], capture_output=True, text=True, cwd=ROOT,
                            check=True).stdout
    # what bash asks the completion function for `netsnoop li<TAB>`
    out = subprocess.run(NETSNOOP, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "_NETSNOOP_COMPLETE": "bash_complete", "COMP_WORDS": "netsnoop li",
                              "COMP_CWORD": "1"}).stdout
    assert "complete -o nosort -F _netsnoop_completion netsnoop" in script
    assert "plain,life" in out.splitlines()
