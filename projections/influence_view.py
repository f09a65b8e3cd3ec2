"""The influence view: per tenant, recomputed in the background from the reciprocity view's rows.

Never on the request path, at most once per interval, only for tenants whose facts changed. The same
view rows (and so the same log) always give the same answers: edges are read in a fixed order and `as_of`
is the latest occurred_at of the tenant's live facts, not the clock.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from contracts.view_answers import Contribution, InfluenceItem, InfluencePage, ParticipantInfluence
from projections.influence import InfluenceGraph, influence_table
from projections.influence_pairs import PairCache, columns
from projections.queries import CursorError, ReciprocityQueries, decode_cursor, encode_cursor
from projections.reciprocity import DECAY_EPOCH, HALF_LIFE_DAYS, MICRO
from projections.reciprocity import VIEW as RECIPROCITY_VIEW
from projections.viewstore import ViewStore

VIEW = "influence"
INTRODUCTION_WEIGHT = 0.25
INTRODUCTION_PAID_OFF_WEIGHT = 1.0
CONTRIBUTION_FACTS_MAX = 10
KV_RANK_MAX = 1_000  # the influence bucket holds the top of each tenant

DDL = (
    # In a SQLite file of its own (projections/viewstore.py ATTACHED_FILES), so its rewrites never hold up
    # the reciprocity pages.
    "CREATE TABLE IF NOT EXISTS influence.view_influence (tenant TEXT NOT NULL, participant TEXT NOT NULL,"
    " score REAL NOT NULL, rank INTEGER NOT NULL, burt_constraint REAL, effective_size REAL,"
    " introductions_paid_off INTEGER NOT NULL, contributions TEXT NOT NULL, changed_position INTEGER NOT NULL,"
    " PRIMARY KEY (tenant, participant))",
    "CREATE INDEX IF NOT EXISTS influence.view_influence_rank ON view_influence (tenant, rank)",
    "CREATE INDEX IF NOT EXISTS influence.view_influence_changed ON view_influence (changed_position)",
    "CREATE TABLE IF NOT EXISTS influence.view_influence_tenants (tenant TEXT PRIMARY KEY, position INTEGER NOT NULL)",
)
TABLES = ("view_influence", "view_influence_tenants")
StoredRows = dict[str, tuple[tuple, int]]  # participant: (answer row, changed_position)


@dataclass(frozen=True)
class TenantGraph:
    graph: InfluenceGraph
    paid_off: dict[str, int]


class InfluenceView:
    """Recomputes tenants' influence and answers from the stored results."""

    def __init__(self, store: ViewStore, reciprocity: ReciprocityQueries) -> None:
        self.store = store
        self.reciprocity = reciprocity
        # Kept between recomputes, which the worker runs for the same tenants again and again.
        self.pairs = PairCache()
        self._written: dict[str, tuple[int, StoredRows]] = {}  # tenant: (position, its stored rows)

    # --- recomputing ---

    def stale_tenants(self) -> list[str]:
        """Tenants whose reciprocity rows changed after their influence was last computed."""
        rows = self.store.read(
            "SELECT t.tenant FROM view_tenants t LEFT JOIN view_influence_tenants i ON i.tenant = t.tenant "
            "WHERE i.position IS NULL OR i.position < t.changed_position ORDER BY t.tenant"
        )
        return [row[0] for row in rows]

    def reflected_position(self) -> int:
        """The log position the whole view reflects: the reciprocity view's, or just below the oldest change of
        a tenant still to recompute. One statement, so one moment: read apart, a page committed between the two
        reads would be claimed as reflected while its tenant waits, and the KV writer, having written past it,
        would never write what that tenant's recompute then marks with the page's position."""
        head, stale = self.store.read(
            f"SELECT (SELECT MAX(notification_id) FROM {self.store.tracking_table} WHERE application_name = ?), "
            "(SELECT MIN(t.changed_position) FROM view_tenants t LEFT JOIN view_influence_tenants i "
            "ON i.tenant = t.tenant WHERE i.position IS NULL OR i.position < t.changed_position)",
            (RECIPROCITY_VIEW,),
        )[0]
        return (head or 0) if stale is None else stale - 1

    def recompute(self, tenant: str) -> dict[str, Any]:
        """Recomputes one tenant from one consistent read; returns the reciprocity position it reflects,
        how many rows it wrote and how long reading and computing, then writing, took.

        Everything is read and computed before the write transaction, which only writes the changed rows:
        on SQLite the projector's next page waits for that transaction (one writer per file)."""
        started = time.perf_counter()
        with self.store.snapshot() as cursor:  # participants, pairs and introductions as of one moment
            position = self.store.position("reciprocity")
            # An erasure renamed rows: what is kept from before it names the id, not the tombstone.
            erased = cursor.execute("SELECT erased_position FROM view_tenants WHERE tenant = ?", (tenant,))
            erased_at = erased[0][0] if erased else 0
            tenant_graph = self._read_graph(cursor, tenant, position, erased_at)
            # Only this thread writes influence rows, so what it read here is still what is stored below.
            stored = self._stored_rows(cursor, tenant, erased_at)
        table = influence_table(tenant_graph.graph)
        contributions = contributions_json(table.givers, table.amounts, table.offsets)
        ranking = np.asarray(table.ranking, np.int64)
        names, scores, constraint, effective_size, contributions = (
            np.array(column, dtype=object)[ranking].tolist()  # in rank order, without a Python loop
            for column in (table.participants, table.scores, table.constraint, table.effective_size, contributions)
        )
        paid_off = list(map(tenant_graph.paid_off.get, names, itertools.repeat(0)))
        places = range(1, len(names) + 1)
        rows = list(
            zip(itertools.repeat(tenant), names, scores, places, constraint, effective_size, paid_off, contributions)
        )
        changed = _changed_rows(rows, stored, position)  # and `stored` is now what will be stored
        # Rows of participants the views no longer hold: a recompute read before an erasure renamed them and
        # wrote after it would otherwise leave the erased id's row behind for good.
        gone = sorted(stored.keys() - set(names))
        for participant in gone:
            del stored[participant]
        computed = time.perf_counter()
        with self.store.transaction() as cursor:
            cursor.executemany(
                "DELETE FROM view_influence WHERE tenant = ? AND participant = ?", [(tenant, p) for p in gone]
            )
            cursor.upsert("view_influence", ROW_COLUMNS, ("tenant", "participant"), changed)
            cursor.execute(
                "INSERT INTO view_influence_tenants (tenant, position) VALUES (?, ?) "
                "ON CONFLICT (tenant) DO UPDATE SET position = excluded.position",
                (tenant, position),
            )
        self._keep_written(tenant, position, stored)
        return {
            "tenant": tenant, "position": position, "participants": len(rows), "changed": len(changed),
            "compute_s": round(computed - started, 3), "write_s": round(time.perf_counter() - computed, 3),
        }  # fmt: skip

    def _stored_rows(self, cursor, tenant: str, erased_at: int) -> StoredRows:
        """The tenant's stored rows by participant, as (answer row, changed_position): kept from this
        object's last write when the tenant's stored position shows nobody wrote since (an erasure's page
        renames rows too), else read."""
        kept = self._written.pop(tenant, None)
        if kept is not None and kept[0] >= erased_at:
            written = cursor.execute("SELECT position FROM view_influence_tenants WHERE tenant = ?", (tenant,))
            if written and written[0][0] == kept[0]:
                return kept[1]
        return read_stored_rows(cursor, tenant)

    def kept_rows(self, tenant: str) -> StoredRows | None:
        """The tenant's rows as this object last wrote them, if it keeps them for its next recompute (then they
        must be the stored rows: it writes only the rows that differ from them)."""
        kept = self._written.get(tenant)
        return None if kept is None else kept[1]

    def _keep_written(self, tenant: str, position: int, stored: StoredRows) -> None:
        """Keeps what is now stored for a tenant whose pairs are kept too (a large one, whose rows are slow
        to read back); forgets tenants whose pairs were let go."""
        for gone in [t for t in self._written if t not in self.pairs]:
            del self._written[gone]
        if tenant in self.pairs:
            self._written[tenant] = (position, stored)

    def _read_graph(self, cursor, tenant: str, position: int, erased_at: int = 0) -> TenantGraph:
        """The tenant's graph, built column-wise: a million pair rows allow no per-row Python work.

        Edges keep the order of a row-by-row build (per pair a->b then b->a, then introductions in log order),
        so sums over parallel edges add up in the same order and the answers stay the same to the last bit.
        """
        pairs = self.pairs.read(cursor, tenant, position, erased_at)
        participants, index = pairs.participants, pairs.index
        as_of = self.reciprocity.latest_occurred_at(tenant)
        decay = 2.0 ** (-_days_since_epoch(as_of) / HALF_LIFE_DAYS) if as_of else 1.0
        tied = pairs.strength > 0  # pairs whose strength fell to zero (all reversed) are no ties
        a, b, strength = pairs.a[tied], pairs.b[tied], pairs.strength[tied]
        # A give is an edge receiver -> giver: the receiver endorses the one who helped.
        decayed = np.column_stack((pairs.decayed_ab[tied], pairs.decayed_ba[tied])).ravel()
        given = decayed > 0
        pair_src, pair_dst = np.column_stack((b, a)).ravel()[given], np.column_stack((a, b)).ravel()[given]
        introducer, introduced_a, introduced_b, occurred_at = columns(
            cursor.execute(
                "SELECT introducer, a, b, occurred_at FROM view_introductions "
                "WHERE tenant = ? AND live = 1 ORDER BY position",
                (tenant,),
            ),
            4,
        )
        introduced_a, introduced_b = _indices(index, introduced_a), _indices(index, introduced_b)
        # Paid off: the two people exchanged something after they were introduced.
        last_at = pairs.last_at_of(introduced_a, introduced_b)
        paid = (last_at > np.array(occurred_at, "S")).tolist() if occurred_at else []
        paid_off = Counter(itertools.compress(introducer, paid))
        # An introduction is two edges, introduced -> introducer, weighted by whether it paid off.
        intro_src = np.column_stack((introduced_a, introduced_b)).ravel()
        intro_weight = np.where(paid, INTRODUCTION_PAID_OFF_WEIGHT, INTRODUCTION_WEIGHT)
        graph = InfluenceGraph(
            participants=participants,
            src=np.concatenate((pair_src, intro_src)),
            dst=np.concatenate((pair_dst, np.repeat(_indices(index, introducer), 2))),
            weight=np.concatenate((decayed[given] * decay, np.repeat(intro_weight, 2))),
            tie_a=a,
            tie_b=b,
            tie_weight=strength / MICRO,
        )
        return TenantGraph(graph, dict(paid_off))

    # --- answering ---

    def position(self, tenant: str) -> int:
        rows = self.store.read("SELECT position FROM view_influence_tenants WHERE tenant = ?", (tenant,))
        return rows[0][0] if rows else 0

    def page(self, tenant: str, limit: int, cursor: str | None) -> InfluencePage:
        after_rank = _rank_of(decode_cursor(cursor)) if cursor else 0
        position = self.position(tenant)
        rows = self.store.read(
            f"SELECT {ITEM_COLUMNS} FROM view_influence WHERE tenant = ? AND rank > ? ORDER BY rank LIMIT ?",
            (tenant, after_rank, limit + 1),
        )
        items = self.items(tenant, rows[:limit])
        next_cursor = encode_cursor(items[-1].rank) if len(rows) > limit else None
        return InfluencePage(items=items, next_cursor=next_cursor, position=position)

    def participant(self, tenant: str, participant: str) -> ParticipantInfluence | None:
        position = self.position(tenant)
        rows = self.store.read(
            f"SELECT {ITEM_COLUMNS} FROM view_influence WHERE tenant = ? AND participant = ?", (tenant, participant)
        )
        if not rows:
            return None
        return ParticipantInfluence(**self.items(tenant, rows)[0].model_dump(by_alias=True), position=position)

    def items(self, tenant: str, rows: list[tuple]) -> list[InfluenceItem]:
        """Answers for stored rows (ITEM_COLUMNS), with the facts behind all their contributions read in
        two queries, not one per contribution (a page of 50 has up to 250, the KV bucket's top 1,000)."""
        listed = [(row, json.loads(row[6])) for row in rows]
        facts = self._facts({(row[0], source) for row, contributions in listed for source, _ in contributions}, tenant)
        return [
            InfluenceItem(
                participant=participant,
                score=score,
                rank=rank,
                constraint=constraint,
                effective_size=effective_size,
                introductions_paid_off=paid_off,
                contributions=[
                    Contribution(from_=source, weight=weight, facts=facts.get((participant, source), []))
                    for source, weight in contributions
                ],
            )
            for (participant, score, rank, constraint, effective_size, paid_off, _), contributions in listed
        ]

    def _facts(self, pairs: set[tuple[str, str]], tenant: str) -> dict[tuple[str, str], list[str]]:
        """Per (endorsed, endorser): the live gives and introductions through which the endorser endorsed,
        newest first, at most CONTRIBUTION_FACTS_MAX."""
        found: dict[tuple[str, str], list[tuple[int, str]]] = {}
        endorsers: dict[str, set[str]] = {}
        for endorsed, endorser in pairs:
            endorsers.setdefault(endorsed, set()).add(endorser)
        with self.store.transaction(commit=False) as cursor:
            gives = cursor.lookup(
                "view_gives", ("giver", "receiver", "position", "event_id"), ("tenant", "giver", "receiver"),
                [(tenant, endorsed, endorser) for endorsed, endorser in pairs], where="t.live = 1",
            )  # fmt: skip
            for giver, receiver, position, event_id in gives:
                found.setdefault((giver, receiver), []).append((position, event_id))
            introductions = cursor.lookup(
                "view_introductions", ("introducer", "a", "b", "position", "event_id"), ("tenant", "introducer"),
                [(tenant, endorsed) for endorsed in endorsers], where="t.live = 1",
            )  # fmt: skip
            for introducer, a, b, position, event_id in introductions:
                for endorser in endorsers[introducer] & {a, b}:
                    found.setdefault((introducer, endorser), []).append((position, event_id))
        return {
            pair: [event_id for _, event_id in sorted(listed, reverse=True)[:CONTRIBUTION_FACTS_MAX]]
            for pair, listed in found.items()
        }


