"""Webhooks in (DESIGN section 3): size, then signature, then JSON and schema, then identity and rules.

The handlers only check and parse; the group committer records, and answers come after the commit.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime

from aiohttp import web
from pydantic import ValidationError

from contracts import json_body, problems
from contracts.answers import BatchAnswer, FactAccepted, FactRejected, Problem
from contracts.types import SLUG_PATTERN
from contracts.webhook_bodies import BATCH_EVENTS_MAX, BatchShape, Webhook, read_webhook, webhook_adapter
from ledger.facts import ReceivedFact
from ledger.group_commit import Outcome, Overloaded, StoreFailed, rejected
from ledger.participants import ERASURE_SOURCE
from ledger.registry import SourceAuth
from ledger.signatures import SignatureError, verify
from services.bootstrap import Components
from services.http.keys import COMPONENTS, EVENT_IDS, INGEST, LOG_FIELDS, OUTCOME
from services.http.responses import json_answer, problem_answer
from services.view_lag_gate import RETRY_AFTER_S, ViewsCatchingUp

SLUG = re.compile(SLUG_PATTERN)
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
BODY_WAIT_S = 10.0  # for the first byte, and the slack on top of the floor rate
BODY_BYTES_PER_S_MIN = 64 * 1024


async def receive_one(request: web.Request) -> web.StreamResponse:
    components = request.app[COMPONENTS]
    tenant, source, body = await _authentic_body(request, components, components.settings.body_bytes_max)
    received_at = datetime.now(UTC)
    try:
        webhook = read_webhook(body)
    except json_body.JsonBodyError as unreadable:
        raise problems.ProblemException(problems.malformed_json(str(unreadable))) from None
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
    # A name that is no slug names nothing (and "evil\n" would not even be a NATS subject token). The
    # ledger's own source is never a sender's, even in a registry that let one be added before it was reserved.
    slugs = SLUG.fullmatch(tenant) and SLUG.fullmatch(source) and source != ERASURE_SOURCE
    auth = components.registry.source(tenant, source) if slugs else None
    if auth is None and slugs:  # perhaps added a moment ago: refused only once the registry says so
        auth = await components.registry.source_after_refresh(tenant, source)
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
    await _views_within_bound(components)
    body = await _read_bounded(request, limit)
    _verify(auth, request, body, components.settings.signature_tolerance_s)
    return tenant, source, body


async def _views_within_bound(components: Components) -> None:
    """Waits while the views are too far behind the log (services/view_lag_gate.py), before the body is read:
    a held request keeps its connection, not its facts."""
    if components.view_lag_gate is None:
        return
    try:
        await components.view_lag_gate.admit()
    except ViewsCatchingUp as behind:
        raise problems.ProblemException(
            problems.views_catching_up(str(behind)), {"Retry-After": str(RETRY_AFTER_S)}
        ) from None


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    """The body, at most `limit` bytes, arriving at no less than a floor rate: a sender that trickles its
    body holds a connection and a buffer, so it is cut off like one that sends too much."""
    if request.content.is_eof():  # all of it came with the headers (most webhooks): nothing to wait for
        body = await request.content.read()
        if len(body) > limit:
            raise problems.ProblemException(_too_large(limit))
        return body
    chunks, size = [], 0
    deadline = asyncio.get_running_loop().time() + BODY_WAIT_S
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await request.content.readany()
        except TimeoutError:
            request.protocol.force_close()
            raise problems.ProblemException(_too_slow()) from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise problems.ProblemException(_too_large(limit))
        chunks.append(chunk)
        deadline += len(chunk) / BODY_BYTES_PER_S_MIN


def _verify(auth: SourceAuth, request: web.Request, body: bytes, tolerance_s: float) -> None:
    try:
        verify(auth.keys, _signature_headers(request), body, time.time(), tolerance_s)
    except SignatureError as unproven:
        raise problems.ProblemException(
            problems.problem(401, "bad-signature", "The signature does not prove the sender", str(unproven)),
            {"WWW-Authenticate": 'Signature realm="webhooks"'},
        ) from None


def _signature_headers(request: web.Request) -> dict[str, str]:
    """The three signature headers, which are ASCII by the standard: aiohttp hands other bytes over as
    surrogates that no encoder takes, so such a header is refused here as unproven."""
    headers = {}
    for name in SIGNATURE_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            if not value.isascii():
                raise SignatureError(f"{name} must be ASCII")
            headers[name] = value
    return headers


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
    """Each item validated on its own: a bad item becomes a rejected outcome and never blocks the others.
    Reading stops at item 1,001, so a batch of millions of tiny items costs no more than a full one."""
    try:
        raw = json_body.parse_object_with_list(body, "events", BATCH_EVENTS_MAX)
    except json_body.JsonBodyError as unreadable:
        raise problems.ProblemException(problems.malformed_json(str(unreadable))) from None
    except json_body.TooManyItems:
        raise problems.ProblemException(
            problems.rule_broken("events", "too_long", f"at most {BATCH_EVENTS_MAX} items in one batch")
        ) from None
    try:
        shape = BatchShape.model_validate(raw)
    except ValidationError as invalid:
        raise problems.ProblemException(_parse_problem(invalid)) from None
    parsed: list[Webhook | Outcome] = []
    for item in shape.events:
        try:
            parsed.append(webhook_adapter.validate_python(item))
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


def _too_slow() -> Problem:
    return problems.problem(
        408,
        "too-slow",
        "The body arrived too slowly",
        f"send the body within {BODY_WAIT_S:g} s plus a second per {BODY_BYTES_PER_S_MIN // 1024} KiB",
        retryable=True,
    )


def _too_large(limit: int) -> Problem:
    return problems.problem(413, "too-large", "The body is too large", f"at most {limit} bytes")
