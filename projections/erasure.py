"""A participant's erasure in the views (DESIGN section 7): their id is replaced by the tombstone everywhere.

Applied in the transaction of the page that holds the `participant.erased` fact, at its place in the page. Every
row that names the id names the tombstone instead; a pair whose canonical order (a < b by id) changes with the
name has its two directions swapped, each direction's values as they were. No number changes. The KV writer
learns which keys to purge from `view_erasures`, one row per bucket, which it deletes once it purged them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson

from ledger.participants import tombstone
from projections.nats_bus import BUCKETS
from projections.reciprocity_rules import CONTEXT_DIMENSIONS, OVERALL, fact_scopes
from projections.viewstore import ViewCursor

DDL = (
    "CREATE TABLE IF NOT EXISTS view_erasures (bucket TEXT NOT NULL, tenant TEXT NOT NULL, token TEXT NOT NULL,"
    " participant TEXT NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (bucket, tenant, token))",
)
# The fact tables' columns that hold a participant (a pair's two ends are renamed with their order, below).
PERSON_COLUMNS = {
    "view_gives": ("giver", "receiver"),
    "view_introductions": ("introducer",),
    "view_acknowledgements": ("acknowledger",),
}
# A pair row's directions, each with its values, swapped when its two ends change order.
SWAPPED = (
    "ab_count = ba_count, ba_count = ab_count, ab_micro = ba_micro, ba_micro = ab_micro,"
    " decayed_ab = decayed_ba, decayed_ba = decayed_ab"
)


@dataclass(frozen=True)
class Renamed:
    """Whose id an erasure took out of the views, and what shows in its place."""

    tenant: str
    token: str
    participant: str
    tombstone: str


def erase(cursor: ViewCursor, tenant: str, token: str, erased_at: int, position: int) -> Renamed | None:
    """Applies the erasure of `token` (the fact at `erased_at`) in a page recorded at `position`: renames the
    participant to the tombstone (None when the views only ever knew the tombstone), records the token's
    name, and marks the tenant changed (influence is recomputed: the same scores, under the tombstone)."""
    gone = tombstone(token)
    known = cursor.execute("SELECT participant FROM view_names WHERE tenant = ? AND token = ?", (tenant, token))
    cursor.execute(
        "INSERT INTO view_names (tenant, token, participant) VALUES (?, ?, ?) "
        "ON CONFLICT (tenant, token) DO UPDATE SET participant = excluded.participant",
        (tenant, token, gone),
    )
    cursor.execute(
        "INSERT INTO view_tenants (tenant, changed_position, erased_position) VALUES (?, ?, ?) ON CONFLICT (tenant)"
        " DO UPDATE SET changed_position = excluded.changed_position, erased_position = excluded.erased_position",
        (tenant, erased_at, erased_at),
    )
    participant = known[0][0] if known else gone
    if participant == gone:
        return None
    rename(cursor, tenant, participant, gone, position)
    renamed = Renamed(tenant, token, participant, gone)
    record_for_kv(cursor, renamed, erased_at)
    return renamed


def record_for_kv(cursor: ViewCursor, renamed: Renamed, erased_at: int) -> None:
    """Tells the KV writer to purge the id's keys from every bucket (a row already there stays)."""
    cursor.executemany(
        "INSERT INTO view_erasures (bucket, tenant, token, participant, position) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (bucket, tenant, token) DO NOTHING",
        [(bucket, renamed.tenant, renamed.token, renamed.participant, erased_at) for bucket in BUCKETS],
    )


