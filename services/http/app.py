"""The aiohttp application: one factory, its parts opened and closed with it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.bootstrap import Components, open_components
from services.http import events, ops, privacy, ui, views, webhooks
from services.http.keys import COMPONENTS
from services.http.middleware import request_middleware
from services.metrics import Metrics
from services.roles import role_parts
from services.settings import Settings


def create_app(
    settings: Settings, components: Components | None = None, parts: frozenset[str] | None = None
) -> web.Application:
    """The HTTP service of `parts` (by default the role's). Its components open on start-up, or are given,
    already open, by a caller that owns them."""
    parts = components.parts if components else parts or role_parts(settings.role)
    metrics = components.metrics if components else Metrics()
    app = web.Application(
        middlewares=[request_middleware(metrics)],
        client_max_size=settings.batch_body_bytes_max,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if components is not None:
            app[COMPONENTS] = components
            yield
            return
        opened = await open_components(settings, metrics, parts)
        app[COMPONENTS] = opened
        try:
            yield
        finally:
            await opened.close()

    app.cleanup_ctx.append(lifecycle)
    if "ingest" in parts:
        app.router.add_post("/v1/tenants/{tenant}/webhooks/{source}", webhooks.receive_one)
        app.router.add_post("/v1/tenants/{tenant}/webhooks/{source}/batch", webhooks.receive_batch)
        app.router.add_delete("/v1/tenants/{tenant}/participants/{participant}", privacy.erase)
    if "query" in parts:
        app.router.add_get("/v1/tenants/{tenant}/events", events.list_events)
        app.router.add_get("/v1/tenants/{tenant}/events/{event_id}", events.one_event)
        app.router.add_get("/v1/tenants/{tenant}/participants/{participant}/balance", views.balance)
        app.router.add_get("/v1/tenants/{tenant}/pairs/{a}/{b}", views.pair)
        app.router.add_get("/v1/tenants/{tenant}/balances", views.balances)
        app.router.add_get("/v1/tenants/{tenant}/influence", views.influence)
        app.router.add_get("/v1/tenants/{tenant}/participants/{participant}/influence", views.participant_influence)
        app.router.add_get("/v1/tenants/{tenant}/maintenance", views.maintenance)
        app.router.add_get("/v1/tenants/{tenant}/graph", views.graph)
        app.router.add_get("/v1/tenants/{tenant}/participants/{participant}/ties", views.ties)
        app.router.add_get("/v1/tenants/{tenant}/upkeep", views.upkeep)
        app.router.add_get("/v1/tenants/{tenant}/participants/{participant}/export", privacy.export)
        ui.add_routes(app)  # the UI reads the query API, so it is served where that is
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/metrics", ops.metrics)
    app.router.add_get("/openapi.json", ops.openapi)
    return app
