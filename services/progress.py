"""A long command's progress (`reciprocity rebuild`): on a terminal, one line on stderr rewritten in place;
otherwise a log line every few seconds. A rebuild of a large store takes minutes and must not look hung.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog

log = structlog.get_logger(__name__)

TERMINAL_INTERVAL_S = 0.5  # a terminal line costs nothing to rewrite
LOG_INTERVAL_S = 5.0  # a log is read later: a line every few seconds is enough, and stays short
# What each stage counts, and how a person reads it.
STAGES = {
    "log": ("applying the log", "facts"),
    "views": ("writing the views", "facts"),
    "influence": ("recomputing influence", "tenants"),
}


class ProgressReport:
    """Called as (stage, done, total) as often as the work likes; shows at most once an interval, and always
    at a stage's start and end. Rate and time left are over the stage so far. Used as a context manager, a
    thread shows it again each interval while no report comes (a stage that counts nothing until it ends,
    such as writing the views), so the time spent keeps showing."""

    def __init__(
        self,
        command: str,
        stream: TextIO | None = None,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = command
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        default_s = TERMINAL_INTERVAL_S if self.terminal else LOG_INTERVAL_S
        self.interval_s = default_s if interval_s is None else interval_s
        self.clock = clock
        self.stage: str | None = None
        self.stage_started = 0.0
        self.stage_first = 0  # what was done when the stage started (a rate counts what this run did)
        self.shown_at = -math.inf
        self.shown = False  # a terminal line waits for its newline
        self.last = (0, 0)  # the stage's last done and total
        self._lock = threading.Lock()  # the work's thread and the ticker's show one at a time
        self._stopped = threading.Event()

    def __enter__(self) -> ProgressReport:
        threading.Thread(target=self._tick, name="progress", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self.close()

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            now = self.clock()
            changed = stage != self.stage
            if changed:
                self.stage, self.stage_started, self.stage_first = stage, now, done
            self.last = (done, total)
            if changed or done >= total or now - self.shown_at >= self.interval_s:
                self.shown_at = now
                self.show(self.figures(stage, done, total, now))

    def _tick(self) -> None:
        while not self._stopped.wait(self.interval_s):
            with self._lock:
                now = self.clock()
                running = self.stage is not None and self.last[0] < self.last[1] and not self._stopped.is_set()
                if running and now - self.shown_at >= self.interval_s:
                    self.shown_at = now
                    self.show(self.figures(self.stage, *self.last, now))

    def figures(self, stage: str, done: int, total: int, now: float) -> dict[str, Any]:
        """What one report says: the stage, done of total, per second and seconds left (None when not known)."""
        label, unit = STAGES.get(stage, (stage, "items"))
        elapsed = now - self.stage_started
        per_s = (done - self.stage_first) / elapsed if elapsed > 0 and done > self.stage_first else None
        left = max(0.0, (total - done) / per_s) if per_s else None
        return {
            "stage": stage, "label": label, "unit": unit, "done": done, "total": total,
            "per_s": None if per_s is None else round(per_s), "seconds_left": None if left is None else round(left),
            "elapsed_s": round(elapsed, 1),
        }  # fmt: skip

    def show(self, figures: dict[str, Any]) -> None:
        if not self.terminal:
            fields = {k: v for k, v in figures.items() if k != "label"}
            log.info(f"{self.command}_progress", **fields)
            return
        self.stream.write(f"\r{self.command}: {line(figures)}\x1b[K")  # \x1b[K: clear what a longer line left
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """Ends the terminal line, so what the command prints next starts on its own."""
        with self._lock:
            self._end_line()

    def _end_line(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def line(figures: dict[str, Any]) -> str:
    """A report as a person reads it: `applying the log 420,000/1,120,000 facts, 25,000 facts/s, 28 s left`."""
    unit = figures["unit"]
    text = f"{figures['label']} {figures['done']:,}/{figures['total']:,} {unit}"
    if figures["done"] >= figures["total"]:
        return f"{text}, done in {figures['elapsed_s']:g} s"
    if figures["per_s"] is None:
        return f"{text}, {figures['elapsed_s']:g} s so far"
    return f"{text}, {figures['per_s']:,} {unit}/s, {duration(figures['seconds_left'])} left"


def duration(seconds: int) -> str:
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
