"""Where facts are stored: the eventsourcing library's application and recorders, plus a tenant index.

The library's `stored_events` table is the append-only store; its notification id is a fact's position.
Each recorder here adds one small table, `fact_index (tenant, position)`, written in the same transaction
as the events, so one tenant's log can be read in order without scanning everybody else's facts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import orjson
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteFactory
from eventsourcing.utils import Environment
from psycopg.sql import SQL, Identifier, Literal

from contracts.webhook_bodies import FactType
from ledger.collector import collector_paused
from ledger.connections import (
    DEFAULT_LIMITS,
    ConnectionLimits,
    DurableSQLiteDatastore,
    open_filled,
    postgres_pool_args,
    private_directory,
    private_sqlite_file,
)
from ledger.facts import FACT_TOPICS, STORED_TOPICS, Fact, concerned_tokens, fact_from_json
from ledger.participants import KeyRow, ParticipantKey, ParticipantNames, revealed_data
from ledger.schema import SchemaMode, SchemaPart, ensure_schema
from ledger.sql import Database

LEDGER_FILE = "ledger.sqlite3"
# The library's tables, our fact index and the participants' key table, all created by the recorder
# (`construct_create_table_statements`). Version 2 stores tokens instead of ids (DESIGN section 7); a store
# of version 1 holds ids in its events, and is refused rather than converted.
STORE_SCHEMA_VERSION = 2
STORE_OLDEST_READABLE = 2
ERASURE_TOPICS = STORED_TOPICS[FactType.ERASURE]  # (current, former): two names for one kind of event
IN_CLAUSE_IDS_MAX = 500  # stay far below SQLite's bound-parameter limit
AGGREGATE_CACHE_MAX = 10_000


class StoredFact(NamedTuple):
    """A fact as read back from the store: its place in the global order, the fact itself, and the JSON the
    store holds (which the log and the stream show as it is, without encoding the record again)."""

    position: int
    fact: Fact
    stored_json: dict[str, Any] | None = None

    @property
    def participants(self) -> tuple[str, ...]:
        """The tokens of everyone the fact concerns: whom it names, and for an acknowledgement or reversal
        also whom the fact it refers to concerns."""
        if self.stored_json is None:
            return ()
        return concerned_tokens(self.stored_json.get("participants"), self.fact)

    def as_logged(self, names: ParticipantNames) -> dict[str, Any]:
        """The fact as the log shows it, with its position: ids (or tombstones) for tokens, the note opened
        (or left out when anyone it concerns was erased)."""
        stored = self.fact.to_json() if self.stored_json is None else self.stored_json
        logged = dict(stored)
        logged.pop("participants", None)
        logged["data"] = revealed_data(stored["data"], self.participants, stored["event_id"], names)
        logged["position"] = self.position
        return logged


def stored_facts(rows: Iterable[tuple[int, bytes]]) -> list[StoredFact]:
    """A page of stored facts, decoded with the cyclic garbage collector paused: a page makes thousands of
    objects that all live on (none is garbage), and with the aggregate cache alive every collection it would
    trigger walks tens of thousands; one collection after the page, if due, costs less than a dozen during it."""
    with collector_paused():
        return [stored_fact(position, state) for position, state in rows]


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


class KeyTableChanged(IntegrityError):
    """A participant this transaction names was erased meanwhile, or erased twice: re-plan."""


# The key table (DESIGN section 7). A row is deleted when its participant is erased; nothing else changes it.
# Facts are not indexed by token: such an index costs every ingest transaction a page per person it names
# (tokens are random), while only an export or an erasure asks, and a scan of one tenant's facts serves them.
PARTICIPANT_KEYS_DDL = (
    "CREATE TABLE IF NOT EXISTS participant_keys (token TEXT PRIMARY KEY, tenant TEXT NOT NULL,"
    " digest TEXT NOT NULL, data_key BLOB NOT NULL, sealed_id BLOB NOT NULL, UNIQUE (tenant, digest))"
)


# Erasures whose earlier stream messages the relay has still to delete: written with the erasure, deleted by the
# relay when it is done, so a relay that dies midway leaves the rest to the next one.
STREAM_ERASURES_DDL = (
    "CREATE TABLE IF NOT EXISTS stream_erasures (position INTEGER PRIMARY KEY, tenant TEXT NOT NULL,"
    " token TEXT NOT NULL)"
)


def _stream_erasures(
    stored_events: Sequence[StoredEvent], positions: Sequence[int], kwargs: dict[str, Any]
) -> list[tuple[int, str, str]]:
    tokens = kwargs.get("erased_tokens") or ()
    if not tokens:
        return []
    tenant = _fact_tenants(kwargs)[stored_events[-1].originator_id]
    return [(positions[-1], tenant, token) for token in tokens]


def concerning(token: str, facts: Iterable[StoredFact]) -> list[StoredFact]:
    """The facts that concern this token (the scan's byte match may also meet it as some other string)."""
    return [stored for stored in facts if token in stored.participants]


# --- SQLite -------------------------------------------------------------------------------------------


class LedgerSQLiteRecorder(SQLiteApplicationRecorder):
    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS fact_index (position INTEGER PRIMARY KEY, tenant TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS fact_index_by_tenant ON fact_index (tenant, position)",
            PARTICIPANT_KEYS_DDL,
            STREAM_ERASURES_DDL,
        ]

    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        # Inside the write transaction: SQLite lets one writer at a time through, so no erasure can be stored
        # between the check below and this commit.
        positions = super()._insert_events(c, stored_events, **kwargs)
        rows = _index_rows(stored_events, positions, _fact_tenants(kwargs))
        c.executemany("INSERT INTO fact_index (tenant, position) VALUES (?, ?)", rows)
        new_keys: Sequence[KeyRow] = kwargs.get("new_participants") or ()
        c.executemany(
            "INSERT INTO participant_keys (tenant, token, digest, data_key, sealed_id) VALUES (?, ?, ?, ?, ?)",
            new_keys,
        )
        if (read_at := kwargs.get("no_erasure_after")) is not None:
            c.execute(
                f"SELECT EXISTS (SELECT 1 FROM {self.events_table_name} WHERE rowid > ? AND topic IN (?, ?))",
                (read_at, *ERASURE_TOPICS),
            )
            if c.fetchone()[0]:
                raise KeyTableChanged("a participant was erased after this transaction read their key")
        for token in kwargs.get("erased_tokens") or ():
            c.execute("DELETE FROM participant_keys WHERE token = ? RETURNING token", (token,))
            if not c.fetchall():
                raise KeyTableChanged(f"participant {token} was erased meanwhile")
        c.executemany(
            "INSERT INTO stream_erasures (position, tenant, token) VALUES (?, ?, ?)",
            _stream_erasures(stored_events, positions, kwargs),
        )
        return positions

    def select_stream_erasures(self, upto: int) -> list[tuple[int, str, str]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT position, tenant, token FROM stream_erasures WHERE position <= ? ORDER BY 1", (upto,))
            return [tuple(row) for row in c.fetchall()]

    def delete_stream_erasure(self, position: int) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM stream_erasures WHERE position = ?", (position,))

    def select_participant_keys(self, tenant: str, digests: Sequence[str]) -> dict[str, ParticipantKey]:
        found: dict[str, ParticipantKey] = {}
        for start in range(0, len(digests), IN_CLAUSE_IDS_MAX):
            chunk = list(digests[start : start + IN_CLAUSE_IDS_MAX])
            with self.datastore.transaction(commit=False) as c:
                c.execute(
                    "SELECT digest, token, data_key FROM participant_keys "
                    f"WHERE tenant = ? AND digest IN ({','.join('?' * len(chunk))})",
                    (tenant, *chunk),
                )
                found.update((row[0], ParticipantKey(row[1], bytes(row[2]))) for row in c.fetchall())
        return found

    def select_key_rows(self, tokens: Sequence[str] | None) -> list[tuple[str, str, bytes, bytes]]:
        """(tenant, token, data_key, sealed_id) of these tokens that are not erased (of every one: None)."""
        select = "SELECT tenant, token, data_key, sealed_id FROM participant_keys"
        with self.datastore.transaction(commit=False) as c:
            if tokens is None:
                c.execute(select)
                return c.fetchall()
            rows = []
            for start in range(0, len(tokens), IN_CLAUSE_IDS_MAX):
                chunk = list(tokens[start : start + IN_CLAUSE_IDS_MAX])
                c.execute(f"{select} WHERE token IN ({','.join('?' * len(chunk))})", chunk)
                rows.extend(c.fetchall())
            return rows

    def select_participant_facts(self, tenant: str, token: str) -> list[StoredFact]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT s.rowid, s.state FROM fact_index f JOIN stored_events s ON s.rowid = f.position "
                "WHERE f.tenant = ? AND instr(s.state, ?) > 0 ORDER BY f.position",
                (tenant, f'"{token}"'.encode()),
            )
            return concerning(token, stored_facts(c.fetchall()))

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
        # The library's insert, with the events sent in binary: in text, psycopg escapes every field of every
        # event with regular expressions, a fifth of the writer's time on PostgreSQL (docs/performance.md).
        self.insert_events_statement = SQL(
            "INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state) "
            "SELECT originator_id, originator_version, topic, state FROM unnest(%b::{schema}.{stored_event_type}[]) "
            "RETURNING notification_id"
        ).format(
            schema=schema,
            table=Identifier(self.events_table_name),
            stored_event_type=Identifier(self.stored_event_type_name),
        )
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
        for ddl in (PARTICIPANT_KEYS_DDL, STREAM_ERASURES_DDL):
            qualified = ddl.replace("BLOB", "bytea").replace("INTEGER", "bigint").replace("EXISTS ", "EXISTS {schema}.")
            self.sql_create_statements.append(SQL(qualified).format(schema=schema))  # type: ignore[arg-type]
        self.insert_stream_erasure_statement = SQL(
            "INSERT INTO {schema}.stream_erasures (position, tenant, token) VALUES (%s, %s, %s)"
        ).format(schema=schema)
        self.select_stream_erasures_statement = SQL(
            "SELECT position, tenant, token FROM {schema}.stream_erasures WHERE position <= %s ORDER BY 1"
        ).format(schema=schema)
        self.delete_stream_erasure_statement = SQL("DELETE FROM {schema}.stream_erasures WHERE position = %s").format(
            schema=schema
        )
        self.erasure_after_statement = SQL(
            "SELECT EXISTS (SELECT 1 FROM {schema}.{table} WHERE notification_id > %s AND topic = ANY(%s)) AS found"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        self.insert_key_statement = SQL(
            "INSERT INTO {schema}.participant_keys (tenant, token, digest, data_key, sealed_id) "
            "VALUES (%s, %s, %s, %s, %s)"
        ).format(schema=schema)
        self.delete_key_statement = SQL(
            "DELETE FROM {schema}.participant_keys WHERE token = %s RETURNING token"
        ).format(schema=schema)
        self.select_keys_by_digest_statement = SQL(
            "SELECT digest, token, data_key FROM {schema}.participant_keys WHERE tenant = %s AND digest = ANY(%s)"
        ).format(schema=schema)
        self.select_key_rows_statement = SQL(
            "SELECT tenant, token, data_key, sealed_id FROM {schema}.participant_keys WHERE token = ANY(%s)"
        ).format(schema=schema)
        self.select_all_key_rows_statement = SQL(
            "SELECT tenant, token, data_key, sealed_id FROM {schema}.participant_keys"
        ).format(schema=schema)
        self.select_participant_facts_statement = SQL(
            "SELECT e.notification_id, e.state FROM {schema}.fact_index f "
            "JOIN {schema}.{table} e ON e.notification_id = f.position "
            "WHERE f.tenant = %s AND position(%s::bytea IN e.state) > 0 ORDER BY f.position"
        ).format(schema=schema, table=Identifier(self.events_table_name))
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
        # An erasure is stored in a transaction like this one, under the same table lock: none can be stored
        # between the check below and this commit, and positions follow commit order.
        new_keys: Sequence[KeyRow] = kwargs.get("new_participants") or ()
        if new_keys:
            curs.executemany(self.insert_key_statement, new_keys)
        if (read_at := kwargs.get("no_erasure_after")) is not None:
            # A cursor of its own: in the library's pipeline, this one's results still hold the inserts'.
            with curs.connection.cursor() as check:
                check.execute(self.erasure_after_statement, (read_at, list(ERASURE_TOPICS)))
                if check.fetchone()["found"]:
                    _abort(check, "a participant was erased after this transaction read their key")
        for token in kwargs.get("erased_tokens") or ():
            with curs.connection.cursor() as delete:  # in the library's pipeline: no rowcount, a result
                delete.execute(self.delete_key_statement, (token,))
                if not delete.fetchall():
                    _abort(delete, f"participant {token} was erased meanwhile")
        if erasures := _stream_erasures(stored_events, positions, kwargs):
            curs.executemany(self.insert_stream_erasure_statement, erasures)
        return positions

    def select_stream_erasures(self, upto: int) -> list[tuple[int, str, str]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.select_stream_erasures_statement, (upto,))
            return [(row["position"], row["tenant"], row["token"]) for row in curs.fetchall()]

    def delete_stream_erasure(self, position: int) -> None:
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            curs.execute(self.delete_stream_erasure_statement, (position,))

    def select_participant_keys(self, tenant: str, digests: Sequence[str]) -> dict[str, ParticipantKey]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.select_keys_by_digest_statement, (tenant, list(digests)), prepare=True)
            return {row["digest"]: ParticipantKey(row["token"], bytes(row["data_key"])) for row in curs.fetchall()}

    def select_key_rows(self, tokens: Sequence[str] | None) -> list[tuple[str, str, bytes, bytes]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            if tokens is None:
                curs.execute(self.select_all_key_rows_statement)
            else:
                curs.execute(self.select_key_rows_statement, (list(tokens),), prepare=True)
            return [(r["tenant"], r["token"], bytes(r["data_key"]), bytes(r["sealed_id"])) for r in curs.fetchall()]

    def select_participant_facts(self, tenant: str, token: str) -> list[StoredFact]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.select_participant_facts_statement, (tenant, f'"{token}"'.encode()))
            return concerning(token, stored_facts((row["notification_id"], row["state"]) for row in curs.fetchall()))

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


def _abort(curs: Any, message: str) -> None:
    """Fails the transaction in the database: the library catches an exception raised in its insert hook and
    re-raises it only after its transaction block has exited, which would commit what the hook refused."""
    curs.execute(
        SQL("DO $$ BEGIN RAISE EXCEPTION {} USING ERRCODE = 'unique_violation'; END $$").format(Literal(message))
    )
    raise KeyTableChanged(message)


class LedgerPostgresFactory(PostgresFactory):
    application_recorder_class = LedgerPostgresRecorder

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        open_filled(
            self.datastore.pool, float(env.get(self.POSTGRES_CONNECT_TIMEOUT) or DEFAULT_LIMITS.connect_timeout_s)
        )


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
    def commit_channel(self) -> str | None:
        """The PostgreSQL channel the store NOTIFYs in each insert (the library names it after the events
        table), which followers in other processes LISTEN on; None on SQLite."""
        return getattr(self.recorder, "channel_name", None)

    # --- participants (ledger/participants.py) ---

    def participant_keys(self, tenant: str, digests: Sequence[str]) -> dict[str, ParticipantKey]:
        """The live participants among these id digests, by digest."""
        return self.recorder.select_participant_keys(tenant, digests) if digests else {}

    def names(self, tokens: Iterable[str] | None = None) -> ParticipantNames:
        """What these tokens show as (every live participant's: None), each id decrypted once."""
        wanted = None if tokens is None else sorted(set(tokens))
        if wanted == []:
            return ParticipantNames({}, {})
        return ParticipantNames.from_rows(self.recorder.select_key_rows(wanted))

    def names_of(self, facts: Iterable[StoredFact]) -> ParticipantNames:
        """What the tokens of these stored facts show as: one lookup for a page."""
        return self.names(token for stored in facts for token in stored.participants)

    def logged(self, facts: Sequence[StoredFact]) -> list[dict[str, Any]]:
        """A page of facts as the log shows them."""
        names = self.names_of(facts)
        return [stored.as_logged(names) for stored in facts]

    def participant_facts(self, tenant: str, token: str) -> list[StoredFact]:
        """Every fact of the tenant that concerns this token, in position order: whom it names, and for an
        acknowledgement or reversal whom the fact it refers to concerns (a scan of the tenant's facts)."""
        return self.recorder.select_participant_facts(tenant, token)

    def pending_stream_erasures(self, upto: int) -> list[tuple[int, str, str]]:
        """(position, tenant, token) of the erasures up to this position whose stream messages are still to be
        deleted, in position order."""
        return self.recorder.select_stream_erasures(upto)

    def stream_erasure_done(self, position: int) -> None:
        self.recorder.delete_stream_erasure(position)

    def participant_positions(self, tenant: str, token: str, before: int) -> list[int]:
        """The positions of the facts before `before` that concern this token, in order: what an erasure at
        `before` deletes from the stream."""
        return [stored.position for stored in self.participant_facts(tenant, token) if stored.position < before]

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
        part = SchemaPart(
            "store", STORE_SCHEMA_VERSION, probe_table=ledger.recorder.events_table_name,
            oldest_readable=STORE_OLDEST_READABLE, what_changed="stores participants' tokens instead of their ids",
        )  # fmt: skip
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
