"""A small synchronous SQL helper for our own ordinary tables (registry, views), on SQLite or PostgreSQL.

The fact log itself is the eventsourcing library's; this is only for tables beside it. SQL is written
with `?` placeholders and translated for psycopg; statements here never contain a literal `?`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

from ledger.store import postgres_connect, postgres_params, private_directory, schema_lock, sqlite_connect


class Database:
    """One connection, used by one thread at a time, with transactions that commit durably."""

    dialect: str

    def __init__(self, database_url: str | None, sqlite_path: Path) -> None:
        self._lock = threading.RLock()
        self._database_url = database_url
        self._sqlite_path = sqlite_path
        self.dialect = "postgresql" if database_url else "sqlite"
        self._connection: Any = None

    def _connect(self) -> Any:
        if self._database_url is None:
            private_directory(self._sqlite_path.parent)
            return sqlite_connect(self._sqlite_path)  # which creates or tightens the file 0600
        connection = postgres_connect(self._database_url)
        schema = postgres_params(self._database_url)["schema"]
        connection.execute(SQL("SET search_path TO {}").format(Identifier(schema)))
        return connection

    def _sql(self, statement: str) -> str:
        return statement if self.dialect == "sqlite" else statement.replace("?", "%s")

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A write transaction; SQLite takes the write lock at once so readers never deadlock upgrading."""
        with self._lock:
            connection = self._ensure()
            try:
                connection.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
                yield Cursor(self, connection)
                connection.execute("COMMIT")
            except BaseException:
                self._rollback(connection)
                raise

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._ensure().execute(self._sql(statement), params).fetchall()

    def create(self, statements: Sequence[str]) -> None:
        """Creates tables (and the schema) if missing; safe when several processes start at once."""
        with schema_lock(self._database_url), self.transaction() as cursor:
            for statement in statements:
                cursor.execute(statement)

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
        cursor = self._connection.execute(self._database._sql(statement), params)
        return cursor.fetchall() if cursor.description else []

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        sql = self._database._sql(statement)
        if self._database.dialect == "sqlite":
            self._connection.executemany(sql, rows)
        else:
            with self._connection.cursor() as cursor:
                cursor.executemany(sql, rows)
