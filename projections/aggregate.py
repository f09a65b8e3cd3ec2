"""A rebuild's participant and pair rows, aggregated from the final fact rows by numpy, in key order.

`projections/replay.py` replays the log and keeps every fact row as it ended (live, acknowledged). Every
other column of the views follows from those rows alone, so it is computed here column-wise: each fact's
touches of a row (giver, receiver, pair, ... in each of its scopes) become arrays of integer codes, rows are
grouped by sorting, and counts, sums, minima and maxima are reduced per group. Codes are given in sorted
order (tenants, scopes, participants, times), so the groups come out in primary-key order, ready to insert.
Column-wise rather than in Python dicts, where lookups in million-entry dicts are mostly cache misses.

It must give exactly the rows following the log gives: the property test compares every column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from projections.influence_pairs import columns
from projections.reciprocity import PAIR_COLUMNS, PARTICIPANT_COLUMNS
from projections.reciprocity_rules import CONTEXT_DIMENSIONS, MICRO, decay_exponent

if TYPE_CHECKING:
    from projections.replay import Gives

NONE = np.iinfo(np.int64).max  # a time code for "no time" (no live give)


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
    floating-point sums are bit for bit those of following the log (`Page._count_pair`)."""
    decays = np.array([decay_exponent(at) for at in times.values], np.float64)[at_codes]
    weights = decays * values.astype(np.float64) / MICRO  # as `replay._weight` computes them
    give_pair = pair.rows("give")[: len(values)]  # each give's pair in scope "" (`in_scopes` lists those first)
    changed = np.array(changes, dtype=[("position", np.int64), ("give", np.int64), ("weight", np.float64)])
    order = np.argsort(np.concatenate((np.array(positions, np.int64), changed["position"])), kind="stable")
    rows = np.concatenate((give_pair, give_pair[changed["give"]]))[order]
    forward = np.concatenate((from_a, from_a[changed["give"]]))[order]
    added = np.concatenate((weights, changed["weight"]))[order]
    decayed_ab, decayed_ba = np.zeros(len(pair)), np.zeros(len(pair))
    np.add.at(decayed_ab, rows[forward], added[forward])  # sequential, in the order given
    np.add.at(decayed_ba, rows[~forward], added[~forward])
    return decayed_ab, decayed_ba


