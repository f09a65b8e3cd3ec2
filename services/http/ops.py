"""What operators and orchestrators ask: alive, ready, metrics."""

from __future__ import annotations

import asyncio
import functools
import json

from aiohttp import web

from contracts.openapi import openapi_document
from services.http.keys import COMPONENTS

READY_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready when the store answers and ingest is running; lag and NATS are reported, never a reason to
    take ingest out of service."""
    components = request.app[COMPONENTS]
    body: dict[str, object] = {"role": components.settings.role}
    if components.committer is not None:
        body["ingest"] = "running" if components.committer.running else "stopped"
    if components.bus is not None:
        body["nats"] = "connected" if components.bus.connected else "disconnected"
    try:
        head = await asyncio.wait_for(asyncio.to_thread(components.ledger.head_position), READY_TIMEOUT_S)
    except Exception as failure:  # unreachable, locked, timed out: all mean not ready
        body["store"] = f"unavailable: {type(failure).__name__}"
        return web.json_response({"status": "unavailable", **body}, status=503)
    components.metrics.log_head.set(head)
    body.update(store="ok", head_position=head)
    try:
        lag = await asyncio.wait_for(asyncio.to_thread(components.projections.lag), READY_TIMEOUT_S)
        body["views"] = {"projecting": components.projections.projecting, **lag}
    except Exception as failure:  # reported, never a reason to take ingest out of service
        body["views"] = f"unavailable: {type(failure).__name__}"
    ready = components.committer is None or components.committer.running
    return web.json_response({"status": "ready" if ready else "unavailable", **body}, status=200 if ready else 503)


@functools.cache
def _openapi_body() -> bytes:
    return json.dumps(openapi_document()).encode()


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_openapi_body(), content_type="application/json")


async def metrics(request: web.Request) -> web.StreamResponse:
    components = request.app[COMPONENTS]
    try:
        components.metrics.set_lag(await asyncio.to_thread(components.projections.lag))
        components.metrics.log_head.set(await asyncio.to_thread(components.ledger.head_position))
        if components.bus is None or components.bus.relay is None:  # another process relays: its report
            components.metrics.relay_position.set(await asyncio.to_thread(components.projections.relay_position))
    except Exception:
        pass
    return web.Response(body=components.metrics.render(), content_type="text/plain", charset="utf-8")
