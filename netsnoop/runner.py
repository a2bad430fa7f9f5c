"""The run loop every tracing subcommand shares: signals, duration, polling, summary.

SIGINT, SIGTERM and SIGHUP only set a flag (:mod:`netsnoop.process`); the loop notices
within one poll interval, drains what the kernel already produced, prints the summary
(with lost events) and returns normally, so the BPF object's context manager detaches
everything.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from netsnoop import kernel, process
from netsnoop.errors import BadSetting
from netsnoop.fmt import Clock
from netsnoop.loader import BPFObject
from netsnoop.output import Column, OutputOptions, Sink, make_sink, time_columns
from netsnoop.transport import BATCH_EVENTS, DEFAULT_BYTES, Transport, forced

POLL_MS = 100
COALESCE_MAX_S = 0.005  # see coalesce_seconds()
COALESCE_WORST_RATE = 64e6  # bytes/s of events a pause must leave room for


class StopFlag:
    """Set by SIGINT, SIGTERM or SIGHUP (see :mod:`netsnoop.process`: also one that came
    while the programs were being loaded), or when the duration has passed."""

    def __init__(self, duration: float | None = None) -> None:
        self.stopped = False
        self.deadline = time.monotonic() + duration if duration else None

    def __enter__(self) -> "StopFlag":
        self._signals = process.handling().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._signals.__exit__(*exc)

    def __bool__(self) -> bool:
        if not self.stopped:
            if process.stop_requested() or (self.deadline is not None and time.monotonic() >= self.deadline):
                self.stopped = True
                process.stopping()
        return self.stopped

    def remaining_ms(self, cap_ms: int) -> int:
        if self.deadline is None:
            return cap_ms
        return max(0, min(cap_ms, int((self.deadline - time.monotonic()) * 1000)))


@dataclass(frozen=True)
class LoadSpec:
    """A load specification: the object a subcommand loads (by name) and which hook
    groups it can do without.

    Declared at module level by each command, so ``netsnoop check`` can try every
    subcommand's object on this kernel exactly as the subcommand would load it.
    """

    object_name: str
    optional: frozenset[str] = frozenset()
    max_entries: dict[str, int] = field(default_factory=dict)
    linked: frozenset[str] = frozenset()
    # optional group -> what the output lacks without it, said in a warning when this
    # kernel has no hook for it (None: the subcommand says so itself, when it matters)
    costs: dict[str, str | None] = field(default_factory=dict)
    # optional groups that serve only the rows (a row's owner): not loaded at all when the
    # object only counts (rodata count_only), where they would cost every hook run and add nothing
    rows_only: frozenset[str] = frozenset()

    def open(self, rodata: dict[str, Any] | None = None, quiet: bool = False, **kwargs: Any) -> BPFObject:
        """Check settings, privileges and BTF, then load and attach (closed again on
        failure). What could not be had -- an optional hook, an iterator -- is said
        on stderr unless ``quiet``."""
        check_settings()
        kernel.require_privileges()
        kernel.require_btf()
        without = self.rows_only if (rodata or {}).get("count_only") else frozenset()
        obj = BPFObject(self.object_name, rodata=rodata, optional=self.optional, linked=self.linked, without=without,
                        max_entries={**self.max_entries, **kwargs.pop("max_entries", {})},
                        ring_bytes=ring_bytes(), **kwargs)
        try:
            obj.attach()
        except BaseException:
            obj.close()
            raise
        if not quiet:
            for line in self.shortfalls(obj):
                warn(line)
        return obj

    def shortfalls(self, obj: BPFObject) -> list[str]:
        """One line per optional hook group without a hook, and per iterator skipped."""
        out = []
        for group, kind in obj.chosen.items():
            cost = self.costs.get(group, "what it shows is missing from the output")
            if kind is None and cost is not None and group not in obj.without:
                out.append(f"{self.object_name}: no hook for {group} here, so {cost} ({obj.tried(group)})")
        for name in obj.skipped:
            out.append(f"{self.object_name}: {name} is skipped: it {obj.why[name]}; "
                       "what it adds to the summary is missing")
        return out

    def probe(self) -> dict[str, str | None]:
        """Load and attach for real, then detach: the hooks this kernel gave us."""
        with self.open(quiet=True) as obj:
            return dict(obj.chosen)


def check_settings() -> None:
    """Environment variables with a value netsnoop cannot use are a usage error (exit
    2), said before anything is loaded."""
    from netsnoop.loader import hook_order

    hook_order()
    forced()
    coalesce_override()


def ring_bytes() -> int:
    """The event buffer size ``--ringbuf`` asked for (kept in the command line's context)."""
    import click

    ctx = click.get_current_context(silent=True)
    settings = ctx.find_root().obj if ctx is not None else None
    return int(settings.get("ringbuf") or DEFAULT_BYTES) if isinstance(settings, dict) else DEFAULT_BYTES


def coalesce_override() -> float | None:
    """``NETSNOOP_COALESCE_MS``, in seconds (None: unset)."""
    text = os.environ.get("NETSNOOP_COALESCE_MS")
    if text is None:
        return None
    try:
        ms = float(text)
    except ValueError:
        ms = float("nan")
    if not (0 <= ms <= 1000):
        raise BadSetting(f"NETSNOOP_COALESCE_MS={text!r}: not a number of milliseconds from 0 to 1000")
    return ms / 1000


def wait(duration: float | None, tick: Callable[[], None] | None = None, interval: float | None = None,
         count: int | None = None) -> None:
    """Block until SIGINT/SIGTERM or ``duration``; call ``tick`` every ``interval``
    seconds (at most ``count`` times) -- the loop of the summarising tools."""
    with StopFlag(duration) as stop:
        next_tick = time.monotonic() + interval if interval else None
        ticks = 0
        while not stop:
            timeout = 0.1 if next_tick is None else max(0.0, min(0.1, next_tick - time.monotonic()))
            if stop.deadline is not None:
                timeout = min(timeout, max(0.0, stop.deadline - time.monotonic()))
            time.sleep(timeout)
            if next_tick is not None and time.monotonic() >= next_tick and tick is not None:
                tick()
                ticks += 1
                assert interval is not None  # there is a next tick only with an interval
                next_tick += interval
                if count is not None and ticks >= count:
                    return


def run_intervals(report: Callable[[], None], interval: float | None, count: int | None = None,
                  duration: float | None = None) -> int | None:
    """Call ``report`` every ``interval`` seconds (at most ``count`` times) until
    Ctrl-C or ``duration``; with no interval, once at the end. The interval cut short
    by stopping is reported too, as bcc does, so nothing counted goes unreported.
    Returns how many reports were shown, or None when stdout's reader went away
    (``| head``), after which the caller should stop quietly."""
    return _each_interval(lambda last: report(), interval, count, duration)


def _each_interval(report: Callable[[bool], bool | None], interval: float | None, count: int | None,
                   duration: float | None) -> int | None:
    """The loop of :func:`run_intervals` and :func:`every_interval`: ``report(last)``,
    counted unless it returns False."""
    shown = ticks = 0

    def tick(last: bool = False) -> None:
        nonlocal shown, ticks
        ticks += 1
        if report(last) is not False:
            shown += 1

    try:
        wait(duration, tick if interval else None, interval, count)
        if count is None or ticks < count:
            tick(True)
    except BrokenPipeError:
        silence_stdout()
        return None
    except process.OutputStalled as err:
        warn(str(err))
        return None
    return shown


def ready(message: str) -> None:
    """Tell the user (and test harnesses) that tracing has started; stderr, always."""
    print(message, file=sys.stderr, flush=True)


def stream(
    obj: BPFObject,
    columns: Sequence[Column],
    row: Callable[[Any], Sequence[Any] | None],
    out: OutputOptions,
    duration: float | None = None,
    banner: str = "Tracing... Hit Ctrl-C to end.",
    at_stop: Callable[[], list[Any]] | None = None,
    facts: Callable[[], dict[str, Any]] | None = None,
) -> int:
    """Print one row per event until stopped; return the number of rows shown.

    ``row`` maps a decoded event to a tuple in ``columns`` order, or None to skip it.
    The TIME/TIME(s) columns (and JSON's ``timestamp``) are added here, once.
    ``at_stop`` returns events for what is still under way when the trace ends (an
    unanswered connect), shown after the drained ones so nothing ends in silence.
    ``facts`` adds the subcommand's own counts to the summary.
    """
    tcols = time_columns(out)
    extra = [Column("timestamp", text=False)] if out.json else []
    sink = make_sink(out, tcols + list(columns) + extra)
    decoder = obj.decoder("event")
    ring = obj.ring_buffer()
    rows = _row_builder(row, out)
    coalesce = coalesce_seconds(ring)

    ready(banner)
    try:
        sink.header()
        with StopFlag(duration) as stop:
            while not stop:
                events = ring.poll_events(stop.remaining_ms(POLL_MS), decoder)
                if events:
                    sink.write(rows(events))
                    if len(events) < BATCH_EVENTS and coalesce:
                        time.sleep(coalesce)
            # what the kernel produced before we stopped: bounded batches, a bounded number
            for _ in range(_drain_rounds(ring)):
                events = ring.read_events(decoder)
                if not events:
                    break
                sink.write(rows(events))
            if at_stop is not None:
                sink.write(rows(at_stop()))
    except BrokenPipeError:
        silence_stdout()
        return sink.count
    except process.OutputStalled as err:  # the facts are still worth having, on stderr
        warn(str(err))
        Sink.summary(sink, {"events": sink.count, **obj.health(), **(facts() if facts else {})})
        return sink.count
    sink.summary({"events": sink.count, **obj.health(), **(facts() if facts else {})})
    warn_missed_runs(obj)
    return sink.count


def every_interval(
    obj: BPFObject,
    report: Callable[[bool], bool | None],
    out: OutputOptions,
    interval: float | None,
    count: int | None = None,
    duration: float | None = None,
    banner: str = "Tracing... Hit Ctrl-C to end.",
    facts: Callable[[], dict[str, Any]] | None = None,
    finish: Callable[[], None] | None = None,
) -> int | None:
    """The run of the interval tools (top, subnet, netqtop, rtt, synbl, softirqs), as
    :func:`stream` is the event tools': the ready line, ``report`` every ``interval``
    seconds (at most ``count`` times; with no interval once, at the end) until Ctrl-C
    or ``duration``, then one summary, the same record as stream()'s with
    ``intervals`` where it has ``events``.

    ``report(last)`` shows one interval; ``last`` is the one cut short by stopping,
    which is shown too (as bcc does: nothing counted goes unreported). It returns False
    when it showed nothing, which then is no interval. ``finish`` runs after the last
    report, whatever happened, and before the summary (a live view gives the terminal
    back). Returns the intervals shown, or None when stdout's reader went away
    (``| head``): the caller stops quietly.
    """
    ready(banner)
    try:
        shown = _each_interval(report, interval, count, duration)
    finally:
        if finish is not None:
            finish()
    if shown is None:
        return None
    make_sink(out, []).summary({"intervals": shown, **obj.health(), **(facts() if facts else {})})
    warn_missed_runs(obj)
    return shown


def warn(message: str) -> None:
    """One line on stderr, for what the user must know although nothing failed."""
    print(f"netsnoop: warning: {message}", file=sys.stderr, flush=True)


def warn_missed_runs(obj: BPFObject) -> None:
    """Say so (stderr) when the kernel skipped runs of our hooks, which no count shows:
    a storm can nest a hook inside itself on one CPU (softirq inside a system call)."""
    missed = obj.missed_runs()
    if missed:
        warn(f"the kernel skipped {missed} run{'s' if missed > 1 else ''} of the hooks "
             "(one fired inside another on the same CPU); what they would have shown may be missing")


def _row_builder(
    row: Callable[[Any], Sequence[Any] | None], out: OutputOptions
) -> Callable[[list[Any]], Iterable[Sequence[Any]]]:
    """Events -> rows for one batch. Without time columns it is a bare ``map`` (the hot
    path: no per-event Python frame besides the subcommand's ``row``)."""
    if not (out.time or out.timestamp or out.json):
        return lambda events: [r for r in map(row, events) if r is not None]
    clock = Clock()
    if not (out.time or out.timestamp):  # --json alone: just the timestamp, appended
        offset = clock.offset_ns + 500  # Clock.wall_us, inlined: this runs once per event
        return lambda events: [
            (*r, (e.ts_ns + offset) // 1000 / 1e6) for e, r in zip(events, map(row, events)) if r is not None
        ]
    with_time, with_ts, with_json = out.time, out.timestamp, out.json

    def rows(events: list[Any]) -> Iterator[Sequence[Any]]:
        for e in events:
            r = row(e)
            if r is None:
                continue
            prefix: tuple[Any, ...] = ()
            if with_time:
                prefix += (clock.hms(e.ts_ns),)
            if with_ts:
                prefix += (clock.since_first(e.ts_ns),)
            yield prefix + tuple(r) + ((clock.wall_us(e.ts_ns),) if with_json else ())

    return rows


def coalesce_seconds(ring: Transport) -> float:
    """How long to let events gather after a reader has caught up, before waiting again.

    A reader that wakes for every few events spends its time (and the traced
    workload's, in wake-ups) on waking; a few milliseconds later the same events come
    as one batch. The pause is kept short enough that even 64 MB/s of events would
    fill only half the ring meanwhile, so small rings (``--ringbuf``) get no pause.
    ``NETSNOOP_COALESCE_MS`` overrides it (0 turns it off), for measuring.
    """
    override = coalesce_override()
    if override is not None:
        return override
    pause = min(COALESCE_MAX_S, (ring.size or 0) / 2 / COALESCE_WORST_RATE)
    return pause if pause >= 0.001 else 0.0


def _drain_rounds(ring: Transport) -> int:
    """Reads enough to empty a full ring of the smallest records (16 bytes), and no more
    (a storm that goes on after Ctrl-C must not keep us here)."""
    return (ring.size or DEFAULT_BYTES) // 16 // BATCH_EVENTS + 1


def silence_stdout() -> None:
    """The reader went away (``| head``): stop quietly, without a flush error at exit."""
    process.discard_stdout()