ITEM_COLUMNS = "participant, score, rank, burt_constraint, effective_size, introductions_paid_off, contributions"
ROW_COLUMNS = ("tenant", *ITEM_COLUMNS.split(", "), "changed_position")  # a stored row, as recompute builds it


def read_stored_rows(cursor, tenant: str) -> StoredRows:
    """A tenant's rows as stored, by participant: (answer row, changed_position)."""
    return {
        row[1]: (tuple(row[:-1]), row[-1])
        for row in cursor.execute(
            f"SELECT tenant, {ITEM_COLUMNS}, changed_position FROM view_influence WHERE tenant = ?", (tenant,)
        )
    }


def _changed_rows(rows: list[tuple], stored: StoredRows, position: int) -> list[tuple]:
    """The rows whose answer changed, with their changed_position, as they are to be written; `stored`
    takes them in (it is thrown away if the write fails).

    Of the changed rows, the ones at the top (now or before) are marked with this position for the KV
    writer; rows far below change on every recompute and keep their mark. (One plain loop: it runs for every
    participant of the tenant.)"""
    changed, find = [], stored.get
    for row in rows:
        before = find(row[1])
        if before is None:
            mark = position if row[3] <= KV_RANK_MAX else 0
        elif before[0] == row:
            continue
        else:
            mark = position if row[3] <= KV_RANK_MAX or before[0][3] <= KV_RANK_MAX else before[1]
        changed.append((*row, mark))
        stored[row[1]] = (row, mark)
    return changed


def contributions_json(givers: list[str], amounts: list[float], offsets: list[int]) -> list[str]:
    """Per participant, its contributions as compact JSON, [["giver",amount],...]: orjson writes each
    float's shortest repr, so the same amounts always give the same text (and json.loads gives them back)."""
    pairs, dumps = list(zip(givers, amounts, strict=True)), orjson.dumps
    return [dumps(pairs[start:stop]).decode() for start, stop in itertools.pairwise(offsets)]


def _indices(index: dict[str, int], ids: list[str]) -> np.ndarray:
    return np.fromiter(map(index.__getitem__, ids), np.int64, len(ids))


def _rank_of(key: list) -> int:
    if len(key) != 1 or type(key[0]) is not int or not 0 <= key[0] < 2**63:
        raise CursorError("not a cursor of this list")
    return key[0]


def _days_since_epoch(moment: str) -> float:
    return (datetime.fromisoformat(moment) - DECAY_EPOCH).total_seconds() / 86_400
