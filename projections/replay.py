"""Builds the reciprocity views from position 0 in one pass over the log, for `reciprocity rebuild`.

Following the log page by page reads and rewrites the rows each page touches, with their indexes, again
and again. A rebuild starts from empty views and owns them, so it can do less:

1. **Replay the order-dependent parts, in log order.** Which facts are live and which gives are acknowledged
   (a reversed give keeps the flag it had when it was reversed). Gives, most of the facts, change nothing
   themselves: they are kept as columns (`Gives`), and acknowledgements and reversals, in log order, change
   their flags and note what they add to the time-decayed weight of the give's pair. On SQLite a thread reads
   the gives from the store's JSON in the database's own code (`read_gives`) while Python reads the other
   facts; those are applied once the gives are in.
2. **Sum everything else from the final fact rows.** Counts, sums, oldest unacknowledged gives, pair
   spans, counterparts and amounts returned depend only on which facts are live and acknowledged in the
   end, so each row is computed once, in memory, column-wise from the rules (`projections/rebuild_columns.py`,
   numpy). So are the decayed weights: added one by one in log order, so the floating-point sums are bit for
   bit those of following the log.
3. **Write each row once, then build the indexes**, and record the view's position, in one transaction: a
   rebuild that fails leaves the empty view it started from, never a half-built one. One thread (`writer`)
   does the database's work: the gives (on SQLite with one statement from what `read_gives` read), the
   indexes, and on SQLite the participant and pair rows, copied from files where this thread bound them
   meanwhile. Both cores of a small machine work: the database's code runs without Python's lock.

It holds the log's fact rows and the views in memory while it runs, so its peak memory grows with the log
(`bench/views.py` reports it; docs/performance.md). The property test checks that it gives exactly the rows
following gives.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from contracts.types import context_key
from contracts.webhook_bodies import FactType
from ledger.collector import collector_paused
from ledger.connections import secure_delete
from ledger.facts import STORED_TOPICS, Acknowledgement, Erasure, Fact, Give, Introduction, fact_event_id
from ledger.participants import ERASURE_SOURCE, TOMBSTONE_PREFIX, tombstone
from ledger.store import Ledger, StoredFact
from projections import erasure
from projections.influence_pairs import columns
from projections.rebuild_columns import in_rows, rebuild_rows
from projections.reciprocity import DDL, TABLES, VIEW, _columns, _ref_event_id, to_micro
from projections.reciprocity_rules import CONTEXT_DIMENSIONS, decay_exponent, decayed_weight
from projections.view_names import TenantToken, insert_names
from projections.viewstore import ViewCursor, ViewStore

READ_PAGE_FACTS = 50_000
PROGRESS_FACTS = 10_000  # facts applied between two progress reports
# A long job's progress: (stage, done, total), as `replay` and `rebuild` report it.
Progress = Callable[[str, int, int], None]
SHRED_CHUNK_BYTES = 1 << 20
INDEX_DDL = [statement for statement in DDL if statement.startswith("CREATE INDEX")]
INDEX_NAMES = [re.search(r"EXISTS (\w+) ON", statement).group(1) for statement in INDEX_DDL]  # type: ignore[union-attr]

# Column positions in the fact rows below, which are lists in the view tables' column order.
TENANT, EVENT_ID, POSITION, VALUE_MICRO, OCCURRED_AT = 0, 1, 2, 6, 7  # of a give (`Gives.columns`)
INTRO_LIVE = 11
ACK_LIVE = 6
NOT_GIVES = tuple(kind for kind in STORED_TOPICS if kind != FactType.GIVE)


class Gives:
    """The gives, nine in ten facts, as view_gives columns in log order: apart from acknowledging or reversing,
    which the facts that do it change here, a give's effect is summed column-wise (`rebuild_columns.py`)."""

    def __init__(self) -> None:
        self.columns: list[Any] = [[] for _ in range(len(_columns("view_gives")) - 2)]
        self.live, self.acknowledged = bytearray(), bytearray()  # each give's flags, 1 or 0
        self.row: dict[str, int] = {}  # by event id (unique across tenants)

    def __len__(self) -> int:
        return len(self.row)

    def add(self, values: tuple[Any, ...]) -> None:
        """One give's columns up to its flags; it starts live and unacknowledged."""
        self.row[values[EVENT_ID]] = len(self.row)
        for column, value in zip(self.columns, values, strict=True):
            column.append(value)
        self.live.append(1)
        self.acknowledged.append(0)

    def extend(self, columns_: list[list[Any]]) -> None:
        """Every give at once, as columns (on SQLite, from `read_gives`), to a Gives that has none yet."""
        if self.row:
            raise RuntimeError("Gives.extend takes every give at once")
        self.columns = columns_
        self.row = dict(zip(columns_[EVENT_ID], range(len(columns_[EVENT_ID])), strict=True))
        self.live, self.acknowledged = bytearray(b"\x01") * len(self.row), bytearray(len(self.row))

    def before(self, event_id: str, position: int) -> int | None:
        """The row of the give with this event id if it was recorded before this position."""
        row = self.row.get(event_id)
        return row if row is not None and self.columns[POSITION][row] < position else None

    @property
    def positions(self) -> list[int]:
        return self.columns[POSITION]

    def weight(self, row: int) -> float:
        """What a give adds to its pair's decayed weight as it is now (nothing once reversed)."""
        if not self.live[row]:
            return 0.0
        decay = decay_exponent(self.columns[OCCURRED_AT][row])
        return decayed_weight(decay, self.columns[VALUE_MICRO][row], self.acknowledged[row])

    def set_state(self, row: int, live: int, acknowledged: int) -> float:
        """Sets a give's flags; returns what that changed its pair's decayed weight by (as `Page._give_changed`)."""
        before = self.weight(row)
        self.live[row], self.acknowledged[row] = live, acknowledged
        return self.weight(row) - before

    def rows(self) -> Iterator[tuple[Any, ...]]:
        return zip(*self.columns, self.live, self.acknowledged, strict=True)

    def flags(self) -> list[tuple[str, int, int]]:
        """(event id, live, acknowledged) of the gives no longer live or now acknowledged."""
        flags = zip(self.columns[EVENT_ID], self.live, self.acknowledged, strict=True)
        return [(event_id, live, acked) for event_id, live, acked in flags if not live or acked]


