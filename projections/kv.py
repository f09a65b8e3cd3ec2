"""Views in JetStream key-value buckets: changed rows follow the projection, page by page.

Every view row records the position of the page that last changed it. The writer keeps, per bucket, the
position up to which it has written and writes the rows changed since, pipelined (projections/publisher.py),
waiting for the acks before it advances. Balances, the bucket most watched, take a shorter way when they
can: the projector hands each committed page's changed balances over (`offer`), and when that page starts
where the bucket was written up to, they go out as they are, without reading the rows back (three thread
hops and a query).

The writer records the position it wrote up to in the library's tracking table at most once a second
and when it stops; after a NATS outage or a crash it resumes from there, so the buckets converge to the
views (rewriting a key with the value it has is harmless). With it, it records the highest stream
sequence the bucket acknowledged: a bucket whose stream ends below that when the writer starts lost
writes it had acknowledged (a NATS server that restarted without its last unsynced writes, a new server,
a deleted store), and the writer then writes it again from the start. So does a rebuild of the views
(`forget_written`). Values are the HTTP answers' JSON; their `position` is the view's position when the
key was written.

An erasure reaches the buckets through `view_erasures`: the views write one row per bucket in the transaction
that applies it. Once a bucket is written up to the erasure's position (the renamed keys are in), the writer
deletes and purges the erased participant's keys (projections/kv_erasure.py), then deletes the row; a crash
in between only makes it do that again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from nats.aio.client import Client

from projections import erasure, reciprocity
from projections.influence_view import ITEM_COLUMNS, InfluenceView
from projections.kv_erasure import UnsafeSubject, erase_from_bucket
from projections.nats_bus import BUCKET_BALANCES, BUCKET_INFLUENCE, BUCKET_PAIRS
from projections.publisher import AckedPublisher, Message
from projections.queries import balance_json, pair_answer
from projections.reciprocity import PAIR_COLUMNS, PARTICIPANT_COLUMNS, AppliedPage, PairRow, ParticipantRow
from projections.supervision import in_thread
from projections.viewstore import ViewStore

log = structlog.get_logger(__name__)

# Per bucket, the highest stream sequence it acknowledged when the writer last recorded its position; and the
# erasures each bucket has still to carry out (written by the views: projections/erasure.py).
DDL = ("CREATE TABLE IF NOT EXISTS view_kv (bucket TEXT PRIMARY KEY, stream_sequence INTEGER NOT NULL)", *erasure.DDL)
ROWS_PER_BATCH = 2_000
# Rows change a page (up to 5,000 facts) at a time; a rebuild spreads them over the positions of their last
# facts. Either way a window of positions holds a bounded share of the rows.
POSITIONS_PER_SYNC = 50_000
INFLUENCE_KEYS_MAX = 1_000  # the top of each tenant; lower ranks are removed from the bucket
ACK_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.5
# The position written up to is recorded at most this often (each record is a write to the views, which
# the projector waits for): after a crash, up to this much is written again, which changes nothing.
RECORD_INTERVAL_S = 1.0
# Pending erasures are looked for at most this often (and at start): a query per second, not per page, and
# still well inside the 5 s in which DESIGN wants an erased participant out of the buckets.
ERASURES_INTERVAL_S = 1.0
DELETE = {"KV-Operation": "DEL"}
# Pages handed over and not yet written: a few, of at most ROWS_PER_BATCH balances each. When NATS is away
# they pile up no further: the oldest go, and the rows are read back instead (which the writer does anyway
# for a page that does not start where it is).
OFFERED_PAGES_MAX = 32


@dataclass(frozen=True, slots=True)
class OfferedPage:
    after: int  # the page holds what changed after this position...
    position: int  # ...up to this one
    messages: list[Message]


class KvWriter:
    def __init__(self, store: ViewStore, influence: InfluenceView, influence_position: Callable[[], int]) -> None:
        self.store = store
        self.influence = influence
        self.upto = bucket_heads(store, influence_position)
        self.offered: deque[OfferedPage] = deque(maxlen=OFFERED_PAGES_MAX)  # not yet written nor passed over
        self.written: dict[str, int] = {}  # per bucket, the position written up to (acknowledged) by now

    def lag(self) -> dict[str, int]:
        """Per bucket, the positions of its view not written to it yet (a bucket whose loop has not started
        yet counts from its recorded position)."""
        written = {bucket: self.written.get(bucket) for bucket in self.upto}
        return {
            bucket: max(0, head() - (self.tracked(bucket) if written[bucket] is None else written[bucket]))
            for bucket, head in self.upto.items()
        }

    def offer(self, after: int, applied: AppliedPage) -> None:
        """A committed page's balances, ready to write (called on the projector's thread). A page too big
        for one batch (catching up) is left to the rows' way."""
        if len(applied.balances) <= ROWS_PER_BATCH:
            position = applied.position
            messages = [
                (f"$KV.{BUCKET_BALANCES}.{tenant}.{participant}", balance_json(participant, row, position), None)
                for tenant, participant, row in applied.balances
            ]
            self.offered.append(OfferedPage(after, position, messages))

    def tracked(self, bucket: str) -> int:
        return self.store.position(f"kv/{bucket}")

    async def run(self, client: Client, bucket: str, wakeup: asyncio.Event) -> None:
        """Writes one bucket's changes until cancelled (a NATS failure or a reconnect ends it; the caller runs
        it again). Each bucket has its own loop, so a large influence rewrite never delays a balance."""
        rows = {BUCKET_BALANCES: self._balances, BUCKET_PAIRS: self._pairs, BUCKET_INFLUENCE: self._influence}[bucket]
        since = self.written[bucket] = await self._start_position(client, bucket)
        recorded, recorded_at = since, time.monotonic()
        erasures_at = 0.0
        reconnects = client.stats["reconnects"]
        async with AckedPublisher(client, ROWS_PER_BATCH) as publisher:
            try:
                while client.stats["reconnects"] == reconnects:  # else start again: the server may be new
                    wakeup.clear()
                    since, at_head = await self._sync(publisher, bucket, rows, since)
                    self.written[bucket] = since
                    if time.monotonic() - erasures_at >= ERASURES_INTERVAL_S:
                        erasures_at = time.monotonic()
                        await self.erase_due(client, publisher, bucket, since)
                    if since != recorded and time.monotonic() - recorded_at >= RECORD_INTERVAL_S:
                        await in_thread(self.record_written, bucket, since, publisher.sequence)
                        recorded, recorded_at = since, time.monotonic()
                    if at_head:  # written up to the view's position; a page since has set the wakeup again
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(POLL_INTERVAL_S):  # wait_for can lose a cancel (3.11)
                                await wakeup.wait()
            finally:
                if since != recorded:  # stopping or failing: keep what was acknowledged
                    await in_thread(self.record_written, bucket, since, publisher.sequence)

    async def _start_position(self, client: Client, bucket: str) -> int:
        """Where to write from: the recorded position, or 0 when the bucket lost writes it acknowledged."""
        since, acknowledged = await in_thread(self._recorded, bucket)
        stream_sequence = (await client.jetstream().stream_info(f"KV_{bucket}")).state.last_seq
        if stream_sequence >= acknowledged:
            return since
        log.warning(
            "kv_bucket_lost_writes", bucket=bucket, stream_sequence=stream_sequence, acknowledged=acknowledged,
            written_again_from=0,
        )  # fmt: skip
        await in_thread(forget_written, self.store, (bucket,))
        return 0

    async def erase_due(self, client: Client, publisher: AckedPublisher, bucket: str, written: int) -> int:
        """Carries out the bucket's erasures at or below the position it is written up to; returns how many."""
        due = await in_thread(
            self.store.read,
            "SELECT tenant, token, participant, position FROM view_erasures WHERE bucket = ? AND position <= ?",
            (bucket, written),
        )
        for tenant, token, participant, position in due:
            try:
                keys = await erase_from_bucket(client.jetstream(), publisher, bucket, tenant, participant)
            except UnsafeSubject:
                # Never a purge wider than one participant's keys: the row stays, and says so every time.
                log.error("kv_erasure_refused", bucket=bucket, tenant=tenant, token=token)
                continue
            await in_thread(self._erased, bucket, tenant, token, position)
            log.info("kv_erased", bucket=bucket, tenant=tenant, token=token, position=position, keys=keys)
        return len(due)

    def _erased(self, bucket: str, tenant: str, token: str, position: int) -> None:
        with self.store.transaction() as cursor:
            cursor.execute(
                "DELETE FROM view_erasures WHERE bucket = ? AND tenant = ? AND token = ? AND position = ?",
                (bucket, tenant, token, position),
            )

    def _recorded(self, bucket: str) -> tuple[int, int]:
        found = self.store.read("SELECT stream_sequence FROM view_kv WHERE bucket = ?", (bucket,))
        return self.tracked(bucket), found[0][0] if found else 0

    async def _sync(
        self, publisher: AckedPublisher, bucket: str, rows: Callable[..., Iterator[Any]], since: int
    ) -> tuple[int, bool]:
        """Writes the rows changed in the next window of positions after `since`; returns the position
        written up to (`since` when nothing was new), and whether that is the view's position as just read.

        The window bounds memory: after a rebuild every row of a million-fact view has changed, and the
        writer holds one window's rows and one batch's JSON at a time, not the whole view."""
        if bucket == BUCKET_BALANCES and (page := self._offered_after(since)) is not None:
            await publisher.publish(page.messages, ACK_TIMEOUT_S)
            return page.position, False
        head = await in_thread(self.upto[bucket])
        if head <= since:
            return since, True
        upto = min(head, since + POSITIONS_PER_SYNC)
        batches = await in_thread(rows, since, upto)
        while (batch := await in_thread(next, batches, None)) is not None:
            messages = (
                (f"$KV.{bucket}.{key}", b"", DELETE) if value is None else (f"$KV.{bucket}.{key}", value, None)
                for key, value in batch  # a None value is no longer in the bucket's scope: a delete marker
            )
            await publisher.publish(messages, ACK_TIMEOUT_S)
        return upto, upto == head

    def _offered_after(self, since: int) -> OfferedPage | None:
        """The next offered page, if it starts where the bucket was written up to. A page is taken off
        before it is looked at: the projector's thread appends meanwhile, and a full deque drops its
        oldest, so the first page seen might not be the one taken."""
        while self.offered:
            page = self.offered.popleft()
            if page.after == since:
                return page
            if page.position > since:
                return None  # a page was missed before this one: the rows' way covers both
        return None  # (pages up to `since` were written already, by the rows' way)

    def record_written(self, bucket: str, position: int, stream_sequence: int) -> None:
        """The bucket holds the rows up to `position`; the stream acknowledged up to `stream_sequence`."""
        with self.store.transaction() as cursor:
            self.store.record_position(cursor, f"kv/{bucket}", position)
            if stream_sequence:  # (0: nothing acknowledged since the writer started; what was recorded stands)
                cursor.execute(
                    "INSERT INTO view_kv (bucket, stream_sequence) VALUES (?, ?) "
                    "ON CONFLICT (bucket) DO UPDATE SET stream_sequence = excluded.stream_sequence",
                    (bucket, stream_sequence),
                )

    def _changed(self, table: str, columns: str, since: int, upto: int) -> list[tuple]:
        scope = "scope = '' AND " if table != "view_influence" else ""
        return self.store.read(
            f"SELECT {columns} FROM {table} WHERE {scope}changed_position > ? AND changed_position <= ? "
            "ORDER BY changed_position",
            (since, upto),
        )

    def _balances(self, since: int, upto: int) -> Iterator[list[tuple[str, bytes | None]]]:
        rows = self._changed("view_participants", f"tenant, participant, {', '.join(PARTICIPANT_COLUMNS)}", since, upto)
        for chunk in _chunks(rows):
            yield [(f"{r[0]}.{r[1]}", balance_json(r[1], ParticipantRow(*r[2:]), upto)) for r in chunk]

    def _pairs(self, since: int, upto: int) -> Iterator[list[tuple[str, bytes | None]]]:
        rows = self._changed("view_pairs", f"tenant, a, b, {', '.join(PAIR_COLUMNS)}", since, upto)
        for chunk in _chunks(rows):
            introducers = self._introducers({(r[0], r[1], r[2]) for r in chunk})
            yield [
                (
                    f"{r[0]}.{r[1]}.{r[2]}",
                    pair_answer(r[1], r[2], PairRow(*r[3:]), introducers.get((r[0], r[1], r[2]), []), upto)
                    .model_dump_json()
                    .encode(),
                )
                for r in chunk
            ]

    def _introducers(self, pairs: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], list[str]]:
        """The live introducers of many pairs in one query per chunk, in position order."""
        found: dict[tuple[str, str, str], list[str]] = {}
        with self.store.transaction(commit=False) as cursor:
            rows = cursor.lookup(
                "view_introductions", ("tenant", "a", "b", "introducer"), ("tenant", "a", "b"), pairs,
                where="t.live = 1", order_by="t.position",
            )  # fmt: skip
            for tenant, a, b, introducer in rows:
                found.setdefault((tenant, a, b), []).append(introducer)
        return found

    def _influence(self, since: int, upto: int) -> Iterator[list[tuple[str, bytes | None]]]:
        rows = self._changed("view_influence", f"tenant, {ITEM_COLUMNS}", since, upto)
        for chunk in _chunks(rows):
            shown: dict[str, list[tuple]] = {}  # per tenant, the rows in its top: their answers in one go
            for r in chunk:
                if r[3] <= INFLUENCE_KEYS_MAX:
                    shown.setdefault(r[0], []).append(r[1:])
            values = {
                (tenant, item.participant): _json({**item.model_dump(mode="json", by_alias=True), "position": upto})
                for tenant, tenant_rows in shown.items()
                for item in self.influence.items(tenant, tenant_rows)
            }
            # Lower ranks are no longer in the bucket's scope: None, a delete marker.
            yield [(f"{r[0]}.{r[1]}", values.get((r[0], r[1]))) for r in chunk]


