"""A small synchronous SQL helper for our own ordinary tables (registry, views), on SQLite or PostgreSQL.

The fact log itself is the eventsourcing library's; this is only for tables beside it. SQL is written
with `?` placeholders, which the dialect translates (ledger/dialect.py).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from ledger.connections import DEFAULT_LIMITS, ConnectionLimits, postgres_connect, private_directory, sqlite_connect
from ledger.dialect import Dialect, dialect_of
from ledger.schema import SchemaMode, SchemaPart, ensure_schema


class Database:
    """One connection, used by one thread at a time, with transactions that commit durably."""

    dialect: Dialect

    def __init__(self, database_url: str | None, sqlite_path: Path, limits: ConnectionLimits = DEFAULT_LIMITS) -> None:
        self._lock = threading.RLock()
        self._database_url = database_url
        self._sqlite_path = sqlite_path
        self._limits = limits
        self.dialect = dialect_of(database_url)
        self._connection: Any = None

    def _connect(self) -> Any:
        if self._database_url is None:
            private_directory(self._sqlite_path.parent)
            return sqlite_connect(self._sqlite_path, self._limits)  # which creates or tightens the file 0600
        return postgres_connect(self._database_url, self._limits)

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A write transaction; SQLite takes the write lock at once so readers never deadlock upgrading."""
        with self._lock:
            connection = self._ensure()
            try:
                connection.execute(self.dialect.begin_write)
                yield Cursor(self, connection)
                connection.execute("COMMIT")
            except BaseException:
                self._rollback(connection)
                raise

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._ensure().execute(self.dialect.sql(statement), params).fetchall()

    def ensure_schema(self, part: SchemaPart, statements: Sequence[str], mode: SchemaMode) -> int | None:
        """Creates or upgrades the part's tables as `mode` allows (ledger/schema.py)."""
        return ensure_schema(
            part, mode, self.dialect, self.transaction, statements, database_url=self._database_url, limits=self._limits
        )

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _ensure(self) -> Any:
        if self._connection is None or getattr(self._connection, "closed", False):
            self._connection = self._connect()
        return self._connection

    def _rollback(self, connection: Any) -> None:
        try:
            connection.execute("ROLLBACK")
        except (sqlite3.Error, psycopg.Error):
            self.close()  # a broken connection is replaced on next use


class Cursor:
    def __init__(self, database: Database, connection: Any) -> None:
        self._database = database
        self._connection = connection

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._connection.execute(self._database.dialect.sql(statement), params)
        return cursor.fetchall() if cursor.description else []

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        sql = self._database.dialect.sql(statement)
        if not self._database.dialect.postgres:
            self._connection.executemany(sql, rows)
        else:  # a psycopg connection has no executemany of its own
            with self._connection.cursor() as cursor:
                cursor.executemany(sql, rows)
