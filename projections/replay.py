"""Builds the reciprocity views from position 0 in one pass over the log, for `reciprocity rebuild`.

Following the log page by page reads and rewrites the rows each page touches, with their indexes, again
and again. A rebuild starts from empty views and owns them, so it can do less:

1. **Replay the order-dependent parts, in log order.** Which facts are live, which gives are acknowledged
   (a reversed give keeps the flag it had when it was reversed), and the time-decayed weights of each pair,
   whose floating-point sums must add up in log order to be bit for bit what following gave.
2. **Aggregate everything else from the final fact rows.** Counts, sums, oldest unacknowledged gives, pair
   spans, counterparts and amounts returned depend only on which facts are live and acknowledged in the
   end, so each row is computed once, in memory.
3. **Write each row once, then build the indexes**, and record the view's position, in one transaction: a
   rebuild that fails leaves the empty view it started from, never a half-built one. Participant and pair
   rows come from `projections/aggregate.py` (numpy) already in key order; meanwhile a thread writes the
   gives (on SQLite with one statement that reads them from the store's JSON, in the database's own code)
   and builds the fact tables' indexes.

It holds the log's fact rows and the views in memory while it runs (about 2.4 GB at 1.1 million facts;
`bench/views.py` reports it). The property test checks that it gives exactly the rows following gives.
"""

from __future__ import annotations

import gc
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from contracts.types import context_key
from projections.aggregate import aggregate, in_rows
from projections.reciprocity import (
    CONTEXT_DIMENSIONS,
    DDL,
    MICRO,
    TABLES,
    VIEW,
    _columns,
    _ref_event_id,
    decay_exponent,
    to_micro,
)
from projections.viewstore import ViewCursor, ViewStore
from services.domain import FACT_TOPIC
from services.store import Ledger

READ_PAGE_FACTS = 50_000
INDEX_DDL = [statement for statement in DDL if statement.startswith("CREATE INDEX")]
INDEX_NAMES = [re.search(r"EXISTS (\w+) ON", statement).group(1) for statement in INDEX_DDL]  # type: ignore[union-attr]

# Column positions in the fact rows below, which are lists in the view tables' column order.
LIVE, ACKNOWLEDGED = 11, 12  # of a give
INTRO_LIVE = 11
ACK_LIVE = 6


