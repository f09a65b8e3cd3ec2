"""The locks processes of one store take against each other: the schema lock, held while tables are
created, and a worker lock per singular job (projecting, relaying), held by the one process doing it.

On PostgreSQL both are advisory locks, each on a session of its own, keyed by the store's schema: stores in
other schemas never wait for them. On SQLite, whose files are on one machine, a worker lock is a file lock
in the data directory, and table creation needs none (SQLite serialises it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

from ledger.connections import DEFAULT_LIMITS, ConnectionLimits, postgres_connect, postgres_params

# Advisory lock keys are a base plus a checksum of the name; processes of every version must agree on them.
SCHEMA_LOCK_KEY_BASE = 0x7265_6369_7072_0000  # "recipr", plus a checksum of the schema
WORKER_LOCK_KEY_BASE = 0x7265_6369_7000  # plus a checksum of schema and job: one holder per store and job
WORKER_LOCK_RETRY_S = 0.2


def advisory_key(base: int, name: str) -> int:
    return base + zlib.crc32(name.encode())


@contextmanager
def schema_lock(database_url: str | None, limits: ConnectionLimits = DEFAULT_LIMITS) -> Iterator[None]:
    """Serialises table creation across processes on PostgreSQL, and creates the URL's schema.

    PostgreSQL refuses concurrent DDL on the same objects ("tuple concurrently updated"), and several pods
    or processes may start at the same moment. It waits without limit: a store whose tables are busy (say,
    behind a long rebuild) starts once they are free.
    """
    if not database_url:
        yield
        return
    schema = postgres_params(database_url)["schema"]
    with postgres_connect(database_url, limits) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (advisory_key(SCHEMA_LOCK_KEY_BASE, schema),))
        conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(SCHEMA_LOCK_KEY_BASE, schema),))


class WorkerLock:
    """Held by the one process that does a singular job (projecting, relaying) for one store; others stand
    by. `reciprocity rebuild` takes the projector's."""

    def __init__(
        self, database_url: str | None, data_dir: Path, name: str = "projector",
        limits: ConnectionLimits = DEFAULT_LIMITS,
    ) -> None:  # fmt: skip
        self._database_url = database_url
        self._name = name
        self._path = data_dir / f"{name}.lock"
        self._limits = limits
        self._held: Any = None  # the session (PostgreSQL) or the open file (SQLite) that holds the lock

    @property
    def held(self) -> bool:
        """Whether this process took the lock and has not seen it lost (`still_held` asks the server)."""
        return self._held is not None

    def try_acquire(self) -> bool:
        """Takes the lock if it is free (or already ours), without waiting."""
        if self._held is None:
            self._held = self._try_postgres() if self._database_url else self._try_file()
        return self._held is not None

    def acquire(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.try_acquire():
            if time.monotonic() > deadline:
                return False
            time.sleep(WORKER_LOCK_RETRY_S)
        return True

    def still_held(self) -> bool:
        """Whether the lock is still ours. A PostgreSQL advisory lock lives as long as the session that took
        it: when that connection dies (a restarted server, a dropped network) the lock is gone and another
        process may take it, so the holder must notice and stop. A file lock lasts until released."""
        if self._held is None:
            return False
        if not self._database_url:
            return True
        try:
            self._held.execute("SELECT 1")
            return True
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                self._held.close()
            self._held = None
            return False

    def session_pid(self) -> int | None:
        """The PostgreSQL backend pid of the session holding the lock (None if not held, or on SQLite): the
        session an operator sees in pg_locks, and whose end lets another process take the lock."""
        return self._held.info.backend_pid if self._database_url and self._held is not None else None

    def release(self) -> None:
        if self._held is not None:
            self._held.close()  # closing the session or the file releases the lock
            self._held = None

    def _try_postgres(self) -> psycopg.Connection[Any] | None:
        assert self._database_url
        conn = postgres_connect(self._database_url, self._limits)
        schema = postgres_params(self._database_url)["schema"]
        key = advisory_key(WORKER_LOCK_KEY_BASE, f"{schema}/{self._name}")
        try:
            if conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                return conn
        except BaseException:
            conn.close()  # a standby retries for as long as it runs: each failed attempt must not keep a session
            raise
        conn.close()
        return None

    def _try_file(self) -> Any:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Held open for as long as the job runs; 0600 like every file of the data directory.
        handle = open(self._path, "a+", opener=lambda path, flags: os.open(path, flags, 0o600))  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle
