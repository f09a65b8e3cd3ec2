"""Standbys that always take over: worker loops outlive store errors, and a loop that died anyway makes the
process not ready, then (past RECIPROCITY_DEAD_LOOP_RESTART_S) not alive, so it is restarted."""

from __future__ import annotations

import asyncio
import contextlib
from itertools import pairwise

import pytest
from structlog.testing import capture_logs

from ledger.connections import postgres_connect
from ledger.group_commit import FactWriter
from ledger.locks import WorkerLock
from ledger.store import open_ledger
from projections.runtime import Projections, open_view_store
from projections.supervision import BACKOFF_FIRST_S, BACKOFF_MAX_S, BackgroundTasks, Backoff, run_while_holding
from services.background import until_stopped_or_dead
from services.bootstrap import open_components
from services.http.app import create_app
from tests.helpers import give, received, until
from tests.tcp_proxy import RefusingProxy


def logged(logs: list[dict], event: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == event]


def test_backoff_grows_from_a_tenth_of_a_second_to_five_seconds_with_jitter_and_starts_again_after_a_reset():
    backoff = Backoff()
    delays = [backoff.next_delay() for _ in range(12)]
    assert BACKOFF_FIRST_S / 2 <= delays[0] <= BACKOFF_FIRST_S
    assert all(BACKOFF_MAX_S / 2 <= delay <= BACKOFF_MAX_S for delay in delays[8:])  # 0.1 s x 2^6 > 5 s
    assert len(set(delays)) == len(delays)  # jittered: processes that failed together retry apart
    backoff.reset()
    assert backoff.next_delay() <= BACKOFF_FIRST_S


@pytest.mark.postgres
async def test_a_standby_projector_whose_lock_attempts_failed_takes_over_when_the_active_one_goes(
    postgres_schema_url, tmp_path
):
    """PostgreSQL refuses the standby's connections for a while (each lock attempt fails), then the active
    projector goes: the standby, which logged every failed attempt and kept trying, projects the views."""
    ledger = open_ledger(postgres_schema_url, tmp_path)
    open_view_store(postgres_schema_url, tmp_path).close()
    FactWriter(ledger).commit([received(give(f"g{n}", "ann", "bob")) for n in range(5)])
    active = WorkerLock(postgres_schema_url, tmp_path, "projector")
    assert active.try_acquire()
    with RefusingProxy(postgres_schema_url) as proxy:
        standby_ledger = await asyncio.to_thread(open_ledger, proxy.url, tmp_path)
        standby = await asyncio.to_thread(Projections, standby_ledger, proxy.url, tmp_path, poll_s=0.05)
        try:
            proxy.refusing = True
            with capture_logs() as logs:
                await standby.start()

                async def failed_three_times() -> bool:
                    return len(logged(logs, "worker_lock_failed")) >= 3

                await until(failed_three_times, 10, "three failed lock attempts")
                proxy.refusing = False
                assert not standby.projecting
                active.release()  # the active projector goes

                async def projected() -> bool:
                    return standby.projecting and await asyncio.to_thread(standby.reciprocity_position) == 5

                await until(projected, 15, "the standby projecting every fact")
            failures = logged(logs, "worker_lock_failed")
            assert all(entry["worker"] == "projector" and entry["error"] for entry in failures)
            assert [entry["worker"] for entry in logged(logs, "worker_active")] == ["projector"]
            assert standby.background.died == {}
        finally:
            await standby.close()
            standby_ledger.close()
            active.release()
            ledger.close()


@pytest.mark.postgres
async def test_a_standby_relay_whose_lock_attempts_failed_takes_over_when_the_active_session_ends(
    postgres_schema_url, tmp_path
):
    """The relay's lock loop alike, the active worker going by its session ending (pg_terminate_backend)."""
    open_ledger(postgres_schema_url, tmp_path).close()  # the schema
    active = WorkerLock(postgres_schema_url, tmp_path, "relay")
    assert active.try_acquire()
    working = asyncio.Event()

    async def work() -> None:
        working.set()
        await asyncio.Event().wait()

    with RefusingProxy(postgres_schema_url) as proxy:
        standby = WorkerLock(proxy.url, tmp_path, "relay")
        proxy.refusing = True
        with capture_logs() as logs:
            loop = asyncio.create_task(run_while_holding(standby, work, "relay", standby_s=0.2))
            try:

                async def failed_twice() -> bool:
                    return len(logged(logs, "worker_lock_failed")) >= 2

                await until(failed_twice, 10, "two failed lock attempts")
                proxy.refusing = False
                await asyncio.sleep(0.5)
                assert not working.is_set()  # the active one still holds the lock
                with postgres_connect(postgres_schema_url) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (active.session_pid(),))
                await asyncio.wait_for(working.wait(), 10)
                assert not loop.done()
                assert not await asyncio.to_thread(active.still_held)
            finally:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
                standby.release()
                active.release()
        assert {entry["worker"] for entry in logged(logs, "worker_lock_failed")} == {"relay"}


async def test_a_loop_that_ended_other_than_by_being_cancelled_is_recorded_as_dead():
    background = BackgroundTasks()

    async def crashing() -> None:
        raise RuntimeError("the views file vanished")

    async def returning() -> None:
        return

    async def forever() -> None:
        await asyncio.Event().wait()

    with capture_logs() as logs:
        background.start(crashing(), "crasher")
        background.start(returning(), "returner")
        background.start(returning(), "setup", may_return=True)
        background.start(forever(), "forever")
        await asyncio.sleep(0.05)
        await background.close()  # cancelling "forever" is no death
    assert background.died == {"crasher": "the views file vanished", "returner": "the loop returned"}
    assert {entry["worker"] for entry in logged(logs, "worker_loop_died")} == {"crasher", "returner"}