def aggregate(
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
    (g_tenant, g_event, g_position, _, g_giver, g_receiver, g_value, g_at, *g_context) = gives.columns
    g_live, g_acked = gives.live, gives.acknowledged
    (i_tenant, i_event, i_position, _, i_introducer, i_a, i_b, _, *i_context, i_live) = columns(
        list(introductions.values()), 12
    )
    (k_tenant, k_event, k_position, k_ref, k_acknowledger, _, k_live) = columns(list(acknowledgements.values()), 7)

    tenants = Codes(set(g_tenant) | set(i_tenant) | set(k_tenant))
    people = Codes(set(g_giver) | set(g_receiver) | set(i_introducer) | set(i_a) | set(i_b) | set(k_acknowledger))
    scope_names = {""}
    for dimension, g_keys, i_keys in zip(CONTEXT_DIMENSIONS, g_context, i_context, strict=True):
        scope_names |= {f"{dimension}={key}" for key in set(g_keys) | set(i_keys) if key is not None}
    scopes = Codes(scope_names)
    times = Codes(set(g_at))

    def last_positions(positions: list[int], live: list[int], events: list[str]) -> np.ndarray:
        triples = zip(positions, live, events, strict=True)
        return np.array([position if alive else reversed_at[event] for position, alive, event in triples], np.int64)

    def in_scopes(context: list[list[str | None]]) -> tuple[np.ndarray, np.ndarray]:
        """(fact row, scope) for every scope a fact counts in: "" for each, then each context value it has."""
        count = len(context[0])
        rows, scope = [np.arange(count)], [np.zeros(count, np.int64)]
        for dimension, keys in zip(CONTEXT_DIMENSIONS, context, strict=True):
            present = [row for row, key in enumerate(keys) if key is not None]
            rows.append(np.array(present, np.int64))
            scope.append(scopes.of([f"{dimension}={keys[row]}" for row in present]))
        return np.concatenate(rows), np.concatenate(scope)

    # Gives, in each of their scopes.
    g_t, g_giver_c, g_receiver_c = tenants.of(g_tenant), people.of(g_giver), people.of(g_receiver)
    g_last, g_live_a = last_positions(g_position, g_live, g_event), np.frombuffer(g_live, np.uint8).astype(bool)
    g_value_a, g_at_c = np.array(g_value, np.int64), times.of(g_at)
    g_acked_a = np.frombuffer(g_acked, np.uint8).astype(bool)
    g_row, g_scope = in_scopes(g_context)
    g_low, g_high = np.minimum(g_giver_c, g_receiver_c), np.maximum(g_giver_c, g_receiver_c)  # a give's pair
    g_a, g_b = g_low[g_row], g_high[g_row]
    g_alive, g_from_a = g_live_a[g_row], (g_giver_c < g_receiver_c)[g_row]
    # Introductions: participants in each scope, the pair in scope "" only.
    i_t, i_last, i_live_a = tenants.of(i_tenant), last_positions(i_position, i_live, i_event), np.array(i_live, bool)
    i_people = {"introducer": people.of(i_introducer), "a": people.of(i_a), "b": people.of(i_b)}
    i_row, i_scope = in_scopes(i_context)
    # Acknowledgements: the acknowledger in scope ""; one of a live fact also in that fact's scopes, with the
    # fact's giver or introducer, and a give's pair in scope "" (its decayed weight changed).
    k_last = last_positions(k_position, k_live, k_event)
    give_rows = gives.row
    intro_rows = dict(zip(i_event, range(len(i_event)), strict=True))
    thanks: dict[str, list[int]] = {"ack": [], "scope": [], "party": [], "counted": []}
    thanked_gives: list[int] = []  # acknowledgement rows whose fact is a give
    thanked_give_rows: list[int] = []

    def scopes_of(context: list[list[str | None]], row: int) -> list[int]:
        """One fact's scope codes ("" is the first scope)."""
        facts = zip(CONTEXT_DIMENSIONS, context, strict=True)
        named = [f"{name}={keys[row]}" for name, keys in facts if keys[row] is not None]
        return [0, *map(scopes.index.__getitem__, named)]

    for ack, event in enumerate(k_event):
        if event not in touching:
            continue
        if (row := give_rows.get(k_ref[ack])) is not None:
            party, live, fact_scopes = g_giver_c[row], g_live[row], scopes_of(g_context, row)
            thanked_gives.append(ack)
            thanked_give_rows.append(row)
        else:
            row = intro_rows[k_ref[ack]]
            party, live, fact_scopes = i_people["introducer"][row], i_live[row], scopes_of(i_context, row)
        for scope in fact_scopes:
            thanks["ack"].append(ack)
            thanks["scope"].append(scope)
            thanks["party"].append(party)
            thanks["counted"].append(1 if live and k_live[ack] else 0)
    t_ack, t_scope, t_party = (np.array(thanks[name], np.int64) for name in ("ack", "scope", "party"))
    t_counted = np.array(thanks["counted"], bool)
    k_t, k_acknowledger_c = tenants.of(k_tenant), people.of(k_acknowledger)

    touched = Touches(width=1)
    touched.add("giver", g_t[g_row], g_scope, g_giver_c[g_row], g_last[g_row])
    touched.add("receiver", g_t[g_row], g_scope, g_receiver_c[g_row], g_last[g_row])
    for role, codes in i_people.items():
        touched.add(role, i_t[i_row], i_scope, codes[i_row], i_last[i_row])
    touched.add("acknowledger", k_t, np.zeros(len(k_t), np.int64), k_acknowledger_c, k_last)
    touched.add("thanking", k_t[t_ack], t_scope, k_acknowledger_c[t_ack], k_last[t_ack])
    touched.add("thanked", k_t[t_ack], t_scope, t_party, k_last[t_ack])
    person = touched.group([len(tenants), len(scopes), len(people)])

    linked = Touches(width=2)
    linked.add("give", g_t[g_row], g_scope, g_a, g_b, g_last[g_row])
    zeros = np.zeros(len(i_t), np.int64)
    i_pair_a = np.minimum(i_people["a"], i_people["b"])
    i_pair_b = np.maximum(i_people["a"], i_people["b"])
    linked.add("introduction", i_t, zeros, i_pair_a, i_pair_b, i_last)
    acked_rows = np.array(thanked_give_rows, np.int64)
    acked = np.array(thanked_gives, np.int64)
    linked.add(
        "acknowledgement", k_t[acked], np.zeros(len(acked), np.int64),
        g_low[acked_rows], g_high[acked_rows],
        k_last[acked],
    )  # fmt: skip
    pair = linked.group([len(tenants), len(scopes), len(people), len(people)])

    # Participants' sums over live facts.
    g_values = g_value_a[g_row]
    pending = g_alive & ~g_acked_a[g_row]
    unack_oldest = np.full(len(person), NONE, np.int64)
    np.minimum.at(unack_oldest, person.rows("receiver", pending), g_at_c[g_row][pending])
    i_alive = i_live_a[i_row]
    person_columns = {
        "given_count": person.count("giver", g_alive),
        "given_micro": person.total("giver", g_alive, g_values),
        "received_count": person.count("receiver", g_alive),
        "received_micro": person.total("receiver", g_alive, g_values),
        "intro_made": person.count("introducer", i_alive),
        "intro_received": person.count("a", i_alive) + person.count("b", i_alive),
        "ack_given": person.count("thanking", t_counted),
        "ack_received": person.count("thanked", t_counted),
        "unack_count": person.count("receiver", pending),
        "unack_micro": person.total("receiver", pending, g_values),
    }
    # Pairs' sums over live gives, each way.
    a_to_b, b_to_a = g_alive & g_from_a, g_alive & ~g_from_a
    first_at, last_at = np.full(len(pair), NONE, np.int64), np.full(len(pair), -1, np.int64)
    np.minimum.at(first_at, pair.rows("give", g_alive), g_at_c[g_row][g_alive])
    np.maximum.at(last_at, pair.rows("give", g_alive), g_at_c[g_row][g_alive])
    ab_count, ab = pair.count("give", a_to_b), pair.total("give", a_to_b, g_values)
    ba_count, ba = pair.count("give", b_to_a), pair.total("give", b_to_a, g_values)
    # Counterparts and amounts returned: each pair with a live give counts for both of its participants.
    in_use = (ab_count + ba_count) > 0
    p_tenant, p_scope, p_a, p_b = pair.codes
    sizes = [len(tenants), len(scopes), len(people)]
    counterparts, returned = np.zeros(len(person), np.int64), np.zeros(len(person), np.int64)
    reciprocated = np.minimum(ab, ba)[in_use]
    for end in (p_a, p_b):
        rows = _rows_of(person.codes, [p_tenant[in_use], p_scope[in_use], end[in_use]], sizes)
        np.add.at(counterparts, rows, 1)
        np.add.at(returned, rows, reciprocated)

    p_codes = person.codes
    person_strings = [tenants.strings(p_codes[0]), scopes.strings(p_codes[1]), people.strings(p_codes[2])]
    person_columns.update(unack_oldest_at=times.strings(unack_oldest), counterparts=counterparts)
    person_columns["returned_micro"] = returned
    participant_rows = [
        *person_strings,
        *(person_columns[name] for name in PARTICIPANT_COLUMNS),
        person_columns["given_micro"] - person_columns["received_micro"],
        person.changed,
    ]
    pair_strings = [tenants.strings(p_tenant), scopes.strings(p_scope), people.strings(p_a), people.strings(p_b)]
    from_a = g_giver_c < g_receiver_c
    decayed_ab, decayed_ba = _decayed(g_value_a, g_position, g_at_c, times, from_a, pair, decayed_changes)
    last_at[last_at < 0] = NONE
    pair_columns = {
        "ab_count": ab_count, "ab_micro": ab, "ba_count": ba_count, "ba_micro": ba,
        "first_at": times.strings(first_at), "last_at": times.strings(last_at),
        "decayed_ab": decayed_ab, "decayed_ba": decayed_ba,
    }  # fmt: skip
    pair_rows = [*pair_strings, *(pair_columns[name] for name in PAIR_COLUMNS), ab + ba, pair.changed]
    return participant_rows, pair_rows
