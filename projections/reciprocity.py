"""The reciprocity views (DESIGN section 4): per participant, per pair, and the same per context value.

Built page by page from the store's log: load the rows a page touches, apply its facts in order in memory,
write the changed rows and the view's tracking position in one transaction. Values are kept as integer
micro-units (6 decimal places), so sums are exact. A context value is a "scope" such as
`subject=python`; scope "" holds the overall totals.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any

from contracts.types import context_key
from ledger.facts import Acknowledgement, Give, Introduction, RecordedFact, Reversal
from ledger.store import StoredFact
from projections.viewstore import ViewCursor, ViewStore

VIEW = "reciprocity"
ANALYZE_FACTS_MIN = 5_000
ANALYZE_INTERVAL_S = 30.0
MICRO = 1_000_000
CONTEXT_DIMENSIONS = ("location", "activity", "subject")
# Influence weights decay with a half-life. 2^(-(as_of - t)/h) = 2^((t - epoch)/h) * 2^(-(as_of - epoch)/h),
# so each pair keeps the sum of value * 2^((t - epoch)/h) and influence applies the as_of factor once.
DECAY_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
HALF_LIFE_DAYS = 180.0

DDL = (
    "CREATE TABLE IF NOT EXISTS view_gives (tenant TEXT NOT NULL, event_id TEXT NOT NULL, position INTEGER NOT NULL,"
    " external_id TEXT NOT NULL, giver TEXT NOT NULL, receiver TEXT NOT NULL, value_micro INTEGER NOT NULL,"
    " occurred_at TEXT NOT NULL, location TEXT, activity TEXT, subject TEXT, live INTEGER NOT NULL,"
    " acknowledged INTEGER NOT NULL, PRIMARY KEY (tenant, event_id))",
    "CREATE INDEX IF NOT EXISTS view_gives_received ON view_gives (tenant, receiver, live, acknowledged, occurred_at)",
    "CREATE INDEX IF NOT EXISTS view_gives_pair ON view_gives (tenant, giver, receiver, live, occurred_at)",
    "CREATE INDEX IF NOT EXISTS view_gives_time ON view_gives (tenant, live, occurred_at)",
    "CREATE TABLE IF NOT EXISTS view_introductions (tenant TEXT NOT NULL, event_id TEXT NOT NULL,"
    " position INTEGER NOT NULL, external_id TEXT NOT NULL, introducer TEXT NOT NULL, a TEXT NOT NULL,"
    " b TEXT NOT NULL, occurred_at TEXT NOT NULL, location TEXT, activity TEXT, subject TEXT,"
    " live INTEGER NOT NULL, PRIMARY KEY (tenant, event_id))",
    "CREATE INDEX IF NOT EXISTS view_introductions_pair ON view_introductions (tenant, a, b, position)",
    "CREATE INDEX IF NOT EXISTS view_introductions_time ON view_introductions (tenant, live, occurred_at)",
    # An influence contribution's facts: the introductions one participant made (else a scan of the tenant's).
    "CREATE INDEX IF NOT EXISTS view_introductions_introducer ON view_introductions"
    " (tenant, introducer, live, position)",
    "CREATE TABLE IF NOT EXISTS view_acknowledgements (tenant TEXT NOT NULL, event_id TEXT NOT NULL,"
    " position INTEGER NOT NULL, ref_event_id TEXT NOT NULL, acknowledger TEXT NOT NULL,"
    " occurred_at TEXT NOT NULL, live INTEGER NOT NULL, PRIMARY KEY (tenant, event_id))",
    "CREATE INDEX IF NOT EXISTS view_acknowledgements_ref ON view_acknowledgements (tenant, ref_event_id, live)",
    "CREATE INDEX IF NOT EXISTS view_acknowledgements_time ON view_acknowledgements (tenant, live, occurred_at)",
    "CREATE TABLE IF NOT EXISTS view_participants (tenant TEXT NOT NULL, scope TEXT NOT NULL,"
    " participant TEXT NOT NULL, given_count INTEGER NOT NULL, given_micro INTEGER NOT NULL,"
    " received_count INTEGER NOT NULL, received_micro INTEGER NOT NULL, balance_micro INTEGER NOT NULL,"
    " intro_made INTEGER NOT NULL, intro_received INTEGER NOT NULL, ack_given INTEGER NOT NULL,"
    " ack_received INTEGER NOT NULL, unack_count INTEGER NOT NULL, unack_micro INTEGER NOT NULL,"
    " unack_oldest_at TEXT, counterparts INTEGER NOT NULL, returned_micro INTEGER NOT NULL,"
    " changed_position INTEGER NOT NULL, PRIMARY KEY (tenant, scope, participant))",
    # changed_position: the page that last changed a row, so the KV writer can follow changes by position.
    # It and every pair query read scope "" only, so their indexes hold those rows only: the per-context rows
    # (most participant rows) would be written to them for nothing.
    "CREATE INDEX IF NOT EXISTS view_participants_changed_overall ON view_participants (changed_position)"
    " WHERE scope = ''",
    "CREATE INDEX IF NOT EXISTS view_participants_balance ON view_participants"
    " (tenant, scope, balance_micro DESC, participant)",
    "CREATE INDEX IF NOT EXISTS view_participants_given ON view_participants"
    " (tenant, scope, given_micro DESC, participant)",
    "CREATE INDEX IF NOT EXISTS view_participants_received ON view_participants"
    " (tenant, scope, received_micro DESC, participant)",
    "CREATE TABLE IF NOT EXISTS view_pairs (tenant TEXT NOT NULL, scope TEXT NOT NULL, a TEXT NOT NULL,"
    " b TEXT NOT NULL, ab_count INTEGER NOT NULL, ab_micro INTEGER NOT NULL, ba_count INTEGER NOT NULL,"
    " ba_micro INTEGER NOT NULL, strength_micro INTEGER NOT NULL, first_at TEXT, last_at TEXT,"
    " decayed_ab REAL NOT NULL, decayed_ba REAL NOT NULL, changed_position INTEGER NOT NULL,"
    " PRIMARY KEY (tenant, scope, a, b))",
    "CREATE INDEX IF NOT EXISTS view_pairs_changed_overall ON view_pairs (changed_position) WHERE scope = ''",
    "CREATE INDEX IF NOT EXISTS view_pairs_strength_overall ON view_pairs (tenant, strength_micro DESC)"
    " WHERE scope = ''",
    "CREATE INDEX IF NOT EXISTS view_pairs_b_overall ON view_pairs (tenant, b) WHERE scope = ''",
    "CREATE TABLE IF NOT EXISTS view_tenants (tenant TEXT PRIMARY KEY, changed_position INTEGER NOT NULL)",
)
TABLES = (
    "view_gives",
    "view_introductions",
    "view_acknowledgements",
    "view_participants",
    "view_pairs",
    "view_tenants",
)


def to_micro(value: str) -> int:
    return int(Decimal(value).scaleb(6))


def decay_exponent(occurred_at: str) -> float:
    """2^((t - epoch) / half-life) for a fact's time: the as_of-free part of its influence weight."""
    moment = datetime.fromisoformat(occurred_at)
    return 2.0 ** ((moment - DECAY_EPOCH).total_seconds() / 86_400 / HALF_LIFE_DAYS)