class Replay:
    """The whole log's effect on the reciprocity views, built in memory and written once.

    `names` are the ids of every participant not erased, by token (`Ledger.names()`, read once): facts name
    participants by token, and any other token shows as its tombstone, as it does once the follower applied
    its erasure."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.names = names or {}
        self.met: set[TenantToken] = set()  # the tokens facts read in Python hold, for view_names
        self.erased: dict[str, int] = {}  # each tenant's last erasure
        self.erasures: dict[TenantToken, int] = {}  # each erasure's position
        self.gives = Gives()
        self.introductions: dict[str, list[Any]] = {}  # by event id (unique across tenants)
        self.acknowledgements: dict[str, list[Any]] = {}
        self.touching: set[str] = set()  # acknowledgements whose fact was live when they were recorded
        self.reversed_at: dict[str, int] = {}  # a reversed fact's event id: the reversal's position
        # What acknowledgements and reversals did to their give's pair's decayed weight: (position, give, weight).
        self.decayed_changes: list[tuple[int, int, float]] = []
        self.tenants: dict[str, int] = {}  # each tenant's last position
        self.position = 0
        self._micro: dict[str, int] = {}  # values as sent ("1", "2.5"), in micro-units
        self._context_keys: dict[str, str] = {}  # context values as sent, as compared (context_key)

    # 1. in log order

    def apply(self, position: int, fact: Fact) -> None:
        # Interned: one string object per tenant and person, however many rows name them.
        tenant, event_id = sys.intern(fact.tenant), fact.event_id
        self._seen(tenant, position)

        def name(token: str) -> str:
            self.met.add((tenant, token))
            return sys.intern(self.names.get(token) or tombstone(token))

        if isinstance(fact, Erasure):  # no number changes; its participant shows as the tombstone throughout
            self.met.add((tenant, fact.token))
            self.erased[tenant] = self.erasures[tenant, fact.token] = position
            return
        if isinstance(fact, Give):
            self.gives.add((
                tenant, event_id, position, fact.external_id, name(fact.giver), name(fact.receiver),
                self._value_micro(fact.value), fact.occurred_at, *self._context(fact.context),
            ))  # fmt: skip
        elif isinstance(fact, Introduction):
            keys = self._context(fact.context)
            a, b = sorted(map(name, fact.introduced))
            self.introductions[event_id] = [
                tenant, event_id, position, fact.external_id, name(fact.introducer), a, b,
                fact.occurred_at, *keys, 1,
            ]  # fmt: skip
        elif isinstance(fact, Acknowledgement):
            ref = _ref_event_id(fact)
            self.acknowledgements[event_id] = [
                tenant, event_id, position, ref, name(fact.acknowledger), fact.occurred_at, 1
            ]  # fmt: skip
            give = self.gives.before(ref, position)
            if give is not None and self.gives.live[give]:
                self.touching.add(event_id)
                self._acknowledge(give, position, +1)
            elif ref in self.introductions and self.introductions[ref][INTRO_LIVE]:
                self.touching.add(event_id)
        else:
            self._reverse(_ref_event_id(fact), position)

    def add_gives(self, rows: list[tuple[Any, ...]]) -> None:
        """The gives read by `read_gives`, as `GIVES_LOADED` returns them, before any other fact is applied."""
        gives = columns(rows, len(self.gives.columns))
        # One string object per tenant. (Not per person: interning every name costs more time than it saves;
        # the rows live only while the views are written.)
        gives[TENANT] = list(map(sys.intern, gives[TENANT]))
        gives[VALUE_MICRO] = list(map(self._value_micro, gives[VALUE_MICRO]))
        for column in range(OCCURRED_AT + 1, OCCURRED_AT + 1 + len(CONTEXT_DIMENSIONS)):
            gives[column] = [None if value is None else self._context_key(value) for value in gives[column]]
        last_positions = dict(zip(gives[TENANT], gives[POSITION], strict=True))  # in log order: the last wins
        for tenant, position in last_positions.items():
            self._seen(tenant, position)
        self.gives.extend(gives)

    def _seen(self, tenant: str, position: int) -> None:
        if position > self.tenants.get(tenant, 0):
            self.tenants[tenant] = position
        self.position = max(self.position, position)

    def _value_micro(self, value: str) -> int:
        micro = self._micro.get(value)
        if micro is None:
            micro = self._micro[value] = to_micro(value)
        return micro

    def _context(self, context: dict[str, str] | None) -> tuple[str | None, ...]:
        context = context or {}
        return tuple(self._context_key(context[d]) if d in context else None for d in CONTEXT_DIMENSIONS)

    def _context_key(self, value: str) -> str:
        key = self._context_keys.get(value)
        if key is None:
            key = self._context_keys[value] = sys.intern(context_key(value))
        return key

    def _acknowledge(self, give: int, position: int, sign: int) -> None:
        """A live give acknowledged (sign +1) or no longer (-1): its flag, and its pair's decayed weight."""
        self.decayed_changes.append((position, give, self.gives.set_state(give, 1, 1 if sign > 0 else 0)))

    def _reverse(self, ref: str, position: int) -> None:
        if (give := self.gives.before(ref, position)) is not None:
            if self.gives.live[give]:
                self.reversed_at[ref] = position
                change = self.gives.set_state(give, 0, self.gives.acknowledged[give])  # keeps the flag it had
                self.decayed_changes.append((position, give, change))
        elif (introduction := self.introductions.get(ref)) is not None:
            if introduction[INTRO_LIVE]:
                self.reversed_at[ref] = position
                introduction[INTRO_LIVE] = 0
        elif (ack := self.acknowledgements.get(ref)) is not None and ack[ACK_LIVE]:
            self.reversed_at[ref] = position
            ack[ACK_LIVE] = 0
            give = self.gives.before(ack[3], position)
            if give is not None and self.gives.live[give]:
                self._acknowledge(give, position, -1)

    # 3. written once

    def rewrite_names(self, cursor: ViewCursor, ledger: Ledger, gives_read: bool) -> None:
        """Writes view_names afresh. A participant the views knew by id whose erasure the follower had not
        applied yet is a tombstone now: the KV writer is told to purge the id's keys, as the erasure would."""
        names = {key: self.names.get(key[1]) or tombstone(key[1]) for key in self.met}
        tombstoned = {key for key, name in names.items() if name.startswith(TOMBSTONE_PREFIX)}
        if gives_read:
            tombstoned.update((tenant, token) for tenant, token in cursor.execute(TOMBSTONED_IN_READ))
        carried = erasure.known_ids(cursor, tombstoned)
        cursor.execute("DELETE FROM view_names")
        if gives_read:
            cursor.execute(NAMES_FROM_READ)
        insert_names(cursor, names)
        positions = dict(self.erasures)
        missing = [key for key in carried if key not in positions]  # erased after the head this replays to
        found = ledger.find_facts(fact_event_id(tenant, ERASURE_SOURCE, f"erase-{token}") for tenant, token in missing)
        for stored in found.values():
            if isinstance(stored.fact, Erasure):
                positions[stored.fact.tenant, stored.fact.token] = stored.position
        for (tenant, token), participant in sorted(carried.items()):
            if (tenant, token) in positions:
                renamed = erasure.Renamed(tenant, token, participant, tombstone(token))
                erasure.record_for_kv(cursor, renamed, positions[tenant, token])

    def write(self, cursor: ViewCursor, store: ViewStore, staging: dict[str, Path] | None = None) -> None:
        """Writes every row, then the indexes. The database builds an index in its own code, without Python's
        interpreter lock, so a thread (`writer`, the only one that uses the connection from then on) builds
        the fact tables' indexes while this one aggregates: the two cores of a small machine both work.

        On SQLite (`staging`, from `staging_files`; `read_gives` read the gives from the store's JSON while the
        log was replayed) that thread first writes the gives, most of the fact rows, with one statement: also
        in the database's own code, rather than bound from Python while the aggregation waits. Then this
        thread binds the participant and pair rows into the staging files while
        `writer` copies the rows staged before into the views, in SQLite's code, and indexes them.
        """
        gives_read = staging is not None
        self._write_facts(cursor, gives_read)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-writer") as writer:
            written = [writer.submit(self._facts_then_indexes, cursor, gives_read)]
            participants, pairs = rebuild_rows(
                self.gives,
                self.introductions,
                self.acknowledgements,
                self.touching,
                self.reversed_at,
                self.decayed_changes,
            )
            tables = {"view_participants": participants, "view_pairs": pairs}
            del participants, pairs
            for table in list(tables):
                rows = tables.pop(table)  # its rows are freed once written
                written.append(_write_rows(cursor, writer, table, rows, staging))
                del rows
            for done in written:
                done.result()
        tenants = [(tenant, position, self.erased.get(tenant, 0)) for tenant, position in sorted(self.tenants.items())]
        cursor.insert("view_tenants", ["tenant", "changed_position", "erased_position"], tenants)
        store.record_position(cursor, VIEW, self.position)

    def _write_facts(self, cursor: ViewCursor, gives_read: bool) -> None:
        """The fact rows bound from Python, with the indexes dropped first; gives read from the store's JSON
        only have what they lack staged (`writer` writes them)."""
        for name in INDEX_NAMES:  # built again at the end, from sorted rows rather than row by row
            cursor.execute(f"DROP INDEX IF EXISTS {name}")
        from_python: dict[str, Iterable[Sequence[Any]]] = {
            "view_introductions": self.introductions.values(),
            "view_acknowledgements": self.acknowledgements.values(),
        }
        if not gives_read:
            from_python["view_gives"] = self.gives.rows()
        else:
            self._stage_gives(cursor)
        for table, rows in from_python.items():
            cursor.insert(table, _columns(table), rows)

    def _facts_then_indexes(self, cursor: ViewCursor, gives_read: bool) -> None:
        if gives_read:
            cursor.execute(GIVES_FROM_READ)
            written = cursor.execute("SELECT changes()")[0][0]
            if written != len(self.gives):  # never a rebuild with gives missing: it fails instead
                raise RuntimeError(f"{written} gives written from the store's JSON, {len(self.gives)} replayed")
        _create_indexes(cursor, ("view_gives", "view_introductions", "view_acknowledgements"))

    def _stage_gives(self, cursor: ViewCursor) -> None:
        """What the gives' rows hold that the store's JSON does not, for GIVES_FROM_READ: values in micro-units,
        context keys, and the gives no longer live or now acknowledged (every other is live, unacknowledged)."""
        flags = self.gives.flags()
        staged = {
            "replay_values": (("value", "micro"), self._micro.items()),
            "replay_context_keys": (("value", "key"), self._context_keys.items()),
            "replay_flags": (("event_id", "live", "acknowledged"), flags),
        }
        for table, (names, rows) in staged.items():
            cursor.execute(f"CREATE TEMP TABLE {table} ({names[0]} PRIMARY KEY, {', '.join(names[1:])})")
            cursor.insert(f"temp.{table}", names, list(rows))


