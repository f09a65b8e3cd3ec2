"""Stopping: a worker loop ends when cancelled, even when a wake-up arrives at the same moment."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.bootstrap import open_components


async def test_a_follower_cancelled_as_it_is_woken_stops(settings):
    """At close the committer's last commit wakes the projector just before it is cancelled. A poll that
    waited with `asyncio.wait_for` (Python 3.11) took the wake-up and lost the cancel: close never returned."""
    components = await open_components(settings, parts=frozenset({"query"}))  # its own follower stays idle
    follower, wakeup = components.projections.follower, asyncio.Event()
    try:
        with ThreadPoolExecutor(max_workers=1) as executor:
            for _ in range(20):
                task = asyncio.create_task(follower.follow(wakeup, executor, poll_interval_s=5))
                await asyncio.wait_for(follower.caught_up.wait(), 10)
                await asyncio.sleep(0.01)  # waiting for a wake-up now
                wakeup.set()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 3)
    finally:
        await components.close()
