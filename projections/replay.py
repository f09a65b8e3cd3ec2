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
   rows pass through a temporary table (SQLite puts it in a temporary file, about 300 MB at a million
   facts), which the database sorts into key order; a thread builds each table's indexes while Python goes
   on with the next step.

It holds the log's fact rows and the views in memory while it runs (about 1.8 GB at a million facts;
`bench/views.py` reports it). The property test checks that it gives exactly the rows following gives.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from contracts.types import context_key
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
from services.store import Ledger

READ_PAGE_FACTS = 50_000
INDEX_DDL = [statement for statement in DDL if statement.startswith("CREATE INDEX")]
INDEX_NAMES = [re.search(r"EXISTS (\w+) ON", statement).group(1) for statement in INDEX_DDL]  # type: ignore[union-attr]

# Column positions in the fact rows below, which are lists in the view tables' column order.
LIVE, ACKNOWLEDGED = 11, 12  # of a give
INTRO_LIVE = 11
ACK_LIVE = 6
# ...and in a participant's row (ParticipantRow's fields) and a pair's row (PairRow's fields).
GIVEN_COUNT, GIVEN, RECEIVED_COUNT, RECEIVED, INTRO_MADE, INTRO_RECEIVED = range(6)
ACK_GIVEN, ACK_RECEIVED, UNACK_COUNT, UNACK, UNACK_OLDEST, COUNTERPARTS, RETURNED = range(6, 13)
AB_COUNT, AB, BA_COUNT, BA, FIRST_AT, LAST_AT, DECAYED_AB, DECAYED_BA = range(8)
# Both kinds of rows carry one more element while they are built: the position of the last fact about them.
PERSON_CHANGED, PAIR_CHANGED = 13, 8


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
        self._names: dict[str, str] = {}  # one string object per tenant, person and context key
        self._micro: dict[str, int] = {}  # values as sent ("1", "2.5"), in micro-units

    def _name(self, text: str) -> str:
        return self._names.setdefault(text, text)

    # 1. in log order

    def apply(self, position: int, fact: dict[str, Any]) -> None:
        tenant, event_id, kind, data = self._name(fact["tenant"]), fact["event_id"], fact["type"], fact["data"]
        self.tenants[tenant] = self.position = position
        name = self._name
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
        return tuple(self._name(context_key(context[d])) if d in context else None for d in CONTEXT_DIMENSIONS)

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

    # 2. from the final rows

    def aggregate(self) -> tuple[dict[tuple[str, ...], list[Any]], dict[tuple[str, ...], list[Any]]]:
        """Every participant's and pair's row, per scope, as following the log would have left them.
        Each row also gets the position of the last fact about it (its `changed_position`: the KV writer
        reads rows changed after a position in windows, which stay small because positions spread).
        (Written for speed: it runs for every fact and scope, so lookups are inlined.)"""
        reversed_at = self.reversed_at
        people: dict[tuple[str, ...], list[Any]] = {}
        pairs: dict[tuple[str, ...], list[Any]] = {}
        find_person, find_pair, scopes_of = people.get, pairs.get, _Scopes()
        give_scopes: dict[str, list[str]] = {}
        for event_id, give in self.gives.items():
            tenant, _, position, _, giver, receiver, value, at, location, activity, subject, live, acknowledged = give
            a, b = (giver, receiver) if giver < receiver else (receiver, giver)
            give_scopes[event_id] = in_scopes = scopes_of(location, activity, subject)
            last = position if live else reversed_at[event_id]
            for scope in in_scopes:
                given = find_person(key := (tenant, scope, giver))
                if given is None:
                    given = people[key] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, None, 0, 0, 0]
                received = find_person(key := (tenant, scope, receiver))
                if received is None:
                    received = people[key] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, None, 0, 0, 0]
                between = find_pair(key := (tenant, scope, a, b))
                if between is None:
                    between = pairs[key] = [0, 0, 0, 0, None, None, 0.0, 0.0, 0]
                for row, changed in ((given, PERSON_CHANGED), (received, PERSON_CHANGED), (between, PAIR_CHANGED)):
                    if row[changed] < last:
                        row[changed] = last
                if not live:
                    continue
                given[GIVEN_COUNT] += 1
                given[GIVEN] += value
                received[RECEIVED_COUNT] += 1
                received[RECEIVED] += value
                if not acknowledged:
                    received[UNACK_COUNT] += 1
                    received[UNACK] += value
                    if received[UNACK_OLDEST] is None or at < received[UNACK_OLDEST]:
                        received[UNACK_OLDEST] = at
                if giver == a:
                    between[AB_COUNT] += 1
                    between[AB] += value
                else:
                    between[BA_COUNT] += 1
                    between[BA] += value
                if between[FIRST_AT] is None or at < between[FIRST_AT]:
                    between[FIRST_AT] = at
                if between[LAST_AT] is None or at > between[LAST_AT]:
                    between[LAST_AT] = at

        def person(tenant: str, scope: str, who: str, last: int) -> list[Any]:
            row = find_person(key := (tenant, scope, who))
            if row is None:
                row = people[key] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, None, 0, 0, 0]
            if row[PERSON_CHANGED] < last:
                row[PERSON_CHANGED] = last
            return row

        def pair(tenant: str, a: str, b: str, last: int) -> None:
            row = find_pair(key := (tenant, "", a, b))
            if row is None:
                row = pairs[key] = [0, 0, 0, 0, None, None, 0.0, 0.0, 0]
            if row[PAIR_CHANGED] < last:
                row[PAIR_CHANGED] = last

        intro_scopes: dict[str, list[str]] = {}
        for event_id, introduction in self.introductions.items():
            tenant, _, position, _, introducer, a, b, _, location, activity, subject, live = introduction
            last = position if live else reversed_at[event_id]
            pair(tenant, a, b, last)
            intro_scopes[event_id] = in_scopes = scopes_of(location, activity, subject)
            for scope in in_scopes:
                made, first = person(tenant, scope, introducer, last), person(tenant, scope, a, last)
                second = person(tenant, scope, b, last)
                if live:
                    made[INTRO_MADE] += 1
                    first[INTRO_RECEIVED] += 1
                    second[INTRO_RECEIVED] += 1
        for event_id, (tenant, _, position, ref, acknowledger, _, ack_live) in self.acknowledgements.items():
            last = position if ack_live else reversed_at[event_id]
            person(tenant, "", acknowledger, last)
            if event_id not in self.touching:
                continue
            if (target := self.gives.get(ref)) is not None:
                party, live, in_scopes = target[4], target[LIVE], give_scopes[ref]
                pair(tenant, *sorted((party, target[5])), last)  # the give's pair: its decayed weight changed
            else:
                target = self.introductions[ref]
                party, live, in_scopes = target[4], target[INTRO_LIVE], intro_scopes[ref]
            for scope in in_scopes:
                thanking, thanked = person(tenant, scope, acknowledger, last), person(tenant, scope, party, last)
                if live and ack_live:
                    thanking[ACK_GIVEN] += 1
                    thanked[ACK_RECEIVED] += 1
        decayed = self.decayed
        for (tenant, scope, a, b), between in pairs.items():
            if between[AB_COUNT] or between[BA_COUNT]:
                returned = min(between[AB], between[BA])
                for row in (people[(tenant, scope, a)], people[(tenant, scope, b)]):
                    row[COUNTERPARTS] += 1
                    row[RETURNED] += returned
            if not scope and (weights := decayed.get((tenant, a, b))) is not None:
                between[DECAYED_AB], between[DECAYED_BA] = weights
        return people, pairs

    # 3. written once

    def write(self, cursor: ViewCursor, store: ViewStore) -> None:
        """Writes every row, then the indexes. The database builds an index in its own code, without Python's
        interpreter lock, so one thread builds each table's indexes while this one goes on in Python (the
        aggregation, the next table's rows): the two cores of a small machine both work. The thread and this
        one take turns on the connection, never using it at once."""
        for name in INDEX_NAMES:  # built again at the end, from sorted rows rather than row by row
            cursor.execute(f"DROP INDEX IF EXISTS {name}")
        fact_tables = ("view_gives", "view_introductions", "view_acknowledgements")
        for table, rows in zip(fact_tables, (self.gives, self.introductions, self.acknowledgements), strict=True):
            cursor.insert(table, _columns(table), rows.values())
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-indexes") as indexer:
            indexed = indexer.submit(_create_indexes, cursor, fact_tables)
            people, pairs = self.aggregate()
            indexed.result()
            _insert_in_key_order(
                cursor,
                "view_participants",
                [*_columns("view_participants"), "balance_micro", "changed_position"],
                (
                    (*key, *row[:PERSON_CHANGED], row[GIVEN] - row[RECEIVED], row[PERSON_CHANGED])
                    for key, row in people.items()
                ),
            )
            del people
            indexed = indexer.submit(_create_indexes, cursor, ("view_participants",))
            pair_rows = [(*k, *row[:PAIR_CHANGED], row[AB] + row[BA], row[PAIR_CHANGED]) for k, row in pairs.items()]
            del pairs
            indexed.result()
        pair_columns = [*_columns("view_pairs"), "strength_micro", "changed_position"]
        _insert_in_key_order(cursor, "view_pairs", pair_columns, pair_rows)
        del pair_rows
        _create_indexes(cursor, ("view_pairs",))
        cursor.insert("view_tenants", ["tenant", "changed_position"], sorted(self.tenants.items()))
        store.record_position(cursor, VIEW, self.position)


