"""Webhooks in (DESIGN section 3): size, then signature, then JSON and schema, then identity and rules.

The handlers only check and parse; the group committer records, and answers come after the commit.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from aiohttp import web
from pydantic import ValidationError

from contracts.answers import BatchAnswer, FactAccepted, FactRejected, Problem
from contracts.facts import Batch, BatchShape, Webhook, webhook_adapter
from services import problems
from services.bootstrap import Components
from services.domain import ReceivedFact
from services.http.keys import COMPONENTS, EVENT_IDS, INGEST, LOG_FIELDS, OUTCOME
from services.http.responses import json_answer, problem_answer
from services.ingest import Outcome, Overloaded, StoreFailed, rejected
from services.registry import SourceAuth
from services.signatures import SignatureError, verify


async def receive_one(request: web.Request) -> web.StreamResponse:
    components = request.app[COMPONENTS]
    tenant, source, body = await _authentic_body(request, components, components.settings.body_bytes_max)
    received_at = datetime.now(UTC)
    try:
        webhook = webhook_adapter.validate_json(body)
    except ValidationError as invalid:
        raise problems.ProblemException(_parse_problem(invalid)) from None
    _check_rate(request, components, tenant, source, 1)
    (outcome,) = await _commit(components, [ReceivedFact.from_webhook(tenant, source, webhook, received_at)])
    _count(request, components, [outcome], outcome.status if outcome.problem is None else _name(outcome))
    if outcome.problem is not None:
        return problem_answer(outcome.problem)
    return json_answer(_accepted(outcome), status=outcome.http_status)


async def receive_batch(request: web.Request) -> web.StreamResponse:
    components = request.app[COMPONENTS]
    tenant, source, body = await _authentic_body(request, components, components.settings.batch_body_bytes_max)
    received_at = datetime.now(UTC)
    parsed = _parse_batch(body)
    _check_rate(request, components, tenant, source, len(parsed))
    valid = [
        ReceivedFact.from_webhook(tenant, source, item, received_at) for item in parsed if not isinstance(item, Outcome)
    ]
    committed = iter(await _commit(components, valid) if valid else [])
    outcomes = [item if isinstance(item, Outcome) else next(committed) for item in parsed]
    _count(request, components, outcomes, "batch")
    results = [_accepted(o) if o.problem is None else FactRejected(problem=o.problem) for o in outcomes]
    return json_answer(BatchAnswer(results=results))


async def _authentic_body(request: web.Request, components: Components, limit: int) -> tuple[str, str, bytes]:
    tenant, source = request.match_info["tenant"], request.match_info["source"]
    request[INGEST] = True
    request[LOG_FIELDS] = {"tenant": tenant, "source": source}
    if request.content_length is not None and request.content_length > limit:
        raise problems.ProblemException(_too_large(limit))  # refused before reading any of it
    auth = components.registry.source(tenant, source)
    if auth is None:
        raise problems.ProblemException(
            problems.problem(404, "unknown-source", "Unknown tenant or source", f"no source {source!r} in {tenant!r}")
        )
    if request.content_type != "application/json":
        raise problems.ProblemException(
            problems.problem(
                415, "unsupported-media-type", "The body must be JSON", "send Content-Type: application/json"
            )
        )
    body = await _read_bounded(request, limit)
    _verify(auth, request, body)
    return tenant, source, body


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None:  # already checked against the limit
        return await request.read()
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise problems.ProblemException(_too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _verify(auth: SourceAuth, request: web.Request, body: bytes) -> None:
    try:
        verify(auth.keys, request.headers, body, time.time())
    except SignatureError as unproven:
        raise problems.ProblemException(
            problems.problem(401, "bad-signature", "The signature does not prove the sender", str(unproven)),
            {"WWW-Authenticate": 'Signature realm="webhooks"'},
        ) from None


def _check_rate(request: web.Request, components: Components, tenant: str, source: str, facts: int) -> None:
    auth = components.registry.source(tenant, source)
    if auth is None or auth.rate_limit_per_s is None:
        return
    wait_s = components.rate_limiter.take((tenant, source), auth.rate_limit_per_s, max(1, facts))
    if wait_s:
        raise problems.ProblemException(
            problems.problem(
                429,
                "rate-limited",
                "Over this source's rate limit",
                f"this source may send {auth.rate_limit_per_s:g} facts per second",
                retryable=True,
            ),
            {"Retry-After": str(int(wait_s))},
        )


def _parse_problem(invalid: ValidationError, prefix: str = "") -> Problem:
    if problems.is_json_syntax_error(invalid):
        return problems.malformed_json(invalid.errors(include_url=False)[0]["msg"])
    return problems.invalid(problems.validation_errors(invalid, prefix))


def _parse_batch(body: bytes) -> list[Webhook | Outcome]:
    """Each item validated on its own: a bad item becomes a rejected outcome and never blocks the others."""
    try:
        return list(Batch.model_validate_json(body).events)  # the common case: every item is valid
    except ValidationError as invalid:
        if problems.is_json_syntax_error(invalid):
            raise problems.ProblemException(_parse_problem(invalid)) from None
    raw = json.loads(body)
    try:
        shape = BatchShape.model_validate(raw)
    except ValidationError as invalid:
        raise problems.ProblemException(_parse_problem(invalid)) from None
    parsed: list[Webhook | Outcome] = []
    for item in shape.events:
        try:
            parsed.append(webhook_adapter.validate_json(json.dumps(item)))
        except ValidationError as invalid:
            parsed.append(rejected(_parse_problem(invalid)))
    return parsed


async def _commit(components: Components, items: list[ReceivedFact]) -> list[Outcome]:
    assert components.committer is not None  # the routes exist only where ingest runs
    try:
        return await components.committer.submit(items)
    except (Overloaded, StoreFailed) as failure:
        raise problems.ProblemException(problems.store_unavailable(str(failure)), {"Retry-After": "1"}) from None


def _accepted(outcome: Outcome) -> FactAccepted:
    assert outcome.event_id is not None and outcome.position is not None
    return FactAccepted(status=outcome.status, event_id=outcome.event_id, position=outcome.position)


def _name(outcome: Outcome) -> str:
    assert outcome.problem is not None
    return outcome.problem.type.removeprefix(problems.PROBLEM_TYPE_BASE)


def _count(request: web.Request, components: Components, outcomes: list[Outcome], request_outcome: str) -> None:
    request[OUTCOME] = request_outcome
    request[EVENT_IDS] = [str(o.event_id) for o in outcomes if o.event_id is not None]
    components.metrics.count_facts(outcomes)


def _too_large(limit: int) -> Problem:
    return problems.problem(413, "too-large", "The body is too large", f"at most {limit} bytes")
