"""The ordered log of one tenant's facts (DESIGN section 5), for audit and replay."""

from __future__ import annotations

import asyncio

from aiohttp import web

from contracts.answers import EventsPage
from contracts.query_parameters import LogQuery
from services.http.auth import require_key
from services.http.keys import COMPONENTS
from services.http.responses import json_answer
from services.http.views import parse_query


async def list_events(request: web.Request) -> web.StreamResponse:
    tenant = request.match_info["tenant"]
    await require_key(request, tenant, "read")
    query = parse_query(request, LogQuery)
    ledger = request.app[COMPONENTS].ledger
    facts = await asyncio.to_thread(ledger.tenant_log, tenant, query.after, query.limit)
    events = await asyncio.to_thread(ledger.logged, facts)
    page = {"events": events, "next_after": facts[-1].position if facts else query.after}
    return json_answer(EventsPage.model_validate(page))