def scopes_of(context: dict[str, str] | None) -> tuple[str, ...]:
    if not context:
        return ("",)
    return ("", *(f"{name}={context_key(context[name])}" for name in CONTEXT_DIMENSIONS if name in context))


def scope_filter(scope: str) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (on a fact table) and its parameter that select one scope."""
    if not scope:
        return "", ()
    name, _, key = scope.partition("=")
    assert name in CONTEXT_DIMENSIONS
    return f" AND {name} = ?", (key,)


# --- rows ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class GiveRow:
    tenant: str
    event_id: str
    position: int
    external_id: str
    giver: str
    receiver: str
    value_micro: int
    occurred_at: str
    location: str | None
    activity: str | None
    subject: str | None
    live: int
    acknowledged: int

    @property
    def scopes(self) -> tuple[str, ...]:
        return _row_scopes(self)

    @property
    def pair(self) -> tuple[str, str]:
        return min(self.giver, self.receiver), max(self.giver, self.receiver)


@dataclass(slots=True)
class IntroductionRow:
    tenant: str
    event_id: str
    position: int
    external_id: str
    introducer: str
    a: str
    b: str
    occurred_at: str
    location: str | None
    activity: str | None
    subject: str | None
    live: int

    @property
    def scopes(self) -> tuple[str, ...]:
        return _row_scopes(self)


@dataclass(slots=True)
class AcknowledgementRow:
    tenant: str
    event_id: str
    position: int
    ref_event_id: str
    acknowledger: str
    occurred_at: str
    live: int


@dataclass(slots=True)
class ParticipantRow:
    given_count: int = 0
    given_micro: int = 0
    received_count: int = 0
    received_micro: int = 0
    intro_made: int = 0
    intro_received: int = 0
    ack_given: int = 0
    ack_received: int = 0
    unack_count: int = 0
    unack_micro: int = 0
    unack_oldest_at: str | None = None
    counterparts: int = 0
    returned_micro: int = 0


@dataclass(slots=True)
class PairRow:
    ab_count: int = 0
    ab_micro: int = 0
    ba_count: int = 0
    ba_micro: int = 0
    first_at: str | None = None
    last_at: str | None = None
    decayed_ab: float = 0.0
    decayed_ba: float = 0.0

    @property
    def reciprocated_micro(self) -> int:
        return min(self.ab_micro, self.ba_micro)


def _row_scopes(row: GiveRow | IntroductionRow) -> tuple[str, ...]:
    scopes = [""]
    for name in CONTEXT_DIMENSIONS:
        key = getattr(row, name)
        if key is not None:
            scopes.append(f"{name}={key}")
    return tuple(scopes)


FACT_ROWS: dict[str, type] = {
    "view_gives": GiveRow,
    "view_introductions": IntroductionRow,
    "view_acknowledgements": AcknowledgementRow,
}
PARTICIPANT_COLUMNS = [f.name for f in fields(ParticipantRow)]
PAIR_COLUMNS = [f.name for f in fields(PairRow)]

Fact = GiveRow | IntroductionRow | AcknowledgementRow
ParticipantKey = tuple[str, str, str]  # tenant, scope, participant
PairKey = tuple[str, str, str, str]  # tenant, scope, a, b


def row_from_fact(fact: RecordedFact, position: int) -> Fact | None:
    """The view's row for a give, introduction or acknowledgement (None for a reversal)."""
    tenant, event_id = fact.tenant, fact.event_id
    context = (fact.context if isinstance(fact, Give | Introduction) else None) or {}
    keys = {name: context_key(context[name]) if name in context else None for name in CONTEXT_DIMENSIONS}
    if isinstance(fact, Give):
        return GiveRow(
            tenant, event_id, position, fact.external_id, fact.giver, fact.receiver,
            to_micro(fact.value), fact.occurred_at, **keys, live=1, acknowledged=0,
        )  # fmt: skip
    if isinstance(fact, Introduction):
        a, b = sorted(fact.introduced)
        return IntroductionRow(
            tenant, event_id, position, fact.external_id, fact.introducer, a, b, fact.occurred_at,
            **keys, live=1,
        )  # fmt: skip
    if isinstance(fact, Acknowledgement):
        return AcknowledgementRow(
            tenant, event_id, position, _ref_event_id(fact), fact.acknowledger, fact.occurred_at, live=1
        )
    return None


