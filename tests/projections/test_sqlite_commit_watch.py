"""On SQLite, serve's background process learns of the HTTP process's commits by watching the file: the first
commit after a quiet spell wakes its followers at once, and under load at most once per interval."""

from __future__ import annotations

import asyncio
import time

from ledger.group_commit import FactWriter
from ledger.store import LEDGER_FILE, open_ledger
from projections.follower import watch_sqlite_commits
from tests.helpers import assert_woken_once_per_interval, give, received

TICK_S = 0.005
INTERVAL_S = 0.1


async def test_commits_wake_at_once_after_a_quiet_spell_then_once_per_interval(tmp_path):
    ledger = open_ledger(None, tmp_path)
    writer = FactWriter(ledger)
    wakes: list[float] = []
    watching = asyncio.create_task(
        watch_sqlite_commits(tmp_path / LEDGER_FILE, lambda: wakes.append(time.monotonic()), TICK_S, INTERVAL_S)
    )
    try:
        await asyncio.sleep(INTERVAL_S * 2)  # the watch has started and read the file's version
        assert wakes == []
        await asyncio.to_thread(writer.commit, [received(give("first", "ann", "bob"))])
        await asyncio.sleep(INTERVAL_S / 2)
        assert len(wakes) == 1  # well within the interval

        await asyncio.sleep(INTERVAL_S * 2)
        wakes.clear()
        started, commits = time.monotonic(), 0
        while time.monotonic() - started < INTERVAL_S * 4:
            last_commit = time.monotonic()
            await asyncio.to_thread(writer.commit, [received(give(f"g{commits}", "ann", "bob"))])
            commits += 1
            await asyncio.sleep(TICK_S)
        await asyncio.sleep(INTERVAL_S * 2)
        assert_woken_once_per_interval(wakes, commits, last_commit, INTERVAL_S)
    finally:
        watching.cancel()
        ledger.close()