def bucket_heads(store: ViewStore, influence_position: Callable[[], int]) -> dict[str, Callable[[], int]]:
    """Per bucket, the position of the view it holds. Influence rows change when a tenant is recomputed,
    after the page: they are written up to the position below which no recompute can still change a row."""
    return {
        BUCKET_BALANCES: lambda: store.position(reciprocity.VIEW),
        BUCKET_PAIRS: lambda: store.position(reciprocity.VIEW),
        BUCKET_INFLUENCE: influence_position,
    }


def recorded_lag(store: ViewStore, influence_position: Callable[[], int]) -> dict[str, int]:
    """The KV writer's lag as another process sees it: from the positions it records (at most a second old)."""
    return {
        bucket: max(0, head() - store.position(f"kv/{bucket}"))
        for bucket, head in bucket_heads(store, influence_position).items()
    }


def forget_written(store: ViewStore, buckets: tuple[str, ...]) -> None:
    """The buckets will be written again from the start: every key the views hold, with its value now."""
    with store.transaction() as cursor:
        for bucket in buckets:
            cursor.execute(f"DELETE FROM {store.tracking_table} WHERE application_name = ?", (f"kv/{bucket}",))
            cursor.execute("DELETE FROM view_kv WHERE bucket = ?", (bucket,))


def _chunks(rows: list[tuple]) -> Iterator[list[tuple]]:
    for start in range(0, len(rows), ROWS_PER_BATCH):
        yield rows[start : start + ROWS_PER_BATCH]


def _json(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)
