"""Man pages generated from the click definitions, so they cannot drift from ``--help``:
``netsnoop(8)`` and ``netsnoop-SUBCOMMAND(8)`` (section 8: they need root).

``python -m netsnoop.manpages DIR`` writes them; the wheel build runs it and installs
the pages under ``share/man/man8``. Written here rather than with click-man, which
writes section 1 and does not see subcommands that a lazy group loads on demand.
"""

from __future__ import annotations

import datetime
import os
import sys
from inspect import cleandoc

import click

from netsnoop import __version__

SECTION = "8"


def roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting a request."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in out.splitlines())


def page(ctx: click.Context, subcommands: list[tuple[str, str]] | None = None) -> str:
    """One command's page: name, synopsis, description, options (and subcommands)."""
    cmd = ctx.command
    name = ctx.command_path.replace(" ", "-")
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds fix the date
    date = (datetime.date.fromtimestamp(int(epoch)) if epoch else datetime.date.today()).isoformat()
    lines = [
        f'.TH "{name.upper()}" "{SECTION}" "{date}" "netsnoop {__version__}" "netsnoop manual"',
        ".SH NAME",
        f"{roff(name)} \\- {roff(cmd.get_short_help_str(limit=200))}",
        ".SH SYNOPSIS",
        f".B {roff(ctx.command_path)}",
        roff(" ".join(cmd.collect_usage_pieces(ctx))),
        ".SH DESCRIPTION",
    ]
    for para in cleandoc(cmd.help or "").split("\n\n"):
        lines += [".PP", roff(" ".join(para.split()))]
    options = [p.get_help_record(ctx) for p in cmd.get_params(ctx) if isinstance(p, click.Option) and not p.hidden]
    if options:
        lines.append(".SH OPTIONS")
        for record in options:
            if record:
                lines += [".TP", f".B {roff(record[0])}", roff(record[1])]
    if subcommands:
        lines.append(".SH COMMANDS")
        for sub, help_ in subcommands:
            lines += [".TP", f".B {roff(sub)}", roff(help_) + f" See \\fBnetsnoop\\-{roff(sub)}\\fR({SECTION})."]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """File name -> page, for netsnoop and every subcommand."""
    from netsnoop.cli import cli
    from netsnoop.commands import COMMANDS

    root = click.Context(cli, info_name="netsnoop", **cli.context_settings)
    out = {f"netsnoop.{SECTION}": page(root, [(n, h) for n, (_m, h) in COMMANDS.items()])}
    for name in COMMANDS:
        cmd = cli.get_command(root, name)
        assert cmd is not None
        out[f"netsnoop-{name}.{SECTION}"] = page(click.Context(cmd, info_name=name, parent=root))
    return out


def main(target: str) -> None:
    os.makedirs(target, exist_ok=True)
    for file, text in pages().items():
        with open(os.path.join(target, file), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/man")
