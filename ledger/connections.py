"""Every connection to the store's database is made here: SQLite files, PostgreSQL connections and the
pools of the eventsourcing library's datastores, within the limits the settings give.

A process holds two PostgreSQL pools (the store's and the views') plus a few plain connections (the
registry, the views' readers, the locks it holds, LISTEN); pool size, overflow and readers are what an
operator turns down when many processes share one server's connections (README, "Connections").
"""

from __future__ import annotations

import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import psycopg
from eventsourcing.persistence import InterfaceError
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteDatastore,
)
from psycopg.sql import SQL, Identifier


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections a pool keeps and may add, how many plain reading connections the views may
    hold, and how long one waits to connect or for a lock (RECIPROCITY_PG_POOL_SIZE, _PG_MAX_OVERFLOW,
    _PG_READERS_MAX, _PG_CONNECT_TIMEOUT_S, _LOCK_TIMEOUT_S)."""

    pool_size: int = 4
    max_overflow: int = 8
    connect_timeout_s: int = 5
    # How long a writer waits for another's lock before it fails: SQLite's busy timeout, PostgreSQL's
    # lock_timeout on the store's table lock. Bounded, so a stuck writer fails the others rather than
    # holding them forever (the follower retries a page that failed so).
    lock_timeout_s: float = 10
    readers_max: int = 16  # beyond this, a thread reads through the views' pool instead

    @property
    def whole_lock_timeout_s(self) -> int:
        """The lock timeout for the library's recorders, which take whole seconds (rounded up: never 0,
        which would mean no limit)."""
        return max(1, math.ceil(self.lock_timeout_s))


DEFAULT_LIMITS = ConnectionLimits()


# --- PostgreSQL ---------------------------------------------------------------------------------------

APPLICATION_NAME_ENV = "PGAPPNAME"
POOL_FILL_POLL_S = 0.005


def name_connections(label: str) -> str:
    """Names every PostgreSQL connection this process opens from now on `reciprocity-<label>-<pid>`, as
    pg_stat_activity shows it to operators (and to the test that counts each role's). By libpq's environment
    variable: the eventsourcing library's pools take no connection name of their own."""
    name = f"reciprocity-{label}-{os.getpid()}"
    os.environ[APPLICATION_NAME_ENV] = name
    return name


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


def postgres_pool_args(database_url: str, limits: ConnectionLimits) -> dict[str, Any]:
    """The arguments of the library's PostgresDatastore (and, upper-cased after POSTGRES_, its environment)."""
    return {
        **postgres_params(database_url),
        "pool_size": limits.pool_size,
        "max_overflow": limits.max_overflow,
        "connect_timeout": limits.connect_timeout_s,  # the library waits this long for a pooled connection too
        "lock_timeout": limits.whole_lock_timeout_s,
    }


class SchemaPostgresDatastore(PostgresDatastore):
    """The library's datastore with its schema on the search path, so our SQL needs no qualified names."""

    def after_connect_func(self) -> Callable[[Any], None]:
        configure = super().after_connect_func()
        search_path = _search_path(self.schema)

        def after_connect(conn: Any) -> None:
            configure(conn)
            conn.cursor().execute(search_path)

        return after_connect


def postgres_pool(database_url: str, limits: ConnectionLimits = DEFAULT_LIMITS) -> SchemaPostgresDatastore:
    """The views' pool of PostgreSQL connections (the store's is the library's own, made by the library from
    the same arguments in `ledger_env`), opened."""
    datastore = SchemaPostgresDatastore(**postgres_pool_args(database_url, limits))
    open_filled(datastore.pool, limits.connect_timeout_s)
    return datastore


def open_filled(pool: Any, timeout_s: float) -> None:
    """Opens a psycopg pool and waits, at most `timeout_s`, until its first `min_size` connections are made.
    Opened without waiting (the library's way), its first request finds none ready and grows the pool beyond
    its size, where the extra connection stays for minutes; psycopg's own wait closes the pool for good when
    the server is slow to answer, so this one only looks."""
    pool.open()
    deadline = time.monotonic() + timeout_s
    while pool.get_stats().get("pool_available", 0) < pool.min_size and time.monotonic() < deadline:
        time.sleep(POOL_FILL_POLL_S)


def _postgres_connect_args(database_url: str, limits: ConnectionLimits) -> dict[str, Any]:
    pg = postgres_params(database_url)
    return {
        "dbname": pg["dbname"],
        "host": pg["host"],
        "port": pg["port"],
        "user": pg["user"],
        "password": pg["password"],
        "autocommit": True,
        "connect_timeout": limits.connect_timeout_s,
    }


def _search_path(schema: str) -> SQL:
    return SQL("SET search_path TO {}").format(Identifier(schema))


def postgres_connect(database_url: str, limits: ConnectionLimits = DEFAULT_LIMITS) -> psycopg.Connection[Any]:
    """A plain connection in autocommit, outside any pool, with the URL's schema on its search path."""
    connection = psycopg.connect(**_postgres_connect_args(database_url, limits))
    try:
        connection.execute(_search_path(postgres_params(database_url)["schema"]))
    except BaseException:
        connection.close()
        raise
    return connection


async def postgres_connect_async(
    database_url: str, limits: ConnectionLimits = DEFAULT_LIMITS, **options: Any
) -> psycopg.AsyncConnection[Any]:
    """`postgres_connect` for the event loop; `options` are psycopg's (a row factory)."""
    connection = await psycopg.AsyncConnection.connect(**_postgres_connect_args(database_url, limits), **options)
    try:
        await connection.execute(_search_path(postgres_params(database_url)["schema"]))
    except BaseException:
        await connection.close()
        raise
    return connection


# --- SQLite -------------------------------------------------------------------------------------------

# The data directory and its SQLite files are this user's alone: the registry holds the sources' webhook
# secrets, the store every fact.
PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
STATEMENTS_CACHED = 128  # per connection: Python's default; the IN lists of a few sizes and every fixed statement


def secure_delete(connection: sqlite3.Connection) -> None:
    """SQLite overwrites what a connection deletes, instead of leaving it in free pages: an erased
    participant's key row must not outlive its DELETE in the file (DESIGN section 7). It is a setting of each
    connection (and of the files attached to it), so every connection that may write sets it."""
    connection.execute("PRAGMA secure_delete=ON")
    if connection.execute("PRAGMA secure_delete").fetchone()[0] != 1:
        raise RuntimeError("SQLite refused secure_delete=ON; deleted rows would stay readable in the file")


def sqlite_connect(path: Path, limits: ConnectionLimits = DEFAULT_LIMITS) -> sqlite3.Connection:
    """A durable connection for our own small SQLite files (registry), in autocommit."""
    private_sqlite_file(path)
    connection = sqlite3.connect(path, timeout=limits.lock_timeout_s, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    secure_delete(connection)
    return connection


def limit_sqlite_memory(bytes_max: int) -> None:
    """Bounds the memory SQLite holds in this process, all connections together. Each connection's page
    cache may grow to its own cache_size, and a process opens many (pools, a reader per thread): past this
    soft limit a cache recycles its own least recently used pages instead of growing. Reads then come from
    the operating system's cache of the file, as before the page was cached."""
    with closing(sqlite3.connect(":memory:")) as connection:
        connection.execute(f"PRAGMA soft_heap_limit={int(bytes_max)}")


class SecureSQLiteConnectionPool(SQLiteConnectionPool):
    """The library's pool, with every connection deleting securely (`secure_delete`) and keeping its compiled
    statements: the base of our pools."""

    def _create_connection(self) -> SQLiteConnection:
        # As the library's, but for the statement cache: it asks for `cached_statements=True`, a cache of one,
        # so each statement of a transaction was compiled again every time (docs/performance.md).
        try:
            raw = sqlite3.connect(
                self.db_name, uri=True, check_same_thread=False, isolation_level=None,
                cached_statements=STATEMENTS_CACHED, timeout=self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT,
            )  # fmt: skip
        except (sqlite3.Error, TypeError) as error:
            raise InterfaceError(error) from error
        if not self.is_sqlite_memory_mode and not self.is_journal_mode_wal:
            if raw.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                raw.execute("PRAGMA journal_mode=WAL")
                self.journal_mode_was_changed_to_wal = True
            self.is_journal_mode_wal = True
        raw.row_factory = sqlite3.Row
        secure_delete(raw)
        return SQLiteConnection(sqlite_conn=raw, max_age=self.max_age)


class DurableSQLiteConnectionPool(SecureSQLiteConnectionPool):
    """Every connection made durable as well: a commit is on disk when it returns."""

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

    pool_class: type[SQLiteConnectionPool] = SecureSQLiteConnectionPool

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
