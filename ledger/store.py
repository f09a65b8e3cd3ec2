"""Where facts are stored: the eventsourcing library's application and recorders, plus a tenant index.

The library's `stored_events` table is the append-only store; its notification id is a fact's position.
Each recorder here adds one small table, `fact_index (tenant, position)`, written in the same transaction
as the events, so one tenant's log can be read in order without scanning everybody else's facts.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from uuid import UUID

import orjson
import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteFactory,
)
from eventsourcing.utils import Environment
from psycopg.sql import SQL, Identifier

from contracts.facts import FactType
from ledger.facts import FACT_TOPIC, FACT_TOPICS, Fact, fact_from_json

LEDGER_FILE = "ledger.sqlite3"
SQLITE_LOCK_TIMEOUT_S = 10
IN_CLAUSE_IDS_MAX = 500  # stay far below SQLite's bound-parameter limit
AGGREGATE_CACHE_MAX = 10_000


@dataclass(frozen=True)
class StoredFact:
    """A fact as read back from the store: its place in the global order and the fact itself."""

    position: int
    fact: Fact

    def as_logged(self) -> dict[str, Any]:
        """The fact as the log shows it: the stored JSON and its position."""
        logged = self.fact.to_json()
        logged["position"] = self.position
        return logged


def fact_from_state(state: bytes) -> Fact:
    """The fact inside a stored `Recorded` event (its other attributes are the library's)."""
    return fact_from_json(orjson.loads(state)["fact"])


def _fact_tenants(kwargs: dict[str, Any]) -> dict[UUID, str]:
    # Every first event of an aggregate is a fact and must be indexed; a save without the
    # tenants of its facts is a programming error and fails its transaction.
    return kwargs.get("fact_tenants") or {}


def _index_rows(
    stored_events: Sequence[StoredEvent], positions: Sequence[int], tenants: dict[UUID, str]
) -> list[tuple[str, int]]:
    return [
        (tenants[s.originator_id], position)
        for s, position in zip(stored_events, positions, strict=True)
        if s.originator_version == 1
    ]


# --- SQLite -------------------------------------------------------------------------------------------


class DurableSQLiteConnectionPool(SQLiteConnectionPool):
    """The library's pool, with every connection made durable: a commit is on disk when it returns."""

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        raw = connection._sqlite_conn
        raw.execute("PRAGMA synchronous=FULL")
        level = raw.execute("PRAGMA synchronous").fetchone()[0]
        if level < 2:  # 2 is FULL, 3 is EXTRA
            raise RuntimeError(f"SQLite refused synchronous=FULL (got {level}); commits would not be durable")
        return connection


class PooledSQLiteDatastore(SQLiteDatastore):
    """The library's SQLite datastore with a connection pool of our own, which sets up each connection."""

    pool_class: type[SQLiteConnectionPool] = SQLiteConnectionPool

    def __init__(self, db_name: str, **kwargs: Any) -> None:
        super().__init__(db_name, **kwargs)
        self._pool_args = {"db_name": db_name, "lock_timeout": kwargs.get("lock_timeout")}
        self.pool.close()  # never used: replaced before any connection was made
        self.pool = self.pool_class(**self._pool_args)

    def renew_pool(self) -> None:
        """Closes the pool's connections; the next transaction opens a new one."""
        self.pool.close()
        self.pool = self.pool_class(**self._pool_args)


class DurableSQLiteDatastore(PooledSQLiteDatastore):
    pool_class = DurableSQLiteConnectionPool


class LedgerSQLiteRecorder(SQLiteApplicationRecorder):
    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS fact_index (position INTEGER PRIMARY KEY, tenant TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS fact_index_by_tenant ON fact_index (tenant, position)",
        ]

    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        positions = super()._insert_events(c, stored_events, **kwargs)
        rows = _index_rows(stored_events, positions, _fact_tenants(kwargs))
        c.executemany("INSERT INTO fact_index (tenant, position) VALUES (?, ?)", rows)
        return positions

    def select_facts(self, event_ids: Iterable[UUID]) -> dict[UUID, StoredFact]:
        found: dict[UUID, StoredFact] = {}
        ids = [event_id.hex for event_id in event_ids]
        for start in range(0, len(ids), IN_CLAUSE_IDS_MAX):
            chunk = ids[start : start + IN_CLAUSE_IDS_MAX]
            statement = (
                "SELECT rowid, originator_id, state FROM stored_events "
                f"WHERE originator_version = 1 AND originator_id IN ({','.join('?' * len(chunk))})"
            )
            with self.datastore.transaction(commit=False) as c:
                c.execute(statement, chunk)
                for row in c.fetchall():
                    found[UUID(row[1])] = StoredFact(row[0], fact_from_state(row[2]))
        return found

    def select_tenant_facts(self, tenant: str, after: int, limit: int) -> list[StoredFact]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT s.rowid, s.state FROM fact_index f JOIN stored_events s ON s.rowid = f.position "
                "WHERE f.tenant = ? AND f.position > ? ORDER BY f.position LIMIT ?",
                (tenant, after, limit),
            )
            return [StoredFact(row[0], fact_from_state(row[1])) for row in c.fetchall()]

    def select_log(self, after: int, limit: int, topics: Sequence[str] = FACT_TOPICS) -> list[StoredFact]:
        """The library's `select_notifications(topics=FACT_TOPICS)`, without its notification objects, whose
        UUIDs and dataclasses are much of the cost of reading the log."""
        statement = (
            f"SELECT rowid, state FROM {self.events_table_name} WHERE rowid > ? "
            f"AND topic IN ({', '.join('?' * len(topics))}) ORDER BY rowid LIMIT ?"
        )
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, (after, *topics, limit))
            return [StoredFact(row[0], fact_from_state(row[1])) for row in c.fetchall()]

    def max_fact_position(self) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT MAX(position) FROM fact_index")
            return c.fetchone()[0] or 0

    def writer_synchronous(self) -> str:
        """What the connection that commits facts reports for PRAGMA synchronous."""
        with self.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA synchronous")
            level = c.fetchone()[0]
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[level]


