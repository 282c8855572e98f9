"""The console logger of our jobs: one line when a step starts and one when it ends, progress redrawn in place.

Dagster's default console logger prints every event at DEBUG (a run of the default chain printed ~300 lines).
This one prints, at its default level INFO:
- the run's start and end (with how many checks passed), a line when an asset's step starts and one when it ends
  (a step that logs nothing in between gets both on one line: `12:00:01 start corpus ... done in 2.3 s`);
- the steps' own INFO messages, indented; `glp.progress` lines (rate, ETA) redrawn in place on one line with `\\r`;
- every warning and error, failed checks with their description, and a failed step's error (a `dg.Failure`'s
  message alone: ours say what to do; any other exception with its stack trace).
Passed checks are counted, not listed. Everything, DEBUG included, stays in Dagster's event log (`make dev`, then
Runs). Run config `loggers: {console: {config: {log_level: DEBUG}}}` prints every event, one line each.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import time
from collections.abc import Iterable

import dagster as dg

from glp.progress import is_progress


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


_SKIPPED = re.compile(r"Dependencies for step \S+ (failed|were not executed)")


def _error_text(data: object) -> str:
    """A step's error: a `dg.Failure` is a message written for the user (ours say what to do) and a failed blocking
    check is explained on its own line, so just the message; anything else is a bug somewhere, so the whole chain
    with its stack traces."""
    error = getattr(data, "error", None)
    if error is None:
        return "(no error recorded)"
    chain = [error]
    while chain[-1].cause is not None:
        chain.append(chain[-1].cause)
    # a dg.Failure, or a blocking check that failed (its own line, just above, says why)
    failure = next((e for e in chain if e.cls_name in ("Failure", "DagsterAssetCheckFailedError")), None)
    if failure is not None:
        text = failure.message.strip()
        return text.split(": ", 1)[1] if text.startswith("dagster.") and ": " in text else text
    return getattr(data, "error_display_string", None) or error.to_string()


class _Screen:
    """The terminal's state, shared by every handler in the process: a step's start line awaiting its newline, and
    the width of the progress line drawn in place."""

    def __init__(self) -> None:
        self.pending: str | None = None
        self.live = 0

    def _out(self, text: str) -> None:
        stream = sys.stderr  # looked up per write: pytest and Dagster's log capture swap it
        stream.write(text)
        stream.flush()

    def end_partial(self) -> None:
        if self.live:
            self._out("\r" + " " * self.live + "\r")
            self.live = 0
        if self.pending is not None:
            self._out("\n")
            self.pending = None

    def line(self, text: str) -> None:
        self.end_partial()
        self._out(text + "\n")

    def start(self, step: str, text: str) -> None:
        self.end_partial()
        self._out(text)
        self.pending = step

    def finish(self, step: str, same_line: str, own_line: str) -> None:
        """End `step`: on its start line if nothing was printed since, else on a line of its own."""
        if self.pending == step and not self.live:
            self._out(same_line + "\n")
            self.pending = None
        else:
            self.line(own_line)

    def progress(self, text: str) -> None:
        if self.pending is not None:
            self._out("\n")
            self.pending = None
        text = text[: shutil.get_terminal_size((120, 24)).columns - 1]
        self._out("\r" + text.ljust(self.live))
        self.live = len(text)


class _Run:
    """One run's counts. Dagster builds its loggers more than once per run (the run and the step plan each get a
    log manager), so the counts live here, by run id, not in a handler."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.assets = 0
        self.checks = {"passed": 0, "failed": 0}
        self.skipped: list[str] = []


_SCREEN = _Screen()
_RUNS: dict[str, _Run] = {}


