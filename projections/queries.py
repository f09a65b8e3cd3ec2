"""Reading the views: the answers HTTP and NATS give, built from view rows (never from the log)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
from datetime import datetime, timedelta
from typing import Any

import orjson

from contracts.types import PARTICIPANT_PATTERN, utc_text
from contracts.view_answers import (
    Balance,
    BalancesPage,
    DormantTie,
    Maintenance,
    Pair,
    PendingThanks,
)
from projections.reciprocity import (
    MICRO,
    PAIR_COLUMNS,
    PARTICIPANT_COLUMNS,
    VIEW,
    PairRow,
    ParticipantKey,
    ParticipantRow,
)
from projections.viewstore import ViewStore

ORDERS = {"balance": "balance_micro", "given": "given_micro", "received": "received_micro"}
DORMANT_AFTER = timedelta(days=90)
THANKS_PENDING_AFTER = timedelta(days=14)
PARTICIPANT = re.compile(PARTICIPANT_PATTERN)


class CursorError(ValueError):
    """A pagination cursor that this API did not hand out."""


def money(micro: int) -> str:
    """Micro-units as the decimal text we answer with (what decimal_text writes), in integer arithmetic."""
    whole, fraction = divmod(abs(micro), MICRO)
    text = f"{whole}.{fraction:06d}".rstrip("0") if fraction else str(whole)
    return "-" + text if micro < 0 else text


def ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else round(numerator / denominator, 6)


def balance_fields(participant: str, row: ParticipantRow, position: int) -> dict[str, Any]:
    """A balance answer as plain data, in the contract's field order."""
    return {
        "participant": participant,
        "given": {"count": row.given_count, "value": money(row.given_micro)},
        "received": {"count": row.received_count, "value": money(row.received_micro)},
        "balance": money(row.given_micro - row.received_micro),
        "introductions": {"made": row.intro_made, "received": row.intro_received},
        "acknowledgements": {"given": row.ack_given, "received": row.ack_received},
        "unacknowledged": {
            "count": row.unack_count,
            "value": money(row.unack_micro),
            "oldest_at": row.unack_oldest_at,
        },
        "counterparts": row.counterparts,
        "reciprocity": ratio(row.returned_micro, row.given_micro),
        "position": position,
    }


def balance_answer(participant: str, row: ParticipantRow, position: int) -> Balance:
    return Balance.model_validate(balance_fields(participant, row, position))


def balance_json(participant: str, row: ParticipantRow, position: int) -> bytes:
    """balance_answer's JSON, byte for byte, without building and validating the model: the most frequent
    answer, by HTTP and into the KV bucket, where that work would be spent on every one (a test compares them)."""
    return orjson.dumps(balance_fields(participant, row, position))


def pair_answer(a: str, b: str, row: PairRow, introduced_by: list[str], position: int) -> Pair:
    total = row.ab_micro + row.ba_micro
    return Pair.model_validate(
        {
            "a": a,
            "b": b,
            "a_to_b": {"count": row.ab_count, "value": money(row.ab_micro)},
            "b_to_a": {"count": row.ba_count, "value": money(row.ba_micro)},
            "balance": money(row.ab_micro - row.ba_micro),
            "reciprocity": None if total == 0 else round(1 - abs(row.ab_micro - row.ba_micro) / total, 6),
            "first_at": row.first_at,
            "last_at": row.last_at,
            "introduced_by": introduced_by,
            "position": position,
        }
    )