class LedgerSQLiteFactory(SQLiteFactory):
    application_recorder_class = LedgerSQLiteRecorder

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        self.datastore = DurableSQLiteDatastore(
            self.datastore.pool.db_name, lock_timeout=self.datastore.pool.lock_timeout
        )


# --- PostgreSQL ---------------------------------------------------------------------------------------


class LedgerPostgresRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema = Identifier(self.datastore.schema)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.fact_index (position bigint PRIMARY KEY, tenant text NOT NULL)"
            ).format(schema=schema)
        )
        self.sql_create_statements.append(
            SQL("CREATE INDEX IF NOT EXISTS fact_index_by_tenant ON {schema}.fact_index (tenant, position)").format(
                schema=schema
            )
        )
        self.insert_index_statement = SQL("INSERT INTO {schema}.fact_index (tenant, position) VALUES (%s, %s)").format(
            schema=schema
        )
        self.select_facts_statement = SQL(
            "SELECT notification_id, originator_id, state FROM {schema}.{table} "
            "WHERE originator_id = ANY(%s) AND originator_version = 1"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        self.max_fact_position_statement = SQL("SELECT MAX(position) AS head FROM {schema}.fact_index").format(
            schema=schema
        )
        self.select_tenant_facts_statement = SQL(
            "SELECT e.notification_id, e.state FROM {schema}.fact_index f "
            "JOIN {schema}.{table} e ON e.notification_id = f.position "
            "WHERE f.tenant = %s AND f.position > %s ORDER BY f.position LIMIT %s"
        ).format(schema=schema, table=Identifier(self.events_table_name))

    def _fetch_ids_after_insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        # Runs inside the library's insert transaction, while it holds the table lock.
        positions = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        rows = _index_rows(stored_events, positions, _fact_tenants(kwargs))
        if rows:
            curs.executemany(self.insert_index_statement, rows)
        return positions

    def select_facts(self, event_ids: Iterable[UUID]) -> dict[UUID, StoredFact]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.select_facts_statement, (list(event_ids),), prepare=True)
            return {
                row["originator_id"]: StoredFact(row["notification_id"], fact_from_state(row["state"]))
                for row in curs.fetchall()
            }

    def select_tenant_facts(self, tenant: str, after: int, limit: int) -> list[StoredFact]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.select_tenant_facts_statement, (tenant, after, limit), prepare=True)
            return [StoredFact(row["notification_id"], fact_from_state(row["state"])) for row in curs.fetchall()]

    def select_log(self, after: int, limit: int, topics: Sequence[str] = FACT_TOPICS) -> list[StoredFact]:
        notifications = self.select_notifications(start=after, limit=limit, topics=topics, inclusive_of_start=False)
        return [StoredFact(n.id, fact_from_state(n.state)) for n in notifications]

    def max_fact_position(self) -> int:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.max_fact_position_statement, prepare=True)
            return curs.fetchone()["head"] or 0


class LedgerPostgresFactory(PostgresFactory):
    application_recorder_class = LedgerPostgresRecorder


# --- The application ----------------------------------------------------------------------------------


class Ledger(Application[UUID]):
    """The append-only store of facts, on the library's SQLite or PostgreSQL recorder."""

    name = "Ledger"
    recorder: LedgerSQLiteRecorder | LedgerPostgresRecorder

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Settings are the only source of configuration: no stray library variable from os.environ.
        return Environment(name, dict(env or {}))

    def find_facts(self, event_ids: Iterable[UUID]) -> dict[UUID, StoredFact]:
        """The recorded facts among these event ids (a missing id was never recorded)."""
        event_ids = list(event_ids)
        return self.recorder.select_facts(event_ids) if event_ids else {}

    def tenant_log(self, tenant: str, after: int, limit: int) -> list[StoredFact]:
        """One tenant's facts after a position, in the store's global order."""
        return self.recorder.select_tenant_facts(tenant, after, limit)

    def read_log(self, after: int, limit: int, kinds: Iterable[FactType] | None = None) -> list[StoredFact]:
        """Every tenant's facts after a position (of these kinds only, if given): what projections and the relay
        follow."""
        topics = FACT_TOPICS if kinds is None else tuple(FACT_TOPIC[kind] for kind in kinds)
        return self.recorder.select_log(after, limit, topics)

    def head_position(self) -> int:
        """The position of the newest fact (0 when there is none)."""
        return self.recorder.max_fact_position()

    @property
    def sqlite_file(self) -> Path | None:
        """The store's SQLite file; None on PostgreSQL."""
        if isinstance(self.recorder, LedgerSQLiteRecorder):
            return Path(self.recorder.datastore.pool.db_name)
        return None