def _create_indexes(cursor: ViewCursor, tables: tuple[str, ...]) -> None:
    for statement in INDEX_DDL:
        if statement.split(" ON ")[1].split(" ")[0] in tables:
            cursor.execute(statement)


class _Scopes(dict[tuple[str | None, ...], list[str]]):
    """The scopes ("" and one per context value) of a fact's context keys, made once per combination."""

    def __call__(self, *keys: str | None) -> list[str]:
        found = self.get(keys)
        if found is None:
            found = self[keys] = [""]
            found += [f"{name}={key}" for name, key in zip(CONTEXT_DIMENSIONS, keys, strict=True) if key is not None]
        return found


def _insert_in_key_order(cursor: ViewCursor, table: str, columns: list[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """Inserts rows in primary-key order, so the table stores them in it: a tenant's rows read by key
    (influence reads every pair of a tenant) are then neighbours on disk, not a random read each. The rows go
    into a temporary table as they come, and the database sorts them on the way into the view: sorting them in
    Python, then reading a million-entry dict in that order, took twice as long (mostly cache misses)."""
    unsorted = f"unsorted_{table}"
    cursor.execute(f"CREATE TEMPORARY TABLE {unsorted} AS SELECT {', '.join(columns)} FROM {table} LIMIT 0")
    cursor.insert(unsorted, columns, rows)
    names, key = ", ".join(columns), ", ".join(columns[: 3 if table == "view_participants" else 4])
    cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {unsorted} ORDER BY {key}")
    cursor.execute(f"DROP TABLE {unsorted}")


def _weight(occurred_at: str, value_micro: int) -> float:
    """A give's time-decayed weight, with the operations in `Page._count_give`'s order (same bits); an
    acknowledgement adds it once more."""
    return decay_exponent(occurred_at) * value_micro / MICRO


def replay(ledger: Ledger, store: ViewStore, on_progress: Callable[[int], None] = lambda position: None) -> int:
    """Builds the reciprocity views of an empty view store from the whole log; returns the facts applied.
    The caller holds the projector lock and has emptied the views (`ViewStore.reset`)."""
    if store.position(VIEW) != 0:
        raise RuntimeError("replay builds the reciprocity views from empty; reset them first")
    replayed = Replay()
    applied = 0
    collecting = gc.isenabled()
    gc.disable()  # millions of rows that live until the end: a collector pass over them finds nothing
    try:
        while page := ledger.read_log(replayed.position, READ_PAGE_FACTS):
            for stored in page:
                replayed.apply(stored.position, stored.fact)
            applied += len(page)
            on_progress(replayed.position)
        if applied:
            with store.transaction() as cursor:
                replayed.write(cursor, store)
            # PostgreSQL planned the view's queries for empty tables: influence, reading a tenant's rows right
            # after, took minutes instead of a second on 100k pairs until the statistics were fresh.
            store.analyze(TABLES)
    finally:
        if collecting:
            gc.enable()
    return applied