class ReciprocityQueries:
    """Balances, pairs and maintenance, read from the reciprocity view."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store
        self._balance_lookups = BalanceLookups(store)

    def position(self) -> int:
        return self.store.position(VIEW)

    def balance(self, tenant: str, participant: str, scope: str = "") -> Balance | None:
        row = self._balance_row(tenant, participant, scope)
        return None if row is None else balance_answer(participant, *row)

    def balance_json(self, tenant: str, participant: str, scope: str = "") -> bytes | None:
        """balance's answer as JSON (balance_json)."""
        row = self._balance_row(tenant, participant, scope)
        return None if row is None else balance_json(participant, *row)

    async def balance_json_async(self, tenant: str, participant: str, scope: str = "") -> bytes | None:
        """balance_json for the event loop: in place on SQLite, gathered with other requests' on PostgreSQL."""
        if not self.store.postgres:
            return self.balance_json(tenant, participant, scope)
        row = await self._balance_lookups.row(tenant, scope, participant)
        return None if row is None else balance_json(participant, *row)

    def _balance_row(self, tenant: str, participant: str, scope: str) -> tuple[ParticipantRow, int] | None:
        """The row and the view's position in one statement: the most frequent query, one round trip."""
        position = f"(SELECT MAX(notification_id) FROM {self.store.tracking_table} WHERE application_name = ?)"
        rows = self.store.read(
            f"SELECT {', '.join(PARTICIPANT_COLUMNS)}, {position} FROM view_participants "
            "WHERE tenant = ? AND scope = ? AND participant = ?",
            (VIEW, tenant, scope, participant),
        )
        if not rows:
            return None
        *values, at = rows[0]
        return ParticipantRow(*values), at or 0

    def pair(self, tenant: str, first: str, second: str) -> Pair | None:
        """A pair in canonical order; None when either participant is unknown."""
        a, b = sorted((first, second))
        if a == b:
            return None
        position = self.position()
        known = self.store.read(
            "SELECT COUNT(*) FROM view_participants WHERE tenant = ? AND scope = '' AND participant IN (?, ?)",
            (tenant, a, b),
        )[0][0]
        if known < 2:
            return None
        rows = self.store.read(
            f"SELECT {', '.join(PAIR_COLUMNS)} FROM view_pairs WHERE tenant = ? AND scope = '' AND a = ? AND b = ?",
            (tenant, a, b),
        )
        introducers = self.store.read(
            "SELECT introducer FROM view_introductions WHERE tenant = ? AND a = ? AND b = ? AND live = 1 "
            "ORDER BY position",
            (tenant, a, b),
        )
        row = PairRow(*rows[0]) if rows else PairRow()
        return pair_answer(a, b, row, [r[0] for r in introducers], position)

    def balances(self, tenant: str, order: str, scope: str, limit: int, cursor: str | None) -> BalancesPage:
        """One page, largest first, ties by participant id; the cursor is the last item's sort key."""
        column = ORDERS[order]
        position = self.position()
        condition, params = "", ()
        if cursor:
            last_value, last_participant = _balance_key(decode_cursor(cursor))
            condition = f" AND ({column} < ? OR ({column} = ? AND participant > ?))"
            params = (last_value, last_value, last_participant)
        rows = self.store.read(
            f"SELECT participant, {column}, {', '.join(PARTICIPANT_COLUMNS)} FROM view_participants "
            f"WHERE tenant = ? AND scope = ?{condition} ORDER BY {column} DESC, participant ASC LIMIT ?",
            (tenant, scope, *params, limit + 1),
        )
        items = [balance_answer(r[0], ParticipantRow(*r[2:]), position) for r in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1][1], rows[limit - 1][0]) if len(rows) > limit else None
        return BalancesPage(items=items, next_cursor=next_cursor, position=position)

    def latest_occurred_at(self, tenant: str) -> str | None:
        """as_of by default: the latest occurred_at of the tenant's live facts."""
        latest = [
            self.store.read(f"SELECT MAX(occurred_at) FROM {table} WHERE tenant = ? AND live = 1", (tenant,))[0][0]
            for table in ("view_gives", "view_introductions", "view_acknowledgements")
        ]
        return max(filter(None, latest), default=None)

    def maintenance(self, tenant: str, participant: str, as_of: str | None) -> Maintenance | None:
        position = self.position()
        if self.balance(tenant, participant) is None:
            return None
        as_of = as_of or self.latest_occurred_at(tenant)
        if as_of is None:
            return Maintenance(
                participant=participant, as_of=None, dormant_ties=[], pending_thanks=[], position=position
            )
        moment = datetime.fromisoformat(as_of)
        return Maintenance(
            participant=participant,
            as_of=as_of,
            dormant_ties=self._dormant_ties(tenant, participant, utc_text(moment - DORMANT_AFTER)),
            pending_thanks=self._pending_thanks(tenant, participant, utc_text(moment - THANKS_PENDING_AFTER)),
            position=position,
        )

    def _dormant_ties(self, tenant: str, participant: str, quiet_since: str) -> list[DormantTie]:
        """Ties in the tenant's top quartile by exchanged value with no live give for over 90 days."""
        pairs = self.store.read(
            "SELECT COUNT(*) FROM view_pairs WHERE tenant = ? AND scope = '' AND strength_micro > 0", (tenant,)
        )[0][0]
        if pairs == 0:
            return []
        threshold = self.store.read(
            "SELECT strength_micro FROM view_pairs WHERE tenant = ? AND scope = '' AND strength_micro > 0 "
            "ORDER BY strength_micro DESC LIMIT 1 OFFSET ?",
            (tenant, math.ceil(pairs / 4) - 1),
        )[0][0]
        rows = self.store.read(
            "SELECT a, b, last_at, strength_micro FROM view_pairs WHERE tenant = ? AND scope = '' "
            "AND (a = ? OR b = ?) AND strength_micro >= ? AND last_at < ? ORDER BY strength_micro DESC, a, b",
            (tenant, participant, participant, threshold, quiet_since),
        )
        return [
            DormantTie(counterpart=b if a == participant else a, last_at=last_at, strength=money(strength))
            for a, b, last_at, strength in rows
        ]

    def _pending_thanks(self, tenant: str, participant: str, before: str) -> list[PendingThanks]:
        rows = self.store.read(
            "SELECT event_id, external_id, giver, occurred_at, value_micro FROM view_gives "
            "WHERE tenant = ? AND receiver = ? AND live = 1 AND acknowledged = 0 AND occurred_at < ? "
            "ORDER BY occurred_at, position",
            (tenant, participant, before),
        )
        return [
            PendingThanks(event_id=r[0], external_id=r[1], giver=r[2], occurred_at=r[3], value=money(r[4]))
            for r in rows
        ]