class Replay:
    """The whole log's effect on the reciprocity views, built in memory and written once."""

    def __init__(self) -> None:
        self.gives: dict[str, list[Any]] = {}  # by event id (unique across tenants)
        self.introductions: dict[str, list[Any]] = {}
        self.acknowledgements: dict[str, list[Any]] = {}
        self.touching: set[str] = set()  # acknowledgements whose fact was live when they were recorded
        self.reversed_at: dict[str, int] = {}  # a reversed fact's event id: the reversal's position
        self.decayed: dict[tuple[str, str, str], list[float]] = {}  # (tenant, a, b): [a→b, b→a]
        self.tenants: dict[str, int] = {}
        self.position = 0
        self._micro: dict[str, int] = {}  # values as sent ("1", "2.5"), in micro-units
        self._context_keys: dict[str, str] = {}  # context values as sent, as compared (context_key)

    # 1. in log order

    def apply(self, position: int, fact: dict[str, Any]) -> None:
        # Interned: one string object per tenant and person, however many rows name them.
        tenant, event_id, kind, data = sys.intern(fact["tenant"]), fact["event_id"], fact["type"], fact["data"]
        self.tenants[tenant] = self.position = position
        name = sys.intern
        if kind == "give.recorded":
            keys = self._context(data)
            giver, receiver = name(data["giver"]), name(data["receiver"])
            value = self._micro.get(data["value"])
            if value is None:
                value = self._micro[data["value"]] = to_micro(data["value"])
            self.gives[event_id] = [
                tenant, event_id, position, fact["external_id"], giver, receiver, value, fact["occurred_at"],
                *keys, 1, 0,
            ]  # fmt: skip
            self._add_decayed(tenant, giver, receiver, _weight(fact["occurred_at"], value))
        elif kind == "introduction.made":
            keys = self._context(data)
            a, b = sorted(data["introduced"])
            self.introductions[event_id] = [
                tenant, event_id, position, fact["external_id"], name(data["introducer"]), name(a), name(b),
                fact["occurred_at"], *keys, 1,
            ]  # fmt: skip
        elif kind == "acknowledgement.recorded":
            ref = _ref_event_id(fact)
            self.acknowledgements[event_id] = [
                tenant, event_id, position, ref, name(data["acknowledger"]), fact["occurred_at"], 1
            ]  # fmt: skip
            give = self.gives.get(ref)
            if give is not None and give[LIVE]:
                self.touching.add(event_id)
                self._acknowledge(give, +1)
            elif ref in self.introductions and self.introductions[ref][INTRO_LIVE]:
                self.touching.add(event_id)
        else:
            self._reverse(_ref_event_id(fact), position)

    def _context(self, data: dict[str, Any]) -> tuple[str | None, ...]:
        context = data.get("context") or {}
        return tuple(self._context_key(context[d]) if d in context else None for d in CONTEXT_DIMENSIONS)

    def _context_key(self, value: str) -> str:
        key = self._context_keys.get(value)
        if key is None:
            key = self._context_keys[value] = sys.intern(context_key(value))
        return key

    def _add_decayed(self, tenant: str, giver: str, receiver: str, weight: float) -> None:
        """As `Page._count_pair` and `Page._acknowledge_give` add them: one addition per fact, in log order."""
        if giver < receiver:
            self.decayed.setdefault((tenant, giver, receiver), [0.0, 0.0])[0] += weight
        else:
            self.decayed.setdefault((tenant, receiver, giver), [0.0, 0.0])[1] += weight

    def _acknowledge(self, give: list[Any], sign: int) -> None:
        give[ACKNOWLEDGED] = 1 if sign > 0 else 0
        self._add_decayed(give[0], give[4], give[5], sign * _weight(give[7], give[6]))

    def _reverse(self, ref: str, position: int) -> None:
        if (give := self.gives.get(ref)) is not None:
            if give[LIVE]:
                self.reversed_at[ref] = position
                give[LIVE] = 0
                weight = -_weight(give[7], give[6]) * (2 if give[ACKNOWLEDGED] else 1)
                self._add_decayed(give[0], give[4], give[5], weight)
        elif (introduction := self.introductions.get(ref)) is not None:
            if introduction[INTRO_LIVE]:
                self.reversed_at[ref] = position
                introduction[INTRO_LIVE] = 0
        elif (ack := self.acknowledgements.get(ref)) is not None and ack[ACK_LIVE]:
            self.reversed_at[ref] = position
            ack[ACK_LIVE] = 0
            give = self.gives.get(ack[3])
            if give is not None and give[LIVE]:
                self._acknowledge(give, -1)

    # 3. written once

    def write(self, cursor: ViewCursor, store: ViewStore, gives_read: bool = False) -> None:
        """Writes every row, then the indexes. The database builds an index in its own code, without Python's
        interpreter lock, so a thread builds the fact tables' indexes while this one aggregates: the two cores
        of a small machine both work. The aggregation does not touch the connection meanwhile.

        On SQLite (`gives_read`: `read_gives` read them from the store's JSON while the log was replayed) that
        thread first writes the gives, nine in ten fact rows, with one statement: also in the database's own
        code, where binding them from Python took 6 s before the aggregation at a million facts.
        """
        for name in INDEX_NAMES:  # built again at the end, from sorted rows rather than row by row
            cursor.execute(f"DROP INDEX IF EXISTS {name}")
        fact_tables = ("view_gives", "view_introductions", "view_acknowledgements")
        from_python = {"view_introductions": self.introductions, "view_acknowledgements": self.acknowledgements}
        if not gives_read:
            from_python["view_gives"] = self.gives
        else:
            self._stage_gives(cursor)
        for table, rows in from_python.items():
            cursor.insert(table, _columns(table), rows.values())

        def facts_then_indexes() -> None:
            if gives_read:
                cursor.execute(GIVES_FROM_READ)
                written = cursor.execute("SELECT changes()")[0][0]
                if written != len(self.gives):  # never a rebuild with gives missing: it fails instead
                    raise RuntimeError(f"{written} gives written from the store's JSON, {len(self.gives)} replayed")
            _create_indexes(cursor, fact_tables)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-facts") as indexer:
            indexed = indexer.submit(facts_then_indexes)
            participants, pairs = aggregate(
                self.gives, self.introductions, self.acknowledgements, self.touching, self.reversed_at, self.decayed
            )
            indexed.result()
        columns = [*_columns("view_participants"), "balance_micro", "changed_position"]
        cursor.insert("view_participants", columns, in_rows(participants))  # in key order
        del participants
        _create_indexes(cursor, ("view_participants",))
        pair_columns = [*_columns("view_pairs"), "strength_micro", "changed_position"]
        cursor.insert("view_pairs", pair_columns, in_rows(pairs))
        del pairs
        _create_indexes(cursor, ("view_pairs",))
        cursor.insert("view_tenants", ["tenant", "changed_position"], sorted(self.tenants.items()))
        store.record_position(cursor, VIEW, self.position)

    def _stage_gives(self, cursor: ViewCursor) -> None:
        """What the gives' rows hold that the store's JSON does not, for GIVES_FROM_READ: values in micro-units,
        context keys, and the gives no longer live or now acknowledged (every other is live, unacknowledged)."""
        flags = [(g[1], g[LIVE], g[ACKNOWLEDGED]) for g in self.gives.values() if not g[LIVE] or g[ACKNOWLEDGED]]
        staged = {
            "replay_values": (("value", "micro"), self._micro.items()),
            "replay_context_keys": (("value", "key"), self._context_keys.items()),
            "replay_flags": (("event_id", "live", "acknowledged"), flags),
        }
        for table, (columns, rows) in staged.items():
            cursor.execute(f"CREATE TEMP TABLE {table} ({columns[0]} PRIMARY KEY, {', '.join(columns[1:])})")
            cursor.insert(f"temp.{table}", columns, list(rows))