# The columns of the rows `rebuild_rows` gives, per table.
REBUILT_COLUMNS = {
    "view_participants": [*_columns("view_participants"), "balance_micro", "changed_position"],
    "view_pairs": [*_columns("view_pairs"), "strength_micro", "changed_position"],
}


def _write_rows(
    cursor: ViewCursor,
    writer: ThreadPoolExecutor,
    table: str,
    rows: list[Any],
    staging: dict[str, Path] | None,
) -> Future[None]:
    """Hands one table's rebuilt rows (numpy columns) to `writer`: bound from Python on its thread, one table's
    Python rows at a time; or, on SQLite, bound into a staging file on this one, then copied in SQLite's code."""
    count = len(rows[0])
    if staging is None:
        done = writer.submit(_rows_then_indexes, cursor, table, in_rows(rows), count)
        done.result()
        return done
    staged = _stage(staging[f"{table}_staged"], in_rows(rows))
    if staged != count:
        raise RuntimeError(f"{staged} rows of {table} staged, {count} rebuilt")
    return writer.submit(_rows_then_indexes, cursor, table, None, count)


def _rows_then_indexes(cursor: ViewCursor, table: str, rows: Iterator[tuple[Any, ...]] | None, count: int) -> None:
    names = REBUILT_COLUMNS[table]
    if rows is not None:
        cursor.insert(table, names, rows)
    else:  # staged
        cursor.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM {table}_staged.rows")
        written = cursor.execute("SELECT changes()")[0][0]
        if written != count:
            raise RuntimeError(f"{written} rows of {table} copied from staging, {count} rebuilt")
    _create_indexes(cursor, (table,))


