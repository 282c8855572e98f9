"""Progress of a long loop, as one line every few seconds with its rate and ETA.

    prog = Progress("extract train", total=400_000, unit="tok", log=print)
    for batch in batches:
        ...
        prog.update(len(batch))  # prints at most every `every_s` seconds:
    # extract train: 41,230/400,000 tok (10%) 2,340 tok/s, ETA 2:33

The library's loops take an optional `log` callable (Dagster assets pass `context.log.info`); without one the
lines go to `logging.getLogger("glp.progress")` at INFO, so a notebook stays quiet unless it configures logging.
`is_progress` recognizes these lines, so a console can draw them in place instead of one line each.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable

Log = Callable[[str], None]
"""Where a step writes its progress lines: `print`, a Dagster logger, or `nolog`."""


def nolog(_: str) -> None:
    """A `Log` that drops every line."""
Note = str | Callable[[], str]

_logger = logging.getLogger(__name__)
_PROGRESS = re.compile(r", (ETA|elapsed) [\d?]+:[\d?]{2}(:\d\d)?(?=,|$)")


def duration(seconds: float) -> str:
    """`2:41` (minutes:seconds) or `1:02:41` past an hour."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _count(x: float) -> str:
    return f"{x:,.0f}" if x == int(x) else f"{x:,.1f}"


def _rate(per_s: float, unit: str) -> str:
    u = unit or "it"
    if per_s >= 100:
        return f"{per_s:,.0f} {u}/s"
    if per_s >= 1:
        return f"{per_s:.1f} {u}/s"
    return f"{1 / per_s:.1f} s/{u}" if per_s > 0 else f"- {u}/s"


def is_progress(message: str) -> bool:
    """Whether `message` is a `Progress` line (a console may redraw these in place)."""
    return bool(_PROGRESS.search(message))


class Progress:
    """Counts work done towards `total` (None if unknown) and reports it through `log` at most every `every_s`
    seconds: `label: done/total unit (pct%) rate, ETA m:ss[, note]`. The rate is the average since the start."""

    def __init__(self, label: str, total: float | None, unit: str = "", log: Log | None = None,
                 every_s: float = 10.0, done: float = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.log: Log = log or _logger.info
        self.every_s = every_s
        self.clock = clock
        self.done = self.done0 = done  # done0: work done before this run (a resume), left out of the rate
        self.t0 = self._last = clock()

    def update(self, n: float = 1, note: Note = "") -> None:
        """Add `n` units of work done; report if `every_s` has passed since the last report."""
        self.set(self.done + n, note)

    def set(self, done: float, note: Note = "") -> None:
        """Set the work done so far (for loops that know their position, e.g. a training step). `note` (or a
        function returning it, called only when a line is due) is appended, e.g. the current loss."""
        self.done = done
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            self.log(self.message(now, note() if callable(note) else note))

    def message(self, now: float | None = None, note: str = "") -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.done - self.done0) / elapsed
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            pct = min(100, int(100 * self.done / self.total))
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta = duration(left) if left != float("inf") else "?:??"
            head = (f"{self.label}: {_count(self.done)}/{_count(self.total)}{unit} ({pct}%) "
                    f"{_rate(rate, self.unit)}, ETA {eta}")
        else:
            head = f"{self.label}: {_count(self.done)}{unit} {_rate(rate, self.unit)}, elapsed {duration(elapsed)}"
        return f"{head}, {note}" if note else head


class StageClock:
    """Seconds spent per named stage of a loop (thread-safe), for a benchmark's stage table.

        clock = StageClock()
        with clock("forward"):
            ...
        print(clock.table(wall_seconds))

    `sync` (e.g. torch.cuda.synchronize) runs at the end of each stage, so asynchronous device work is charged to
    the stage that queued it; that costs overlap, so a clock is for profiling runs only. Stages running in other
    threads overlap the caller's: their fractions of the wall time may add up to more than 1."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        import threading

        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sync = sync

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.calls[stage] = self.calls.get(stage, 0) + 1

    def __call__(self, stage: str) -> _Stage:
        return _Stage(self, stage)

    def table(self, wall_s: float, order: tuple[str, ...] = ()) -> str:
        """One line per stage: seconds, calls and the fraction of `wall_s`; then the sum of the fractions."""
        names = [s for s in order if s in self.seconds] + sorted(self.seconds.keys() - set(order))
        lines = [f"{'stage':<14}{'seconds':>9}{'calls':>8}{'of wall':>9}"]
        for s in names:
            lines.append(f"{s:<14}{self.seconds[s]:>9.3f}{self.calls[s]:>8}{self.seconds[s] / wall_s:>9.2f}")
        total = sum(self.seconds.values())
        lines.append(f"{'(sum)':<14}{total:>9.3f}{'':>8}{total / wall_s:>9.2f}   wall {wall_s:.3f} s")
        return "\n".join(lines)


def stage(clock: StageClock | None, name: str) -> _Stage | contextlib.nullcontext:
    """`clock(name)`, or a context that does nothing when there is no clock (the library's loops take an optional one)."""
    return clock(name) if clock is not None else contextlib.nullcontext()


class _Stage:
    def __init__(self, clock: StageClock, stage: str) -> None:
        self.clock, self.stage = clock, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.clock._sync is not None:
            self.clock._sync()
        self.clock.add(self.stage, time.perf_counter() - self.t0)
