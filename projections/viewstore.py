"""Where views live: their own SQLite file (so projections never hold the ingest writer's lock) or the
PostgreSQL schema of the store, with the eventsourcing library's tracking table beside the view tables.

A view writes its rows and its tracking position through one cursor, in one transaction: a replayed page
can never count twice, and a crash between pages loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteCursor, SQLiteTrackingRecorder
from psycopg.rows import tuple_row

from ledger.connections import (
    DEFAULT_LIMITS,
    ConnectionLimits,
    PooledSQLiteDatastore,
    SecureSQLiteConnectionPool,
    postgres_connect,
    postgres_connect_async,
    postgres_pool,
    private_directory,
    private_sqlite_file,
    secure_delete,
)
from ledger.dialect import SQLITE, Dialect, dialect_of
from ledger.schema import SchemaMode, SchemaPart, ensure_schema

KEYS_PER_QUERY = 500
VIEWS_CACHE_KIB = 64 * 1024  # per connection
READER_CACHE_KIB = 16 * 1024  # per reading thread
# Readers map the file: a page already in the OS cache is read without a system call (they are dear in VMs).
READER_MMAP_BYTES = 1 << 30
# ...except in a process that answers no queries (serve's background process): its readers go through the
# whole view after a rebuild (the KV writer), and every page they touched would stay mapped, counted in its
# resident memory. Beyond this, pages are read with a system call.
BACKGROUND_READER_MMAP_BYTES = 1 << 28
# On SQLite the influence view has a file of its own, attached to every connection as schema `influence`:
# it is rewritten about once a second, and SQLite has one writer per file, so in the main file that
# rewrite would hold up the reciprocity pages (and every KV update behind them) while it lasts. Its DDL
# names the schema; on PostgreSQL, which locks rows rather than files, the name is dropped.
ATTACHED_FILES = {"influence": "influence.sqlite3"}
_ATTACHED_NAME = re.compile(rf"\b({'|'.join(ATTACHED_FILES)})\.")
# Tenants a view skips since one of their facts failed it (projections/follower.py). Like the tracking rows,
# this is every view's bookkeeping, so every store has the table and a view's reset clears its rows.
QUARANTINE_DDL = (
    "CREATE TABLE IF NOT EXISTS view_quarantine (view_name TEXT NOT NULL, tenant TEXT NOT NULL,"
    " position INTEGER NOT NULL, event_id TEXT NOT NULL, error TEXT NOT NULL, failed_at TEXT NOT NULL,"
    " PRIMARY KEY (view_name, tenant))"
)


def attach_files(connection: sqlite3.Connection, main_file: Path, *pragmas: str) -> None:
    """Attaches the views' other files beside `main_file`, each with `pragmas` (set per schema)."""
    for schema, file_name in ATTACHED_FILES.items():
        connection.execute(f"ATTACH DATABASE ? AS {schema}", (str(main_file.parent / file_name),))
        for pragma in pragmas:
            connection.execute(f"PRAGMA {schema}.{pragma}")


class ViewsSQLiteConnectionPool(SecureSQLiteConnectionPool):
    """Views commit without an fsync each (WAL with synchronous=NORMAL): a power loss may take the last
    pages back, together with their tracking row, so the follower simply applies them again. The fact
    store itself keeps synchronous=FULL."""

    def _create_connection(self) -> Any:
        connection = super()._create_connection()
        raw = connection._sqlite_conn  # deletes securely (the base pool), and so do the files attached below
        raw.execute("PRAGMA synchronous=NORMAL")
        # A page reads and rewrites rows all over the view tables and their indexes: keep more of them
        # cached than SQLite's default 2 MiB, so a large view is not re-read from the OS page by page.
        raw.execute(f"PRAGMA cache_size=-{VIEWS_CACHE_KIB}")
        pragmas = ("journal_mode=WAL", "synchronous=NORMAL", f"cache_size=-{VIEWS_CACHE_KIB}")
        attach_files(raw, Path(self.db_name), *pragmas)
        return connection