@contextmanager
def staging_files(store: ViewStore) -> Iterator[dict[str, Path]]:
    """Scratch SQLite files beside the views file, one per rebuilt table, each with an empty table `rows`,
    for `Replay.write` to stage rows in from a connection of its own; removed afterwards. They exist before the
    rebuild's transaction attaches them: a table made after would not be in that connection's schema."""
    files = {f"{table}_staged": Path(f"{store.path}.{table}.staged") for table in REBUILT_COLUMNS}
    try:
        for table, names in REBUILT_COLUMNS.items():
            path = files[f"{table}_staged"]
            shred(path)  # left by a rebuild that was killed
            with closing(sqlite3.connect(path)) as connection:
                secure_delete(connection)
                connection.execute(f"CREATE TABLE rows ({', '.join(names)})")
        yield files
    finally:
        for path in files.values():
            shred(path)


def shred(path: Path) -> None:
    """Removes a scratch file after overwriting it with zeros, on disk before it goes: it held participants'
    ids, and the file system would leave the freed blocks as they were (DESIGN section 7)."""
    try:
        with path.open("r+b") as scratch:
            size = scratch.seek(0, os.SEEK_END)
            scratch.seek(0)
            zeros = bytes(SHRED_CHUNK_BYTES)
            for start in range(0, size, len(zeros)):
                scratch.write(zeros[: min(len(zeros), size - start)])
            scratch.flush()
            os.fsync(scratch.fileno())
    except FileNotFoundError:
        return
    path.unlink(missing_ok=True)