# The gives as the store's JSON holds them, read by `read_gives` while Python replays the log.
GIVES_READ = {
    "tenant": "tenant", "event_id": "event_id", "external_id": "external_id", "occurred_at": "occurred_at",
    "giver": "data.giver", "receiver": "data.receiver", "value": "data.value",
    **{dimension: f"data.context.{dimension}" for dimension in CONTEXT_DIMENSIONS},
}  # fmt: skip
_CONTEXT_KEY = "(SELECT key FROM temp.replay_context_keys WHERE value = g.{0}) AS {0}"
# view_gives from them and what `Replay._stage_gives` staged. The property test checks it gives the rows
# following gives.
GIVES_FROM_READ = (
    "INSERT INTO view_gives (tenant, event_id, position, external_id, giver, receiver, value_micro, occurred_at, "
    f"{', '.join(CONTEXT_DIMENSIONS)}, live, acknowledged) "
    "SELECT g.tenant, g.event_id, g.position, g.external_id, g.giver, g.receiver, v.micro, g.occurred_at, "
    f"{', '.join(_CONTEXT_KEY.format(d) for d in CONTEXT_DIMENSIONS)}, "
    "coalesce(f.live, 1), coalesce(f.acknowledged, 0) "
    "FROM temp.replay_gives AS g JOIN temp.replay_values AS v ON v.value = g.value "
    "LEFT JOIN temp.replay_flags AS f ON f.event_id = g.event_id"
)


def read_gives(cursor: ViewCursor, stored_events: str, last_position: int) -> None:
    """Reads the gives up to a position from the store's table (in a file attached to the transaction) into
    temp.replay_gives, in SQLite's own code: it takes the other core while Python replays the log."""
    cursor.execute(f"CREATE TEMP TABLE replay_gives (position, {', '.join(GIVES_READ)})")
    extracted = ", ".join(f"json_extract(state, '$.fact.{path}')" for path in GIVES_READ.values())
    cursor.execute(
        f"INSERT INTO temp.replay_gives SELECT rowid, {extracted} FROM (SELECT rowid, CAST(state AS TEXT) AS state "
        f"FROM {stored_events} WHERE topic = ? AND rowid <= ?)",
        (FACT_TOPIC["give.recorded"], last_position),
    )


def _create_indexes(cursor: ViewCursor, tables: tuple[str, ...]) -> None:
    for statement in INDEX_DDL:
        if statement.split(" ON ")[1].split(" ")[0] in tables:
            cursor.execute(statement)


def _weight(occurred_at: str, value_micro: int) -> float:
    """A give's time-decayed weight, with the operations in `Page._count_give`'s order (same bits); an
    acknowledgement adds it once more."""
    return decay_exponent(occurred_at) * value_micro / MICRO


def replay(ledger: Ledger, store: ViewStore, on_progress: Callable[[int], None] = lambda position: None) -> int:
    """Builds the reciprocity views of an empty view store from the log up to its head when called; returns the
    facts applied. The caller holds the projector lock and has emptied the views (`ViewStore.reset`)."""
    if store.position(VIEW) != 0:
        raise RuntimeError("replay builds the reciprocity views from empty; reset them first")
    head = ledger.head_position()
    store_file = None if store.postgres else ledger.sqlite_file
    replayed = Replay()
    applied = 0
    collecting = gc.isenabled()
    gc.disable()  # millions of rows that live until the end: a collector pass over them finds nothing
    try:
        with (
            store.bulk_transaction({"ledger": store_file} if store_file else None) as cursor,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-read") as reader,
        ):
            if store_file:
                stored_events = f"ledger.{ledger.recorder.events_table_name}"
                gives_read = reader.submit(read_gives, cursor, stored_events, head)
            while replayed.position < head and (page := ledger.read_log(replayed.position, READ_PAGE_FACTS)):
                for stored in page:
                    if stored.position > head:
                        break
                    replayed.apply(stored.position, stored.fact)
                    applied += 1
                on_progress(replayed.position)
            if store_file:
                gives_read.result()
            if applied:
                replayed.write(cursor, store, gives_read=bool(store_file))
        if applied:
            # PostgreSQL planned the view's queries for empty tables: influence, reading a tenant's rows right
            # after, took minutes instead of a second on 100k pairs until the statistics were fresh.
            store.analyze(TABLES)
    finally:
        if collecting:
            gc.enable()
    return applied
