"""What operators and orchestrators ask: alive, ready, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web

from contracts.openapi import openapi_document
from projections.kv import recorded_lag
from services.background import background_workers
from services.bootstrap import Components
from services.http.keys import COMPONENTS
from services.metrics import SHARED_DIR_ENV

T = TypeVar("T")
READY_TIMEOUT_S = 2.0
# Probes and scrapes read on one thread of their own: on PostgreSQL each reading thread may hold a connection
# of the views (ViewStore.read), and a standby projector or relay is read by nothing else.
_PROBES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probes")


def _probe(function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    return asyncio.get_running_loop().run_in_executor(_PROBES, function, *args)


async def healthz(request: web.Request) -> web.StreamResponse:
    """Alive, unless a background loop has been dead for RECIPROCITY_DEAD_LOOP_RESTART_S: its work (projecting,
    relaying, following the registry) stopped for good, and a liveness probe on this route restarts the
    process, which /readyz alone never does."""
    components = request.app[COMPONENTS]
    dead = components.dead_for(components.settings.dead_loop_restart_s)
    if dead:
        reason = f"background loops dead: {', '.join(sorted(dead))} (restart the process)"
        return web.json_response({"status": "dead", "dead_loops": dead, "reason": reason}, status=503)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready when the store answers and ingest is running; lag and NATS are reported, never a reason to
    take ingest out of service (nor are webhooks held for the views: `ingest_held`). A fact a view could not
    apply (its tenant is skipped since) is listed under `views.failures`; on the projector role, whose work
    that is, it also makes the process not ready. A background loop that died (projector, relay, KV
    writer...) makes it not ready, named in `dead_loops`: its work has stopped, and only a restart brings it
    back."""
    components = request.app[COMPONENTS]
    body: dict[str, object] = {"role": components.settings.role}
    dead = components.dead_loops()
    if dead:
        body["dead_loops"] = dead
    if components.committer is not None:
        body["ingest"] = "running" if components.committer.running else "stopped"
    gate = components.view_lag_gate
    if gate is not None and gate.holding:  # webhooks wait for the views: slower, not out of service
        body["ingest_held"] = {"views_behind": gate.behind, "view_lag_max": gate.lag_max}
    if components.bus is not None:
        body["nats"] = "connected" if components.bus.connected else "disconnected"
    try:
        head = await asyncio.wait_for(_probe(components.ledger.head_position), READY_TIMEOUT_S)
    except Exception as failure:  # unreachable, locked, timed out: all mean not ready
        body["store"] = f"unavailable: {type(failure).__name__}"
        return web.json_response({"status": "unavailable", **body}, status=503)
    components.metrics.log_head.set(head)
    body.update(store="ok", head_position=head)
    failures: list[dict[str, Any]] = []
    try:
        lag, failures = await asyncio.wait_for(_probe(_views_report, components), READY_TIMEOUT_S)
        body["views"] = {"projecting": components.projections.projecting, **lag, "failures": failures}
    except Exception as failure:  # reported, never a reason to take ingest out of service
        body["views"] = f"unavailable: {type(failure).__name__}"
    ready = components.committer is None or components.committer.running
    if failures and components.settings.role == "projector":
        ready = False
        body["reason"] = "a view skips a tenant since one of its facts failed (views.failures; rebuild clears it)"
    if dead:
        ready = False
        body["reason"] = f"background loops died: {', '.join(sorted(dead))} (dead_loops; restart the process)"
    return web.json_response({"status": "ready" if ready else "unavailable", **body}, status=200 if ready else 503)


def _views_report(components: Components) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return components.projections.lag(), components.projections.failures()


@functools.cache
def _openapi_body() -> bytes:
    return json.dumps(openapi_document()).encode()


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_openapi_body(), content_type="application/json")


async def metrics(request: web.Request) -> web.StreamResponse:
    components = request.app[COMPONENTS]
    with contextlib.suppress(Exception):  # apart: a store that does not answer must not hide who holds a lock
        await asyncio.to_thread(_read_worker_gauges, components)
    try:
        components.metrics.set_lag(await _probe(components.projections.lag))
        components.metrics.log_head.set(await _probe(components.ledger.head_position))
        if components.bus is None or components.bus.relay is None:  # another process relays: its report
            components.metrics.relay_position.set(await _probe(components.projections.relay_position))
        await _probe(_count_background_failures, components)
    except Exception:
        pass
    return web.Response(body=components.metrics.render(), content_type="text/plain", charset="utf-8")


def _read_worker_gauges(components: Components) -> None:
    """The workers' state as of this scrape: which locks this process holds, the commit queue, the KV
    writer's lag. A process reports only the workers it may run (a standby reports 0), so the max over
    the pods of a role says whether any holds the lock."""
    metrics, projections, bus = components.metrics, components.projections, components.bus
    if projections.project:
        metrics.worker_active.labels(worker="projector").set(int(projections.lock.held))
    elif components.settings.role == "all":  # serve: its background process works, and reports what it holds
        for worker, held in background_workers(components.settings.data_dir).items():
            metrics.worker_active.labels(worker=worker).set(int(held))
    if bus is not None and bus.relay is not None:
        metrics.worker_active.labels(worker="relay").set(int(bus.relay_lock.held))
    if components.committer is not None:
        metrics.commit_queue.set(components.committer.queued_facts)
    if bus is not None and bus.kv_writer is not None:
        metrics.set_kv_lag(bus.kv_writer.lag())
    elif components.settings.role == "all" and not projections.project:  # serve: KV is written by its other process
        metrics.set_kv_lag(recorded_lag(projections.store, projections.influence_position))


def _count_background_failures(components: Components) -> None:
    """serve projects in its background process, whose metrics nobody scrapes unless serve shares them
    between processes: there, the facts it quarantined are counted here from the views database instead.
    Only a rebuild clears them, and it runs while serve is stopped, so this count starts afresh after one."""
    projects_elsewhere = components.settings.role == "all" and not components.projections.project
    if not projects_elsewhere or os.environ.get(SHARED_DIR_ENV):
        return
    recorded = Counter(failure["view"] for failure in components.projections.failures())
    counter = components.metrics.projection_failures
    counted = {s.labels["view"]: s.value for s in counter.collect()[0].samples if s.name.endswith("_total")}
    for view, count in recorded.items():
        if count > counted.get(view, 0):
            counter.labels(view=view).inc(count - counted.get(view, 0))
