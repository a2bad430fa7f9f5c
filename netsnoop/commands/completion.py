"""netsnoop completion: the shell completion script click generates, printed, so that
packagers and users need not know click's environment-variable incantation."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS), metavar="SHELL")
def command(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash: eval "$(netsnoop completion bash)"        (in ~/.bashrc)
    zsh:  eval "$(netsnoop completion zsh)"         (in ~/.zshrc)
    fish: netsnoop completion fish | source         (in ~/.config/fish/config.fish)
    """
    from netsnoop.cli import cli

    complete = get_completion_class(shell)
    assert complete is not None  # every name in SHELLS is one click knows
    click.echo(complete(cli, {}, "netsnoop", "_NETSNOOP_COMPLETE").source(), nl=False)