class ConsoleHandler(logging.Handler):
    """Turns the records Dagster hands its loggers (`record.dagster_meta`: event, step key, message) into lines."""

    def __init__(self, asset_steps: Iterable[str], level: int = logging.INFO, run_id: str | None = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.asset_steps = set(asset_steps)
        self.threshold = level
        self.run_id = run_id or ""
        self.screen = _SCREEN

    @property
    def run(self) -> _Run:
        return _RUNS.setdefault(self.run_id, _Run())

    # --- records -------------------------------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception:  # a console problem must never fail a run
            self.handleError(record)

    def _emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        step = meta.get("step_key") or ""
        message = meta.get("orig_message", record.getMessage())
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        if event is None:
            if record.levelno < self.threshold:
                return
            if _SKIPPED.match(message):  # one line at the end of the run instead of one per skipped step
                self.run.skipped.append(step)
                return
            if record.levelno >= logging.WARNING:
                self.screen.line(f"{ts} {record.levelname} {step}: {message}")
            elif is_progress(message):
                self.screen.progress(f"{ts}   {message}")
            else:
                self.screen.line(f"{ts}   {message}")
            return
        data = event.event_specific_data
        kind = event.event_type_value  # the run events' values say PIPELINE_*; newer names mapped to them
        kind = {"RUN_START": "PIPELINE_START", "RUN_SUCCESS": "PIPELINE_SUCCESS",
                "RUN_FAILURE": "PIPELINE_FAILURE"}.get(kind, kind)
        if kind == "PIPELINE_START":
            _RUNS[self.run_id] = _Run()
            part = (meta.get("job_tags") or {}).get("dagster/partition")
            self.screen.line(f"{ts} run {meta.get('run_id', '')[:8]} started" + (f" for {part}" if part else "")
                             + " (every event and log: `make dev`, then Runs)")
        elif kind == "STEP_START" and step in self.asset_steps:
            self.screen.start(step, f"{ts} start {step}")
        elif kind == "STEP_SUCCESS" and step in self.asset_steps:
            self.run.assets += 1
            took = _seconds(data.duration_ms / 1000) if data is not None else "?"
            self.screen.finish(step, f" ... done in {took}", f"{ts} done  {step} in {took}")
        elif kind == "ASSET_CHECK_EVALUATION" and data is not None:
            self.run.checks["passed" if data.passed else "failed"] += 1
            if not data.passed:
                sev = getattr(data.severity, "value", data.severity)
                why = " ".join((data.description or "").split())  # one line, whatever the check wrote
                self.screen.line(f"{ts} check {data.check_name} on {data.asset_key.to_user_string()} FAILED ({sev}"
                                 + (", blocking" if data.blocking else "") + ")" + (f": {why}" if why else ""))
        elif kind == "STEP_FAILURE":
            self.screen.line(f"{ts} FAILED {step}: {_error_text(data)}")
        elif kind == "PIPELINE_SUCCESS":
            run = _RUNS.pop(self.run_id, _Run())
            c = run.checks
            took = _seconds(time.monotonic() - run.t0)
            self.screen.line(f"{ts} run {meta.get('run_id', '')[:8]} succeeded in {took}: "
                             f"{run.assets} assets materialized, {c['passed']} checks passed"
                             + (f", {c['failed']} failed" if c["failed"] else ""))
        elif kind == "PIPELINE_FAILURE":
            run = _RUNS.pop(self.run_id, _Run())
            assets = [s for s in run.skipped if s in self.asset_steps]
            if run.skipped:
                self.screen.line(f"{ts} not run, as an upstream step failed: {len(run.skipped)} steps"
                                 + (f" (assets: {', '.join(assets)})" if assets else ""))
            self.screen.line(f"{ts} run {meta.get('run_id', '')[:8]} FAILED after "
                             f"{_seconds(time.monotonic() - run.t0)}: {message}")
        elif record.levelno >= logging.WARNING:
            self.screen.line(f"{ts} {record.levelname} {kind} {step}: {message}")
        elif record.levelno >= self.threshold:
            self.screen.line(f"{ts} {kind} {step}: {message}")


def console_logger(asset_steps: Iterable[str]) -> dg.LoggerDefinition:
    """The `console` logger for a code location whose asset steps are `asset_steps` (other steps are checks)."""
    steps = frozenset(asset_steps)

    @dg.logger(
        config_schema={"log_level": dg.Field(str, default_value="INFO", description="DEBUG prints every event")},
        description="One line per asset step start and end, progress redrawn in place, checks counted.",
    )
    def console(init_context: dg.InitLoggerContext) -> logging.Logger:
        level = logging.getLevelName(init_context.logger_config["log_level"].upper())
        if not isinstance(level, int):
            raise ValueError(f"console logger: log_level {init_context.logger_config['log_level']!r} is not a "
                             "logging level: choose DEBUG, INFO, WARNING or ERROR")
        log = logging.Logger("glp.console", level=logging.DEBUG)
        log.addHandler(ConsoleHandler(steps, level, init_context.run_id))
        return log

    return console