def _ref_event_id(fact: Acknowledgement | Reversal) -> str:
    return str(fact.ref.event_id(fact.tenant))


# --- one page -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppliedPage:
    """What one committed page changed, for whoever publishes it at once (the KV writer)."""

    position: int  # the view's position after the page
    balances: list[tuple[str, str, ParticipantRow]]  # tenant, participant, row: the overall ones it changed


class Page:
    """The rows one page of facts touches, changed in memory in log order, then written back."""

    def __init__(self, cursor: ViewCursor) -> None:
        self.cursor = cursor
        self.facts: dict[tuple[str, str], Fact] = {}
        self.new_facts: set[tuple[str, str]] = set()
        self.changed_facts: set[tuple[str, str]] = set()
        self.acks_by_ref: dict[tuple[str, str], list[AcknowledgementRow]] = {}
        self.participants: dict[ParticipantKey, ParticipantRow] = {}
        self.pairs: dict[PairKey, PairRow] = {}
        self.dirty_participants: set[ParticipantKey] = set()
        self.dirty_pairs: set[PairKey] = set()
        self.oldest_to_recompute: set[ParticipantKey] = set()
        self.span_to_recompute: set[PairKey] = set()
        self.tenants: dict[str, int] = {}
        self.page_rows: dict[int, Fact | None] = {}

    # loading

    def load(self, page: list[StoredFact]) -> None:
        own = {(f.fact.tenant, f.fact.event_id) for f in page}
        refs = {(f.fact.tenant, _ref_event_id(f.fact)) for f in page if isinstance(f.fact, Acknowledgement | Reversal)}
        self._load_facts(refs - own)
        second_hop = {
            (row.tenant, row.ref_event_id) for row in self.facts.values() if isinstance(row, AcknowledgementRow)
        }
        self._load_facts(second_hop - own - set(self.facts))
        introductions = [k for k, row in self.facts.items() if isinstance(row, IntroductionRow)]
        self._load_acknowledgements_of(introductions)
        participant_keys: set[ParticipantKey] = set()
        pair_keys: set[PairKey] = set()
        self.page_rows = {f.position: row_from_fact(f.fact, f.position) for f in page}
        for row in [*filter(None, self.page_rows.values()), *self.facts.values()]:
            self._keys_of(row, participant_keys, pair_keys)
        self._load_rows("view_participants", ("tenant", "scope", "participant"), participant_keys)
        self._load_rows("view_pairs", ("tenant", "scope", "a", "b"), pair_keys)

    def _keys_of(self, row: Fact, participants: set[ParticipantKey], pairs: set[PairKey]) -> None:
        if isinstance(row, GiveRow):
            for scope in row.scopes:
                participants.update({(row.tenant, scope, row.giver), (row.tenant, scope, row.receiver)})
                pairs.add((row.tenant, scope, *row.pair))
        elif isinstance(row, IntroductionRow):
            pairs.add((row.tenant, "", row.a, row.b))
            for scope in row.scopes:
                participants.update({(row.tenant, scope, p) for p in (row.introducer, row.a, row.b)})
            for ack in self.acks_by_ref.get((row.tenant, row.event_id), ()):
                participants.update((row.tenant, scope, ack.acknowledger) for scope in row.scopes)
        else:
            participants.add((row.tenant, "", row.acknowledger))
            target = self.facts.get((row.tenant, row.ref_event_id))
            if target is not None:
                self._keys_of(target, participants, pairs)
                if not isinstance(target, AcknowledgementRow):
                    participants.update((row.tenant, scope, row.acknowledger) for scope in target.scopes)

    def _load_facts(self, keys: set[tuple[str, str]]) -> None:
        for table, row_type in FACT_ROWS.items():
            for found in self._select(table, ("tenant", "event_id"), keys):
                row = row_type(*found)
                self.facts[(row.tenant, row.event_id)] = row

    def _load_acknowledgements_of(self, introductions: list[tuple[str, str]]) -> None:
        for found in self._select("view_acknowledgements", ("tenant", "ref_event_id"), set(introductions)):
            row = AcknowledgementRow(*found)
            if row.live:
                self.acks_by_ref.setdefault((row.tenant, row.ref_event_id), []).append(row)
                self.facts.setdefault((row.tenant, row.event_id), row)

    def _load_rows(self, table: str, key_columns: tuple[str, ...], keys: set[tuple[str, ...]]) -> None:
        width = len(key_columns)
        target, row_type = (
            (self.participants, ParticipantRow) if table == "view_participants" else (self.pairs, PairRow)
        )
        for found in self._select(table, key_columns, keys):
            values = tuple(found)
            target[values[:width]] = row_type(*values[width:])  # type: ignore[index]

    def _select(self, table: str, key_columns: tuple[str, ...], keys: set[tuple[str, ...]]) -> Iterable[Any]:
        return self.cursor.lookup(table, _columns(table), key_columns, keys)

    # applying, in log order

    def participant(self, tenant: str, scope: str, participant: str) -> ParticipantRow:
        key = (tenant, scope, participant)
        row = self.participants.get(key)
        if row is None:
            row = self.participants[key] = ParticipantRow()
        self.dirty_participants.add(key)
        return row

    def pair(self, tenant: str, scope: str, a: str, b: str) -> PairRow:
        key = (tenant, scope, a, b)
        row = self.pairs.get(key)
        if row is None:
            row = self.pairs[key] = PairRow()
        self.dirty_pairs.add(key)
        return row

    def apply(self, stored: StoredFact) -> None:
        fact = stored.fact
        self.tenants[fact.tenant] = stored.position
        row = self.page_rows[stored.position]
        if row is not None:
            key = (row.tenant, row.event_id)
            self.facts[key] = row
            self.new_facts.add(key)
        if isinstance(row, GiveRow):
            self._count_give(row, +1)
        elif isinstance(row, IntroductionRow):
            self._count_introduction(row, +1)
        elif isinstance(row, AcknowledgementRow):
            self.participant(row.tenant, "", row.acknowledger)
            self.acks_by_ref.setdefault((row.tenant, row.ref_event_id), []).append(row)
            self._count_acknowledgement(row, +1)
        else:
            self._reverse(self.facts.get((fact.tenant, _ref_event_id(fact))))

    def _changed(self, row: Fact) -> None:
        self.changed_facts.add((row.tenant, row.event_id))

    def _count_give(self, give: GiveRow, sign: int) -> None:
        a, b = give.pair
        weight = decay_exponent(give.occurred_at) * give.value_micro / MICRO * (2 if give.acknowledged else 1)
        for scope in give.scopes:
            giver = self.participant(give.tenant, scope, give.giver)
            receiver = self.participant(give.tenant, scope, give.receiver)
            giver.given_count += sign
            giver.given_micro += sign * give.value_micro
            receiver.received_count += sign
            receiver.received_micro += sign * give.value_micro
            if not give.acknowledged:
                self._count_unacknowledged(give, receiver, (give.tenant, scope, give.receiver), sign)
            self._count_pair(give, scope, a, b, sign, weight if scope == "" else 0.0)

    def _count_unacknowledged(self, give: GiveRow, receiver: ParticipantRow, key: ParticipantKey, sign: int) -> None:
        receiver.unack_count += sign
        receiver.unack_micro += sign * give.value_micro
        if sign > 0:
            if receiver.unack_oldest_at is None or give.occurred_at < receiver.unack_oldest_at:
                receiver.unack_oldest_at = give.occurred_at
        elif give.occurred_at == receiver.unack_oldest_at:
            self.oldest_to_recompute.add(key)

    def _count_pair(self, give: GiveRow, scope: str, a: str, b: str, sign: int, weight: float) -> None:
        pair = self.pair(give.tenant, scope, a, b)
        was_live = pair.ab_count + pair.ba_count > 0
        reciprocated_before = pair.reciprocated_micro
        if give.giver == a:
            pair.ab_count += sign
            pair.ab_micro += sign * give.value_micro
            pair.decayed_ab += sign * weight
        else:
            pair.ba_count += sign
            pair.ba_micro += sign * give.value_micro
            pair.decayed_ba += sign * weight
        is_live = pair.ab_count + pair.ba_count > 0
        change = pair.reciprocated_micro - reciprocated_before
        for participant in (a, b):
            row = self.participant(give.tenant, scope, participant)
            row.returned_micro += change
            row.counterparts += int(is_live) - int(was_live)
        if sign > 0:
            pair.first_at = min(filter(None, (pair.first_at, give.occurred_at)))
            pair.last_at = max(filter(None, (pair.last_at, give.occurred_at)))
        elif give.occurred_at in (pair.first_at, pair.last_at):
            self.span_to_recompute.add((give.tenant, scope, a, b))

    def _count_introduction(self, intro: IntroductionRow, sign: int) -> None:
        self.pair(intro.tenant, "", intro.a, intro.b)  # its introduced_by changed: the row is rewritten (and KV)
        for scope in intro.scopes:
            self.participant(intro.tenant, scope, intro.introducer).intro_made += sign
            self.participant(intro.tenant, scope, intro.a).intro_received += sign
            self.participant(intro.tenant, scope, intro.b).intro_received += sign

    def _count_acknowledgement(self, ack: AcknowledgementRow, sign: int) -> None:
        target = self.facts.get((ack.tenant, ack.ref_event_id))
        if target is None or not target.live or isinstance(target, AcknowledgementRow):
            return  # a reversed fact's acknowledgements stopped counting with it
        if isinstance(target, GiveRow):
            self._acknowledge_give(target, sign)
        acknowledged_party = target.giver if isinstance(target, GiveRow) else target.introducer
        for scope in target.scopes:
            self.participant(ack.tenant, scope, ack.acknowledger).ack_given += sign
            self.participant(ack.tenant, scope, acknowledged_party).ack_received += sign

    def _acknowledge_give(self, give: GiveRow, sign: int) -> None:
        """An acknowledged give is no longer pending thanks, and weighs double in influence."""
        for scope in give.scopes:
            key = (give.tenant, scope, give.receiver)
            self._count_unacknowledged(give, self.participant(*key), key, -sign)
        pair = self.pair(give.tenant, "", *give.pair)
        weight = sign * decay_exponent(give.occurred_at) * give.value_micro / MICRO
        if give.giver == give.pair[0]:
            pair.decayed_ab += weight
        else:
            pair.decayed_ba += weight
        give.acknowledged = 1 if sign > 0 else 0
        self._changed(give)

    def _reverse(self, target: Fact | None) -> None:
        if target is None or not target.live:
            return  # the write side refuses both; an old log is read as it is
        if isinstance(target, AcknowledgementRow):
            self._count_acknowledgement(target, -1)
        elif isinstance(target, IntroductionRow):
            for ack in self.acks_by_ref.get((target.tenant, target.event_id), ()):
                if ack.live:
                    self._count_acknowledgement(ack, -1)
            self._count_introduction(target, -1)
        else:
            if target.acknowledged:  # its acknowledgement stops counting with it
                for scope in target.scopes:
                    self.participant(target.tenant, scope, target.receiver).ack_given -= 1
                    self.participant(target.tenant, scope, target.giver).ack_received -= 1
            self._count_give(target, -1)
        target.live = 0
        self._changed(target)

    # writing back, in the page's transaction

    def save(self, position: int) -> None:
        for table, row_type in FACT_ROWS.items():
            columns = _columns(table)
            rows = [self.facts[k] for k in sorted(self.new_facts) if isinstance(self.facts[k], row_type)]
            self.cursor.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [_values(row) for row in rows],
            )
            changed = [
                self.facts[k]
                for k in sorted(self.changed_facts - self.new_facts)
                if isinstance(self.facts[k], row_type)
            ]
            self.cursor.executemany(
                f"UPDATE {table} SET live = ?{', acknowledged = ?' if row_type is GiveRow else ''}"
                " WHERE tenant = ? AND event_id = ?",
                [
                    (row.live, *((row.acknowledged,) if isinstance(row, GiveRow) else ()), row.tenant, row.event_id)
                    for row in changed
                ],
            )
        self._recompute_extremes()
        self._upsert(
            "view_participants",
            ("tenant", "scope", "participant"),
            self.participants,
            self.dirty_participants,
            position,
        )
        self._upsert("view_pairs", ("tenant", "scope", "a", "b"), self.pairs, self.dirty_pairs, position)
        self.cursor.executemany(
            "INSERT INTO view_tenants (tenant, changed_position) VALUES (?, ?) "
            "ON CONFLICT (tenant) DO UPDATE SET changed_position = excluded.changed_position",
            sorted(self.tenants.items()),
        )

    def _recompute_extremes(self) -> None:
        """Re-reads a minimum or maximum whose fact was reversed or acknowledged (rare, so read, not kept)."""
        for tenant, scope, participant in sorted(self.oldest_to_recompute):
            condition, params = scope_filter(scope)
            found = self.cursor.execute(
                "SELECT MIN(occurred_at) FROM view_gives WHERE tenant = ? AND receiver = ? AND live = 1"
                f" AND acknowledged = 0{condition}",
                (tenant, participant, *params),
            )
            self.participants[(tenant, scope, participant)].unack_oldest_at = _first(found)
        for tenant, scope, a, b in sorted(self.span_to_recompute):
            condition, params = scope_filter(scope)
            one_way = (
                "SELECT MIN(occurred_at) AS first_at, MAX(occurred_at) AS last_at FROM view_gives"
                f" WHERE tenant = ? AND giver = ? AND receiver = ? AND live = 1{condition}"
            )  # each direction by its index; an OR of both would scan the tenant's gives
            found = self.cursor.execute(
                f"SELECT MIN(first_at), MAX(last_at) FROM ({one_way} UNION ALL {one_way}) AS both_ways",
                (tenant, a, b, *params, tenant, b, a, *params),
            )
            pair = self.pairs[(tenant, scope, a, b)]
            pair.first_at, pair.last_at = tuple(found[0]) if found else (None, None)

    def _upsert(
        self, table: str, key_columns: tuple[str, ...], rows: dict[Any, Any], dirty: set[Any], position: int
    ) -> None:
        value_columns = PARTICIPANT_COLUMNS if table == "view_participants" else PAIR_COLUMNS
        derived = ["balance_micro" if table == "view_participants" else "strength_micro", "changed_position"]
        columns = [*key_columns, *value_columns, *derived]
        updates = ", ".join(f"{c} = excluded.{c}" for c in [*value_columns, *derived])
        statement = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {updates}"
        )
        values = []
        for key in sorted(dirty):
            row = rows[key]
            extra = (
                row.given_micro - row.received_micro if table == "view_participants" else row.ab_micro + row.ba_micro
            )
            values.append((*key, *_values(row), extra, position))
        self.cursor.executemany(statement, values)


