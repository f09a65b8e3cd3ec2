"""Webhooks wait while the views are too far behind the log (RECIPROCITY_VIEW_LAG_MAX).

On a small machine ingest and the projector share the cores, and batch ingest takes facts faster than the
follower applies them (docs/performance.md): without a bound, the views fall further behind for as long as
the load lasts. So while the reciprocity view is more than `lag_max` facts behind the log's head and moving,
a webhook waits before its body is read (a held request costs a connection, not its facts), and is
answered 503, retryable with `Retry-After`, if the view has not come within the bound after `wait_s`.

A view that stands still holds nobody up: no projector is running, or it is failing, or a rebuild is
replaying. Waiting would not bring it closer, and facts must still be taken; the lag shows on /readyz and
in `reciprocity_view_lag_events`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from projections.supervision import error_text, in_thread

log = structlog.get_logger(__name__)

POLL_S = 0.5  # how often each ingest process reads the head and the view's position (two point reads)
STALLED_AFTER_S = 30.0  # a view that has not moved for this long is not catching up: nobody waits for it
WAIT_S = 5.0  # how long one webhook waits for the view before it is answered 503
RETRY_AFTER_S = 1


class ViewsCatchingUp(Exception):
    """The view stayed more than the bound behind for the whole wait."""

    def __init__(self, behind: int, lag_max: int) -> None:
        super().__init__(
            f"the views are {behind:,} facts behind the log; webhooks wait while they are more than "
            f"{lag_max:,} behind and catching up: retry in {RETRY_AFTER_S} s"
        )


class ViewLagGate:
    """Open while the view is within `lag_max` facts of the log's head, or standing still; closed otherwise."""

    def __init__(
        self,
        head: Callable[[], int],
        view_position: Callable[[], int],
        lag_max: int,
        *,
        poll_s: float = POLL_S,
        stalled_after_s: float = STALLED_AFTER_S,
        wait_s: float = WAIT_S,
        on_hold: Callable[[], None] = lambda: None,
    ) -> None:
        """`head` and `view_position` read the store (they run on a thread); `on_hold` counts a request
        that had to wait."""
        self.head = head
        self.view_position = view_position
        self.lag_max = lag_max
        self.poll_s = poll_s
        self.stalled_after_s = stalled_after_s
        self.wait_s = wait_s
        self.on_hold = on_hold
        self.behind = 0
        self._open = asyncio.Event()
        self._open.set()
        self._position: int | None = None
        self._moved_at = float("-inf")  # a view not yet seen moving holds nobody up
        self._closed_at: float | None = None

    @property
    def holding(self) -> bool:
        return not self._open.is_set()

    async def admit(self) -> None:
        """Returns at once while the gate is open; else waits for it up to `wait_s`, then raises
        ViewsCatchingUp."""
        if self._open.is_set():
            return
        self.on_hold()
        try:
            async with asyncio.timeout(self.wait_s):
                await self._open.wait()
        except TimeoutError:
            raise ViewsCatchingUp(self.behind, self.lag_max) from None

    async def run(self) -> None:
        """Reads the lag every `poll_s` until cancelled. A failed read opens the gate: ingest is never held up
        by a view that cannot be read."""
        failing = False
        while True:
            try:
                head, position = await in_thread(self._read)
            except Exception as failure:
                if not failing:
                    log.warning("view_lag_unreadable", error=error_text(failure), holding="nobody until it is read")
                failing = True
                self._set_open(True, time.monotonic())
            else:
                failing = False
                self.update(head, position, time.monotonic())
            await asyncio.sleep(self.poll_s)

    def _read(self) -> tuple[int, int]:
        return self.head(), self.view_position()

    def update(self, head: int, position: int, now: float) -> None:
        """One reading of the log's head and the view's position, at `now` (monotonic seconds)."""
        if self._position is not None and position != self._position:
            # Forward, it is catching up; back, it was reset for a rebuild, which records it once at the end.
            self._moved_at = now if position > self._position else float("-inf")
        self._position = position
        self.behind = max(0, head - position)
        moving = now - self._moved_at < self.stalled_after_s
        self._set_open(not (self.behind > self.lag_max and moving), now)

    def _set_open(self, open_: bool, now: float) -> None:
        if open_ == self._open.is_set():
            return
        if open_:
            self._open.set()
            held_s = now - self._closed_at if self._closed_at is not None else 0.0
            log.info("ingest_released", behind=self.behind, lag_max=self.lag_max, held_s=round(held_s, 3))
        else:
            self._open.clear()
            self._closed_at = now
            log.warning("ingest_held", behind=self.behind, lag_max=self.lag_max, until="the views catch up")
