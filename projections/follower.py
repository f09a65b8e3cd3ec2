"""Follows the store's log in pages and hands each page to a view, which applies it in one transaction.

The library's ProjectionRunner handles one event per transaction and needs a recorder subscription that
its SQLite recorder lacks; this follower reads the library's notification log (facts only) in pages
instead. It wakes up when this process commits, when another process commits (PostgreSQL's NOTIFY on
every insert, SQLite's data_version), and polls at a bounded interval besides.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import psycopg
import structlog

from services.store import Ledger, StoredFact, postgres_connect

log = structlog.get_logger(__name__)

PAGE_FACTS_MAX = 5_000
POLL_INTERVAL_S = 0.5


class View(Protocol):
    name: str
    tables: tuple[str, ...]

    def process_page(self, page: list[StoredFact]) -> Any: ...


class Follower:
    """One view's reader of the log: at-position pages, exactly once through the view's tracking row."""

    def __init__(
        self,
        ledger: Ledger,
        view: View,
        position: Callable[[], int],
        *,
        page_facts_max: int = PAGE_FACTS_MAX,
        on_page: Callable[[int, Any], None] = lambda after, applied: None,
    ) -> None:
        self.ledger = ledger
        self.view = view
        self.position = position
        self.page_facts_max = page_facts_max
        self.on_page = on_page
        self.caught_up = asyncio.Event()

    def catch_up(self, *, pages_max: int | None = None) -> int:
        """Applies pages until the log is exhausted (or `pages_max` pages); returns the facts applied. After
        each page, `on_page` learns the position the page started after and what the view says it changed."""
        applied = pages = 0
        while pages_max is None or pages < pages_max:
            after = self.position()
            page = self.ledger.read_log(after, self.page_facts_max)
            if not page:
                break
            changes = self.view.process_page(page)
            applied += len(page)
            pages += 1
            self.on_page(after, changes)
            if len(page) < self.page_facts_max:
                break
        return applied

    async def follow(self, wakeup: asyncio.Event, executor: Executor, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        """Runs until cancelled: catch up, then sleep until woken or the poll interval ends. Pages run on
        `executor`, whose owner waits for the page in flight before closing the views."""
        loop = asyncio.get_running_loop()
        while True:
            wakeup.clear()
            try:
                await loop.run_in_executor(executor, partial(self.catch_up, pages_max=20))
            except Exception as failure:  # a failed page rolled back whole; try again after a pause
                log.error("projection_page_failed", view=self.view.name, error=str(failure))
                await asyncio.sleep(poll_interval_s)
                continue
            if self.position() >= self.ledger.head_position():
                self.caught_up.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), poll_interval_s)


class PostgresNotifications:
    """Wakes followers when any process inserts into the store (the library NOTIFYs on each insert)."""

    def __init__(self, database_url: str, channel: str, wake: Callable[[], None]) -> None:
        self._database_url = database_url
        self._channel = channel
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with postgres_connect(self._database_url) as conn:
                    conn.execute(f'LISTEN "{self._channel}"')
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._wake()
            except psycopg.Error as failure:  # reconnect; the poll interval covers the gap
                log.warning("pg_listen_failed", error=str(failure))
                time.sleep(1.0)


async def watch_sqlite_commits(path: Path, wake: Callable[[], None], interval_s: float) -> None:
    """Wakes followers when another process commits to a SQLite file. `PRAGMA data_version` on an idle
    connection of our own changes exactly then and costs microseconds, so checking it often is cheap where
    reading the log at every tick would keep a core a fifth busy on an idle service."""
    connection = sqlite3.connect(path, isolation_level=None)  # never writes; holds no transaction open
    try:
        seen = connection.execute("PRAGMA data_version").fetchone()[0]
        while True:
            await asyncio.sleep(interval_s)
            version = connection.execute("PRAGMA data_version").fetchone()[0]
            if version != seen:
                seen = version
                wake()
    finally:
        connection.close()