class BalanceLookups:
    """Balance rows on PostgreSQL for the event loop, gathered: the lookups that arrive while a statement is in
    flight go out together in the next one, on the loop's connection (ViewStore.read_async). Under load a
    request then costs a share of one round trip instead of a whole one (on a small machine its system calls
    cost more than the lookup); a request that comes alone goes out at once. One statement in flight per
    process: more in flight did not help (docs/performance.md)."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store
        self._waiting: list[tuple[ParticipantKey, asyncio.Future[tuple[ParticipantRow, int] | None]]] = []
        self._sending: asyncio.Task[None] | None = None
        position = f"(SELECT MAX(notification_id) FROM {store.tracking_table} WHERE application_name = %s)"
        # One row per key found, with the view's position: a single statement reads one snapshot.
        self._statement = (
            f"SELECT t.tenant, t.scope, t.participant, {', '.join(f't.{c}' for c in PARTICIPANT_COLUMNS)}, "
            f"{position} FROM unnest(%s::text[], %s::text[], %s::text[]) AS k(tenant, scope, participant) "
            "JOIN view_participants AS t "
            "ON t.tenant = k.tenant AND t.scope = k.scope AND t.participant = k.participant"
        )

    async def row(self, tenant: str, scope: str, participant: str) -> tuple[ParticipantRow, int] | None:
        """The participant's row and the view's position; None when the view has no such participant."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(((tenant, scope, participant), future))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                found = await self._rows({key for key, _ in batch})
            except Exception as failure:  # every request of the batch answers with it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for key, future in batch:
                if not future.done():  # a request that went away meanwhile
                    future.set_result(found.get(key))

    async def _rows(self, keys: set[ParticipantKey]) -> dict[ParticipantKey, tuple[ParticipantRow, int]]:
        rows = await self.store.read_async(self._statement, (VIEW, *map(list, zip(*keys, strict=True))))
        return {(r[0], r[1], r[2]): (ParticipantRow(*r[3:-1]), r[-1] or 0) for r in rows}


def _balance_key(key: list[Any]) -> tuple[int, str]:
    # A cursor comes back from a client: each part is checked as strictly as the store column it meets.
    if len(key) != 2 or not _int64(key[0]) or not isinstance(key[1], str) or not PARTICIPANT.fullmatch(key[1]):
        raise CursorError("not a cursor of this list")
    return key[0], key[1]


def _int64(value: Any) -> bool:
    return type(value) is int and -(2**63) <= value < 2**63  # bool is an int, but no cursor holds one


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise CursorError("not a cursor from this API") from None
    if not isinstance(key, list):
        raise CursorError("not a cursor from this API")
    return key
