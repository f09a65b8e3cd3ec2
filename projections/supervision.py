"""Background loops that outlive the failures of what they call: a retry with backoff and jitter, a singular
worker held to its lock (a standby that keeps trying to take over), and the record of loops that ended
anyway, which makes the process not ready.

A loop that stopped silently is the worst failure of a worker process: it looks alive and ready while the
views or the stream stand still. So every loop here logs each failure, tries again, and if it ends all the
same, says so once and for all in `BackgroundTasks.died`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from ledger.locks import WorkerLock

log = structlog.get_logger(__name__)

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
STANDBY_RETRY_S = 2.0  # how often a standby asks for a lock another process holds
LOCK_CHECK_S = 2.0  # how soon a worker whose lock was lost stops


def error_text(failure: BaseException) -> str:
    return str(failure).strip() or type(failure).__name__


class Backoff:
    """Exponential delays with jitter between BACKOFF_FIRST_S and BACKOFF_MAX_S: a store or bus that went away
    is asked again soon, then less and less often, and the processes that lost it do not all ask at once."""

    def __init__(self, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.failures = 0

    def next_delay(self) -> float:
        """The pause before the next try: a random one in the upper half of the current bound."""
        bound = min(self.max_s, self.first_s * 2**self.failures)
        self.failures += 1
        return random.uniform(bound / 2, bound)

    def reset(self) -> None:
        self.failures = 0


async def in_thread(function: Callable[..., Any], /, *args: Any) -> Any:
    """`asyncio.to_thread`, except that a caller cancelled meanwhile waits for the call to end before it ends.
    A loop is cancelled at shutdown just before the stores close; closing a SQLite connection under a thread
    still reading from it crashes the process."""
    call = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        await asyncio.wait([call])
        if not call.cancelled():
            call.exception()  # retrieved: the caller is gone, and the loop's own failure is the cancel
        raise


def jittered(seconds: float) -> float:
    """`seconds`, give or take a tenth: standbys started together do not knock together for ever."""
    return seconds * random.uniform(0.9, 1.1)


async def retry_forever(step: Callable[[], Awaitable[None]], name: str, backoff: Backoff | None = None) -> None:
    """Runs `step` again each time it ends, until cancelled. A failure is logged (`worker_failed`, with the
    error) and tried again after a backoff; a step that returns is run again at once (the relay and the KV
    writer return after NATS reconnected, to realign)."""
    backoff = backoff or Backoff()
    while True:
        started = time.monotonic()
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as failure:
            if time.monotonic() - started > backoff.max_s:
                backoff.reset()  # it ran well for a while: this is a new failure, not the same one again
            delay = backoff.next_delay()
            log.warning("worker_failed", worker=name, error=error_text(failure), retry_in_s=round(delay, 3))
            await asyncio.sleep(delay)


async def run_while_holding(
    lock: WorkerLock,
    work: Callable[[], Awaitable[None]],
    name: str,
    *,
    on_active: Callable[[bool], None] = lambda active: None,
    check_s: float = LOCK_CHECK_S,
    standby_s: float = STANDBY_RETRY_S,
    retry_max_s: float = BACKOFF_MAX_S,
) -> None:
    """Runs `work` only while holding the lock: one projector and one relay per store however many processes
    run. Until then this process stands by, asking for the lock again and again: an attempt that fails (the
    store unreachable for a moment) is logged and retried with backoff, never the end of the standby. A lock
    that was lost (its PostgreSQL session ended) stops the work, and this process stands by again.
    `on_active` learns when the work starts (True) and stops (False); a failure of the work is tried again
    after at most `retry_max_s`."""
    try:
        await _hold_and_run(lock, work, name, on_active, check_s, standby_s, retry_max_s)
    except BaseException:
        lock.release()  # dying or stopping: a standby takes over rather than waiting behind a dead holder
        raise


async def _hold_and_run(
    lock: WorkerLock,
    work: Callable[[], Awaitable[None]],
    name: str,
    on_active: Callable[[bool], None],
    check_s: float,
    standby_s: float,
    retry_max_s: float,
) -> None:
    backoff = Backoff()
    while True:
        try:
            held = await in_thread(lock.try_acquire)
        except Exception as failure:
            delay = backoff.next_delay()
            log.warning("worker_lock_failed", worker=name, error=error_text(failure), retry_in_s=round(delay, 3))
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        if not held:
            await asyncio.sleep(jittered(standby_s))  # another process works; this one answers probes meanwhile
            continue
        log.info("worker_active", worker=name, lock_session=lock.session_pid())
        on_active(True)
        running = asyncio.create_task(retry_forever(work, name, Backoff(max_s=retry_max_s)), name=name)
        try:
            while not running.done() and await _still_held(lock, name):
                await asyncio.wait([running], timeout=check_s)
        finally:
            on_active(False)
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running  # re-raises what escaped the retry (not an Exception): this loop dies with it
        log.warning("worker_lock_lost", worker=name, standby_retry_s=standby_s)


async def _still_held(lock: WorkerLock, name: str) -> bool:
    try:
        return await in_thread(lock.still_held)
    except Exception as failure:  # not knowing is not holding: stop, let go, and ask again
        log.warning("worker_lock_check_failed", worker=name, error=error_text(failure))
        with contextlib.suppress(Exception):
            await in_thread(lock.release)
        return False


class BackgroundTasks:
    """The loops a part of a process runs in the background, by name. A loop is meant to run until the
    process stops: one that ended otherwise (an exception escaped its retries, or it returned) has died. It is
    logged at once (`worker_loop_died`) and listed in `died`, which /readyz answers 503 with."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []
        self.died: dict[str, str] = {}  # name -> what ended it
        self.died_at: dict[str, float] = {}  # name -> when (time.monotonic())
        self._finite: set[asyncio.Task[Any]] = set()

    def start(self, coroutine: Coroutine[Any, Any, Any], name: str, *, may_return: bool = False) -> asyncio.Task[Any]:
        """Runs `coroutine` as the loop `name`; `may_return` for a setup step whose end is not a death
        (its failure still is)."""
        task = asyncio.create_task(coroutine, name=name)
        if may_return:
            self._finite.add(task)
        task.add_done_callback(self._ended)
        self.tasks.append(task)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        failure = task.exception()  # retrieved here, so asyncio never warns it was not
        if failure is None and task in self._finite:
            return
        error = error_text(failure) if failure is not None else "the loop returned"
        self.died[task.get_name()] = error
        self.died_at[task.get_name()] = time.monotonic()
        log.error("worker_loop_died", worker=task.get_name(), error=error, exc_info=failure)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)  # what they died of was logged already
        self.tasks.clear()
