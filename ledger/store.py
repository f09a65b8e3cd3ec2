"""Where facts are stored: the eventsourcing library's application and recorders, plus a tenant index.

The library's `stored_events` table is the append-only store; its notification id is a fact's position.
Each recorder here adds one small table, `fact_index (tenant, position)`, written in the same transaction
as the events, so one tenant's log can be read in order without scanning everybody else's facts.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import orjson
from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteFactory
from eventsourcing.utils import Environment
from psycopg.sql import SQL, Identifier

from contracts.webhook_bodies import FactType
from ledger.connections import (
    DEFAULT_LIMITS,
    ConnectionLimits,
    DurableSQLiteDatastore,
    postgres_pool_args,
    private_directory,
    private_sqlite_file,
)
from ledger.facts import FACT_TOPICS, STORED_TOPICS, Fact, fact_from_json
from ledger.schema import SchemaMode, SchemaPart, ensure_schema
from ledger.sql import Database

LEDGER_FILE = "ledger.sqlite3"
# The library's tables and our fact index, all created by the recorder (`construct_create_table_statements`).
STORE_SCHEMA_VERSION = 1
IN_CLAUSE_IDS_MAX = 500  # stay far below SQLite's bound-parameter limit
AGGREGATE_CACHE_MAX = 10_000


class StoredFact(NamedTuple):
    """A fact as read back from the store: its place in the global order, the fact itself, and the JSON the
    store holds (which the log and the stream show as it is, without encoding the record again)."""

    position: int
    fact: Fact
    stored_json: dict[str, Any] | None = None

    def as_logged(self) -> dict[str, Any]:
        """The fact as the log shows it: the stored JSON and its position."""
        logged = self.fact.to_json() if self.stored_json is None else dict(self.stored_json)
        logged["position"] = self.position
        return logged


def stored_facts(rows: Iterable[tuple[int, bytes]]) -> list[StoredFact]:
    """A page of stored facts, decoded with the cyclic garbage collector paused: a page makes thousands of
    objects that all live on (none is garbage), and with the aggregate cache alive every collection it would
    trigger walks tens of thousands; one collection after the page, if due, costs less than a dozen during it."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return [stored_fact(position, state) for position, state in rows]
    finally:
        if collecting:
            gc.enable()


def stored_fact(position: int, state: bytes) -> StoredFact:
    """The fact inside a stored `Recorded` event (its other attributes are the library's), decoded once."""
    stored = orjson.loads(state)["fact"]
    return StoredFact(position, fact_from_json(stored), stored)


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
                    found[UUID(row[1])] = stored_fact(row[0], row[2])
        return found

    def select_tenant_facts(self, tenant: str, after: int, limit: int) -> list[StoredFact]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT s.rowid, s.state FROM fact_index f JOIN stored_events s ON s.rowid = f.position "
                "WHERE f.tenant = ? AND f.position > ? ORDER BY f.position LIMIT ?",
                (tenant, after, limit),
            )
            return stored_facts(c.fetchall())

    def select_log(self, after: int, limit: int, topics: Sequence[str] = FACT_TOPICS) -> list[StoredFact]:
        """The library's `select_notifications(topics=FACT_TOPICS)`, without its notification objects, whose
        UUIDs and dataclasses are much of the cost of reading the log."""
        statement = (
            f"SELECT rowid, state FROM {self.events_table_name} WHERE rowid > ? "
            f"AND topic IN ({', '.join('?' * len(topics))}) ORDER BY rowid LIMIT ?"
        )
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, (after, *topics, limit))
            return stored_facts(c.fetchall())

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
            return {row["originator_id"]: stored_fact(row["notification_id"], row["state"]) for row in curs.fetchall()}

    def select_tenant_facts(self, tenant: str, after: int, limit: int) -> list[StoredFact]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.select_tenant_facts_statement, (tenant, after, limit), prepare=True)
            return stored_facts((row["notification_id"], row["state"]) for row in curs.fetchall())

    def select_log(self, after: int, limit: int, topics: Sequence[str] = FACT_TOPICS) -> list[StoredFact]:
        notifications = self.select_notifications(start=after, limit=limit, topics=topics, inclusive_of_start=False)
        return stored_facts((n.id, n.state) for n in notifications)

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
    schema_found: int | None = None  # the store's schema version before this process opened it

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
        topics = FACT_TOPICS if kinds is None else tuple(t for kind in kinds for t in STORED_TOPICS[kind])
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


def ledger_env(database_url: str | None, data_dir: Path, limits: ConnectionLimits = DEFAULT_LIMITS) -> dict[str, str]:
    """The library's environment for our store: SQLite under the data dir, or PostgreSQL by URL."""
    common = {"AGGREGATE_CACHE_MAXSIZE": str(AGGREGATE_CACHE_MAX)}
    if not database_url:
        return {
            **common,
            "PERSISTENCE_MODULE": f"{__name__}:LedgerSQLiteFactory",
            "SQLITE_DBNAME": str(data_dir / LEDGER_FILE),
            "SQLITE_LOCK_TIMEOUT": str(limits.whole_lock_timeout_s),
        }
    return {
        **common,
        "PERSISTENCE_MODULE": f"{__name__}:LedgerPostgresFactory",
        **{f"POSTGRES_{name.upper()}": str(value) for name, value in postgres_pool_args(database_url, limits).items()},
    }


def open_ledger(
    database_url: str | None, data_dir: Path, limits: ConnectionLimits = DEFAULT_LIMITS,
    schema_mode: SchemaMode = SchemaMode.CREATE,
) -> Ledger:  # fmt: skip
    """The store; its tables (and the PostgreSQL schema the URL names) are created or upgraded as
    `schema_mode` allows (ledger/schema.py)."""
    if not database_url:
        private_directory(data_dir)
        private_sqlite_file(data_dir / LEDGER_FILE)
    ledger = Ledger(env={**ledger_env(database_url, data_dir, limits), "CREATE_TABLE": "false"})
    database = Database(database_url, data_dir / LEDGER_FILE, limits)
    try:
        part = SchemaPart("store", STORE_SCHEMA_VERSION, probe_table=ledger.recorder.events_table_name)
        ledger.schema_found = ensure_schema(
            part, schema_mode, database.dialect, database.transaction, (),
            database_url=database_url, limits=limits, library_tables=ledger.recorder.create_table,
        )  # fmt: skip
    except BaseException:
        ledger.close()
        raise
    finally:
        database.close()
    return ledger
