"""Webhooks wait while the views are too far behind the log and catching up (RECIPROCITY_VIEW_LAG_MAX)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from projections.follower import Follower
from projections.reciprocity import VIEW, ReciprocityProjection
from services.bootstrap import open_components
from services.http.app import create_app
from services.settings import Settings
from services.view_lag_gate import ViewLagGate, ViewsCatchingUp
from tests.helpers import give, problem_of, until


async def soon(condition, what: str) -> None:
    async def check() -> bool:
        return condition()

    await until(check, 5.0, what)


def gate(lag_max: int = 10, **options) -> ViewLagGate:
    """A gate that has read the view once, at position 90 (a view is moving from its second reading on)."""
    g = ViewLagGate(lambda: 0, lambda: 0, lag_max, stalled_after_s=30.0, **options)
    g.update(head=90, position=90, now=-1.0)
    return g


def test_a_view_within_the_bound_holds_nobody() -> None:
    g = gate()
    g.update(head=110, position=100, now=0.0)
    assert not g.holding and g.behind == 10


def test_a_view_behind_the_bound_and_moving_holds_webhooks_until_it_is_within_it() -> None:
    g = gate()
    g.update(head=200, position=100, now=0.0)
    assert g.holding and g.behind == 100
    g.update(head=200, position=150, now=1.0)
    assert g.holding
    g.update(head=200, position=190, now=2.0)
    assert not g.holding


def test_a_view_that_stands_still_holds_nobody() -> None:
    """No projector, a failing one or a rebuild: waiting would not bring the view closer."""
    g = gate()
    g.update(head=200, position=100, now=0.0)
    assert g.holding
    g.update(head=300, position=100, now=29.0)
    assert g.holding
    g.update(head=400, position=100, now=30.0)
    assert not g.holding and g.behind == 300
    g.update(head=400, position=101, now=31.0)  # moving again
    assert g.holding


def test_a_view_reset_for_a_rebuild_is_not_catching_up() -> None:
    """`reciprocity rebuild` empties the views and records their position once, at the end of its replay."""
    g = gate()
    g.update(head=200, position=195, now=0.0)
    assert not g.holding
    g.update(head=200, position=0, now=1.0)
    assert not g.holding and g.behind == 200
    g.update(head=210, position=210, now=50.0)
    assert not g.holding


def test_a_bound_of_the_log_size_never_holds() -> None:
    g = gate(lag_max=1_000)
    g.update(head=1_091, position=91, now=0.0)
    assert not g.holding


def test_a_view_first_read_far_behind_holds_nobody_until_it_moves() -> None:
    g = ViewLagGate(lambda: 0, lambda: 0, 10)
    g.update(head=200, position=0, now=0.0)
    assert not g.holding
    g.update(head=200, position=5, now=0.5)
    assert g.holding


async def test_a_held_webhook_is_refused_retryably_after_the_wait() -> None:
    held = []
    g = gate(wait_s=0.1, on_hold=lambda: held.append(1))
    g.update(head=200, position=100, now=0.0)
    started = time.monotonic()
    with pytest.raises(ViewsCatchingUp, match="100 facts behind"):
        await g.admit()
    assert time.monotonic() - started >= 0.1 and held == [1]


async def test_a_held_webhook_goes_on_once_the_view_is_within_the_bound() -> None:
    g = gate(wait_s=10.0)
    g.update(head=200, position=100, now=0.0)
    waiting = asyncio.create_task(g.admit())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    g.update(head=200, position=195, now=1.0)
    await asyncio.wait_for(waiting, 1.0)


async def test_a_view_that_cannot_be_read_holds_nobody() -> None:
    def unreadable() -> int:
        raise OSError("views file gone")

    g = ViewLagGate(lambda: 200, unreadable, 10, poll_s=0.01)
    g.update(head=200, position=90, now=time.monotonic())
    g.update(head=200, position=100, now=time.monotonic())
    assert g.holding
    runner = asyncio.create_task(g.run())
    try:
        await soon(lambda: not g.holding, "the gate to open")
    finally:
        runner.cancel()


async def test_webhooks_wait_for_views_catching_up_and_are_refused_past_the_wait(
    aiohttp_client, settings: Settings, tenant_setup
) -> None:
    """On the real app and store: ingest without a projector of its own (as an ingest pod), the view moved by
    the test as a projector elsewhere would."""
    settings = settings.with_(view_lag_max=2)
    components = await open_components(settings, parts=frozenset({"ingest", "query"}))
    try:
        client = await aiohttp_client(create_app(settings, components))
        sender = tenant_setup
        for n in range(6):  # the view stands still (nobody projects): nothing holds these up
            response = await sender.post(client, give(f"g{n}", "ana", "ben"))
            assert response.status == 201, await response.text()
        gate_ = components.view_lag_gate
        assert gate_ is not None and not gate_.holding
        store = components.projections.store
        follower = Follower(components.ledger, ReciprocityProjection(store), lambda: store.position(VIEW),
                            page_facts_max=1)  # fmt: skip
        await asyncio.to_thread(follower.catch_up, pages_max=1)  # the view moves: 5 behind, 2 allowed
        await soon(lambda: gate_.holding, "the gate to hold webhooks")
        ready = await client.get("/readyz")
        assert ready.status == 200  # held, not out of service
        assert (await ready.json())["ingest_held"] == {"views_behind": 5, "view_lag_max": 2}

        gate_.wait_s = 0.3
        refused = await sender.post(client, give("refused", "ana", "ben"))
        problem = await problem_of(refused, 503)
        assert problem["type"] == "/problems/views-catching-up" and problem["retryable"] is True
        assert "5 facts behind" in problem["detail"] and "more than 2 behind" in problem["detail"]
        assert refused.headers["Retry-After"] == "1"
        assert components.ledger.head_position() == 6  # not recorded

        gate_.wait_s = 30.0
        waiting = asyncio.create_task(sender.post(client, give("waited", "ana", "ben")))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await asyncio.to_thread(follower.catch_up)
        admitted = await asyncio.wait_for(waiting, 10.0)
        assert admitted.status == 201, await admitted.text()
        assert (await admitted.json())["position"] == 7
        assert components.metrics.ingest_held._value.get() == 2
        metrics = await (await client.get("/metrics")).text()
        assert "reciprocity_ingest_held_total 2.0" in metrics
        assert 'reciprocity_ingest_requests_total{outcome="views-catching-up"} 1.0' in metrics
        assert "ingest_held" not in await (await client.get("/readyz")).json()
    finally:
        await components.close()


async def test_no_bound_no_gate(settings: Settings) -> None:
    components = await open_components(settings.with_(view_lag_max=0), parts=frozenset({"ingest"}))
    try:
        assert components.view_lag_gate is None
    finally:
        await components.close()


async def test_a_gate_stopped_while_it_reads_ends_only_once_the_read_has_returned() -> None:
    """At shutdown the gate is cancelled just before the views close: closing a SQLite connection under the
    thread still reading the view's position crashed the process (seen once in CI)."""
    reading, release = threading.Event(), threading.Event()

    def slow_position() -> int:
        reading.set()
        release.wait(5)
        return 0

    g = ViewLagGate(lambda: 0, slow_position, 10, poll_s=0.01)
    task = asyncio.create_task(g.run())
    assert await asyncio.to_thread(reading.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # still waiting for its read
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
