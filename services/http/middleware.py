"""One canonical log line per request, and every refusal rendered as problem+json."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from services import problems
from services.http.keys import EVENT_IDS, INGEST, OUTCOME
from services.http.responses import problem_answer
from services.metrics import Metrics

log = structlog.get_logger("reciprocity.http")

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_middleware(metrics: Metrics) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Binds a request id, renders problems, times the route, and logs one line when the answer is ready."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        offered = request.headers.get("X-Request-Id", "")
        request_id = offered if REQUEST_ID_PATTERN.match(offered) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
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
        duration_s = time.perf_counter() - started
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        metrics.http_duration.labels(route=route).observe(duration_s)
        if request.get(INGEST):
            metrics.ingest_requests.labels(outcome=request.get(OUTCOME, "error")).inc()
        response.headers["X-Request-Id"] = request_id
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            outcome=request.get(OUTCOME),
            event_ids=request.get(EVENT_IDS),
            duration_ms=round(duration_s * 1000, 3),
        )
        return response

    return middleware
