"""The reciprocity views (DESIGN section 4): per participant, per pair, and the same per context value.

Built page by page from the store's log: load the rows a page touches, apply its facts in order in memory
(each change of a fact's state as what the rules of `reciprocity_rules` count it for after, less before),
write the changed rows and the view's tracking position in one transaction. Values are kept as integer
micro-units (6 decimal places), so sums are exact. A context value is a "scope" such as
`subject=python`; scope "" holds the overall totals.

Participants are named as the views show them (ids, or tombstones: `view_names`). A `participant.erased` fact
cuts its page in two: the facts before it are saved, the erasure renames the id in the database
(`projections/erasure.py`), and the facts after it load their rows again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from operator import attrgetter
from typing import Any

from contracts.types import context_key
from ledger.facts import Acknowledgement, Erasure, Give, Introduction, RecordedFact, Reversal
from ledger.store import StoredFact
from projections import erasure, view_names
from projections.reciprocity_rules import (
    ACKNOWLEDGED_PARTY,
    CONTEXT_DIMENSIONS,
    DECAYED_BACKWARD,
    DECAYED_FORWARD,
    EXTREMES,
    OVERALL,
    PAIR_RULES,
    PARTICIPANT_RULES,
    ROLES,
    THANKED,
    THANKING,
    Condition,
    Kind,
    Measure,
    Scopes,
    balance_micro,
    decay_exponent,
    decayed_weight,
    fact_scopes,
    give_conditions,
    pair_in_use,
    reciprocated_micro,
    strength_micro,
)
from projections.reciprocity_rules import DECAY_EPOCH as DECAY_EPOCH  # the views' readers import these from here
from projections.reciprocity_rules import HALF_LIFE_DAYS as HALF_LIFE_DAYS
from projections.reciprocity_rules import MICRO as MICRO
from projections.view_names import TenantToken
from projections.viewstore import ViewCursor, ViewStore

VIEW = "reciprocity"
ANALYZE_FACTS_MIN = 5_000
ANALYZE_INTERVAL_S = 30.0

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
    # Added in views schema version 3 (projections/graph.py). The graph's heaviest edges, each direction's in
    # its own index walk, in every scope (a context filter reads a scope's rows).
    "CREATE INDEX IF NOT EXISTS view_pairs_forward ON view_pairs (tenant, scope, ab_micro DESC, a, b)"
    " WHERE ab_count > 0",
    "CREATE INDEX IF NOT EXISTS view_pairs_backward ON view_pairs (tenant, scope, ba_micro DESC, b, a)"
    " WHERE ba_count > 0",
    # Upkeep's dormant ties, oldest first: a walk from the quietest pair, not a sort of the top quartile.
    "CREATE INDEX IF NOT EXISTS view_pairs_last_overall ON view_pairs (tenant, last_at, a, b) WHERE scope = ''",
    # erased_position: the last erasure in the tenant, which renamed rows that influence keeps between recomputes.
    "CREATE TABLE IF NOT EXISTS view_tenants (tenant TEXT PRIMARY KEY, changed_position INTEGER NOT NULL,"
    " erased_position INTEGER NOT NULL DEFAULT 0)",
    *view_names.DDL,
    *erasure.DDL,
)
TABLES = (
    "view_gives",
    "view_introductions",
    "view_acknowledgements",
    "view_participants",
    "view_pairs",
    "view_tenants",
)
# Not reset with them: view_names, which a rebuild compares with what it finds (`replay.Replay.rewrite_names`),
# and view_erasures, whose KV keys stay to be purged after a rebuild.


def to_micro(value: str) -> int:
    return int(Decimal(value).scaleb(6))


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
        return reciprocated_micro(self.ab_micro, self.ba_micro)


def _row_scopes(row: GiveRow | IntroductionRow) -> tuple[str, ...]:
    return fact_scopes((row.location, row.activity, row.subject))


FACT_ROWS: dict[str, type] = {
    "view_gives": GiveRow,
    "view_introductions": IntroductionRow,
    "view_acknowledgements": AcknowledgementRow,
}
PARTICIPANT_COLUMNS = [f.name for f in fields(ParticipantRow)]
PAIR_COLUMNS = [f.name for f in fields(PairRow)]

FactRow = GiveRow | IntroductionRow | AcknowledgementRow
ParticipantKey = tuple[str, str, str]  # tenant, scope, participant
PairKey = tuple[str, str, str, str]  # tenant, scope, a, b


# The rules as Page applies them. A set of conditions is a bit mask here (set operations on frozensets of enum
# members cost more than the rest of a give), and each mask's rules of a kind are grouped by participant.
CONDITION_BIT = {condition: 1 << n for n, condition in enumerate(Condition)}
LIVE = CONDITION_BIT[Condition.LIVE]
GIVE_STATE = {
    (live, acknowledged): sum(CONDITION_BIT[c] for c in give_conditions(live, acknowledged))
    for live in (0, 1)
    for acknowledged in (0, 1)
}


@dataclass(frozen=True, slots=True)
class Effects:
    """What the rules of some conditions count a give or introduction for. `parties`: per participant (who, from
    the fact's row; overall scope only), the columns (name, adds the value rather than one) and extremes
    (name, earliest); `pair`: the columns each way (forward, backward, adds the value); `pair_extremes`."""

    parties: tuple[tuple[Callable[[Any], str], bool, tuple[tuple[str, bool], ...], tuple[tuple[str, bool], ...]], ...]
    pair: tuple[tuple[str, str, bool], ...]
    pair_extremes: tuple[tuple[str, bool], ...]


def _effects(kind: Kind, mask: int) -> Effects:
    def met(condition: Condition) -> bool:
        return bool(mask & CONDITION_BIT[condition])

    roles = [role for role in ROLES if role.kind is kind]
    parties = []
    for role in roles:
        columns = tuple(
            (r.column, r.measure is Measure.VALUE) for r in PARTICIPANT_RULES if r.role == role and met(r.condition)
        )
        extremes = tuple((e.column, e.earliest) for e in EXTREMES if e.role == role and met(e.condition))
        if columns or extremes:
            assert role.attribute is not None, role  # the thanked party is on another row: `Page._count_thanks`
            parties.append((attrgetter(role.attribute), role.scopes is Scopes.OVERALL, columns, extremes))
    is_give = kind is Kind.GIVE
    pair = tuple(
        (r.forward, r.backward, r.measure is Measure.VALUE) for r in PAIR_RULES if is_give and met(r.condition)
    )
    pair_extremes = tuple((e.column, e.earliest) for e in EXTREMES if e.role is None and is_give and met(e.condition))
    return Effects(tuple(parties), pair, pair_extremes)


GIVE_EFFECTS = [_effects(Kind.GIVE, mask) for mask in range(1 << len(Condition))]
INTRODUCTION_EFFECTS = _effects(Kind.INTRODUCTION, LIVE)
THANKS_EFFECTS = tuple(
    (r.role, r.column)
    for r in PARTICIPANT_RULES
    if r.role.kind is Kind.ACKNOWLEDGEMENT and r.condition is Condition.COUNTED
)  # one each


def _weight(give: GiveRow) -> float:
    """What a give adds to its pair's decayed weight in its state (nothing once reversed)."""
    return decayed_weight(decay_exponent(give.occurred_at), give.value_micro, give.acknowledged) if give.live else 0.0


def _extreme(row: Any, column: str, earliest: bool, at: str, sign: int, key: Any, to_recompute: set[Any]) -> None:
    """Keeps a row's earliest or latest time as a fact starts counting; one that stops counting and held it
    is read again (`Page._recompute_extremes`): the next one is not kept."""
    current = getattr(row, column)
    if sign > 0:
        if current is None or (at < current if earliest else at > current):
            setattr(row, column, at)
    elif at == current:
        to_recompute.add(key)


def row_from_fact(fact: RecordedFact, position: int) -> FactRow | None:
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
        self.facts: dict[tuple[str, str], FactRow] = {}
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
        self.page_rows: dict[int, FactRow | None] = {}

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

    def _keys_of(self, row: FactRow, participants: set[ParticipantKey], pairs: set[PairKey]) -> None:
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
            self._give_changed(row, 0, 0.0)
        elif isinstance(row, IntroductionRow):
            self._count(row, INTRODUCTION_EFFECTS, +1)
        elif isinstance(row, AcknowledgementRow):
            self.participant(row.tenant, OVERALL, row.acknowledger)  # ACKNOWLEDGER: a row, no column
            self.acks_by_ref.setdefault((row.tenant, row.ref_event_id), []).append(row)
            self._acknowledge(row, +1)
        else:
            self._reverse(self.facts.get((fact.tenant, _ref_event_id(fact))))

    def _changed(self, row: FactRow) -> None:
        self.changed_facts.add((row.tenant, row.event_id))

    def _set_give_state(self, give: GiveRow, live: int, acknowledged: int) -> None:
        before, weight_before = GIVE_STATE[give.live, give.acknowledged], _weight(give)
        give.live, give.acknowledged = live, acknowledged
        self._give_changed(give, before, weight_before)
        self._changed(give)

    def _give_changed(self, give: GiveRow, before: int, weight_before: float) -> None:
        """A give's change of state: the rules of the conditions it meets now, less those of the ones it met."""
        after = GIVE_STATE[give.live, give.acknowledged]
        if after & ~before:
            self._count(give, GIVE_EFFECTS[after & ~before], +1)
        if before & ~after:
            self._count(give, GIVE_EFFECTS[before & ~after], -1)
        a, b = give.pair
        pair = self.pair(give.tenant, OVERALL, a, b)
        column = DECAYED_FORWARD if give.giver == a else DECAYED_BACKWARD
        setattr(pair, column, getattr(pair, column) + (_weight(give) - weight_before))

    def _count(self, row: GiveRow | IntroductionRow, effects: Effects, sign: int) -> None:
        """Adds (sign +1) or takes away (-1) what some rules count a give or introduction for, in its scopes."""
        value = sign * row.value_micro if isinstance(row, GiveRow) else 0
        participants, dirty = self.participants, self.dirty_participants  # `participant`, inlined: it runs most
        for scope in row.scopes:
            for party_of, overall_only, columns, extremes in effects.parties:
                if overall_only and scope:
                    continue
                key = (row.tenant, scope, party_of(row))
                participant = participants.get(key)
                if participant is None:
                    participant = participants[key] = ParticipantRow()
                dirty.add(key)
                for column, by_value in columns:
                    setattr(participant, column, getattr(participant, column) + (value if by_value else sign))
                for column, earliest in extremes:
                    _extreme(participant, column, earliest, row.occurred_at, sign, key, self.oldest_to_recompute)
            if effects.pair and isinstance(row, GiveRow):
                self._count_pair(row, scope, effects, sign)
        if isinstance(row, IntroductionRow):  # its introduced_by changed: the pair's row is rewritten (and KV)
            self.pair(row.tenant, OVERALL, row.a, row.b)

    def _count_pair(self, give: GiveRow, scope: str, effects: Effects, sign: int) -> None:
        a, b = give.pair
        key = (give.tenant, scope, a, b)
        pair = self.pair(*key)
        was_in_use = pair_in_use(pair.ab_count, pair.ba_count)
        reciprocated_before = pair.reciprocated_micro
        forward = give.giver == a
        for forward_column, backward_column, by_value in effects.pair:
            column = forward_column if forward else backward_column
            setattr(pair, column, getattr(pair, column) + (sign * give.value_micro if by_value else sign))
        returned = pair.reciprocated_micro - reciprocated_before
        counterparts = int(pair_in_use(pair.ab_count, pair.ba_count)) - int(was_in_use)
        participants, dirty = self.participants, self.dirty_participants  # `participant`, inlined
        for end in ((give.tenant, scope, a), (give.tenant, scope, b)):
            row = participants.get(end)
            if row is None:
                row = participants[end] = ParticipantRow()
            dirty.add(end)
            row.returned_micro += returned
            row.counterparts += counterparts
        for column, earliest in effects.pair_extremes:
            _extreme(pair, column, earliest, give.occurred_at, sign, key, self.span_to_recompute)

    def _acknowledge(self, ack: AcknowledgementRow, sign: int) -> None:
        """An acknowledgement starts (sign +1) or stops (-1) counting, with its fact: a give's is no longer
        (or again) pending thanks."""
        target = self.facts.get((ack.tenant, ack.ref_event_id))
        if target is None or not target.live or isinstance(target, AcknowledgementRow):
            return  # a reversed fact's acknowledgements stopped counting with it
        if isinstance(target, GiveRow):
            self._set_give_state(target, target.live, 1 if sign > 0 else 0)
        self._count_thanks(target, ack.acknowledger, sign)

    def _count_thanks(self, target: GiveRow | IntroductionRow, acknowledger: str, sign: int) -> None:
        """The rules of a counted acknowledgement, in its fact's scopes."""
        kind = Kind.GIVE if isinstance(target, GiveRow) else Kind.INTRODUCTION
        parties = {THANKING: acknowledger, THANKED: getattr(target, ACKNOWLEDGED_PARTY[kind])}
        for scope in target.scopes:
            for role, column in THANKS_EFFECTS:
                participant = self.participant(target.tenant, scope, parties[role])
                setattr(participant, column, getattr(participant, column) + sign)

    def _reverse(self, target: FactRow | None) -> None:
        if target is None or not target.live:
            return  # the write side refuses both; an old log is read as it is
        if isinstance(target, AcknowledgementRow):
            self._acknowledge(target, -1)
        elif isinstance(target, IntroductionRow):
            for ack in self.acks_by_ref.get((target.tenant, target.event_id), ()):
                if ack.live:
                    self._count_thanks(target, ack.acknowledger, -1)
            self._count(target, INTRODUCTION_EFFECTS, -1)
        else:
            if target.acknowledged:
                # Only its receiver may acknowledge a give, once (ledger rules): that acknowledgement stops counting.
                self._count_thanks(target, target.receiver, -1)
            self._set_give_state(target, 0, target.acknowledged)
        target.live = 0
        self._changed(target)

    # writing back, in the page's transaction

    def save(self, position: int) -> None:
        new_facts = [self.facts[k] for k in sorted(self.new_facts)]
        for table, row_type in FACT_ROWS.items():
            columns = _columns(table)
            rows = [row for row in new_facts if type(row) is row_type]
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
                balance_micro(row.given_micro, row.received_micro)
                if table == "view_participants"
                else strength_micro(row.ab_micro, row.ba_micro)
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


def _segments(page: list[StoredFact]) -> Iterable[tuple[list[StoredFact], StoredFact | None]]:
    """The page cut at its erasures: the facts before each (applied in memory, then saved) and the erasure, which
    renames rows in the database; the facts after it load the rows again, renamed."""
    start = 0
    for at, stored in enumerate(page):
        if isinstance(stored.fact, Erasure):
            yield page[start:at], stored
            start = at + 1
    yield page[start:], None


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

    def process_page(
        self, page: list[StoredFact], position: int | None = None, new_names: Mapping[TenantToken, str] | None = None
    ) -> AppliedPage:
        """Applies one page of facts and records the view at `position`, its last fact's unless the
        follower left facts out of it (a quarantined tenant's: the page may then be empty); returns what
        it changed. The facts name participants as the views show them (`view_names.ViewNames.resolve`), and
        `new_names` are the names the page met for the first time, recorded with it."""
        position = page[-1].position if position is None else position
        balances: dict[tuple[str, str], ParticipantRow] = {}
        with self.store.transaction() as cursor:
            view_names.insert_names(cursor, new_names or {})
            for facts, erased in _segments(page):
                if facts:
                    state = Page(cursor)
                    state.load(facts)
                    for stored in facts:
                        state.apply(stored)
                    state.save(position)
                    balances.update(
                        ((key[0], key[2]), state.participants[key]) for key in state.dirty_participants if not key[1]
                    )
                if erased is not None:
                    self._erase(cursor, erased, position, balances)
            self.store.record_position(cursor, VIEW, position)
        if self.store.postgres and self._analyze_due(position):
            self.store.analyze(TABLES)
            self.analyzed_at, self.analyzed_time = position, time.monotonic()
        return AppliedPage(position, [(tenant, participant, row) for (tenant, participant), row in balances.items()])

    def _erase(
        self, cursor: ViewCursor, stored: StoredFact, position: int, balances: dict[tuple[str, str], ParticipantRow]
    ) -> None:
        """An erasure between two parts of a page: the balances the page hands on show the tombstone instead."""
        fact = stored.fact
        assert isinstance(fact, Erasure)
        renamed = erasure.erase(cursor, fact.tenant, fact.token, stored.position, position)
        if renamed is None:
            return
        balances.pop((fact.tenant, renamed.participant), None)
        row = cursor.execute(
            f"SELECT {', '.join(PARTICIPANT_COLUMNS)} FROM view_participants "
            "WHERE tenant = ? AND scope = '' AND participant = ?",
            (fact.tenant, renamed.tombstone),
        )
        if row:
            balances[(fact.tenant, renamed.tombstone)] = ParticipantRow(*row[0])

    def _analyze_due(self, position: int) -> bool:
        """After a tenth more facts (and 30 s): a tenant that grew since the last ANALYZE is planned as
        if it had no rows, and PostgreSQL then walks its whole time index for one receiver's oldest give."""
        grown = position - self.analyzed_at >= max(ANALYZE_FACTS_MIN, self.analyzed_at // 10)
        return grown and time.monotonic() - self.analyzed_time >= ANALYZE_INTERVAL_S
