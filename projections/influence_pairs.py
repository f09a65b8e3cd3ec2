"""A tenant's pairs as numpy columns for the influence recompute, kept between recomputes.

Reading a tenant's million pair rows makes two million Python strings, which cost most of a recompute
(docs/performance.md). The influence worker recomputes the same tenants over and over, so it
keeps each large tenant's pairs as columns and reads only the rows changed since (`changed_position`, which
every page that changes a pair sets). Participants are numbered by slot, in the order they were first seen;
the graph needs them in id order, which `in_id_order` derives each time from the tenant's sorted participants.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

PAIR_COLUMNS = "a, b, decayed_ab, decayed_ba, strength_micro, last_at"
SLOT_BITS = 32  # a pair's key: a's slot above, b's below
CACHED_PAIRS_MAX = 3_000_000  # all tenants together: about 60 bytes each, so under 200 MB
TENANT_PAIRS_MIN = 20_000  # a smaller tenant reads all its pairs quickly: not worth the memory
READ_ROWS_MAX = 50_000  # pair rows (first read) or positions (later reads) read at once: ~400 bytes a row
VALUE_COLUMNS = ("decayed_ab", "decayed_ba", "strength", "last_at")


@dataclass(frozen=True)
class OrderedPairs:
    """A tenant's pairs in (a, b) order, participants as indices into its participant list (sorted by id)."""

    participants: list[str]  # every participant of the tenant (scope ''), sorted by id
    index: dict[str, int]  # participant: place in that list
    a: np.ndarray  # int64
    b: np.ndarray  # int64
    decayed_ab: np.ndarray  # float64
    decayed_ba: np.ndarray  # float64
    strength: np.ndarray  # int64, micro-units
    last_at: np.ndarray  # bytes (occurred_at text, which sorts as time does); b"" for none

    def last_at_of(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The last_at of each pair (a[i], b[i]); b"" where there is no such pair."""
        n = len(self.participants)
        keys, wanted = self.a * n + self.b, a * n + b  # keys are sorted, as the pairs are
        if keys.size == 0:
            return np.full(wanted.size, b"")
        found = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
        return np.where(keys[found] == wanted, self.last_at[found], b"")


class TenantPairs:
    """One tenant's scope-'' pair rows as columns, sorted by slot key; `position` is the reciprocity view
    position they reflect."""

    def __init__(self) -> None:
        self.names: list[str] = []  # participant by slot
        self.slots: dict[str, int] = {}
        self.key = np.zeros(0, np.int64)
        self.decayed_ab = np.zeros(0)
        self.decayed_ba = np.zeros(0)
        self.strength = np.zeros(0, np.int64)
        self.last_at = np.zeros(0, "S1")
        self.position = 0

    def __len__(self) -> int:
        return self.key.size

    def _columns(self, rows: list) -> tuple[np.ndarray, ...]:
        """Rows (PAIR_COLUMNS) as their slot keys and value columns (VALUE_COLUMNS)."""
        a, b, decayed_ab, decayed_ba, strength, last_at = columns(rows, 6)
        return (
            (self._slots_of(a) << SLOT_BITS) | self._slots_of(b),
            np.array(decayed_ab, np.float64),
            np.array(decayed_ba, np.float64),
            np.array(strength, np.int64),
            np.array([at or "" for at in last_at], "S"),
        )

    def apply(self, chunks: Iterable[list], position: int, index: dict[str, int]) -> None:
        """Rows (PAIR_COLUMNS) that are new or changed since `self.position` (all of them, the first time),
        chunk by chunk, each pair in one chunk at most: each replaces its pair's values. Only a chunk's rows are
        Python objects at once (a million rows at once were about 400 MB of tuples and strings); their columns
        are merged once. `index` is the tenant's participants in id order: the first rows take their slots
        from it."""
        self.position = position
        if not self.names:
            self.names, self.slots = list(index), dict(index)
        parts = [self._columns(rows) for rows in chunks if rows]
        if not parts:
            return
        key, *values = (np.concatenate([part[i] for part in parts]) for i in range(len(VALUE_COLUMNS) + 1))
        at = np.searchsorted(self.key, key)
        known = at < self.key.size
        known[known] = self.key[at[known]] == key[known]
        for name, value in zip(VALUE_COLUMNS, values, strict=True):
            column = getattr(self, name)
            if name == "last_at" and value.dtype.itemsize > column.dtype.itemsize:
                column = column.astype(value.dtype)
            column[at[known]] = value[known]
            setattr(self, name, column)
        if known.all():
            return
        new = ~known
        key = np.concatenate((self.key, key[new]))
        order = np.argsort(key, kind="stable")
        self.key = key[order]
        for name, value in zip(VALUE_COLUMNS, values, strict=True):
            setattr(self, name, np.concatenate((getattr(self, name), value[new]))[order])

    def _slots_of(self, names: list[str]) -> np.ndarray:
        slots, known = self.slots, self.names
        try:
            return np.fromiter(map(slots.__getitem__, names), np.int64, len(names))
        except KeyError:  # someone new since the last read
            for name in names:
                if name not in slots:
                    slots[name] = len(known)
                    known.append(name)
            return np.fromiter(map(slots.__getitem__, names), np.int64, len(names))

    def in_id_order(self, participants: list[str], index: dict[str, int]) -> OrderedPairs:
        """The pairs in (a, b) order by participant id, as the primary key would list them; `index` maps the
        tenant's participants (sorted by id) to their place among them."""
        place = np.fromiter(map(index.__getitem__, self.names), np.int64, len(self.names))
        a, b = place[self.key >> SLOT_BITS], place[self.key & ((1 << SLOT_BITS) - 1)]
        order = np.argsort(a * len(index) + b)  # unique: one row per pair
        columns = (self.decayed_ab, self.decayed_ba, self.strength, self.last_at)
        return OrderedPairs(participants, index, a[order], b[order], *(column[order] for column in columns))


def columns(rows: list, count: int) -> list[list]:
    """Rows turned into `count` columns, in C. (Not zip(*rows): its iterator per row sets off the cyclic
    garbage collector over and over, which then walks every one of the million rows each time.)"""
    return [list(map(itemgetter(i), rows)) for i in range(count)]


def _all_pairs(cursor, tenant: str, rows_max: int) -> Iterator[list]:
    """A tenant's pair rows in key order, `rows_max` at a time (by the primary key, from where the last
    chunk ended: the same snapshot throughout, and each chunk a range of the index)."""
    after: tuple[str, str] | None = None
    while True:
        if after is None:
            where, params = "", (tenant,)
        else:
            where, params = " AND (a, b) > (?, ?)", (tenant, *after)
        rows = cursor.execute(
            f"SELECT {PAIR_COLUMNS} FROM view_pairs WHERE tenant = ? AND scope = ''{where} ORDER BY a, b LIMIT ?",
            (*params, rows_max),
        )
        yield rows
        if len(rows) < rows_max:
            return
        after = (rows[-1][0], rows[-1][1])


def _changed_pairs(cursor, tenant: str, since: int, position: int, positions_max: int) -> Iterator[list]:
    """A tenant's pair rows changed after `since`, in windows of `positions_max` positions up to `position`,
    then whatever changed after it: while the views catch up, hundreds of thousands of pairs change between
    two recomputes, and a fact changes at most one overall pair, so a window holds at most about that many
    rows. By the changed_position index: `|| ''` keeps the planner off the primary key, where it would walk
    every pair of the tenant to find the few changed ones (`scope = ''` as written is what lets it use that
    index, which holds scope "" only)."""
    while True:
        upto = since + positions_max if since + positions_max < position else None
        bound, bounds = ("", ()) if upto is None else (" AND changed_position <= ?", (upto,))
        yield cursor.execute(
            f"SELECT {PAIR_COLUMNS} FROM view_pairs WHERE changed_position > ?{bound} AND tenant || '' = ?"
            " AND scope = ''",
            (since, *bounds, tenant),
        )
        if upto is None:
            return
        since = upto


class PairCache:
    """Large tenants' pairs between recomputes, least recently used first out, within CACHED_PAIRS_MAX."""

    def __init__(
        self, pairs_max: int = CACHED_PAIRS_MAX, tenant_pairs_min: int = TENANT_PAIRS_MIN,
        read_rows_max: int = READ_ROWS_MAX,
    ) -> None:  # fmt: skip
        self.pairs_max = pairs_max
        self.tenant_pairs_min = tenant_pairs_min
        self.read_rows_max = read_rows_max
        self._tenants: OrderedDict[str, TenantPairs] = OrderedDict()

    def read(self, cursor, tenant: str, position: int, erased_at: int = 0) -> OrderedPairs:
        """The tenant's participants and pairs as of at least `position`, which must have been read before
        this cursor's snapshot began (rows changed after it are read again next time, which changes nothing).
        The cursor is one snapshot (ViewStore.snapshot), so every pair's participants are among those read.
        `erased_at` is the tenant's last erasure: pairs kept from before it name an id where the view now has a
        tombstone."""
        pairs = self._tenants.pop(tenant, None)
        participants = [
            row[0]
            for row in cursor.execute(
                "SELECT participant FROM view_participants WHERE tenant = ? AND scope = '' ORDER BY participant",
                (tenant,),
            )
        ]
        index = {p: i for i, p in enumerate(participants)}
        if pairs is None or pairs.position > position or pairs.position < erased_at:  # (or rebuilt since)
            pairs = TenantPairs()
            pairs.apply(_all_pairs(cursor, tenant, self.read_rows_max), position, index)
        else:
            changed = _changed_pairs(cursor, tenant, pairs.position, position, self.read_rows_max)
            pairs.apply(changed, position, index)
        if len(pairs) >= self.tenant_pairs_min:
            self._tenants[tenant] = pairs
            kept = sum(map(len, self._tenants.values()))
            while kept > self.pairs_max:
                kept -= len(self._tenants.popitem(last=False)[1])
        return pairs.in_id_order(participants, index)

    def __contains__(self, tenant: str) -> bool:
        return tenant in self._tenants