def _columns(table: str) -> list[str]:
    if table in FACT_ROWS:
        return [f.name for f in fields(FACT_ROWS[table])]
    key = ["tenant", "scope", "participant"] if table == "view_participants" else ["tenant", "scope", "a", "b"]
    return [*key, *(PARTICIPANT_COLUMNS if table == "view_participants" else PAIR_COLUMNS)]


_GETTERS: dict[type, Any] = {}


def _values(row: Any) -> tuple[Any, ...]:
    """A row's column values in declaration order (one attrgetter per row type: this runs per row)."""
    getter = _GETTERS.get(type(row))
    if getter is None:
        getter = _GETTERS[type(row)] = attrgetter(*(f.name for f in fields(row)))
    return getter(row)


def _first(rows: list[Any]) -> Any:
    return rows[0][0] if rows else None


class ReciprocityProjection:
    """The reciprocity view family: one transaction per page, tracking included."""

    name = VIEW
    tables = TABLES

    def __init__(self, store: ViewStore) -> None:
        self.store = store
        self.analyzed_at = 0  # the position and time of the last ANALYZE (PostgreSQL)
        self.analyzed_time = float("-inf")

    def process_page(self, page: list[StoredFact], position: int | None = None) -> AppliedPage:
        """Applies one page of facts and records the view at `position`, its last fact's unless the
        follower left facts out of it (a quarantined tenant's: the page may then be empty); returns what
        it changed."""
        position = page[-1].position if position is None else position
        with self.store.transaction() as cursor:
            state = Page(cursor)
            state.load(page)
            for stored in page:
                state.apply(stored)
            state.save(position)
            self.store.record_position(cursor, VIEW, position)
        if self.store.postgres and self._analyze_due(position):
            self.store.analyze(TABLES)
            self.analyzed_at, self.analyzed_time = position, time.monotonic()
        balances = [(key[0], key[2], state.participants[key]) for key in state.dirty_participants if not key[1]]
        return AppliedPage(position, balances)

    def _analyze_due(self, position: int) -> bool:
        """After a tenth more facts (and 30 s): a tenant that grew since the last ANALYZE is planned as
        if it had no rows, and PostgreSQL then walks its whole time index for one receiver's oldest give."""
        grown = position - self.analyzed_at >= max(ANALYZE_FACTS_MIN, self.analyzed_at // 10)
        return grown and time.monotonic() - self.analyzed_time >= ANALYZE_INTERVAL_S
