"""One canonical log line per request, and every refusal rendered as problem+json."""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from contracts import problems
from services.http.keys import EVENT_IDS, INGEST, LOG_FIELDS, OUTCOME
from services.http.responses import problem_answer
from services.metrics import Metrics

log = structlog.get_logger("reciprocity.http")

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# A keep-alive connection is closed after this many requests (nginx's keepalive_requests default), and the
# client connects again. serve's HTTP processes accept from one socket, whichever is idle first: a client's
# pool of connections, opened at once, can land unevenly, and the busier process answers its share more
# slowly for as long as those connections live. Reconnecting lets the less busy process take some over.
REQUESTS_PER_CONNECTION_MAX = 1000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Path parameters that name a person: a route with one is logged by its pattern (DESIGN section 7).
PERSON_PARAMETERS = ("{participant}", "{a}", "{b}")
_PERSONAL_ROUTES: dict[str, bool] = {}  # per route pattern: whether it names a person


def logged_path(request: web.Request, route: str) -> str:
    """The path a request's log line shows: a log kept after an erasure must not remember whom it erased, or
    whose balance, pairs or data were asked for. A route naming a person shows as its pattern with only the
    tenant filled in (the participant stays a placeholder); any other path as it was asked."""
    personal = _PERSONAL_ROUTES.get(route)
    if personal is None:  # once per route pattern (a handful), not per request
        personal = _PERSONAL_ROUTES[route] = any(parameter in route for parameter in PERSON_PARAMETERS)
    if not personal:
        return request.path
    return route.replace("{tenant}", request.match_info.get("tenant", "{tenant}"))


def request_ids() -> Callable[[], str]:
    """Unique request ids without a random draw per request: a random process prefix and a counter."""
    prefix = os.urandom(6).hex()
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):x}"


def request_middleware(metrics: Metrics) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Renders problems, times the route, counts ingest outcomes and logs one line per answered request.

    Fields are gathered on the request and logged once at the end (no context variables per request)."""
    new_request_id = request_ids()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        offered = request.headers.get("X-Request-Id", "")
        request_id = offered if REQUEST_ID_PATTERN.match(offered) else new_request_id()
        started = time.perf_counter()
        try:
            response = await handler(request)
        except problems.ProblemException as refused:
            response = problem_answer(refused.problem, refused.headers)
            request.setdefault(OUTCOME, refused.problem.type.removeprefix(problems.PROBLEM_TYPE_BASE))
        except web.HTTPException as http_error:  # aiohttp's own: unknown route, wrong method
            response = problem_answer(
                problems.problem(
                    http_error.status,
                    "http",
                    http_error.reason,
                    f"{request.method} {request.path}: {http_error.reason}",
                ),
                {k: v for k, v in http_error.headers.items() if k.lower() == "allow"},
            )
        except Exception as fault:  # a fault of ours: answered like any problem, and logged with its stack
            response = problem_answer(
                problems.problem(500, "internal", "Something went wrong on our side", "the fault is logged")
            )
            request[OUTCOME] = "internal"
            request[LOG_FIELDS] = {**request.get(LOG_FIELDS, {}), "error": repr(fault), "exc_info": fault}
        duration_s = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource else "unmatched"
        if response.status == 500:
            metrics.http_errors.labels(route=route).inc()
        metrics.observe_request(request.method, route, response.status, duration_s)
        if request.get(INGEST):
            metrics.count_ingest_request(request.get(OUTCOME, "error"))
        response.headers["X-Request-Id"] = request_id
        # aiohttp counts the requests of each connection (a private attribute; the test would notice its loss).
        if getattr(request.protocol, "_request_count", 0) >= REQUESTS_PER_CONNECTION_MAX:
            response.force_close()
        fields = request.get(LOG_FIELDS, {})
        if "tenant" not in fields and (tenant := request.match_info.get("tenant")) is not None:
            fields = {"tenant": tenant, **fields}  # every line of a tenant's route says whose (the reads too)
        (log.error if response.status == 500 else log.info)(
            "request",
            request_id=request_id,
            method=request.method,
            path=logged_path(request, route),
            status=response.status,
            outcome=request.get(OUTCOME),
            event_ids=request.get(EVENT_IDS),
            duration_ms=round(duration_s * 1000, 3),
            **fields,
        )
        return response

    return middleware