class Escaped(BaseException):
    """What no retry catches (it is not an Exception)."""


async def test_a_worker_loop_that_escaped_its_retries_dies_and_lets_its_lock_go(sqlite_settings):
    """A failure no retry catches ends the lock loop: its task dies, BackgroundTasks records it (so /readyz
    says so), and the lock is let go, so a standby takes over rather than waiting behind a dead holder."""
    lock = WorkerLock(None, sqlite_settings.data_dir, "relay")

    async def escaping() -> None:
        raise Escaped

    async def died() -> bool:
        return bool(background.died)

    background = BackgroundTasks()
    with capture_logs():
        background.start(run_while_holding(lock, escaping, "relay"), "relay")
        await until(died, 5, "the loop dying")
    assert list(background.died) == ["relay"]
    other = WorkerLock(None, sqlite_settings.data_dir, "relay")
    assert other.try_acquire()
    other.release()
    await background.close()


async def test_a_held_worker_that_keeps_failing_is_tried_again_within_its_retry_bound(sqlite_settings):
    """The relay's work fails for as long as the stream has no leader; its retries stay at most `retry_max_s`
    apart (RETRY_MAX_S, 1 s) rather than growing to the backoff's 5 s, so it resumes soon after an election."""
    lock = WorkerLock(None, sqlite_settings.data_dir, "relay")
    tries: list[float] = []

    async def failing() -> None:
        tries.append(asyncio.get_running_loop().time())
        raise RuntimeError("no stream leader")

    async def enough() -> bool:
        return len(tries) >= 9

    with capture_logs() as logs:
        loop = asyncio.create_task(run_while_holding(lock, failing, "relay", retry_max_s=0.3))
        await until(enough, 10, "nine tries")
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    gaps = [later - earlier for earlier, later in pairwise(tries)]
    assert max(gaps) <= 0.3 + 0.1  # (the bound, and the event loop's own lateness)
    assert max(gaps[-3:]) >= 0.3 / 2  # still a backoff: the upper half of the bound once it is reached
    assert len(logged(logs, "worker_failed")) >= 8


async def test_readyz_is_503_naming_the_loop_that_died(aiohttp_client, sqlite_settings):
    components = await open_components(sqlite_settings)
    try:
        client = await aiohttp_client(create_app(sqlite_settings, components))
        response = await client.get("/readyz")
        assert response.status == 200 and "dead_loops" not in await response.json()

        async def crashing() -> None:
            raise RuntimeError("connection to server was lost")

        with capture_logs():
            components.background.start(crashing(), "relay")
            await asyncio.sleep(0.05)
        response = await client.get("/readyz")
        body = await response.json()
        assert response.status == 503 and body["status"] == "unavailable"
        assert body["dead_loops"] == {"relay": "connection to server was lost"}
        assert "relay" in body["reason"]
    finally:
        await components.close()


async def crash_a_loop(components, name: str, error: str) -> None:
    async def crashing() -> None:
        raise RuntimeError(error)

    async def dead() -> bool:
        return bool(components.dead_loops())

    with capture_logs():
        components.background.start(crashing(), name)
        await until(dead, 5, "the loop dying")


@pytest.mark.parametrize(("restart_s", "alive"), [(3600.0, True), (0.0, False)])
async def test_healthz_fails_once_a_loop_has_been_dead_for_the_restart_bound(
    aiohttp_client, sqlite_settings, restart_s, alive
):
    """A liveness probe on /healthz restarts a process whose loop died: not at once (readiness takes it out of
    service first, and /readyz says what died), but once the loop has been dead RECIPROCITY_DEAD_LOOP_RESTART_S."""
    settings = sqlite_settings.with_(dead_loop_restart_s=restart_s)
    components = await open_components(settings)
    try:
        client = await aiohttp_client(create_app(settings, components))
        assert (await client.get("/healthz")).status == 200
        await crash_a_loop(components, "projector", "the views file vanished")
        assert (await client.get("/readyz")).status == 503
        response = await client.get("/healthz")
        body = await response.json()
        if alive:
            assert (response.status, body) == (200, {"status": "ok"})
        else:
            assert response.status == 503 and body["status"] == "dead"
            assert body["dead_loops"] == {"projector": "the views file vanished"}
            assert "projector" in body["reason"]
    finally:
        await components.close()


async def test_serves_background_process_ends_itself_once_a_loop_has_been_dead_for_the_restart_bound(
    sqlite_settings,
):
    """serve's background process answers no probe: it stops (and serve starts it again) once a loop has been
    dead for the bound, and before then, only when told to stop."""
    components = await open_components(sqlite_settings, parts=frozenset({"projector", "relay"}))
    try:
        stop = asyncio.Event()
        waiting = asyncio.create_task(until_stopped_or_dead(components, stop, 3600.0, check_s=0.05))
        await crash_a_loop(components, "relay", "connection to server was lost")
        await asyncio.sleep(0.2)
        assert not waiting.done()  # dead, but not for an hour
        stop.set()
        assert await asyncio.wait_for(waiting, 5) == {}
        ended = await asyncio.wait_for(until_stopped_or_dead(components, asyncio.Event(), 0.0, check_s=0.05), 5)
        assert ended == {"relay": "connection to server was lost"}
    finally:
        await components.close()