def _stage(path: Path, rows: Iterator[tuple[Any, ...]]) -> int:
    """Binds rows into a staging file's table with a connection of its own (no journal: the file is scratch);
    returns how many."""
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        secure_delete(connection)
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        width = len(connection.execute("SELECT * FROM rows LIMIT 0").description)
        connection.execute("BEGIN")
        count = connection.executemany(f"INSERT INTO rows VALUES ({', '.join('?' * width)})", rows).rowcount
        connection.execute("COMMIT")
        return count


# The gives as the store's JSON holds them, read by `read_gives` while Python replays the log.
GIVES_READ = {
    "tenant": "tenant", "event_id": "event_id", "external_id": "external_id", "occurred_at": "occurred_at",
    "giver": "data.giver", "receiver": "data.receiver", "value": "data.value",
    **{dimension: f"data.context.{dimension}" for dimension in CONTEXT_DIMENSIONS},
}  # fmt: skip
_CONTEXT_KEY = "(SELECT key FROM temp.replay_context_keys WHERE value = g.{0}) AS {0}"
# The store's JSON names participants by token: each shows as its id (`Replay.names`, staged as
# temp.replay_names by `stage_names`) or, erased, as its tombstone.
_NAME = f"coalesce((SELECT participant FROM temp.replay_names WHERE token = {{0}}), '{TOMBSTONE_PREFIX}' || {{0}})"
# view_gives from them and what `Replay._stage_gives` staged. The property test checks it gives the rows
# following gives.
GIVES_FROM_READ = (
    "INSERT INTO view_gives (tenant, event_id, position, external_id, giver, receiver, value_micro, occurred_at, "
    f"{', '.join(CONTEXT_DIMENSIONS)}, live, acknowledged) "
    f"SELECT g.tenant, g.event_id, g.position, g.external_id, {_NAME.format('g.giver')}, "
    f"{_NAME.format('g.receiver')}, v.micro, g.occurred_at, "
    f"{', '.join(_CONTEXT_KEY.format(d) for d in CONTEXT_DIMENSIONS)}, "
    "coalesce(f.live, 1), coalesce(f.acknowledged, 0) "
    "FROM temp.replay_gives AS g JOIN temp.replay_values AS v ON v.value = g.value "
    "LEFT JOIN temp.replay_flags AS f ON f.event_id = g.event_id"
)


