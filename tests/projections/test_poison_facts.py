"""A poison fact (one a view cannot apply) quarantines its own tenant in that view and stops no other.

Facts are written through the store, past the HTTP edge that now refuses them. On PostgreSQL the poison is
the real one (a NUL in a context value); SQLite holds a NUL, so there the view is made to fail on that fact.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
import pytest
from eventsourcing import persistence
from structlog.testing import capture_logs

from contracts.webhook_bodies import webhook_adapter
from ledger.connections import ConnectionLimits
from ledger.facts import ReceivedFact
from ledger.group_commit import FactWriter
from ledger.participants import tombstone
from ledger.store import open_ledger
from projections import erasure, reciprocity
from projections.follower import Follower, Quarantine, projection_failures, transient
from projections.runtime import open_view_store
from services.bootstrap import open_components
from services.http.app import create_app
from services.metrics import SHARED_DIR_ENV
from services.roles import background_parts
from tests.helpers import envelope, give, view_columns
from tests.processes import cli_json

VIEW = reciprocity.VIEW


def received(fact, tenant: str) -> ReceivedFact:
    webhook = webhook_adapter.validate_json(json.dumps(envelope(fact)))
    return ReceivedFact.from_webhook(tenant, "crm", webhook, datetime.now(UTC))


def nul_context(fact, tenant: str) -> ReceivedFact:
    """A give whose context holds a NUL, as the edge recorded it before it refused them."""
    valid = received(fact, tenant)
    return dataclasses.replace(valid, data={**valid.data, "context": {"activity": "x\u0000y"}})


def poison(settings, monkeypatch, event_id) -> None:
    """On PostgreSQL the NUL fails the view by itself; on SQLite the view fails on that fact by design."""
    if settings.database_url:
        return
    original = reciprocity.row_from_fact

    def failing(fact, position):
        if fact.event_id == str(event_id):
            raise ValueError("simulated poison fact")
        return original(fact, position)

    monkeypatch.setattr(reciprocity, "row_from_fact", failing)


def interleaved(n: int, poison_at: int) -> list[ReceivedFact]:
    """`n` gives alternating between tenants a and b; fact `poison_at` (of tenant a) has a NUL context."""
    facts = []
    for i in range(n):
        tenant = "a" if i % 2 == 0 else "b"
        fact = give(f"g{i}", "ann", "bob", value="1")
        facts.append(nul_context(fact, tenant) if i == poison_at else received(fact, tenant))
    return facts


def given(views, tenant: str, participant: str = "ann") -> int:
    rows = views.read(
        "SELECT given_count FROM view_participants WHERE tenant = ? AND scope = '' AND participant = ?",
        (tenant, participant),
    )
    return rows[0][0] if rows else 0


def tenant_rows(views, tenant: str) -> dict:
    tables = ("view_gives", "view_introductions", "view_acknowledgements", "view_participants", "view_pairs")
    return {
        table: sorted(
            map(tuple, views.read(f"SELECT {', '.join(view_columns(views, table))} FROM {table} WHERE tenant = ?",
                                  (tenant,)))
        )
        for table in tables
    }  # fmt: skip


def follower(ledger, views, page_facts_max=16, on_failure=lambda view: None) -> Follower:
    return Follower(
        ledger, reciprocity.ReciprocityProjection(views), lambda: views.position(VIEW),
        page_facts_max=page_facts_max, quarantine=Quarantine(views, VIEW), on_failure=on_failure,
    )  # fmt: skip


def test_a_poison_fact_quarantines_its_tenant_and_the_other_tenant_moves_past_it(settings, stores, monkeypatch):
    ledger, views = stores
    facts = interleaved(40, poison_at=20)
    outcomes = FactWriter(ledger).commit(facts)
    bad = outcomes[20]
    poison(settings, monkeypatch, bad.event_id)
    failed: list[str] = []
    with capture_logs() as logs:
        follower(ledger, views, on_failure=failed.append).catch_up()
    assert views.position(VIEW) == ledger.head_position()  # the view moved past the poison fact...
    assert given(views, "b") == 20  # ...with every fact of tenant b
    assert given(views, "a") == 10  # tenant a as it stood just before its poison fact (g0 ... g18)
    (failure,) = projection_failures(views)
    assert (failure.view, failure.tenant, failure.position, failure.event_id) == (
        VIEW, "a", bad.position, str(bad.event_id)
    )  # fmt: skip
    expected_error = "NUL (0x00)" if settings.database_url else "simulated poison fact"
    assert expected_error in failure.error
    assert failed == [VIEW]
    (line,) = [entry for entry in logs if entry["event"] == "projection_failed"]
    assert line["log_level"] == "error"
    assert (line["view"], line["tenant"], line["position"], line["event_id"]) == (
        VIEW, "a", bad.position, str(bad.event_id)
    )  # fmt: skip
    assert expected_error in line["error"]

    # Later facts: b's apply, a's are skipped, also by a projector started afresh (the quarantine is stored).
    FactWriter(ledger).commit([received(give(f"h{i}", "ann", "bob"), t) for i in range(3) for t in ("a", "b")])
    follower(ledger, views).catch_up()
    assert views.position(VIEW) == ledger.head_position()
    assert (given(views, "a"), given(views, "b")) == (10, 23)
    assert len(projection_failures(views)) == 1


def test_a_quarantined_tenants_erasures_still_take_the_id_out_of_its_rows(settings, stores, monkeypatch):
    """Its rows stay as they stood before its poison fact, but an erasure in it still applies (DESIGN section 7:
    no answer holds the id). An erasure that fails by itself is not tried again, and stops no one."""
    ledger, views = stores
    writer = FactWriter(ledger)
    outcomes = writer.commit(interleaved(40, poison_at=20))
    poison(settings, monkeypatch, outcomes[20].event_id)
    follower(ledger, views).catch_up()
    assert [failure.tenant for failure in projection_failures(views)] == ["a"] and given(views, "a") == 10

    erased = writer.erase("a", "ann")
    writer.commit([received(give("h1", "bob", "cas"), "b")])
    follower(ledger, views).catch_up()
    assert views.position(VIEW) == ledger.head_position()
    assert given(views, "a") == 0 and given(views, "a", tombstone(erased.token)) == 10
    assert "ann" not in json.dumps(tenant_rows(views, "a"))
    assert given(views, "b", "bob") == 1

    def failing(cursor, tenant, token, erased_at, position):
        raise ValueError("simulated failing erasure")

    monkeypatch.setattr(erasure, "erase", failing)
    writer.erase("a", "bob")
    writer.commit([received(give("h2", "bob", "cas"), "b")])
    follower(ledger, views, page_facts_max=1).catch_up()
    assert views.position(VIEW) == ledger.head_position() and given(views, "b", "bob") == 2


def test_the_other_tenant_gets_exactly_the_rows_it_would_have_without_the_poison_fact(settings, stores, monkeypatch):
    """Halving the page to find the fact applies every other fact once: tenant b's rows equal a clean build's.
    A rebuild (a reset, then pages from 0) clears the quarantine; once the view applies that fact again
    (fixed, here: no longer made to fail) it starts clean."""
    ledger, views = stores
    outcomes = FactWriter(ledger).commit([received(give(f"g{i}", "ann", "bob"), "a" if i % 3 else "b")
                                          for i in range(90)])  # fmt: skip
    bad = outcomes[47]  # tenant a's (47 % 3 != 0)
    original = reciprocity.row_from_fact

    def failing(fact, position):  # the same poison on both stores, so the rebuild can succeed afterwards
        if fact.event_id == str(bad.event_id):
            raise ValueError("simulated poison fact")
        return original(fact, position)

    monkeypatch.setattr(reciprocity, "row_from_fact", failing)
    follower(ledger, views, page_facts_max=64).catch_up()
    quarantined_b = tenant_rows(views, "b")
    assert [(f.tenant, f.position) for f in projection_failures(views)] == [("a", bad.position)]
    assert given(views, "a") == sum(1 for i in range(47) if i % 3)

    monkeypatch.setattr(reciprocity, "row_from_fact", original)
    views.reset(VIEW, reciprocity.TABLES)
    assert projection_failures(views) == []
    follower(ledger, views, page_facts_max=64).catch_up()
    assert projection_failures(views) == []
    assert tenant_rows(views, "b") == quarantined_b
    assert given(views, "a") == 60


def test_a_rebuild_that_succeeds_clears_the_quarantine(sqlite_settings, monkeypatch):
    """`reciprocity rebuild` (in its own process, where the view does not fail) starts every tenant clean."""
    ledger = open_ledger(None, sqlite_settings.data_dir)
    views = open_view_store(None, sqlite_settings.data_dir)
    try:
        outcomes = FactWriter(ledger).commit(interleaved(10, poison_at=4))
        poison(sqlite_settings, monkeypatch, outcomes[4].event_id)
        follower(ledger, views).catch_up()
        assert len(projection_failures(views)) == 1 and given(views, "a") == 2
        rebuilt = cli_json(sqlite_settings, "rebuild")
        assert rebuilt["position"] == ledger.head_position()
        assert projection_failures(views) == [] and given(views, "a") == 5
    finally:
        views.close()
        ledger.close()


def test_transient_failures_are_classed_apart_from_a_facts_content():
    def wrapped(cause: Exception, wrapper: type[Exception] = persistence.OperationalError) -> Exception:
        try:
            raise wrapper(str(cause)) from cause
        except Exception as failure:
            return failure

    assert transient(wrapped(psycopg.OperationalError("server closed the connection unexpectedly")))
    assert transient(wrapped(psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")))
    assert transient(wrapped(sqlite3.OperationalError("database is locked")))
    assert transient(persistence.ConnectionUnavailableError("pool exhausted"))
    assert not transient(wrapped(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
                                 persistence.DataError))  # fmt: skip
    assert not transient(wrapped(psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum")))
    assert not transient(wrapped(sqlite3.IntegrityError("UNIQUE constraint failed"), persistence.IntegrityError))
    assert not transient(ValueError("bad value"))


def test_a_locked_views_database_is_retried_and_blames_no_tenant(sqlite_settings, monkeypatch):
    ledger = open_ledger(None, sqlite_settings.data_dir)
    views = open_view_store(None, sqlite_settings.data_dir, limits=ConnectionLimits(lock_timeout_s=0.2))
    blocker = sqlite3.connect(views.path, isolation_level=None)
    try:
        FactWriter(ledger).commit([received(give(f"g{i}", "ann", "bob"), t) for i in range(3) for t in ("a", "b")])
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the views file
        with pytest.raises(Exception) as raised:
            follower(ledger, views).catch_up()
        assert transient(raised.value) and "locked" in str(raised.value)
        assert views.position(VIEW) == 0 and projection_failures(views) == []
        blocker.execute("ROLLBACK")
        follower(ledger, views).catch_up()
        assert views.position(VIEW) == ledger.head_position() and projection_failures(views) == []
        assert (given(views, "a"), given(views, "b")) == (3, 3)
    finally:
        blocker.close()
        views.close()
        ledger.close()


async def test_the_follower_retries_a_page_that_failed_transiently_and_counts_each_failure(stores, monkeypatch):
    ledger, views = stores
    FactWriter(ledger).commit([received(give(f"g{i}", "ann", "bob"), t) for i in range(3) for t in ("a", "b")])
    original = reciprocity.ReciprocityProjection.process_page
    attempts = []

    def flaky(self, page, position=None, new_names=None):
        attempts.append(position)
        if len(attempts) <= 2:
            try:
                raise psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
            except psycopg.Error as cause:
                raise persistence.OperationalError(str(cause)) from cause
        return original(self, page, position, new_names)

    monkeypatch.setattr(reciprocity.ReciprocityProjection, "process_page", flaky)
    failed: list[str] = []
    running = follower(ledger, views, on_failure=failed.append)
    with capture_logs() as logs, ThreadPoolExecutor(1) as executor:
        task = asyncio.create_task(running.follow(asyncio.Event(), executor, poll_interval_s=0.05))
        try:
            await asyncio.wait_for(running.caught_up.wait(), 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert failed == [VIEW, VIEW] and projection_failures(views) == []
    assert views.position(VIEW) == ledger.head_position() and given(views, "a") == 3
    retried = [entry for entry in logs if entry["event"] == "projection_page_failed"]
    assert len(retried) == 2 and all(entry["transient"] for entry in retried)
    assert not [entry for entry in logs if entry["event"] == "projection_failed"]


def test_a_failing_page_observer_is_not_blamed_on_a_fact(stores):
    ledger, views = stores
    FactWriter(ledger).commit([received(give("g1", "ann", "bob"), "a")])

    def observer(after, applied):
        raise RuntimeError("observer failed")

    watched = Follower(
        ledger, reciprocity.ReciprocityProjection(views), lambda: views.position(VIEW), on_page=observer,
        quarantine=Quarantine(views, VIEW),
    )  # fmt: skip
    with pytest.raises(RuntimeError):
        watched.catch_up()
    assert projection_failures(views) == []


# --- what the service says ----------------------------------------------------------------------------


async def until_true(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def write_poisoned(settings, monkeypatch) -> tuple:
    """Tenant a's poison fact between good facts of tenants a and b; returns it and the log head."""
    ledger = open_ledger(settings.database_url, settings.data_dir)
    try:
        outcomes = FactWriter(ledger).commit(interleaved(10, poison_at=4))
        poison(settings, monkeypatch, outcomes[4].event_id)
        return outcomes[4], ledger.head_position()
    finally:
        ledger.close()


