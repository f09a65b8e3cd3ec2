"""The ordered log of one tenant's facts (DESIGN section 5), for audit and replay."""

from __future__ import annotations

import asyncio

from aiohttp import web

from contracts.answers import EventsPage, ProblemError
from services import problems
from services.http.auth import require_key
from services.http.keys import COMPONENTS
from services.http.responses import json_answer

PAGE_DEFAULT = 100
PAGE_MAX = 1_000


async def list_events(request: web.Request) -> web.StreamResponse:
    tenant = request.match_info["tenant"]
    require_key(request, tenant, "read")
    after = query_int(request, "after", default=0, low=0, high=2**63 - 1)
    limit = query_int(request, "limit", default=PAGE_DEFAULT, low=1, high=PAGE_MAX)
    facts = await asyncio.to_thread(request.app[COMPONENTS].ledger.tenant_log, tenant, after, limit)
    page = {
        "events": [fact.as_logged() for fact in facts],
        "next_after": facts[-1].position if facts else after,
    }
    return json_answer(EventsPage.model_validate(page))


def query_int(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    """An integer query parameter within bounds, or a 422 that names it."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        message = f"must be a whole number from {low} to {high}"
        raise problems.ProblemException(
            problems.invalid([ProblemError(path=f"query.{name}", rule="integer_range", message=message)])
        )
    return value
