"""The NATS micro service `reciprocity`: the same view queries as HTTP, on `reciprocity.query.{tenant}.*`.

Discoverable through `$SRV.PING`; the tenant is a subject token, so NATS permissions confine a client to
its own tenant's subjects. Replies are the HTTP answers' JSON; errors use the micro error headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import BaseModel, ValidationError

from contracts.nats_requests import (
    BalanceRequest,
    GraphRequest,
    InfluenceRequest,
    MaintenanceRequest,
    PairRequest,
    TiesRequest,
    UpkeepRequest,
)
from contracts.types import context_key, utc_text
from projections.nats_bus import QUERY_ENDPOINTS, SERVICE_NAME
from projections.queries import CursorError
from projections.runtime import Projections
from projections.supervision import in_thread

VERSION = "1.0.0"


class QueryService:
    def __init__(self, projections: Projections, off_loop: bool) -> None:
        self.projections = projections
        self.off_loop = off_loop  # PostgreSQL reads run on a worker thread, SQLite point reads do not

    async def start(self, client: Client) -> Service:
        service = await add_service(
            client,
            name=SERVICE_NAME,
            version=VERSION,
            description="Reciprocity views: balances, pairs, influence, maintenance, graph, ties, upkeep",
        )
        handlers: dict[str, Callable[[Request], Awaitable[None]]] = {
            "balance": self._balance,
            "pair": self._pair,
            "influence": self._influence,
            "maintenance": self._maintenance,
            "graph": self._graph,
            "ties": self._ties,
            "upkeep": self._upkeep,
        }
        for endpoint in QUERY_ENDPOINTS:
            await service.add_endpoint(
                name=endpoint, subject=f"reciprocity.query.*.{endpoint}", handler=_answering(handlers[endpoint])
            )
        return service

    async def _read(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await in_thread(function, *args) if self.off_loop else function(*args)
        except CursorError as bad_cursor:
            raise BadRequest(f"cursor: {bad_cursor}") from None

    async def _balance(self, request: Request) -> bytes | None:
        asked = _parse(request, BalanceRequest)
        return await self.projections.queries.balance_json_async(_tenant(request), asked.participant)

    async def _pair(self, request: Request) -> BaseModel | None:
        asked = _parse(request, PairRequest)
        return await self._read(self.projections.queries.pair, _tenant(request), asked.a, asked.b)

    async def _influence(self, request: Request) -> BaseModel | None:
        asked = _parse(request, InfluenceRequest)
        return await self._read(self.projections.influence.page, _tenant(request), asked.limit, None)

    async def _maintenance(self, request: Request) -> BaseModel | None:
        asked = _parse(request, MaintenanceRequest)
        as_of = utc_text(asked.as_of) if asked.as_of else None
        return await self._read(self.projections.queries.maintenance, _tenant(request), asked.participant, as_of)

    async def _graph(self, request: Request) -> BaseModel | None:
        asked = _parse(request, GraphRequest)
        since, until = (utc_text(bound) if bound else None for bound in (asked.since, asked.until))
        scope = f"{asked.context.filter[0]}={context_key(asked.context.filter[1])}" if asked.context else ""
        return await self._read(self.projections.graph.graph, _tenant(request), scope, since, until, asked.limit)

    async def _ties(self, request: Request) -> BaseModel | None:
        asked = _parse(request, TiesRequest)
        tenant, graph = _tenant(request), self.projections.graph
        return await self._read(graph.ties, tenant, asked.participant, asked.order, asked.limit, asked.cursor)

    async def _upkeep(self, request: Request) -> BaseModel | None:
        asked = _parse(request, UpkeepRequest)
        as_of = utc_text(asked.as_of) if asked.as_of else None
        return await self._read(self.projections.graph.upkeep, _tenant(request), as_of, asked.limit, asked.cursor)


class BadRequest(Exception):
    pass


def _answering(
    handler: Callable[[Request], Awaitable[BaseModel | bytes | None]],
) -> Callable[[Request], Awaitable[None]]:
    """Turns a query into a reply: the answer's JSON (a model, or already JSON), 404 when there is none, 400
    for a bad request."""

    async def reply(request: Request) -> None:
        try:
            answer = await handler(request)
        except BadRequest as bad:
            await request.respond_error("400", str(bad))
            return
        if answer is None:
            await request.respond_error("404", "not found")
            return
        await request.respond(answer if isinstance(answer, bytes) else answer.model_dump_json().encode())

    return reply


def _tenant(request: Request) -> str:
    return request.subject.split(".")[2]


def _parse(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(request.data or b"{}")
    except ValidationError as invalid:
        first = invalid.errors(include_url=False)[0]
        path = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"{path}: {first['msg']} ({first['type']})") from None