def metric_value(text: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith('reciprocity_projection_failures_total{view="')]
    return sum(float(line.split()[-1]) for line in lines)


@pytest.mark.parametrize("role", ["projector", "all"])
async def test_readiness_names_the_failure_and_the_projector_role_is_not_ready(
    aiohttp_client, settings, monkeypatch, role
):
    components = await open_components(settings.with_(role=role))
    try:
        bad, head = await write_poisoned(settings, monkeypatch)
        components.projections.wake()
        await until_true(lambda: components.projections.reciprocity_position() >= head)
        client = await aiohttp_client(create_app(settings, components))
        ready = await client.get("/readyz")
        body = await ready.json()
        (failure,) = body["views"]["failures"]
        assert (failure["tenant"], failure["position"], failure["event_id"]) == ("a", bad.position, str(bad.event_id))
        if role == "projector":
            assert ready.status == 503 and body["status"] == "unavailable" and "views.failures" in body["reason"]
        else:  # serve: ingest stays in service
            assert ready.status == 200 and body["status"] == "ready"
        assert metric_value(await (await client.get("/metrics")).text()) == 1
    finally:
        await components.close()


async def test_under_serve_the_http_process_reports_what_the_background_process_quarantined(
    aiohttp_client, settings, monkeypatch
):
    """serve projects in its background process, whose metrics no scrape reaches (one HTTP process): its
    HTTP process finds the failure in the views database, for /readyz and for the metric."""
    monkeypatch.delenv(SHARED_DIR_ENV, raising=False)
    background = await open_components(settings, parts=background_parts("all", True))
    http = await open_components(settings, parts=frozenset({"ingest", "query"}))
    try:
        assert not http.projections.project
        bad, head = await write_poisoned(settings, monkeypatch)
        background.projections.wake()
        await until_true(lambda: background.projections.reciprocity_position() >= head)
        assert metric_value(background.metrics.render().decode()) == 1
        client = await aiohttp_client(create_app(settings, http))
        ready = await client.get("/readyz")
        body = await ready.json()
        assert ready.status == 200 and [f["event_id"] for f in body["views"]["failures"]] == [str(bad.event_id)]
        for _ in range(2):  # counted once, however often scraped
            assert metric_value(await (await client.get("/metrics")).text()) == 1
    finally:
        await http.close()
        await background.close()
