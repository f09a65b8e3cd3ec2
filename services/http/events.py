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
    facts = await asyncio.to_thread(request.app[COMPONENTS].ledger.tenant_log, tenant, query.after, query.limit)
    page = {"events": [fact.as_logged() for fact in facts], "next_after": facts[-1].position if facts else query.after}
    return json_answer(EventsPage.model_validate(page))
