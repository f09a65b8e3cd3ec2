"""A rebuild's participant and pair rows, summed from the final fact rows by numpy, in key order.

`projections/replay.py` replays the log and keeps every fact row as it ended (live, acknowledged). Every
other column of the views follows from those rows and the rules (`projections/reciprocity_rules.py`), so it
is computed here column-wise: each role's touches of a row (giver, receiver, ... in each scope its rule
names) become arrays of integer codes, rows are grouped by sorting, and each rule's count or total is reduced
per group over the touches whose fact meets the rule's condition. Codes are given in sorted order (tenants,
scopes, participants, times), so the groups come out in primary-key order, ready to insert. Column-wise
rather than in Python dicts, where lookups in million-entry dicts are mostly cache misses.

It must give exactly the rows following the log gives: the property test compares every column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from projections.influence_pairs import columns
from projections.reciprocity import PAIR_COLUMNS, PARTICIPANT_COLUMNS
from projections.reciprocity_rules import (
    ACKNOWLEDGED_PARTY,
    ACKNOWLEDGER,
    CONTEXT_DIMENSIONS,
    DECAYED_BACKWARD,
    DECAYED_FORWARD,
    EXTREMES,
    GIVER,
    INTRODUCED_A,
    INTRODUCED_B,
    INTRODUCER,
    PAIR_RULES,
    PARTICIPANT_RULES,
    RECEIVER,
    THANKED,
    THANKING,
    Condition,
    Kind,
    Measure,
    Role,
    Scopes,
    balance_micro,
    decay_exponent,
    decayed_weight,
    pair_in_use,
    reciprocated_micro,
    scope_name,
    strength_micro,
)

if TYPE_CHECKING:
    from projections.replay import Gives

NONE = np.iinfo(np.int64).max  # a time code for "no time" (no live give)
GIVE_PAIR = "give"  # the pair touches' sources, besides the roles' names
INTRODUCTION_PAIR = "introduction"
ACKNOWLEDGED_GIVE_PAIR = "acknowledgement"


@dataclass
class Touches:
    """Rows touched by facts: a tenant, scope and key codes per touch, and the position it counts for. Each
    source (gives' givers, gives' receivers, ...) is one slice, so a measure sums over the slices it needs."""

    width: int  # key codes per touch: 1 for a participant, 2 for a pair
    parts: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    slices: dict[str, slice] = field(default_factory=dict)
    size: int = 0

    def add(self, source: str, tenant: np.ndarray, scope: np.ndarray, *rest: np.ndarray) -> None:
        keys, last = rest[: self.width], rest[self.width]
        self.parts.append((tenant, scope, *keys, last))
        self.slices[source] = slice(self.size, self.size + len(tenant))
        self.size += len(tenant)

    def group(self, sizes: list[int]) -> Grouped:
        stacked = [np.concatenate([part[i] for part in self.parts]) for i in range(self.width + 3)]
        key = _packed(list(zip(stacked[:-1], sizes, strict=True)))
        distinct, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        changed = np.zeros(len(distinct), np.int64)
        np.maximum.at(changed, inverse, stacked[-1])
        return Grouped([column[first] for column in stacked[:-1]], inverse, changed, self.slices)


@dataclass
class Grouped:
    """The rows the touches make, in key order: their code columns, each touch's row, each row's last position."""

    codes: list[np.ndarray]
    row_of: np.ndarray
    changed: np.ndarray
    slices: dict[str, slice]

    def __len__(self) -> int:
        return len(self.changed)

    def rows(self, source: str, where: np.ndarray | None = None) -> np.ndarray:
        rows = self.row_of[self.slices[source]]
        return rows if where is None else rows[where]

    def count(self, source: str, where: np.ndarray) -> np.ndarray:
        return np.bincount(self.rows(source, where), minlength=len(self)).astype(np.int64)

    def total(self, source: str, where: np.ndarray, values: np.ndarray) -> np.ndarray:
        summed = np.zeros(len(self), np.int64)
        np.add.at(summed, self.rows(source, where), values[where])
        return summed


def _packed(columns_and_sizes: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """One int64 per row that sorts as the code columns do, left to right (each column's codes below its size).
    Made dense again whenever the next column would not fit in 62 bits."""
    key, bound = np.zeros(len(columns_and_sizes[0][0]), np.int64), 1
    for column, size in columns_and_sizes:
        if bound * size >= 2**62:
            distinct, key = np.unique(key, return_inverse=True)
            bound = len(distinct)
        key, bound = key * size + column, bound * size
    return key


def in_rows(columns_: list[np.ndarray], chunk: int = 50_000) -> Iterator[tuple[Any, ...]]:
    """Rows of Python values from numpy columns, a chunk at a time: a million rows' Python ints at once would
    take a gigabyte."""
    for start in range(0, len(columns_[0]), chunk):
        yield from zip(*(column[start : start + chunk].tolist() for column in columns_), strict=True)


def _rows_of(table: list[np.ndarray], wanted: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """The row of `table` (code columns in key order, every wanted key among them) that holds each wanted key."""
    both = [np.concatenate((mine, theirs)) for mine, theirs in zip(table, wanted, strict=True)]
    keys = _packed(list(zip(both, sizes, strict=True)))  # one packing for both, so the keys compare
    count = len(table[0])
    if count == len(keys):
        return np.zeros(0, np.int64)  # nothing wanted
    rows = np.minimum(np.searchsorted(keys[:count], keys[count:]), max(count - 1, 0))
    if count == 0 or not np.array_equal(keys[:count][rows], keys[count:]):
        raise RuntimeError("a row that facts touch is missing from the aggregation")  # never silently another row
    return rows


class Codes:
    """Strings as integer codes in sorted order, so comparing codes compares the strings."""

    def __init__(self, values: set[str]) -> None:
        self.values = sorted(values)
        self.index = dict(zip(self.values, range(len(self.values)), strict=True))
        self._objects = np.array([*self.values, None], dtype=object)  # code len(values): None

    def __len__(self) -> int:
        return len(self.values)

    def of(self, values: list[str]) -> np.ndarray:
        return np.fromiter(map(self.index.__getitem__, values), np.int64, len(values))

    def strings(self, codes: np.ndarray) -> np.ndarray:
        """The strings of the codes (an object array); None for NONE."""
        return self._objects[np.minimum(codes, len(self.values))]


def _decayed(
    values: np.ndarray,
    positions: list[int],
    at_codes: np.ndarray,
    times: Codes,
    from_a: np.ndarray,
    pair: Grouped,
    changes: list[tuple[int, int, float]],
) -> tuple[np.ndarray, np.ndarray]:
    """The time-decayed weights of the pairs, each way: each give's weight at its position, and what
    acknowledgements and reversals changed at theirs (`replay.Replay`), added in log order one by one, so the
    floating-point sums are bit for bit those of following the log (`Page._give_changed`)."""
    decays = np.array([decay_exponent(at) for at in times.values], np.float64)[at_codes]
    weights = decayed_weight(decays, values, 0)  # as each give starts: live, not acknowledged
    give_pair = pair.rows(GIVE_PAIR)[: len(values)]  # each give's pair in scope "" (`_in_scopes` lists those first)
    changed = np.array(changes, dtype=[("position", np.int64), ("give", np.int64), ("weight", np.float64)])
    order = np.argsort(np.concatenate((np.array(positions, np.int64), changed["position"])), kind="stable")
    rows = np.concatenate((give_pair, give_pair[changed["give"]]))[order]
    forward = np.concatenate((from_a, from_a[changed["give"]]))[order]
    added = np.concatenate((weights, changed["weight"]))[order]
    decayed_ab, decayed_ba = np.zeros(len(pair)), np.zeros(len(pair))
    np.add.at(decayed_ab, rows[forward], added[forward])  # sequential, in the order given
    np.add.at(decayed_ba, rows[~forward], added[~forward])
    return decayed_ab, decayed_ba


@dataclass
class KindColumns:
    """One kind of fact's rows as code arrays: who is in which role, each fact's last position (its own, or
    its reversal's) and tenant, the conditions each row meets, and a give's value."""

    tenant: np.ndarray
    last: np.ndarray
    people: dict[str, np.ndarray]  # by the attribute a role names
    conditions: dict[Condition, np.ndarray]
    values: np.ndarray | None = None


@dataclass
class RoleTouches:
    """The rows one role touches: one per fact and scope. `fact` is the fact's row in its kind's columns
    (for an acknowledgement's thanks, its row in the thanks)."""

    tenant: np.ndarray
    scope: np.ndarray
    person: np.ndarray
    last: np.ndarray
    fact: np.ndarray


@dataclass
class CodedFacts:
    """Every fact row as integer codes, and each role's touches."""

    tenants: Codes
    scopes: Codes
    people: Codes
    times: Codes
    kinds: dict[Kind, KindColumns]
    roles: dict[Role, RoleTouches]
    give_times: np.ndarray  # each give's time code
    acknowledged_gives: tuple[np.ndarray, np.ndarray]  # (acknowledgement row, its give's row) of counted thanks


def rebuild_rows(
    gives: Gives,
    introductions: dict[str, list[Any]],
    acknowledgements: dict[str, list[Any]],
    touching: set[str],
    reversed_at: dict[str, int],
    decayed_changes: list[tuple[int, int, float]],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The view_participants and view_pairs rows (with balance or strength, and changed_position), as
    columns in primary-key order (`in_rows` makes rows of them). A row's changed_position is the position
    of the last fact about it: its own position while live, its reversal's when reversed."""
    facts = _coded(gives, introductions, acknowledgements, touching, reversed_at)
    sizes = [len(facts.tenants), len(facts.scopes), len(facts.people)]
    person = _participant_touches(facts).group(sizes)
    pair = _pair_touches(facts, gives).group([*sizes, len(facts.people)])
    pair_columns = _pair_columns(facts, pair, gives, decayed_changes)
    participant_columns = _participant_columns(facts, person, pair, pair_columns)
    participant_rows = [
        *_key_strings(facts, person.codes),
        *(participant_columns[name] for name in PARTICIPANT_COLUMNS),
        balance_micro(participant_columns["given_micro"], participant_columns["received_micro"]),
        person.changed,
    ]
    pair_rows = [
        *_key_strings(facts, pair.codes),
        *(pair_columns[name] for name in PAIR_COLUMNS),
        strength_micro(pair_columns["ab_micro"], pair_columns["ba_micro"]),
        pair.changed,
    ]
    return participant_rows, pair_rows


def _key_strings(facts: CodedFacts, codes: list[np.ndarray]) -> list[np.ndarray]:
    tenant, scope, *people = codes
    return [facts.tenants.strings(tenant), facts.scopes.strings(scope), *map(facts.people.strings, people)]


def _coded(
    gives: Gives,
    introductions: dict[str, list[Any]],
    acknowledgements: dict[str, list[Any]],
    touching: set[str],
    reversed_at: dict[str, int],
) -> CodedFacts:
    (g_tenant, g_event, g_position, _, g_giver, g_receiver, g_value, g_at, *g_context) = gives.columns
    (i_tenant, i_event, i_position, _, i_introducer, i_a, i_b, _, *i_context, i_live) = columns(
        list(introductions.values()), 12
    )
    (k_tenant, k_event, k_position, k_ref, k_acknowledger, _, k_live) = columns(list(acknowledgements.values()), 7)
    tenants = Codes(set(g_tenant) | set(i_tenant) | set(k_tenant))
    people = Codes(set(g_giver) | set(g_receiver) | set(i_introducer) | set(i_a) | set(i_b) | set(k_acknowledger))
    scope_names = {""}
    for dimension, g_keys, i_keys in zip(CONTEXT_DIMENSIONS, g_context, i_context, strict=True):
        scope_names |= {scope_name(dimension, key) for key in set(g_keys) | set(i_keys) if key is not None}
    scopes = Codes(scope_names)

    def last_positions(positions: list[int], live: Any, events: list[str]) -> np.ndarray:
        triples = zip(positions, live, events, strict=True)
        return np.array([position if alive else reversed_at[event] for position, alive, event in triples], np.int64)

    g_live = np.frombuffer(gives.live, np.uint8).astype(bool)
    g_pending = g_live & ~np.frombuffer(gives.acknowledged, np.uint8).astype(bool)
    kinds = {
        Kind.GIVE: KindColumns(
            tenants.of(g_tenant),
            last_positions(g_position, gives.live, g_event),
            {"giver": people.of(g_giver), "receiver": people.of(g_receiver)},
            {Condition.LIVE: g_live, Condition.PENDING: g_pending},
            np.array(g_value, np.int64),
        ),
        Kind.INTRODUCTION: KindColumns(
            tenants.of(i_tenant),
            last_positions(i_position, i_live, i_event),
            {"introducer": people.of(i_introducer), "a": people.of(i_a), "b": people.of(i_b)},
            {Condition.LIVE: np.array(i_live, bool)},
        ),
        Kind.ACKNOWLEDGEMENT: KindColumns(
            tenants.of(k_tenant),
            last_positions(k_position, k_live, k_event),
            {"acknowledger": people.of(k_acknowledger)},
            {},
        ),
    }
    contexts = {Kind.GIVE: g_context, Kind.INTRODUCTION: i_context}
    in_scopes = {kind: _in_scopes(context, scopes) for kind, context in contexts.items()}
    in_scopes[Kind.ACKNOWLEDGEMENT] = (np.arange(len(k_tenant)), np.zeros(len(k_tenant), np.int64))  # overall
    roles = {role: _touches(role, kinds[role.kind], in_scopes[role.kind]) for role in (*FACT_ROLES, ACKNOWLEDGER)}
    thanks, counted, acknowledged_gives = _thanks(
        kinds, gives.row, dict(zip(i_event, range(len(i_event)), strict=True)), contexts, scopes,
        (k_event, k_ref, k_live), touching,
    )  # fmt: skip
    kinds[Kind.ACKNOWLEDGEMENT].conditions[Condition.COUNTED] = counted
    roles.update(thanks)
    times = Codes(set(g_at))
    return CodedFacts(tenants, scopes, people, times, kinds, roles, times.of(g_at), acknowledged_gives)


FACT_ROLES = (GIVER, RECEIVER, INTRODUCER, INTRODUCED_A, INTRODUCED_B)  # in their fact's own scopes


def _in_scopes(context: list[list[str | None]], scopes: Codes) -> tuple[np.ndarray, np.ndarray]:
    """(fact row, scope) for every scope a fact counts in: "" for each fact first, then each context value."""
    count = len(context[0])
    rows, scope = [np.arange(count)], [np.zeros(count, np.int64)]
    for dimension, keys in zip(CONTEXT_DIMENSIONS, context, strict=True):
        present = [row for row, key in enumerate(keys) if key is not None]
        rows.append(np.array(present, np.int64))
        scope.append(scopes.of([scope_name(dimension, keys[row]) for row in present]))
    return np.concatenate(rows), np.concatenate(scope)


def _touches(role: Role, kind: KindColumns, in_scopes: tuple[np.ndarray, np.ndarray]) -> RoleTouches:
    fact, scope = in_scopes
    if role.scopes is Scopes.OVERALL:
        fact, scope = fact[scope == 0], scope[scope == 0]
    return RoleTouches(kind.tenant[fact], scope, kind.people[role.attribute][fact], kind.last[fact], fact)  # type: ignore[index]


def _thanks(
    kinds: dict[Kind, KindColumns],
    give_rows: dict[str, int],
    introduction_rows: dict[str, int],
    contexts: dict[Kind, list[list[str | None]]],
    scopes: Codes,
    acknowledgements: tuple[list[str], list[str], list[int]],
    touching: set[str],
) -> tuple[dict[Role, RoleTouches], np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The THANKING and THANKED touches of each acknowledgement that touched its fact, in that fact's scopes;
    which acknowledgements are COUNTED (they and their fact are live); and (acknowledgement, give) for those
    of gives, whose pair they touch."""
    events, refs, live = acknowledgements
    thanks: dict[str, list[int]] = {"ack": [], "scope": [], "party": []}
    counted = np.zeros(len(events), bool)  # an acknowledgement that never touched its fact never counts
    thanked_gives: list[int] = []
    thanked_give_rows: list[int] = []
    for ack, event in enumerate(events):
        if event not in touching:
            continue
        if (row := give_rows.get(refs[ack])) is not None:
            kind = Kind.GIVE
            thanked_gives.append(ack)
            thanked_give_rows.append(row)
        else:
            kind, row = Kind.INTRODUCTION, introduction_rows[refs[ack]]
        party = kinds[kind].people[ACKNOWLEDGED_PARTY[kind]][row]
        counted[ack] = bool(kinds[kind].conditions[Condition.LIVE][row] and live[ack])
        keys = [(d, keys[row]) for d, keys in zip(CONTEXT_DIMENSIONS, contexts[kind], strict=True)]
        for scope in [0, *(scopes.index[scope_name(d, key)] for d, key in keys if key is not None)]:
            thanks["ack"].append(ack)
            thanks["scope"].append(scope)
            thanks["party"].append(party)
    t_ack, t_scope, t_party = (np.array(thanks[name], np.int64) for name in ("ack", "scope", "party"))
    acknowledgement = kinds[Kind.ACKNOWLEDGEMENT]
    tenant, last = acknowledgement.tenant[t_ack], acknowledgement.last[t_ack]
    touches = {
        THANKING: RoleTouches(tenant, t_scope, acknowledgement.people["acknowledger"][t_ack], last, t_ack),
        THANKED: RoleTouches(tenant, t_scope, t_party, last, t_ack),
    }
    return touches, counted, (np.array(thanked_gives, np.int64), np.array(thanked_give_rows, np.int64))


def _participant_touches(facts: CodedFacts) -> Touches:
    touched = Touches(width=1)
    for role, touches in facts.roles.items():
        touched.add(role.name, touches.tenant, touches.scope, touches.person, touches.last)
    return touched


def _pair_touches(facts: CodedFacts, gives: Gives) -> Touches:
    """A give's pair in each of its scopes; an introduction's, and that of an acknowledged give (its decayed
    weight changed), overall."""
    linked = Touches(width=2)
    giver, receiver = facts.roles[GIVER], facts.roles[RECEIVER]
    low, high = np.minimum(giver.person, receiver.person), np.maximum(giver.person, receiver.person)
    linked.add(GIVE_PAIR, giver.tenant, giver.scope, low, high, giver.last)
    introduction = facts.kinds[Kind.INTRODUCTION]
    a, b = introduction.people["a"], introduction.people["b"]
    overall = np.zeros(len(a), np.int64)
    linked.add(INTRODUCTION_PAIR, introduction.tenant, overall, np.minimum(a, b), np.maximum(a, b), introduction.last)
    acks, give_rows = facts.acknowledged_gives
    give, acknowledgement = facts.kinds[Kind.GIVE], facts.kinds[Kind.ACKNOWLEDGEMENT]
    givers, receivers = give.people["giver"][give_rows], give.people["receiver"][give_rows]
    linked.add(
        ACKNOWLEDGED_GIVE_PAIR, acknowledgement.tenant[acks], np.zeros(len(acks), np.int64),
        np.minimum(givers, receivers), np.maximum(givers, receivers), acknowledgement.last[acks],
    )  # fmt: skip
    return linked


def _measured(grouped: Grouped, source: str, where: np.ndarray, measure: Measure, values: np.ndarray) -> np.ndarray:
    return grouped.count(source, where) if measure is Measure.COUNT else grouped.total(source, where, values)


def _extreme(grouped: Grouped, source: str, where: np.ndarray, times: np.ndarray, earliest: bool) -> np.ndarray:
    """The earliest or latest time code of each row's touches where they meet the condition (NONE if none)."""
    found = np.full(len(grouped), NONE if earliest else -1, np.int64)
    (np.minimum if earliest else np.maximum).at(found, grouped.rows(source, where), times[where])
    found[found < 0] = NONE
    return found


def _pair_columns(
    facts: CodedFacts, pair: Grouped, gives: Gives, decayed_changes: list[tuple[int, int, float]]
) -> dict[str, np.ndarray]:
    """The pairs' columns from the pair rules, each way, over the gives' touches in each of their scopes."""
    give, touches = facts.kinds[Kind.GIVE], facts.roles[GIVER]
    from_a = give.people["giver"] < give.people["receiver"]
    forward, values = from_a[touches.fact], give.values[touches.fact]  # type: ignore[index]
    found: dict[str, np.ndarray] = {}
    for rule in PAIR_RULES:
        where = give.conditions[rule.condition][touches.fact]
        found[rule.forward] = _measured(pair, GIVE_PAIR, where & forward, rule.measure, values)
        found[rule.backward] = _measured(pair, GIVE_PAIR, where & ~forward, rule.measure, values)
    for extreme in EXTREMES:
        if extreme.role is None:
            where = give.conditions[extreme.condition][touches.fact]
            times = facts.give_times[touches.fact]
            found[extreme.column] = facts.times.strings(_extreme(pair, GIVE_PAIR, where, times, extreme.earliest))
    found[DECAYED_FORWARD], found[DECAYED_BACKWARD] = _decayed(
        give.values, gives.positions, facts.give_times, facts.times, from_a, pair, decayed_changes
    )  # type: ignore[arg-type]
    return found


def _participant_columns(
    facts: CodedFacts, person: Grouped, pair: Grouped, pair_columns: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The participants' columns from the participant rules, then what their pairs make of them."""
    found: dict[str, np.ndarray] = {}
    for rule in PARTICIPANT_RULES:
        kind, touches = facts.kinds[rule.role.kind], facts.roles[rule.role]
        where = kind.conditions[rule.condition][touches.fact]
        values = kind.values[touches.fact] if rule.measure is Measure.VALUE else None  # type: ignore[index]
        counted = _measured(person, rule.role.name, where, rule.measure, values)  # type: ignore[arg-type]
        found[rule.column] = found[rule.column] + counted if rule.column in found else counted
    for extreme in EXTREMES:
        if extreme.role is not None:
            kind, touches = facts.kinds[extreme.role.kind], facts.roles[extreme.role]
            where = kind.conditions[extreme.condition][touches.fact]
            times = facts.give_times[touches.fact]
            found[extreme.column] = facts.times.strings(
                _extreme(person, extreme.role.name, where, times, extreme.earliest)
            )
    found["counterparts"], found["returned_micro"] = _pair_shares(facts, person, pair, pair_columns)
    return found


def _pair_shares(
    facts: CodedFacts, person: Grouped, pair: Grouped, pair_columns: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Each pair in use counts for both of its participants: a counterpart, and what went both ways."""
    in_use = pair_in_use(pair_columns["ab_count"], pair_columns["ba_count"])
    reciprocated = reciprocated_micro(pair_columns["ab_micro"], pair_columns["ba_micro"])[in_use]
    p_tenant, p_scope, p_a, p_b = pair.codes
    sizes = [len(facts.tenants), len(facts.scopes), len(facts.people)]
    counterparts, returned = np.zeros(len(person), np.int64), np.zeros(len(person), np.int64)
    for end in (p_a, p_b):
        rows = _rows_of(person.codes, [p_tenant[in_use], p_scope[in_use], end[in_use]], sizes)
        np.add.at(counterparts, rows, 1)
        np.add.at(returned, rows, reciprocated)
    return counterparts, returned
