"""The ordered log of one tenant's facts (DESIGN section 5), for audit and replay."""

from __future__ import annotations

import re
from uuid import UUID

from aiohttp import web

from contracts import problems
from contracts.answers import EventsPage, LoggedFact, ProblemError
from contracts.query_parameters import LogQuery, NoQuery
from contracts.types import UUID_PATTERN
from projections.supervision import in_thread
from services.http.auth import require_key
from services.http.keys import COMPONENTS
from services.http.responses import json_answer
from services.http.views import parse_query

EVENT_ID = re.compile(UUID_PATTERN)


async def list_events(request: web.Request) -> web.StreamResponse:
    tenant = request.match_info["tenant"]
    await require_key(request, tenant, "read")
    query = parse_query(request, LogQuery)
    ledger = request.app[COMPONENTS].ledger
    facts = await in_thread(ledger.tenant_log, tenant, query.after, query.limit)
    events = await in_thread(ledger.logged, facts)
    page = {"events": events, "next_after": facts[-1].position if facts else query.after}
    return json_answer(EventsPage.model_validate(page))


async def one_event(request: web.Request) -> web.StreamResponse:
    """One fact by its event_id, as the log shows it: what an influence explanation's `facts` name (the web UI
    links them here). Another tenant's fact is 404, like an unknown one."""
    tenant = request.match_info["tenant"]
    await require_key(request, tenant, "read")
    parse_query(request, NoQuery)
    text = request.match_info["event_id"]
    if not EVENT_ID.fullmatch(text):
        error = ProblemError(path="path.event_id", rule="string_pattern_mismatch", message=f"must match {UUID_PATTERN}")
        raise problems.ProblemException(problems.invalid([error]))
    event_id = UUID(text)
    ledger = request.app[COMPONENTS].ledger
    fact = (await in_thread(ledger.find_facts, [event_id])).get(event_id)
    if fact is None or fact.fact.tenant != tenant:
        raise problems.ProblemException(problems.problem(404, "not-found", "Not found", f"no fact {text}"))
    (event,) = await in_thread(ledger.logged, [fact])
    return json_answer(LoggedFact.model_validate(event))
