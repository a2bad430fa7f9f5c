"""The ``netsnoop`` command: a click group whose subcommands load on demand."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from netsnoop import __version__
from netsnoop.commands import COMMANDS
from netsnoop.errors import NetsnoopError


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return module.command  # type: ignore[no-any-return]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_module, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NetsnoopError as err:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"netsnoop: {err}", err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as err:  # a bug: still one line, the traceback behind --verbose
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"netsnoop: internal error: {type(err).__name__}: {err} (--verbose shows the traceback)", err=True)
            ctx.exit(1)


class RingSize(click.ParamType):
    """``8M``, ``512K`` or bytes: a power of two of at least one page (the kernel's rule)."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            size = int(text[:-1] if scale > 1 else text) * scale
        except ValueError:
            self.fail(f"{value!r} is not a size like 8M or 512K", param, ctx)
        if size < 4096 or size & (size - 1):
            self.fail(f"{value!r} must be a power of two, at least 4K", param, ctx)
        return size


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="netsnoop")
@click.option("-v", "--verbose", is_flag=True, help="show libbpf's log and full errors")
@click.option("--ringbuf", type=RingSize(), default="8M", show_default=True,
              help="kernel-to-user event buffer size; raise it if events are lost")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, ringbuf: int) -> None:
    """Trace the kernel's TCP stack with eBPF: connections, states, bytes, drops.

    Each subcommand is one of the bcc network tools, rebuilt on libbpf and CO-RE
    (no compiler or kernel headers needed at run time). Run `netsnoop check` to
    see what this kernel supports.
    """
    ctx.obj = {"verbose": verbose}
    from netsnoop import loader

    loader.ringbuf_bytes = ringbuf
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.ERROR + 10,
        format="netsnoop: %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    from netsnoop import process

    process.install()  # first: signals and standard streams (see netsnoop.process)
    cli(prog_name="netsnoop")
