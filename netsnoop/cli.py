"""The ``netsnoop`` command: a click group whose subcommands load on demand."""

from __future__ import annotations

import gc
import importlib
import sys
from typing import Any

import click

from netsnoop import __version__
from netsnoop.commands import ALIASES, COMMANDS
from netsnoop.errors import NetsnoopError
from netsnoop.log import set_verbose

# The kernel takes a ring buffer's size as a 32-bit max_entries that must be a power
# of two (kernel/bpf/ringbuf.c), so 2 GiB is the largest it can create.
MAX_RINGBUF = 1 << 31


class OneLineUsageError(click.ClickException):
    """A usage error as one line on stderr (click's own adds the usage and a hint on
    lines of their own), exit status 2: what the user must fix and where help is."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        super().__init__(error.format_message())
        self.command_path = error.ctx.command_path if error.ctx else "netsnoop"

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.message} (`{self.command_path} --help` shows the usage)", err=True)


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand is used; takes bcc's
    tool names as aliases, suggests the closest name for a typo, and lets the global
    options (-v, --ringbuf) follow the subcommand too."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:  # bare `netsnoop`: the help itself
            raise
        except click.UsageError as err:
            raise OneLineUsageError(err) from None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        name = ALIASES.get(name, name)
        if name not in COMMANDS:
            return None
        collecting = gc.isenabled()
        gc.disable()  # see _settle_heap
        try:
            module = importlib.import_module(COMMANDS[name][0])
        finally:
            if collecting:
                gc.enable()
        _settle_heap()
        return _with_global_options(module.command)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib  # a typo's suggestion: not worth its import on every start
            known = [*COMMANDS, *ALIASES]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" Did you mean {ALIASES.get(close[0], close[0])!r}?" if close else ""
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)

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
        except click.exceptions.NoArgsIsHelpError:  # bare `netsnoop`: the help itself
            raise
        except click.UsageError as err:
            raise OneLineUsageError(err) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as err:  # a bug: still one line, the traceback behind --verbose
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(
                f"netsnoop: internal error: {type(err).__name__}: {err} (--verbose shows the traceback)", err=True
            )
            ctx.exit(1)


class RingSize(click.ParamType):
    """``8M``, ``512K`` or bytes: a power of two from one page to 2G (the kernel's rule)."""

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
        if size > MAX_RINGBUF:
            self.fail(f"{value!r} is more than the kernel's largest ring buffer, 2G", param, ctx)
        return size


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().ensure_object(dict)["verbose"] = True
        set_verbose(True)


def _set_ringbuf(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if value is not None:  # read by runner.ring_bytes() when the objects are loaded
        ctx.find_root().ensure_object(dict)["ringbuf"] = value


def _with_global_options(command: click.Command) -> click.Command:
    """Add -v/--verbose and --ringbuf to a subcommand, so that ``netsnoop life -v``
    works like ``netsnoop -v life`` (the same settings, set when parsed). A subcommand
    with its own meaning for a flag (tracer's and subnet's -v) keeps it."""
    if getattr(command, "_netsnoop_globals", False):
        return command
    taken = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    if "--verbose" not in taken and "-v" not in taken:
        command.params.append(click.Option(
            ["-v", "--verbose"], is_flag=True, expose_value=False, callback=_set_verbose,
            help="show libbpf's log and full errors (also before the subcommand)"))
    if "--ringbuf" not in taken:
        command.params.append(click.Option(
            ["--ringbuf"], type=RingSize(), default=None, expose_value=False, callback=_set_ringbuf,
            help="kernel-to-user event buffer size (also before the subcommand; default 8M)"))
    command._netsnoop_globals = True
    return command


# Objects a run allocates and drops per event (decoded events, rows, lines: thousands
# per batch) are freed by their reference counts; a collection every 10,000
# allocations instead of 700 finds the rare cycle as well, and the event path stops
# paying for gen-0 collections that scanned every batch's young rows for nothing
# (states --json: 6 % less CPU per event).
GC_THRESHOLD = (10_000, 10, 10)


def _settle_heap() -> None:
    """Once the subcommand's modules are imported: what they made (classes, tables,
    compiled patterns; ~27,000 objects) lives as long as the process, so it is moved
    out of the collector's way (``gc.freeze``: no collection scans it again), and the
    collector runs less often (:data:`GC_THRESHOLD`). While they are imported it does
    not run at all: it would scan the growing heap a dozen times, up to a full
    collection, and find nothing to free (3-5 ms of every start)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _escape_unencodable_output() -> None:
    """A character the terminal's encoding lacks (``é`` with LANG=C or
    PYTHONIOENCODING=ascii) is printed as a backslash escape instead of ending the
    run with UnicodeEncodeError: names come from the traced processes."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a detached or closed stream: nothing to protect
                pass


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="netsnoop")
@click.option("-v", "--verbose", is_flag=True, help="show libbpf's log and full errors")
@click.option("--ringbuf", type=RingSize(), default="8M", show_default=True,
              help="kernel-to-user event buffer size; raise it if events are lost")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, ringbuf: int) -> None:
    """Trace the kernel's TCP stack with eBPF: connections, states, bytes, drops.

    Each subcommand is one of the bcc network tools, rebuilt on libbpf and CO-RE
    (no compiler or kernel headers needed at run time); bcc's names work too
    (`netsnoop tcplife` is `netsnoop life`). Run `netsnoop check` to see what this
    kernel supports.
    """
    ctx.obj = {"verbose": verbose, "ringbuf": ringbuf}
    _escape_unencodable_output()
    set_verbose(verbose)


def main() -> None:
    from netsnoop import process

    process.install()  # first: signals and standard streams (see netsnoop.process)
    cli(prog_name="netsnoop")