# What `Replay.add_gives` takes of them, in view_gives' column order up to the flags.
GIVES_LOADED = (
    f"SELECT g.tenant, g.event_id, g.position, g.external_id, {_NAME.format('g.giver')}, "
    f"{_NAME.format('g.receiver')}, g.value, g.occurred_at, "
    f"{', '.join(f'g.{d}' for d in CONTEXT_DIMENSIONS)} FROM temp.replay_gives AS g ORDER BY g.position"
)
# view_names for the tokens of the gives read (those of the other facts are bound from Python).
TOMBSTONED_IN_READ = (
    "SELECT DISTINCT t.tenant, t.token FROM (SELECT tenant, giver AS token FROM temp.replay_gives "
    "UNION SELECT tenant, receiver AS token FROM temp.replay_gives) AS t "
    "WHERE NOT EXISTS (SELECT 1 FROM temp.replay_names AS n WHERE n.token = t.token)"
)
NAMES_FROM_READ = (
    f"INSERT INTO view_names (tenant, token, participant) SELECT t.tenant, t.token, {_NAME.format('t.token')} "
    "FROM (SELECT tenant, giver AS token FROM temp.replay_gives "
    "UNION SELECT tenant, receiver AS token FROM temp.replay_gives) AS t"
)


def stage_names(cursor: ViewCursor, names: dict[str, str]) -> None:
    """The ids of the participants not erased, by token, for the statements above."""
    cursor.execute("CREATE TEMP TABLE replay_names (token TEXT PRIMARY KEY, participant TEXT NOT NULL)")
    cursor.insert("temp.replay_names", ("token", "participant"), names.items())


