"""`in_thread`: a store call on a worker thread that a cancelled caller waits for before it ends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from projections.supervision import in_thread


async def test_it_returns_what_the_call_returns_and_raises_what_it_raises() -> None:
    assert await in_thread(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        await in_thread(lambda: 1 / 0)


async def test_a_cancelled_caller_ends_after_the_call_and_is_still_cancelled() -> None:
    started, release, ended = threading.Event(), threading.Event(), threading.Event()

    def call() -> None:
        started.set()
        release.wait(5)
        ended.set()

    caller = asyncio.create_task(in_thread(call))
    assert await asyncio.to_thread(started.wait, 5)
    caller.cancel()
    await asyncio.sleep(0.05)
    assert not caller.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert ended.is_set()
