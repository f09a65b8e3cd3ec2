"""The graph, a participant's ties and the tenant's upkeep (DESIGN section 8), read from the view rows.

Nothing here replays the log: the whole-history graph comes from the per-pair rows (each pair holds both
directions' count and value, indexed by each direction's value, so the heaviest edges are an index walk),
a time window from the per-give rows through their time index, ties from a participant's pair rows and
upkeep from the pending gives in time order and the pairs of the top quartile.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from contracts.types import PARTICIPANT_PATTERN, utc_text
from contracts.view_answers import CountValue, Graph, GraphEdge, GraphNode, Tie, TiesPage, UpkeepItem, UpkeepPage
from projections.queries import (
    DORMANT_AFTER,
    THANKS_PENDING_AFTER,
    CursorError,
    decode_cursor,
    encode_cursor,
    money,
)
from projections.reciprocity import VIEW, scope_filter
from projections.viewstore import ViewCursor, ViewStore

KEYS_PER_QUERY = 500
PARTICIPANT = re.compile(PARTICIPANT_PATTERN)
STORED_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")  # utc_text's form
TIE_ORDERS = {"strength": "strength_micro", "last_at": "last_at"}
UPKEEP_KINDS = ("dormant_tie", "pending_thanks")  # in this order where two items have the same `since`
Edge = tuple[str, str, int, int]  # from, to, count, value_micro


class GraphQueries:
    """The graph, ties and upkeep answers; each reads one snapshot of the views."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def _position(self, cursor: ViewCursor) -> int:
        found = cursor.execute(
            f"SELECT MAX(notification_id) FROM {self.store.tracking_table} WHERE application_name = ?", (VIEW,)
        )
        return found[0][0] or 0

    # --- the graph ------------------------------------------------------------------------------------

    def graph(self, tenant: str, scope: str, since: str | None, until: str | None, limit: int) -> Graph:
        """The heaviest `limit` edges giver -> receiver of live gives in `scope` (a context value, "" for all)
        with `since <= occurred_at < until`, and their endpoints' overall views."""
        with self.store.snapshot() as cursor:
            position = self._position(cursor)
            if since is None and until is None:
                edges = self._heaviest_edges(cursor, tenant, scope, limit + 1)
                kept = edges[:limit]
                details = self._edge_details(cursor, tenant, scope, [(e[0], e[1]) for e in kept])
                rows = [(*edge, *details[(edge[0], edge[1])]) for edge in kept]
            else:
                rows = self._window_edges(cursor, tenant, scope, since, until, limit + 1)
                edges, rows = rows, rows[:limit]
            nodes = self._nodes(cursor, tenant, sorted({p for row in rows for p in row[:2]}))
        return Graph(
            nodes=nodes,
            edges=[_edge(*row) for row in rows],
            position=position,
            truncated=len(edges) > limit,
        )

    def _heaviest_edges(self, cursor: ViewCursor, tenant: str, scope: str, count: int) -> list[Edge]:
        """The first `count` directed edges of the pair rows by value, from, to: each direction walks its own
        index, and the two walks are merged."""
        forward = cursor.execute(
            "SELECT a, b, ab_count, ab_micro FROM view_pairs WHERE tenant = ? AND scope = ? AND ab_count > 0 "
            "ORDER BY ab_micro DESC, a, b LIMIT ?",
            (tenant, scope, count),
        )
        backward = cursor.execute(
            "SELECT b, a, ba_count, ba_micro FROM view_pairs WHERE tenant = ? AND scope = ? AND ba_count > 0 "
            "ORDER BY ba_micro DESC, b, a LIMIT ?",
            (tenant, scope, count),
        )
        merged = sorted((tuple(row) for row in (*forward, *backward)), key=lambda e: (-e[3], e[0], e[1]))
        return merged[:count]  # type: ignore[return-value]

    def _edge_details(
        self, cursor: ViewCursor, tenant: str, scope: str, edges: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, str, str]]:
        """Per edge: how many of its live gives were acknowledged, the first and the last; each edge one lookup in
        the gives' (tenant, giver, receiver, live, occurred_at) index."""
        condition, params = scope_filter(scope)
        found: dict[tuple[str, str], tuple[int, str, str]] = {}
        for start in range(0, len(edges), KEYS_PER_QUERY):
            chunk = edges[start : start + KEYS_PER_QUERY]
            keys, key_params = _keys_source(self.store.postgres, chunk)
            rows = cursor.execute(
                f"SELECT k.c0, k.c1, SUM(t.acknowledged), MIN(t.occurred_at), MAX(t.occurred_at) FROM {keys} "
                f"{'JOIN' if self.store.postgres else 'CROSS JOIN'} view_gives AS t ON t.tenant = ? "
                f"AND t.giver = k.c0 AND t.receiver = k.c1 AND t.live = 1{condition.replace(' AND ', ' AND t.')} "
                "GROUP BY k.c0, k.c1",
                (*key_params, tenant, *params),
            )
            found.update({(r[0], r[1]): (int(r[2]), r[3], r[4]) for r in rows})
        return found

    def _window_edges(
        self, cursor: ViewCursor, tenant: str, scope: str, since: str | None, until: str | None, count: int
    ) -> list[tuple[Any, ...]]:
        """Edges summed from the gives in the window, walked in the gives' (tenant, live, occurred_at) index."""
        condition, params = scope_filter(scope)
        bounds = [(" AND occurred_at >= ?", since), (" AND occurred_at < ?", until)]
        window = "".join(sql for sql, bound in bounds if bound is not None)
        rows = cursor.execute(
            "SELECT giver, receiver, COUNT(*), SUM(value_micro), SUM(acknowledged), MIN(occurred_at), "
            f"MAX(occurred_at) FROM view_gives WHERE tenant = ? AND live = 1{window}{condition} "
            "GROUP BY giver, receiver ORDER BY SUM(value_micro) DESC, giver, receiver LIMIT ?",
            (tenant, *(bound for _, bound in bounds if bound is not None), *params, count),
        )
        return [(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), r[5], r[6]) for r in rows]

    def _nodes(self, cursor: ViewCursor, tenant: str, participants: list[str]) -> list[GraphNode]:
        totals: dict[str, tuple[Any, ...]] = {}
        scores: dict[str, tuple[Any, ...]] = {}
        for chunk in _chunks(participants):
            marks = ", ".join("?" * len(chunk))
            totals.update(
                (r[0], tuple(r[1:]))
                for r in cursor.execute(
                    "SELECT participant, given_count, given_micro, received_count, received_micro "
                    f"FROM view_participants WHERE tenant = ? AND scope = '' AND participant IN ({marks})",
                    (tenant, *chunk),
                )
            )
            scores.update(
                (r[0], tuple(r[1:]))
                for r in cursor.execute(
                    "SELECT participant, score, rank FROM view_influence "
                    f"WHERE tenant = ? AND participant IN ({marks})",
                    (tenant, *chunk),
                )
            )
        return [_node(p, totals.get(p, (0, 0, 0, 0)), scores.get(p, (None, None))) for p in participants]

    # --- ties -----------------------------------------------------------------------------------------

    def ties(self, tenant: str, participant: str, order: str, limit: int, cursor: str | None) -> TiesPage | None:
        """`participant`'s counterparts (a live give either way), by strength or last_at descending, then by
        counterpart; None for a participant the view does not know."""
        column = TIE_ORDERS[order]
        after = _tie_key(decode_cursor(cursor), order) if cursor else None
        with self.store.snapshot() as snapshot:
            position = self._position(snapshot)
            known = snapshot.execute(
                "SELECT 1 FROM view_participants WHERE tenant = ? AND scope = '' AND participant = ?",
                (tenant, participant),
            )
            if not known:
                return None
            rows = self._tie_rows(snapshot, tenant, participant, column, after, limit + 1)
            introducers = self._introducers(snapshot, tenant, participant, [row[0] for row in rows[:limit]])
        items = [_tie(participant, row, introducers.get(row[0], [])) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(last[-1], last[0])
        return TiesPage(items=items, next_cursor=next_cursor, position=position)

    def _tie_rows(
        self, cursor: ViewCursor, tenant: str, participant: str, column: str, after: tuple[Any, str] | None, count: int
    ) -> list[Any]:
        """Rows (counterpart, given count, given micro, received count, received micro, first_at, last_at, key),
        from both sides of the participant's pairs: as a (its primary key) and as b (view_pairs_b_overall)."""
        side = (
            "SELECT {other} AS counterpart, {mine}_count AS given_count, {mine}_micro AS given_micro, "
            "{theirs}_count AS received_count, {theirs}_micro AS received_micro, first_at, last_at, "
            "strength_micro FROM view_pairs WHERE tenant = ? AND scope = '' AND {me} = ? AND ab_count + ba_count > 0"
        )
        both = " UNION ALL ".join(
            (
                side.format(other="b", mine="ab", theirs="ba", me="a"),
                side.format(other="a", mine="ba", theirs="ab", me="b"),
            )
        )
        condition, params = "", ()
        if after is not None:
            condition = f" WHERE {column} < ? OR ({column} = ? AND counterpart > ?)"
            params = (after[0], after[0], after[1])
        # Materialized: else SQLite pushes the ORDER BY into each side and walks the whole tenant's strength index.
        return cursor.execute(
            f"WITH ties AS MATERIALIZED ({both}) SELECT counterpart, given_count, given_micro, received_count, "
            f"received_micro, first_at, last_at, {column} FROM ties{condition} ORDER BY {column} DESC, counterpart "
            "LIMIT ?",
            (tenant, participant, tenant, participant, *params, count),
        )

    def _introducers(
        self, cursor: ViewCursor, tenant: str, participant: str, counterparts: list[str]
    ) -> dict[str, list[str]]:
        """Each counterpart's live introductions to `participant`, introducers in position order."""
        found: dict[str, list[str]] = {}
        for chunk in _chunks(counterparts):
            marks = ", ".join("?" * len(chunk))
            rows = cursor.execute(
                "SELECT a, b, introducer FROM view_introductions WHERE tenant = ? AND live = 1 AND "
                f"((a = ? AND b IN ({marks})) OR (b = ? AND a IN ({marks}))) ORDER BY position",
                (tenant, participant, *chunk, participant, *chunk),
            )
            for a, b, introducer in rows:
                found.setdefault(b if a == participant else a, []).append(introducer)
        return found

    # --- upkeep ---------------------------------------------------------------------------------------

    def upkeep(self, tenant: str, as_of: str | None, limit: int, cursor: str | None) -> UpkeepPage:
        """The tenant's pending thanks and dormant ties in one list, oldest first (DESIGN sections 4 and 8)."""
        after = _upkeep_key(decode_cursor(cursor)) if cursor else None
        with self.store.snapshot() as snapshot:
            position = self._position(snapshot)
            as_of = as_of or _latest_occurred_at(snapshot, tenant)
            if as_of is None:
                return UpkeepPage(items=[], next_cursor=None, as_of=None, position=position)
            moment = datetime.fromisoformat(as_of)
            keyed = [
                *_pending_thanks(snapshot, tenant, utc_text(moment - THANKS_PENDING_AFTER), after, limit + 1),
                *_dormant_ties(snapshot, tenant, utc_text(moment - DORMANT_AFTER), after, limit + 1),
            ]
        keyed.sort(key=lambda item: item[0])
        next_cursor = encode_cursor(*keyed[limit - 1][0]) if len(keyed) > limit else None
        return UpkeepPage(
            items=[item for _, item in keyed[:limit]], next_cursor=next_cursor, as_of=as_of, position=position
        )


UpkeepKey = tuple[str, str, str, str, int]  # since, kind, participant, counterpart, position of the give (0: a tie)


def _pending_thanks(
    cursor: ViewCursor, tenant: str, before: str, after: UpkeepKey | None, count: int
) -> list[tuple[UpkeepKey, UpkeepItem]]:
    """Live, unacknowledged gives older than `before`, walked in the gives' time index."""
    condition, params = "", ()
    if after is not None:
        condition = " AND occurred_at >= ? AND (occurred_at, ?, receiver, giver, position) > (?, ?, ?, ?, ?)"
        params = (after[0], "pending_thanks", *after)
    rows = cursor.execute(
        "SELECT occurred_at, receiver, giver, position, value_micro, event_id FROM view_gives WHERE tenant = ? "
        f"AND live = 1 AND acknowledged = 0 AND occurred_at < ?{condition} "
        "ORDER BY occurred_at, receiver, giver, position LIMIT ?",
        (tenant, before, *params, count),
    )
    return [
        (
            (since, "pending_thanks", receiver, giver, at),
            UpkeepItem(
                kind="pending_thanks",
                participant=receiver,
                counterpart=giver,
                since=since,
                value=money(value),
                event_id=event_id,
            ),
        )
        for since, receiver, giver, at, value, event_id in rows
    ]


def _dormant_ties(
    cursor: ViewCursor, tenant: str, quiet_since: str, after: UpkeepKey | None, count: int
) -> list[tuple[UpkeepKey, UpkeepItem]]:
    """Pairs in the tenant's top quartile by exchanged value (ties at the threshold included) with no live give
    either way since `quiet_since`."""
    pairs = cursor.execute(
        "SELECT COUNT(*) FROM view_pairs WHERE tenant = ? AND scope = '' AND strength_micro > 0", (tenant,)
    )[0][0]
    if pairs == 0:
        return []
    threshold = cursor.execute(
        "SELECT strength_micro FROM view_pairs WHERE tenant = ? AND scope = '' AND strength_micro > 0 "
        "ORDER BY strength_micro DESC LIMIT 1 OFFSET ?",
        (tenant, math.ceil(pairs / 4) - 1),
    )[0][0]
    condition, params = "", ()
    if after is not None:
        condition = " AND last_at >= ? AND (last_at, ?, a, b, 0) > (?, ?, ?, ?, ?)"
        params = (after[0], "dormant_tie", *after)
    rows = cursor.execute(
        "SELECT last_at, a, b, strength_micro FROM view_pairs WHERE tenant = ? AND scope = '' "
        f"AND strength_micro >= ? AND strength_micro > 0 AND last_at < ?{condition} ORDER BY last_at, a, b LIMIT ?",
        (tenant, threshold, quiet_since, *params, count),
    )
    return [
        (
            (since, "dormant_tie", a, b, 0),
            UpkeepItem(kind="dormant_tie", participant=a, counterpart=b, since=since, value=money(strength)),
        )
        for since, a, b, strength in rows
    ]


def _latest_occurred_at(cursor: ViewCursor, tenant: str) -> str | None:
    """as_of by default: the latest occurred_at of the tenant's live facts (as maintenance reads it)."""
    latest = [
        cursor.execute(f"SELECT MAX(occurred_at) FROM {table} WHERE tenant = ? AND live = 1", (tenant,))[0][0]
        for table in ("view_gives", "view_introductions", "view_acknowledgements")
    ]
    return max(filter(None, latest), default=None)


# Edges and nodes are built from the view's own rows without validating each (up to 5,000 edges and 10,000
# nodes, where validation cost more than the queries); the property tests hold them to the contract's shape.
def _edge(giver: str, receiver: str, count: int, micro: int, acknowledged: int, first: str, last: str) -> GraphEdge:
    return GraphEdge.model_construct(
        from_=giver, to=receiver, count=count, value=money(micro), acknowledged_count=acknowledged,
        first_at=first, last_at=last,
    )  # fmt: skip


def _node(participant: str, totals: tuple[Any, ...], influence: tuple[Any, ...]) -> GraphNode:
    given_count, given_micro, received_count, received_micro = totals
    return GraphNode.model_construct(
        participant=participant,
        given=CountValue.model_construct(count=given_count, value=money(given_micro)),
        received=CountValue.model_construct(count=received_count, value=money(received_micro)),
        balance=money(given_micro - received_micro),
        score=influence[0],
        rank=influence[1],
    )


def _tie(participant: str, row: Sequence[Any], introduced_by: list[str]) -> Tie:
    counterpart, given_count, given_micro, received_count, received_micro, first_at, last_at, _ = row
    total = given_micro + received_micro
    return Tie.model_validate(
        {
            "counterpart": counterpart,
            "given": {"count": given_count, "value": money(given_micro)},
            "received": {"count": received_count, "value": money(received_micro)},
            "balance": money(given_micro - received_micro),
            "reciprocity": None if total == 0 else round(1 - abs(given_micro - received_micro) / total, 6),
            "first_at": first_at,
            "last_at": last_at,
            "introduced_by": introduced_by,
        }
    )


def _keys_source(postgres: bool, keys: Sequence[tuple[str, str]]) -> tuple[str, list[Any]]:
    """Key pairs as a table `k (c0, c1)` to join on: each key is then one index lookup."""
    if postgres:
        return "unnest(?::text[], ?::text[]) AS k(c0, c1)", [[k[0] for k in keys], [k[1] for k in keys]]
    values = ", ".join(["(?, ?)"] * len(keys))
    return f"(SELECT column1 AS c0, column2 AS c1 FROM (VALUES {values})) AS k", [v for key in keys for v in key]


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), KEYS_PER_QUERY):
        yield items[start : start + KEYS_PER_QUERY]


def _tie_key(key: list[Any], order: str) -> tuple[Any, str]:
    # A cursor comes back from a client: each part is checked as strictly as the column it meets.
    if len(key) != 2 or not isinstance(key[1], str) or not PARTICIPANT.fullmatch(key[1]):
        raise CursorError("not a cursor of this list")
    valid = _is_int64(key[0]) if order == "strength" else isinstance(key[0], str) and STORED_TIME.fullmatch(key[0])
    if not valid:
        raise CursorError("not a cursor of this list (or of another order)")
    return key[0], key[1]


def _upkeep_key(key: list[Any]) -> UpkeepKey:
    texts_ok = len(key) == 5 and all(isinstance(part, str) for part in key[:4])
    if not texts_ok or key[1] not in UPKEEP_KINDS or not STORED_TIME.fullmatch(key[0]) or not _is_int64(key[4]):
        raise CursorError("not a cursor of this list")
    if not (PARTICIPANT.fullmatch(key[2]) and PARTICIPANT.fullmatch(key[3])):
        raise CursorError("not a cursor of this list")
    return key[0], key[1], key[2], key[3], key[4]


def _is_int64(value: Any) -> bool:
    return type(value) is int and -(2**63) <= value < 2**63