def read_gives(cursor: ViewCursor, stored_events: str, last_position: int) -> None:
    """Reads the gives up to a position from the store's table (in a file attached to the transaction) into
    temp.replay_gives, in SQLite's own code: it takes the other core while Python replays the log."""
    cursor.execute(f"CREATE TEMP TABLE replay_gives (position INTEGER PRIMARY KEY, {', '.join(GIVES_READ)})")
    extracted = ", ".join(f"json_extract(state, '$.fact.{path}')" for path in GIVES_READ.values())
    topics = STORED_TOPICS[FactType.GIVE]
    cursor.execute(
        f"INSERT INTO temp.replay_gives SELECT rowid, {extracted} FROM (SELECT rowid, CAST(state AS TEXT) AS state "
        f"FROM {stored_events} WHERE topic IN ({', '.join('?' * len(topics))}) AND rowid <= ?)",
        (*topics, last_position),
    )


def _create_indexes(cursor: ViewCursor, tables: tuple[str, ...]) -> None:
    for statement in INDEX_DDL:
        if statement.split(" ON ")[1].split(" ")[0] in tables:
            cursor.execute(statement)


def _read_log(ledger: Ledger, head: int, kinds: tuple[str, ...] | None) -> Iterator[StoredFact]:
    """The log's facts (of these kinds) up to a position, page by page."""
    after = 0
    while after < head and (page := ledger.read_log(after, READ_PAGE_FACTS, kinds)):
        for stored in page:
            if stored.position > head:
                return
            yield stored
        after = page[-1].position


def _names(ledger: Ledger) -> dict[str, str]:
    # Read after the head: every token of a fact up to it was made before, so one not found here was erased
    # (its erasure may come after the head: the follower then finds the views knew the tombstone only).
    return ledger.names().names


def replay(ledger: Ledger, store: ViewStore, on_progress: Progress = lambda stage, done, total: None) -> int:
    """Builds the reciprocity views of an empty view store from the log up to its head when called; returns the
    facts applied. The caller holds the projector lock and has emptied the views (`ViewStore.reset`).

    `on_progress` hears ("log", facts applied, the head's position) every PROGRESS_FACTS facts (on SQLite the
    gives, read in the database's code, arrive all at once; the head's position also counts the store's
    other events, so it is a bound), ("log", facts, facts) when every fact is applied, then ("views", 0,
    facts) as the rows are written and ("views", facts, facts) once they are."""
    if store.position(VIEW) != 0:
        raise RuntimeError("replay builds the reciprocity views from empty; reset them first")
    head = ledger.head_position()
    on_progress("log", 0, head)
    store_file = None if store.postgres else ledger.sqlite_file
    replayed = Replay()
    with collector_paused():  # millions of rows that live until the end: a collector pass over them finds nothing
        with (
            staging_files(store) if store_file else nullcontext(None) as staging,
            store.bulk_transaction({"ledger": store_file, **staging} if store_file else None) as cursor,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-read") as reader,
        ):
            if store_file:  # the gives come from read_gives; the other facts are read from the log meanwhile
                stored_events = f"ledger.{ledger.recorder.events_table_name}"
                gives_read = reader.submit(read_gives, cursor, stored_events, head)
                replayed.names = _names(ledger)
                others = list(_read_log(ledger, head, NOT_GIVES))
                gives_read.result()
                stage_names(cursor, replayed.names)
                replayed.add_gives(cursor.execute(GIVES_LOADED))
                facts: Iterable[StoredFact] = others
            else:
                replayed.names = _names(ledger)
                facts = _read_log(ledger, head, None)
            applied = len(replayed.gives)
            on_progress("log", applied, head)
            for stored in facts:
                replayed.apply(stored.position, stored.fact)
                applied += 1
                if not applied % PROGRESS_FACTS:
                    on_progress("log", applied, head)
            on_progress("log", applied, applied)  # every fact up to the head (the head counts more than facts)
            if applied:
                on_progress("views", 0, applied)
                replayed.rewrite_names(cursor, ledger, gives_read=staging is not None)
                replayed.write(cursor, store, staging=staging)
        if applied:
            # PostgreSQL planned the view's queries for empty tables: influence, reading a tenant's rows right
            # after, would run on those plans, far slower, until the statistics were fresh.
            store.analyze(TABLES)
    on_progress("views", applied, applied)
    return applied
