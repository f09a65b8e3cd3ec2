"""The one SQL layer (ledger/dialect.py, connections.py, locks.py): each dialect's SQL, the settings' limits
reaching the pools and the waits, and the locks processes take against each other, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import UTC, datetime

import pytest

from contracts.webhook_bodies import read_webhook
from ledger.connections import DEFAULT_LIMITS, ConnectionLimits, postgres_connect
from ledger.dialect import POSTGRESQL, SQLITE, dialect_of
from ledger.facts import ReceivedFact
from ledger.group_commit import FactWriter
from ledger.locks import WorkerLock, schema_lock
from ledger.sql import Database
from ledger.store import LEDGER_FILE, open_ledger
from services.bootstrap import open_components
from services.settings import Settings
from tests.helpers import envelope, give


def test_sql_is_written_once_and_each_dialect_gets_its_placeholders_types_and_collation():
    """Statements are written for SQLite; PostgreSQL gets %s, its own types and byte-order text."""
    statement = "SELECT a FROM t WHERE b = ? AND c = ?"
    assert SQLITE.sql(statement) == statement
    assert POSTGRESQL.sql(statement) == "SELECT a FROM t WHERE b = %s AND c = %s"
    ddl = "CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, n INTEGER NOT NULL, share REAL)"
    assert SQLITE.ddl(ddl) == ddl
    assert POSTGRESQL.ddl(ddl) == (
        'CREATE TABLE IF NOT EXISTS t (id TEXT COLLATE "C" PRIMARY KEY, n BIGINT NOT NULL, share DOUBLE PRECISION)'
    )
    assert (SQLITE.begin_write, POSTGRESQL.begin_write) == ("BEGIN IMMEDIATE", "BEGIN")
    assert (dialect_of(None), dialect_of("postgresql://db/x")) == (SQLITE, POSTGRESQL)


def test_the_connection_settings_are_variables_with_todays_values_as_defaults():
    """RECIPROCITY_PG_POOL_SIZE and its siblings become the limits every connection is opened with."""
    assert Settings().connection_limits() == DEFAULT_LIMITS == ConnectionLimits(4, 8, 5, 10)
    settings = Settings.from_env(
        {
            "RECIPROCITY_PG_POOL_SIZE": "2",
            "RECIPROCITY_PG_MAX_OVERFLOW": "0",
            "RECIPROCITY_PG_CONNECT_TIMEOUT_S": "3",
            "RECIPROCITY_LOCK_TIMEOUT_S": "1",
        }
    )
    assert settings.connection_limits() == ConnectionLimits(2, 0, 3, 1)


async def test_the_pool_settings_reach_the_store_and_the_views_pools(settings):
    """A service opened with small pools holds small pools: the store's and the views' alike."""
    environment = {**settings.as_env(), "RECIPROCITY_PG_POOL_SIZE": "2", "RECIPROCITY_PG_MAX_OVERFLOW": "1"}
    components = await open_components(Settings.from_env({**environment, "RECIPROCITY_LOCK_TIMEOUT_S": "3"}))
    try:
        store_pool = components.ledger.recorder.datastore.pool
        views_pool = components.projections.store.datastore.pool
        if settings.database_url:
            assert [(pool.min_size, pool.max_size) for pool in (store_pool, views_pool)] == [(2, 3), (2, 3)]
            assert components.ledger.recorder.datastore.lock_timeout == 3
        else:  # SQLite pools have no size; their connections wait for the lock as long as the setting says
            assert (store_pool.lock_timeout, views_pool.lock_timeout) == (3, 3)
    finally:
        await components.close()


def _received(external_id: str) -> ReceivedFact:
    webhook = read_webhook(json.dumps(envelope(give(external_id, "ann", "bob"))).encode())
    return ReceivedFact.from_webhook("acme", "crm", webhook, datetime.now(UTC))


# The library tries an insert into PostgreSQL 10 times (its @retry), each waiting up to the lock timeout.
POSTGRES_INSERT_ATTEMPTS = 10


def test_a_write_waits_for_another_writers_lock_only_as_long_as_the_lock_timeout(settings):
    """With RECIPROCITY_LOCK_TIMEOUT_S=1 a commit behind another writer's lock fails after a second per attempt
    (not the default ten), and succeeds once the lock is released."""
    limits = settings.with_(lock_timeout_s=1).connection_limits()
    ledger = open_ledger(settings.database_url, settings.data_dir, limits)
    writer = FactWriter(ledger)
    if settings.database_url:
        blocker = postgres_connect(settings.database_url)
        blocker.execute("BEGIN")
        blocker.execute(f"LOCK TABLE {ledger.recorder.events_table_name} IN EXCLUSIVE MODE")
    else:
        blocker = sqlite3.connect(settings.data_dir / LEDGER_FILE, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(Exception, match="lock"):
            writer.commit([_received("g1")])
        attempts = POSTGRES_INSERT_ATTEMPTS if settings.database_url else 1
        assert 0.9 * attempts < time.monotonic() - started < 1.5 * attempts + 3
        blocker.execute("ROLLBACK")
        assert writer.commit([_received("g1")])[0].status == "recorded"
    finally:
        blocker.close()
        ledger.close()


def test_the_registry_waits_for_a_lock_only_as_long_as_the_lock_timeout(sqlite_settings):
    """Our own SQLite tables (the registry's) wait for another writer as long as the lock timeout says."""
    path = sqlite_settings.data_dir / "registry.sqlite3"
    database = Database(None, path, ConnectionLimits(lock_timeout_s=0.3))
    with database.transaction() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"), database.transaction() as cursor:
            cursor.execute("INSERT INTO t (n) VALUES (?)", (1,))
        assert time.monotonic() - started < 3
    finally:
        blocker.close()
        database.close()


def test_one_process_holds_a_worker_lock_and_another_takes_it_once_released(settings):
    """Per store and job one holder: a second waits (and gives up when told), a different job is free."""
    first, second = (WorkerLock(settings.database_url, settings.data_dir, "relay") for _ in range(2))
    projector = WorkerLock(settings.database_url, settings.data_dir, "projector")
    try:
        assert first.try_acquire() and first.try_acquire()  # taking a lock one holds again is no wait
        started = time.monotonic()
        assert not second.acquire(0.3)
        assert time.monotonic() - started >= 0.3
        assert projector.try_acquire()
        assert first.still_held() and not second.still_held()
        first.release()
        assert not first.still_held()
        assert second.try_acquire() and not first.try_acquire()
    finally:
        for lock in (first, second, projector):
            lock.release()


@pytest.mark.postgres
def test_the_schema_lock_lets_one_process_at_a_time_create_tables(postgres_schema_url):
    """Table creation in one schema waits for another process's, and creates the schema it names."""
    entered = threading.Event()

    def create_after_the_first() -> None:
        with schema_lock(postgres_schema_url):
            entered.set()

    with schema_lock(postgres_schema_url):
        other = threading.Thread(target=create_after_the_first, daemon=True)
        other.start()
        assert not entered.wait(0.5), "a second process created tables while the first held the lock"
        with postgres_connect(postgres_schema_url) as conn:
            assert conn.execute("SELECT current_schema()").fetchone()[0] == postgres_schema_url.rsplit("=", 1)[1]
    assert entered.wait(10)
    other.join(10)