def known_ids(cursor: ViewCursor, tokens: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The ids `view_names` holds for these (tenant, token) keys, where it holds an id rather than a tombstone."""
    rows = cursor.lookup("view_names", ("tenant", "token", "participant"), ("tenant", "token"), tokens)
    return {(tenant, token): name for tenant, token, name in rows if name != tombstone(token)}


def rename(cursor: ViewCursor, tenant: str, old: str, new: str, position: int) -> None:
    """Every view row of the tenant that names `old` names `new` instead; rows a KV bucket holds are marked
    changed at `position`, so the KV writer writes them under the new name."""
    pairs = _pairs_of(cursor, tenant, old)  # read from the fact rows, before they are renamed
    for table, columns in PERSON_COLUMNS.items():
        for column in columns:
            cursor.execute(f"UPDATE {table} SET {column} = ? WHERE tenant = ? AND {column} = ?", (new, tenant, old))
    _rename_introduced(cursor, tenant, old, new)
    cursor.execute(
        "UPDATE view_participants SET participant = ?, changed_position = ? WHERE tenant = ? AND participant = ?",
        (new, position, tenant, old),
    )
    _rename_pairs(cursor, tenant, pairs, old, new, position)
    # Pairs that `new` introduced: their introduced_by lists it.
    introduced = cursor.execute(
        "SELECT DISTINCT a, b FROM view_introductions WHERE tenant = ? AND introducer = ?", (tenant, new)
    )
    cursor.executemany(
        "UPDATE view_pairs SET changed_position = ? WHERE tenant = ? AND scope = '' AND a = ? AND b = ?",
        [(position, tenant, a, b) for a, b in introduced],
    )
    _rename_influence(cursor, tenant, old, new, position)


def _rename_introduced(cursor: ViewCursor, tenant: str, old: str, new: str) -> None:
    # The two introduced are kept in id order; a few rows per person, so sorted here rather than in SQL (whose
    # text order is the column's collation).
    rows = cursor.execute(
        "SELECT event_id, a, b FROM view_introductions WHERE tenant = ? AND a = ? "
        "UNION ALL SELECT event_id, a, b FROM view_introductions WHERE tenant = ? AND b = ?",
        (tenant, old, tenant, old),
    )
    updates = []
    for event_id, a, b in rows:
        first, second = sorted((new if a == old else a, new if b == old else b))
        updates.append((first, second, tenant, event_id))
    cursor.executemany("UPDATE view_introductions SET a = ?, b = ? WHERE tenant = ? AND event_id = ?", updates)


def _rename_pairs(
    cursor: ViewCursor, tenant: str, keys: set[tuple[str, str, str, str]], old: str, new: str, position: int
) -> None:
    """Pairs in every scope (`keys`, from `_pairs_of`): the new name takes the old one's end, and if that changes
    their order, the two directions swap (a_to_b becomes b_to_a, each with its values)."""
    rows = list(cursor.lookup("view_pairs", ("scope", "a", "b"), ("tenant", "scope", "a", "b"), keys))
    kept, swapped = [], []
    for scope, a, b in rows:
        other = b if a == old else a
        first, second = sorted((new, other))
        same_order = (first == new) == (a == old)
        (kept if same_order else swapped).append((first, second, position, tenant, scope, a, b))
    where = "WHERE tenant = ? AND scope = ? AND a = ? AND b = ?"
    cursor.executemany(f"UPDATE view_pairs SET a = ?, b = ?, changed_position = ? {where}", kept)
    cursor.executemany(f"UPDATE view_pairs SET a = ?, b = ?, {SWAPPED}, changed_position = ? {where}", swapped)


def _pairs_of(cursor: ViewCursor, tenant: str, person: str) -> set[tuple[str, str, str, str]]:
    """The keys of the person's pair rows, from their facts (by the indexes on them): a give's pair in each of
    its scopes, an introduction's overall. A large tenant's pairs are many more than one person's facts."""
    context = ", ".join(CONTEXT_DIMENSIONS)
    gives = cursor.execute(
        f"SELECT giver, receiver, {context} FROM view_gives WHERE tenant = ? AND giver = ? "
        f"UNION SELECT giver, receiver, {context} FROM view_gives WHERE tenant = ? AND receiver = ?",
        (tenant, person, tenant, person),
    )
    keys = set()
    for giver, receiver, *keys_of_context in gives:
        a, b = sorted((giver, receiver))
        keys.update((tenant, scope, a, b) for scope in fact_scopes(tuple(keys_of_context)))
    introduced = cursor.execute(
        "SELECT a, b FROM view_introductions WHERE tenant = ? AND a = ? "
        "UNION SELECT a, b FROM view_introductions WHERE tenant = ? AND b = ?",
        (tenant, person, tenant, person),
    )
    keys.update((tenant, OVERALL, a, b) for a, b in introduced)
    return keys


def _rename_influence(cursor: ViewCursor, tenant: str, old: str, new: str, position: int) -> None:
    """The participant's influence row, and the contributions of others that came from them (JSON text as
    the influence view writes it, so a recompute that finds the same contributions changes nothing)."""
    cursor.execute(
        "UPDATE view_influence SET participant = ?, changed_position = ? WHERE tenant = ? AND participant = ?",
        (new, position, tenant, old),
    )
    quoted = json.dumps(old)
    rows = cursor.execute(
        "SELECT participant, contributions FROM view_influence WHERE tenant = ? AND contributions LIKE ?",
        (tenant, f"%{quoted}%"),
    )
    updates = []
    for participant, contributions in rows:
        listed = json.loads(contributions)
        if any(source == old for source, _ in listed):
            renamed = [(new if source == old else source, weight) for source, weight in listed]
            updates.append((orjson.dumps(renamed).decode(), position, tenant, participant))
    cursor.executemany(
        "UPDATE view_influence SET contributions = ?, changed_position = ? WHERE tenant = ? AND participant = ?",
        updates,
    )