class ViewsSQLiteDatastore(PooledSQLiteDatastore):
    pool_class = ViewsSQLiteConnectionPool


class ViewCursor:
    """The library's cursor, with `?` placeholders and rows that unpack like tuples on both stores."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect
        self._postgres = dialect.postgres
        if self._postgres:
            raw.row_factory = tuple_row  # the library's connections make dicts, which merge same-named columns
        else:
            raw.sqlite_cursor.row_factory = None  # plain tuples: a sqlite3.Row costs more per row read

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        self.raw.execute(self.dialect.sql(statement), params)
        if self._postgres and self.raw.description is None:
            return []  # psycopg refuses to fetch from a statement that returns no rows
        return self.raw.fetchall()

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.raw.executemany(self.dialect.sql(statement), rows)

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Inserts many new rows: by COPY on PostgreSQL, by one prepared statement on SQLite."""
        names = ", ".join(columns)
        if self._postgres:
            with self.raw.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            self.raw.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", rows)

    def upsert(
        self, table: str, columns: Sequence[str], key_columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Inserts `rows`, or updates the other columns of the row with the same key.

        PostgreSQL gets the rows by COPY into a temporary table and one INSERT ... SELECT, not a statement
        per row, each executed apart. SQLite runs in-process, where executemany is as quick.
        """
        if not rows:
            return
        names = ", ".join(columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key_columns)
        on_conflict = f" ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {updates}"
        if not self._postgres:
            values = ", ".join("?" * len(columns))
            self.raw.executemany(f"INSERT INTO {table} ({names}) VALUES ({values}){on_conflict}", rows)
            return
        self.raw.execute(f"CREATE TEMPORARY TABLE upserted (LIKE {table}) ON COMMIT DROP")
        with self.raw.copy(f"COPY upserted ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        self.raw.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM upserted{on_conflict}")
        self.raw.execute("DROP TABLE upserted")

    def lookup(
        self, table: str, columns: Sequence[str], key_columns: Sequence[str], keys: Iterable[Sequence[str]],
        where: str = "", order_by: str = "",
    ) -> Iterator[Any]:  # fmt: skip
        """The rows of `table` whose text key columns equal one of `keys`, a chunk of keys per query.

        The keys drive a join, so each is one index lookup; a row-value `IN (VALUES ...)` would make
        SQLite scan the whole table for every query. `where` and `order_by` refer to the table as `t`.
        """
        unique = list(set(map(tuple, keys)))
        selected = ", ".join(f"t.{c}" for c in columns)
        on = " AND ".join(f"t.{c} = k.c{i}" for i, c in enumerate(key_columns))
        tail = (f" WHERE {where}" if where else "") + (f" ORDER BY {order_by}" if order_by else "")
        for start in range(0, len(unique), KEYS_PER_QUERY):
            chunk = unique[start : start + KEYS_PER_QUERY]
            if self._postgres:  # one array per key column
                arrays = ", ".join(["%s::text[]"] * len(key_columns))
                names = ", ".join(f"c{i}" for i in range(len(key_columns)))
                source = f"unnest({arrays}) AS k({names})"
                params: list[Any] = [list(column) for column in zip(*chunk, strict=True)]
            else:  # CROSS JOIN keeps the keys as SQLite's outer loop
                row = "(" + ", ".join("?" * len(key_columns)) + ")"
                names = ", ".join(f"column{i + 1} AS c{i}" for i in range(len(key_columns)))
                source = f"(SELECT {names} FROM (VALUES {', '.join([row] * len(chunk))})) AS k"
                params = [value for key in chunk for value in key]
            join = "JOIN" if self._postgres else "CROSS JOIN"
            self.raw.execute(f"SELECT {selected} FROM {source} {join} {table} AS t ON {on}{tail}", params)
            yield from self.raw.fetchall()


def leave_wal(connection: sqlite3.Connection) -> bool:
    """Switches the views file to a rollback journal (durable: synchronous=FULL) and says whether it did.
    SQLite refuses while another connection has the file open; then it stays in WAL mode."""
    busy_timeout_ms = connection.execute("PRAGMA busy_timeout").fetchone()[0]
    connection.execute("PRAGMA busy_timeout=0")  # a refusal comes at once rather than after a wait
    try:
        rollback_journal = connection.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    except sqlite3.OperationalError:  # "database is locked": another connection has it open
        rollback_journal = False
    connection.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    connection.execute(f"PRAGMA synchronous={'FULL' if rollback_journal else 'NORMAL'}")
    return rollback_journal


def _moved_tables(ddl: Sequence[str]) -> list[str]:
    """Tables the DDL creates in an attached file. An older version kept them in the main file, where they
    would hide the attached ones from unqualified names; they are derived, so they are dropped there
    (and recomputed)."""
    return [m.group(2) for s in ddl if (m := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)", s))]


# Version 2: participants' tokens and names (`view_names`), erasures (`view_erasures`, view_tenants'
# erased_position). A version-1 database is upgraded by dropping every view and building it again from the log:
# views are derived, and version 1's were written from a store that held ids (DESIGN section 7).
# Version 3: the pairs' indexes by each direction's value (the graph's heaviest edges) and by last_at (upkeep's
# dormant ties), added to the rows as they are.
VIEWS_SCHEMA = SchemaPart("views", version=3, probe_table="view_participants")
ADDED_IN_VERSION_3 = ("view_pairs_forward", "view_pairs_backward", "view_pairs_last_overall")
_CREATED_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS ((?:\w+\.)?\w+)")


class ViewStore:
    """The views database and the library's tracking recorder on it."""

    def __init__(
        self, database_url: str | None, data_dir: Path, ddl: Sequence[str], reader_mmap_bytes: int = READER_MMAP_BYTES,
        limits: ConnectionLimits = DEFAULT_LIMITS, schema_mode: SchemaMode = SchemaMode.CREATE,
    ) -> None:  # fmt: skip
        self.dialect = dialect_of(database_url)
        self.postgres = self.dialect.postgres
        self.reader_mmap_bytes = reader_mmap_bytes
        self.limits = limits
        self._database_url = database_url or ""
        if database_url:
            datastore: Any = postgres_pool(database_url, limits)
            self.tracking: Any = PostgresTrackingRecorder(datastore)
            self.tracking_table = self.tracking.tracking_table_name
        else:
            private_directory(data_dir)
            self.path = data_dir / "views.sqlite3"
            for file_name in (self.path.name, *ATTACHED_FILES.values()):  # ATTACH would create a file 0644
                private_sqlite_file(data_dir / file_name)
            datastore = ViewsSQLiteDatastore(str(self.path), lock_timeout=limits.lock_timeout_s)
            self.tracking = SQLiteTrackingRecorder(datastore)
            self.tracking_table = "tracking"
        self.datastore = datastore
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._async_reader: psycopg.AsyncConnection[Any] | None = None
        self._async_reader_loop: asyncio.AbstractEventLoop | None = None
        self.schema_found = self._ensure_schema(ddl, schema_mode)

    def _ensure_schema(self, ddl: Sequence[str], mode: SchemaMode) -> int | None:
        """Creates or upgrades the views' tables as `mode` allows (ledger/schema.py); the version found before."""
        statements = [self._ddl(statement) for statement in (QUARANTINE_DDL, *ddl)]
        if not self.postgres:  # an unversioned file may hold tables in the main file that moved out of it
            statements[:0] = [f"DROP TABLE IF EXISTS main.{table}" for table in _moved_tables(ddl)]
        added_in_3 = [s for s in statements if any(f" {index} ON " in s for index in ADDED_IN_VERSION_3)]
        part = replace(VIEWS_SCHEMA, upgrades={2: [*self._dropped(statements), *statements], 3: added_in_3})
        return ensure_schema(
            part, mode, self.dialect, self.transaction, statements,
            database_url=self._database_url or None, limits=self.limits, library_tables=self.tracking.create_table,
        )  # fmt: skip

    def _dropped(self, statements: Sequence[str]) -> list[str]:
        """Every view table and the views' tracking rows, for an upgrade that builds the views again."""
        tables = [m.group(1) for statement in statements if (m := _CREATED_TABLE.match(statement))]
        return [*(f"DROP TABLE IF EXISTS {table}" for table in tables), f"DELETE FROM {self.tracking_table}"]

    def _ddl(self, statement: str) -> str:
        # PostgreSQL keeps every view in the store's schema: the attached files' schema names are SQLite's.
        return self.dialect.ddl(_ATTACHED_NAME.sub("", statement) if self.postgres else statement)

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[ViewCursor]:
        with self.datastore.transaction(commit=commit) as raw:
            yield ViewCursor(raw, self.dialect)

    @contextmanager
    def snapshot(self) -> Iterator[ViewCursor]:
        """A read-only transaction whose statements all see the same rows. SQLite's do; PostgreSQL's read
        committed would let a page committed between two statements show in the second only."""
        with self.transaction(commit=False) as cursor:
            if self.postgres:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield cursor

    def read(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """One statement's rows, on a plain connection of the calling thread in autocommit: a single
        statement is a consistent read of its own, and the pool's transaction around it (a BEGIN and a
        ROLLBACK, round trips on PostgreSQL) cost more than a point read. A broken connection is dropped
        and the next read opens another. On PostgreSQL at most `limits.readers_max` threads hold one; any other
        thread reads through the pool, so a process's connections stay bounded however many threads it runs."""
        reader = self._reader()
        if reader is None:
            with self.transaction(commit=False) as cursor:
                return cursor.execute(statement, params)
        try:
            if self.postgres:
                with reader.cursor() as cursor:
                    cursor.execute(self.dialect.sql(statement), params)
                    return cursor.fetchall() if cursor.description else []
            return reader.execute(statement, params).fetchall()
        except (sqlite3.OperationalError, psycopg.OperationalError):
            self._drop_reader(reader)
            raise

    async def read_async(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """`read` for the event loop on PostgreSQL, on a connection of the running loop rather than a worker
        thread (whose hand-offs, a future, a wake-up and the interpreter lock, cost more CPU than the round
        trip). Its statements run one at a time; a read that fails or is cancelled closes the connection,
        and the next read opens another."""
        loop = asyncio.get_running_loop()
        connection = self._async_reader if self._async_reader_loop is loop else None
        if connection is None:
            connection = await self._connect_async()
            self._async_reader, self._async_reader_loop = connection, loop
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(self.dialect.sql(statement), params)
                return await cursor.fetchall() if cursor.description else []
        except BaseException:
            if self._async_reader is connection:
                self._async_reader = None
            await connection.close()  # it never suspends: safe even while being cancelled
            raise

    def async_reader_pid(self) -> int | None:
        """The PostgreSQL backend pid of `read_async`'s connection, None until it has one: which session to
        look for (or end) among the server's."""
        return self._async_reader.info.backend_pid if self._async_reader is not None else None

    async def _connect_async(self) -> psycopg.AsyncConnection[Any]:
        return await postgres_connect_async(self._database_url, self.limits, row_factory=tuple_row)

    async def aclose(self) -> None:
        """Closes the event loop's connection (`read_async`), then everything else."""
        if self._async_reader is not None:
            await self._async_reader.close()
            self._async_reader = None
        self.close()

    def _reader(self) -> Any:
        connection = getattr(self._readers, "connection", None)
        if connection is None:
            if self.postgres:
                with self._readers_lock:  # counted and made under the lock: two threads never both pass the bound
                    if len(self._reader_connections) >= self.limits.readers_max:
                        return None
                    connection = postgres_connect(self._database_url, self.limits)
                    self._reader_connections.append(connection)
            else:
                connection = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=self.limits.lock_timeout_s
                )
                secure_delete(connection)  # (a reader deletes nothing; set on every connection all the same)
                connection.execute("PRAGMA query_only=ON")
                connection.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
                mmap = f"mmap_size={self.reader_mmap_bytes}"
                connection.execute(f"PRAGMA {mmap}")
                attach_files(connection, self.path, f"cache_size=-{READER_CACHE_KIB}", mmap)
                with self._readers_lock:
                    self._reader_connections.append(connection)
            self._readers.connection = connection
        return connection

    def _drop_reader(self, connection: Any) -> None:
        self._readers.connection = None
        with self._readers_lock:
            if connection in self._reader_connections:
                self._reader_connections.remove(connection)
        with contextlib.suppress(Exception):
            connection.close()

    def position(self, view: str) -> int:
        """The last log position this view reflects (0 before its first page)."""
        found = self.read(f"SELECT MAX(notification_id) FROM {self.tracking_table} WHERE application_name = ?", (view,))
        return found[0][0] or 0

    def record_position(self, cursor: ViewCursor, view: str, position: int) -> None:
        """Advances the view's tracking row inside the view's own transaction (the library refuses a
        position that does not advance, so two projectors can never both apply one page)."""
        self.tracking._insert_tracking(cursor.raw, Tracking(view, position))

    def analyze(self, tables: Sequence[str]) -> None:
        """Fresh planner statistics on PostgreSQL (SQLite plans by its indexes alone). A view built from
        empty outgrows the statistics it was planned with long before autovacuum looks, and its lookups
        would go on scanning tables the planner still believes are tiny."""
        if self.postgres:
            with self.transaction() as cursor:
                cursor.execute(f"ANALYZE {', '.join(tables)}")

    def reset(self, view: str, tables: Sequence[str]) -> None:
        """Empties a view, its tracking and its quarantine, for a rebuild from position 0."""
        with self.transaction() as cursor:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")
            cursor.execute(f"DELETE FROM {self.tracking_table} WHERE application_name = ?", (view,))
            cursor.execute("DELETE FROM view_quarantine WHERE view_name = ?", (view,))

    @contextmanager
    def bulk_transaction(self, attach: dict[str, Path] | None = None) -> Iterator[ViewCursor]:
        """The one transaction in which `reciprocity rebuild` writes the reciprocity views from empty.

        On SQLite it runs with a rollback journal instead of the WAL when no other connection has the file
        open: pages of tables built from empty go to the file once, where the WAL takes every page and its
        checkpoint copies each again (a share of the rebuild's time that grows with the views). The
        store's own connections close for it and reopen when next needed; the file is in WAL mode again
        afterwards (or, after a crash, as soon as a connection opens it). With another connection open the
        transaction goes through the WAL like any other. `attach` names other SQLite files to read from in it.
        """
        if self.postgres:
            with self.transaction() as cursor:
                yield cursor
            return
        self._close_readers()
        self.datastore.renew_pool()
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.limits.lock_timeout_s
        )
        rollback_journal = False
        try:
            secure_delete(connection)
            rollback_journal = leave_wal(connection)
            connection.execute(f"PRAGMA cache_size=-{VIEWS_CACHE_KIB}")
            connection.execute("PRAGMA temp_store=MEMORY")
            for schema, path in (attach or {}).items():
                connection.execute(f"ATTACH DATABASE ? AS {schema}", (str(path),))
            # Deferred: IMMEDIATE would take the write lock of every attached file too (the fact store's,
            # holding up ingest for the whole rebuild); this way only the views file's is taken, at the first
            # write, and an attached file is only read.
            connection.execute("BEGIN")
            try:
                yield ViewCursor(SQLiteCursor(connection.cursor()), SQLITE)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        finally:
            if rollback_journal:
                connection.execute("PRAGMA journal_mode=WAL")
            connection.close()

    def _close_readers(self) -> None:
        with self._readers_lock:
            for connection in self._reader_connections:
                connection.close()
            self._reader_connections.clear()
        self._readers = threading.local()

    def close(self) -> None:
        self._close_readers()
        self.datastore.close()