def ledger_env(database_url: str | None, data_dir: Path) -> dict[str, str]:
    """The library's environment for our store: SQLite under the data dir, or PostgreSQL by URL."""
    common = {"AGGREGATE_CACHE_MAXSIZE": str(AGGREGATE_CACHE_MAX)}
    if not database_url:
        return {
            **common,
            "PERSISTENCE_MODULE": f"{__name__}:LedgerSQLiteFactory",
            "SQLITE_DBNAME": str(data_dir / LEDGER_FILE),
            "SQLITE_LOCK_TIMEOUT": str(SQLITE_LOCK_TIMEOUT_S),
        }
    pg = postgres_params(database_url)
    return {
        **common,
        "PERSISTENCE_MODULE": f"{__name__}:LedgerPostgresFactory",
        "POSTGRES_DBNAME": pg["dbname"],
        "POSTGRES_HOST": pg["host"],
        "POSTGRES_PORT": pg["port"],
        "POSTGRES_USER": pg["user"],
        "POSTGRES_PASSWORD": pg["password"],
        "POSTGRES_SCHEMA": pg["schema"],
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "8",
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_LOCK_TIMEOUT": "10",
    }


def postgres_params(database_url: str) -> dict[str, str]:
    """`postgresql://user:password@host:port/dbname?schema=name` as separate connection parameters."""
    url = urlparse(database_url)
    if url.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"RECIPROCITY_DATABASE_URL must start with postgresql:// (got {url.scheme}://)")
    query = parse_qs(url.query)
    return {
        "dbname": unquote(url.path.lstrip("/")) or "postgres",
        "host": url.hostname or "127.0.0.1",
        "port": str(url.port or 5432),
        "user": unquote(url.username or "postgres"),
        "password": unquote(url.password or ""),
        "schema": query.get("schema", ["public"])[0],
    }


def postgres_connect_args(database_url: str) -> dict[str, Any]:
    """Our plain PostgreSQL connections' arguments (autocommit), for psycopg's sync or async connect."""
    pg = postgres_params(database_url)
    return {
        "dbname": pg["dbname"],
        "host": pg["host"],
        "port": pg["port"],
        "user": pg["user"],
        "password": pg["password"],
        "autocommit": True,
        "connect_timeout": 5,
    }


def postgres_connect(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(**postgres_connect_args(database_url))


# Held while tables are created: PostgreSQL refuses concurrent DDL on the same objects ("tuple concurrently
# updated"), and several pods or processes may start at the same moment. The key is per schema: a store that
# waits for its own tables (say, behind a long rebuild) must never hold up the stores in other schemas.
SCHEMA_LOCK_KEY_BASE = 0x7265_6369_7072_0000  # "recipr", plus a checksum of the schema


@contextmanager
def schema_lock(database_url: str | None) -> Iterator[None]:
    """Serialises table creation across processes on PostgreSQL (SQLite serialises it by itself)."""
    if not database_url:
        yield
        return
    schema = postgres_params(database_url)["schema"]
    key = SCHEMA_LOCK_KEY_BASE + zlib.crc32(schema.encode())
    with postgres_connect(database_url) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def open_ledger(database_url: str | None, data_dir: Path) -> Ledger:
    """The store, created on first use (tables, and the PostgreSQL schema the URL names)."""
    if not database_url:
        private_directory(data_dir)
        private_sqlite_file(data_dir / LEDGER_FILE)
    with schema_lock(database_url):
        return Ledger(env=ledger_env(database_url, data_dir))


# The data directory and its SQLite files are this user's alone: the registry holds the sources' webhook
# secrets, the store every fact.
PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_directory(path: Path) -> None:
    """Creates the directory 0700, or takes group and others' access from one that exists."""
    path.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    with suppress(PermissionError):  # a mount point we do not own (Kubernetes' fsGroup) keeps its owner's mode
        _tighten(path)


def private_sqlite_file(path: Path) -> None:
    """Creates the SQLite file 0600 before SQLite does (SQLite gives its -wal, -shm and -journal files the
    main file's mode), or tightens an existing one and its side files to 0600."""
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE))
    # An existing file only by name: closing a descriptor of it would drop this process's SQLite locks on it.
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_SIDE_FILES)):
        with suppress(FileNotFoundError):
            _tighten(file)


def _tighten(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(mode & 0o700)


def sqlite_connect(path: Path) -> sqlite3.Connection:
    """A durable connection for our own small SQLite files (registry, views)."""
    private_sqlite_file(path)
    connection = sqlite3.connect(path, timeout=SQLITE_LOCK_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection
