"""Follows the store's log in pages and hands each page to a view, which applies it in one transaction.

The library's ProjectionRunner handles one event per transaction and needs a recorder subscription that
its SQLite recorder lacks; this follower reads the library's notification log (facts only) in pages
instead. It wakes up when this process commits, when another process commits (PostgreSQL's NOTIFY on
every insert, SQLite's data_version), and polls at a bounded interval besides.

A page mixes every tenant's facts, so one fact that a view cannot apply (a poison fact) would hold up every
tenant if its page were simply tried again. A page that fails for its content is applied in halves down to
the fact that fails alone; that fact's tenant is quarantined in that view (skipped from then on, its rows left
as they were at the fact before) and every other tenant moves on. A failure of the database itself (connection
lost, lock timeout) blames no one: the page is tried again as it is.

Stored facts name participants by token. Each page read is shown under the names the views use (ids, or
tombstones) once, before it is applied (`projections/view_names.py`); the names it met first are recorded in
its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import psycopg
import structlog
from eventsourcing import persistence

from ledger.collector import collector_paused
from ledger.connections import DEFAULT_LIMITS, ConnectionLimits, postgres_connect
from ledger.facts import Erasure
from ledger.store import Ledger, StoredFact
from projections.supervision import Backoff
from projections.view_names import TenantToken, ViewNames
from projections.viewstore import ViewStore

log = structlog.get_logger(__name__)

PAGE_FACTS_MAX = 5_000
POLL_INTERVAL_S = 0.5
PAGES_PER_TURN = 20  # pages applied before the follower yields to a new turn of its loop
COMMIT_WAKE_INTERVAL_S = 0.1  # commits wake followers at most this often (docs/performance.md)
LISTEN_WANTED_CHECK_S = 0.5  # how soon a worker that took over listens (its followers poll meanwhile)
ERROR_CHARS_MAX = 2_000
# SQLSTATE class 54, "program limit exceeded" (a value too long for an index row, say): an OperationalError
# to psycopg, yet one a fact's content can cause. Its other OperationalErrors are the server's or the link's.
PROGRAM_LIMIT_CLASS = "54"


class View(Protocol):
    name: str
    tables: tuple[str, ...]
    store: ViewStore  # where the view's rows are, `view_names` among them

    def process_page(
        self, page: list[StoredFact], position: int | None = None, new_names: Mapping[TenantToken, str] | None = None
    ) -> Any: ...


def transient(failure: BaseException) -> bool:
    """Whether a failure is the database's state (connection lost, locked, timed out, disk full) rather than
    the page's content. The library wraps the driver's errors, so the driver's is looked for among the causes.
    All of SQLite's OperationalErrors count: they are the file's state (a missing table too: a page that
    can never apply is a fault of ours, retried loudly rather than blamed on every tenant in turn)."""
    cause: BaseException | None = failure
    while cause is not None:
        if isinstance(cause, psycopg.Error):
            return isinstance(cause, psycopg.OperationalError) and not (cause.sqlstate or "").startswith(
                PROGRAM_LIMIT_CLASS
            )
        if isinstance(cause, sqlite3.Error):
            return isinstance(cause, sqlite3.OperationalError)
        cause = cause.__cause__
    return isinstance(failure, (persistence.OperationalError, OSError))  # a pool timeout, a socket


def error_text(failure: BaseException) -> str:
    """A failure as text any store can hold: the message may quote the very value that failed (a NUL)."""
    text = f"{type(failure).__name__}: {failure}".encode("utf-8", "backslashreplace").decode()
    return text.replace("\x00", "\\x00")[:ERROR_CHARS_MAX]


@dataclass(frozen=True)
class ProjectionFailure:
    """The fact a view could not apply, and so the tenant it skips from there on."""

    view: str
    tenant: str
    position: int
    event_id: str
    error: str
    failed_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


QUARANTINE_COLUMNS = "view_name, tenant, position, event_id, error, failed_at"


def projection_failures(store: ViewStore) -> list[ProjectionFailure]:
    """Every view's quarantined tenants, for readiness (any process reads them, projector or not)."""
    rows = store.read(f"SELECT {QUARANTINE_COLUMNS} FROM view_quarantine ORDER BY view_name, position")
    return [ProjectionFailure(*row) for row in rows]


class Quarantine:
    """The tenants one view skips, in the views database (`view_quarantine`): a restarted projector skips
    them too, since applying a tenant's later facts over the gap would make its rows wrong rather than
    behind. Only a reset of the view (`reciprocity rebuild`) clears them, as it rebuilds every tenant."""

    def __init__(self, store: ViewStore, view: str) -> None:
        self.store = store
        self.view = view

    def tenants(self) -> set[str]:
        rows = self.store.read("SELECT tenant FROM view_quarantine WHERE view_name = ?", (self.view,))
        return {row[0] for row in rows}

    def add(self, failure: ProjectionFailure) -> None:
        with self.store.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO view_quarantine ({QUARANTINE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (view_name, tenant) DO NOTHING",
                (failure.view, failure.tenant, failure.position, failure.event_id, failure.error, failure.failed_at),
            )


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
        quarantine: Quarantine | None = None,
        on_failure: Callable[[str], None] = lambda view: None,
    ) -> None:
        """Without a `quarantine`, a failed page is the caller's to handle. `on_failure` learns the view's
        name for every page that failed: tried again, or a fact found that failed alone."""
        self.ledger = ledger
        self.view = view
        self.position = position
        self.page_facts_max = page_facts_max
        self.on_page = on_page
        self.quarantine = quarantine
        self.on_failure = on_failure
        self.skipped: set[str] = set()
        self.failed_alone: set[int] = set()  # positions of facts that failed by themselves, never tried again
        self.names = ViewNames(view.store, ledger.names)
        self.caught_up = asyncio.Event()

    def catch_up(self, *, pages_max: int | None = None) -> int:
        """Applies pages until the log is exhausted (or `pages_max` pages); returns the facts gone through. After
        each page, `on_page` learns the position the page started after and what the view says it changed."""
        if self.quarantine is not None:
            self.skipped = self.quarantine.tenants()  # read again: a rebuild meanwhile may have cleared it
        applied = pages = 0
        while pages_max is None or pages < pages_max:
            after = self.position()
            page = self.ledger.read_log(after, self.page_facts_max)
            if not page:
                break
            # A page's rows all live until its commit: a collector pass during it would only walk them.
            with collector_paused():
                new_names = self.names.resolve(page, after)  # once per page read: its facts then hold names
                self._apply(after, page, new_names)
            applied += len(page)
            pages += 1
            if len(page) < self.page_facts_max:
                break
        return applied

    def _apply(self, after: int, page: list[StoredFact], new_names: Mapping[TenantToken, str]) -> None:
        """Applies `page` (but quarantined tenants' facts) in one transaction, tracking its last position.

        If it fails for its content, its halves are applied, each in a transaction of its own, down to the
        fact that fails alone: about twice log2(n) transactions find one poison fact among n. A quarantined
        tenant's erasures are still applied: its rows stay as they were, but without the erased person's id."""
        kept = [stored for stored in page if self._kept(stored)]
        try:
            changes = self.view.process_page(kept, page[-1].position, new_names)
        except Exception as failure:
            if self.quarantine is None or not kept or transient(failure):
                raise  # (an empty page that fails is no fact's doing)
            if len(page) > 1:
                middle = len(page) // 2
                self._apply(after, page[:middle], new_names)
                self._apply(page[middle - 1].position, page[middle:], new_names)
            else:
                self._quarantine(after, page[0], failure)
                self.failed_alone.add(page[0].position)
                self._apply(after, page, new_names)  # now without it: the view moves past it
            return
        self.names.committed(new_names, kept, page[-1].position)
        self.on_page(after, changes)  # outside the try: an observer's failure is not the page's

    def _kept(self, stored: StoredFact) -> bool:
        if stored.position in self.failed_alone:
            return False
        return stored.fact.tenant not in self.skipped or isinstance(stored.fact, Erasure)

    def _quarantine(self, after: int, stored: StoredFact, failure: Exception) -> None:
        assert self.quarantine is not None
        if self.position() != after:  # another process applied this page meanwhile (a lost lock): not the fact
            raise failure
        fact = stored.fact
        found = ProjectionFailure(
            self.view.name, fact.tenant, stored.position, fact.event_id, error_text(failure),
            datetime.now(UTC).isoformat(timespec="seconds"),
        )  # fmt: skip
        self.quarantine.add(found)
        self.skipped.add(found.tenant)
        log.error(
            "projection_failed", view=found.view, tenant=found.tenant, position=found.position,
            event_id=found.event_id, error=found.error, skipped="this tenant's facts from here on",
            cleared_by="reciprocity rebuild", exc_info=failure,
        )  # fmt: skip
        self.on_failure(self.view.name)

    async def follow(self, wakeup: asyncio.Event, executor: Executor, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        """Runs until cancelled: catch up, then sleep until woken or the poll interval ends. Pages run on
        `executor`, whose owner waits for the page in flight before closing the views."""
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        while True:
            wakeup.clear()
            try:
                applied = await loop.run_in_executor(executor, partial(self.catch_up, pages_max=PAGES_PER_TURN))
            except Exception as failure:  # the failed page rolled back whole; try it again after a pause
                delay = backoff.next_delay()
                log.error(
                    "projection_page_failed", view=self.view.name, error=error_text(failure),
                    transient=transient(failure), retry_in_s=round(delay, 3),
                )  # fmt: skip
                self.on_failure(self.view.name)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if applied >= PAGES_PER_TURN * self.page_facts_max:
                continue  # it stopped at the turn's last page, not at the end of the log
            # The log held no more when its last page was read (after the wakeup was cleared), so a commit since
            # has set the wakeup again.
            self.caught_up.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_interval_s):  # wait_for can lose a cancel (3.11)
                    await wakeup.wait()


class PostgresNotifications:
    """Wakes followers when any process inserts into the store (the library NOTIFYs on each insert)."""

    def __init__(
        self, database_url: str, channel: str, wake: Callable[[], None], limits: ConnectionLimits = DEFAULT_LIMITS,
        wanted: Callable[[], bool] = lambda: True,
    ) -> None:  # fmt: skip
        """Listens only while `wanted()` (a standby, whose followers do not run, holds no connection for it)."""
        self._wanted = wanted
        self._database_url = database_url
        self._limits = limits
        self._channel = channel
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def alive(self) -> bool:
        """Whether it still listens (or was stopped): the thread retries every failure, so one that ended
        anyway is a loop that died."""
        return self._thread.is_alive() or self._stop.is_set()

    def _listen(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            if not self._wanted():
                self._stop.wait(LISTEN_WANTED_CHECK_S)
                continue
            try:
                with postgres_connect(self._database_url, self._limits) as conn:
                    conn.execute(f'LISTEN "{self._channel}"')
                    backoff.reset()
                    woken_at = -COMMIT_WAKE_INTERVAL_S
                    while not self._stop.is_set() and self._wanted():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            # The first commit after a quiet spell wakes at once; under load the commits of an
                            # interval go into one page rather than a page each (a page's own cost dominated).
                            self._stop.wait(woken_at + COMMIT_WAKE_INTERVAL_S - time.monotonic())
                            woken_at = time.monotonic()
                            self._wake()
            except Exception as failure:  # reconnect, whatever failed; the poll interval covers the gap
                delay = backoff.next_delay()
                log.warning("pg_listen_failed", error=error_text(failure), retry_in_s=round(delay, 3))
                time.sleep(delay)


async def watch_sqlite_commits(
    path: Path, wake: Callable[[], None], interval_s: float, wake_interval_s: float = COMMIT_WAKE_INTERVAL_S
) -> None:
    """Wakes followers when another process commits to a SQLite file. `PRAGMA data_version` on an idle
    connection of our own changes exactly then and reads no table, so it can be checked often; reading the
    log at every tick would keep an idle service busy. As on PostgreSQL, the first commit after a quiet spell
    wakes them at once and later ones at most every `wake_interval_s`: a page's own cost dominated when single
    webhooks woke them every tick (docs/performance.md)."""
    connection = sqlite3.connect(path, isolation_level=None)  # never writes; holds no transaction open
    loop = asyncio.get_running_loop()
    try:
        seen = connection.execute("PRAGMA data_version").fetchone()[0]
        woken_at = -wake_interval_s
        while True:
            await asyncio.sleep(interval_s)
            if loop.time() - woken_at < wake_interval_s:
                continue  # a commit meanwhile is still unseen, so it wakes them when the interval ends
            version = connection.execute("PRAGMA data_version").fetchone()[0]
            if version != seen:
                seen, woken_at = version, loop.time()
                wake()
    finally:
        connection.close()
