"""The query API over the views (DESIGN sections 5 and 8): balances, pairs, influence, maintenance, the graph,
ties and upkeep.

Every route needs a `read` key of the tenant, accepts `?min_position=N` (wait until the view reflects N,
at most 5 s, else 503), and answers with the view's `position`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from contracts import problems
from contracts.answers import ProblemError
from contracts.graphml import GRAPHML_CONTENT_TYPE, graphml
from contracts.query_parameters import (
    MIN_POSITION_WAIT_S,
    BalancesQuery,
    ContextFilters,
    GraphQuery,
    MaintenanceQuery,
    PageQuery,
    Query,
    TiesQuery,
    UpkeepQuery,
)
from contracts.types import PARTICIPANT_PATTERN, context_key, utc_text
from projections.queries import CursorError
from projections.supervision import in_thread
from services.http.auth import require_key
from services.http.keys import COMPONENTS
from services.http.responses import json_answer

Q = TypeVar("Q", bound=BaseModel)
PARTICIPANT = re.compile(PARTICIPANT_PATTERN)


def parse_query(request: web.Request, model: type[Q]) -> Q:
    """The query string through its contract; a 422 names `query.<parameter>` and the rule."""
    repeated = sorted({name for name in request.query if len(request.query.getall(name)) > 1})
    if repeated:
        raise problems.ProblemException(
            problems.problem(
                400,
                "repeated-parameter",
                "A query parameter is given more than once",
                f"give {', '.join(repeated)} once: each takes one value",
            )
        )
    try:
        return model.model_validate(dict(request.query.items()))
    except ValidationError as invalid:
        raise problems.ProblemException(problems.invalid(problems.validation_errors(invalid, "query"))) from None


def path_participant(request: web.Request, name: str = "participant") -> str:
    value = request.match_info[name]
    if not PARTICIPANT.fullmatch(value):
        error = ProblemError(
            path=f"path.{name}", rule="string_pattern_mismatch", message=f"must match {PARTICIPANT_PATTERN}"
        )
        raise problems.ProblemException(problems.invalid([error]))
    return value


async def _prepare(request: web.Request, model: type[Q], view: str = "reciprocity") -> tuple[str, Q]:
    """Key, query contract and min_position, common to every view route."""
    tenant = request.match_info["tenant"]
    await require_key(request, tenant, "read")
    query = parse_query(request, model)
    await wait_for_view(request, tenant, query, view)
    return tenant, query


async def wait_for_view(request: web.Request, tenant: str, query: BaseModel, view: str = "reciprocity") -> None:
    """Waits (at most MIN_POSITION_WAIT_S) until the view reflects the query's min_position, if it gives one;
    past that, 503 with Retry-After."""
    if isinstance(query, Query) and query.min_position is not None:
        projections = request.app[COMPONENTS].projections
        position: Callable[[], int] | None = None
        if view == "influence":
            position = lambda: projections.influence.position(tenant)  # noqa: E731
        if not await projections.wait_for(query.min_position, MIN_POSITION_WAIT_S, position):
            raise problems.ProblemException(
                problems.problem(
                    503,
                    "view-behind",
                    "The view does not reflect that position yet",
                    f"the {view} view did not reach position {query.min_position} within {MIN_POSITION_WAIT_S} s",
                    retryable=True,
                ),
                {"Retry-After": "1"},
            )


async def _read(request: web.Request, function: Callable[..., Any], *args: Any) -> Any:
    """A view read: on SQLite a local point read costs less than a thread hop would;
    on PostgreSQL the round trip runs on a worker thread."""
    if request.app[COMPONENTS].settings.database_url:
        return await in_thread(function, *args)
    return function(*args)


def _not_found(what: str) -> problems.ProblemException:
    return problems.ProblemException(problems.problem(404, "not-found", "Not found", what))


async def _read_page(request: web.Request, function: Callable[..., Any], *args: Any) -> Any:
    """A page read; a cursor this API did not hand out is a 422 at `query.cursor`."""
    try:
        return await _read(request, function, *args)
    except CursorError as bad_cursor:
        error = ProblemError(path="query.cursor", rule="cursor", message=str(bad_cursor))
        raise problems.ProblemException(problems.invalid([error])) from None


async def balance(request: web.Request) -> web.StreamResponse:
    tenant, _ = await _prepare(request, Query)
    participant = path_participant(request)
    answer = await request.app[COMPONENTS].projections.queries.balance_json_async(tenant, participant)
    if answer is None:
        raise _not_found(f"no participant {participant!r} in this tenant")
    return web.Response(body=answer, content_type="application/json")


async def pair(request: web.Request) -> web.StreamResponse:
    tenant, _ = await _prepare(request, Query)
    a, b = path_participant(request, "a"), path_participant(request, "b")
    answer = await _read(request, request.app[COMPONENTS].projections.queries.pair, tenant, a, b)
    if answer is None:
        raise _not_found(f"no pair of known participants {a!r} and {b!r} in this tenant")
    return json_answer(answer)


def context_scope(query: ContextFilters) -> str:
    """The view scope of a query's context filter ("" without one)."""
    return f"{query.context[0]}={context_key(query.context[1])}" if query.context else ""


async def balances(request: web.Request) -> web.StreamResponse:
    tenant, query = await _prepare(request, BalancesQuery)
    scope = context_scope(query)
    queries = request.app[COMPONENTS].projections.queries
    return json_answer(
        await _read_page(request, queries.balances, tenant, query.order, scope, query.limit, query.cursor)
    )


async def influence(request: web.Request) -> web.StreamResponse:
    tenant, query = await _prepare(request, PageQuery, "influence")
    view = request.app[COMPONENTS].projections.influence
    return json_answer(await _read_page(request, view.page, tenant, query.limit, query.cursor))


async def participant_influence(request: web.Request) -> web.StreamResponse:
    tenant, _ = await _prepare(request, Query, "influence")
    participant = path_participant(request)
    answer = await _read(request, request.app[COMPONENTS].projections.influence.participant, tenant, participant)
    if answer is None:
        raise _not_found(f"no influence score for {participant!r} in this tenant (yet)")
    return json_answer(answer)


async def maintenance(request: web.Request) -> web.StreamResponse:
    tenant, query = await _prepare(request, MaintenanceQuery)
    as_of = utc_text(query.as_of) if query.as_of else None
    queries = request.app[COMPONENTS].projections.queries
    answer = await _read(request, queries.maintenance, tenant, query.participant, as_of)
    if answer is None:
        raise _not_found(f"no participant {query.participant!r} in this tenant")
    return json_answer(answer)


async def graph(request: web.Request) -> web.StreamResponse:
    tenant, query = await _prepare(request, GraphQuery)
    since, until = (utc_text(bound) if bound else None for bound in (query.since, query.until))
    graph_queries = request.app[COMPONENTS].projections.graph
    answer = await _read(request, graph_queries.graph, tenant, context_scope(query), since, until, query.limit)
    if query.format == "graphml":
        return web.Response(body=graphml(answer), content_type=GRAPHML_CONTENT_TYPE, charset="utf-8")
    return json_answer(answer)


async def ties(request: web.Request) -> web.StreamResponse:
    tenant, query = await _prepare(request, TiesQuery)
    participant = path_participant(request)
    graph_queries = request.app[COMPONENTS].projections.graph
    answer = await _read_page(request, graph_queries.ties, tenant, participant, query.order, query.limit, query.cursor)
    if answer is None:
        raise _not_found(f"no participant {participant!r} in this tenant")
    return json_answer(answer)


async def upkeep(request: web.Request) -> web.StreamResponse:
    tenant, query = await _prepare(request, UpkeepQuery)
    as_of = utc_text(query.as_of) if query.as_of else None
    graph_queries = request.app[COMPONENTS].projections.graph
    return json_answer(await _read_page(request, graph_queries.upkeep, tenant, as_of, query.limit, query.cursor))
