"""The OpenAPI 3.1 description of the HTTP interface, generated from the same pydantic contracts the
service validates and answers with (served at /openapi.json, committed as contracts/openapi.json).

Every rule the edge enforces is stated: as a schema where JSON Schema can say it, in the description
where it cannot (a cursor handed out earlier, a moment relative to the server's clock)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from contracts.answers import BatchAnswer, EventsPage, FactAccepted, ParticipantErased, ParticipantExport, Problem
from contracts.graphml import GRAPHML_CONTENT_TYPE
from contracts.query_parameters import (
    GRAPH_EDGES_MAX,
    MIN_POSITION_WAIT_S,
    PAGE_MAX,
    BalancesQuery,
    GraphQuery,
    LogQuery,
    MaintenanceQuery,
    NoQuery,
    PageQuery,
    Query,
    TiesQuery,
    UpkeepQuery,
)
from contracts.types import (
    CONTEXT_CHARS_MAX,
    EARLIEST,
    FUTURE_MAX,
    PARTICIPANT_PATTERN,
    RESERVED_PARTICIPANT_PREFIX,
    SLUG_PATTERN,
    UUID_PATTERN,
)
from contracts.view_answers import (
    Balance,
    BalancesPage,
    Graph,
    InfluencePage,
    Maintenance,
    Pair,
    ParticipantInfluence,
    TiesPage,
    UpkeepPage,
)
from contracts.webhook_bodies import BATCH_EVENTS_MAX, Batch, Webhook

REF = "#/components/schemas/{model}"
PROBLEM = {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}
UNKNOWN_PARAMETER = "an unknown query parameter is refused (422) so that a typo never changes an answer"

# Read routes check the key before anything else, so a name that is no slug answers 404 like any other
# tenant the key does not belong to; a participant that is no id answers 422 at `path.<name>`.
PATH_PARAMETERS = {
    "tenant": (SLUG_PATTERN, "acme", "The tenant's slug (a name that is no slug names no tenant: 404)."),
    "source": (SLUG_PATTERN, "crm", "The source's slug (a name that is no slug names no source: 404)."),
    "participant": (
        PARTICIPANT_PATTERN,
        "ann",
        "A participant id{tombstone} (anything else: 422 at `path.participant`).",
    ),
    "a": (PARTICIPANT_PATTERN, "ann", "A participant id{tombstone} (anything else: 422 at `path.a`)."),
    "b": (PARTICIPANT_PATTERN, "bob", "A participant id{tombstone} (anything else: 422 at `path.b`)."),
    "event_id": (
        UUID_PATTERN,
        "0b8e3c9a-2f0d-5a3b-8c1e-4d6f7a9b0c2e",
        "A fact's `event_id` (anything else: 422 at `path.event_id`).",
    ),
}
# Where an erased participant was, answers show their tombstone, and the read routes take it like an id.
TOMBSTONE = f", or the tombstone `{RESERVED_PARTICIPANT_PREFIX}<token>` that answers show for an erased one"

# What JSON Schema cannot say about a query parameter, said in words; the schema says the rest.
QUERY_DESCRIPTIONS = {
    "min_position": (
        f"Wait at most {MIN_POSITION_WAIT_S} s until the view reflects this log position (a client reading its "
        "own write); a view that does not reach it answers 503 `/problems/view-behind` with `Retry-After`."
    ),
    "limit": f"Items per page, 1 to {PAGE_MAX:,}.",
    "cursor": (
        "The `next_cursor` of the previous page, exactly as it was handed out (at most 512 characters); any "
        "other value answers 422 at `query.cursor`."
    ),
    "after": "Facts after this log position (0: from the start).",
    "order": "Sort by balance, by what was given or by what was received; largest first.",
    "participant": "The participant whose ties and pending thanks are listed.",
    "as_of": (
        f"RFC 3339 date-time with an offset, from {EARLIEST.isoformat().replace('+00:00', 'Z')} to "
        f"{int(FUTURE_MAX.total_seconds() // 60)} minutes ahead of the server's clock (inclusive; compared in UTC); "
        "outside that range: 422 at `query.as_of`. Default: now."
    ),
}
WINDOW_BOUND = (
    f"RFC 3339 date-time with an offset, from {EARLIEST.isoformat().replace('+00:00', 'Z')} (compared in UTC; "
    "earlier: 422 at `query.{name}`)."
)
# Where a route's parameter means something else than the same name elsewhere: "<query model>.<name>".
ROUTE_QUERY_DESCRIPTIONS = {
    "GraphQuery.limit": (
        f"Edges kept, 1 to {GRAPH_EDGES_MAX:,} (default 500); `truncated` says whether any were left out."
    ),
    "GraphQuery.since": "Gives with `occurred_at` at or after this. " + WINDOW_BOUND.format(name="since"),
    "GraphQuery.until": (
        "Gives with `occurred_at` before this; not before `since` (else 422 at `query.until`, rule "
        "`window_order`). " + WINDOW_BOUND.format(name="until")
    ),
    "GraphQuery.format": f"`json` (default) or `graphml` (`{GRAPHML_CONTENT_TYPE}`, the same graph).",
    "TiesQuery.order": (
        "Sort by strength (given.value + received.value) or by last_at; descending, then by counterpart."
    ),
    "UpkeepQuery.as_of": (
        f"As for maintenance: RFC 3339 date-time with an offset, from {EARLIEST.isoformat().replace('+00:00', 'Z')} "
        f"to {int(FUTURE_MAX.total_seconds() // 60)} minutes ahead of the server's clock; outside that range: 422 at "
        "`query.as_of`. Default: the latest occurred_at of the tenant's live facts."
    ),
}
QUERY_EXAMPLES = {"participant": "ann", "as_of": "2026-03-01T12:00:00Z", "since": "2026-01-01T00:00:00Z"}
# With format date-time: from year 1900 on, and no leap second (RFC 3339 allows one, the server refuses it).
# The exact bounds (in UTC, and relative to the server's clock) are in the description.
AS_OF_PATTERN = r"^(19[0-9]{2}|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-5][0-9]"
CONTEXT_FILTERS = ("context.location", "context.activity", "context.subject")

GIVE_EXAMPLE = {
    "type": "give.recorded",
    "timestamp": "2026-03-01T10:00:05Z",
    "data": {
        "id": "give-1042",
        "giver": "ann",
        "receiver": "bob",
        "kind": "help",
        "value": "1.5",
        "occurred_at": "2026-03-01T11:00:00+01:00",
        "context": {"location": "Berlin", "subject": "Python"},
        "note": "Reviewed the pull request",
    },
}
ACKNOWLEDGEMENT_EXAMPLE = {
    "type": "acknowledgement.recorded",
    "timestamp": "2026-03-02T09:00:00Z",
    "data": {"id": "ack-7", "acknowledger": "bob", "ref": {"id": "give-1042"}},
}

READ_ERRORS = {
    "400": "A query parameter given more than once (`/problems/repeated-parameter`): each takes one value",
    "401": "No valid API key (`Authorization: Bearer <key>`)",
    "403": "The key lacks the `read` scope",
    "404": "Unknown tenant (or another tenant's), or nothing recorded for the participant or pair",
    "422": "A parameter breaks a rule, or is unknown; `errors` names `query.<name>` or `path.<name>` and the rule",
}
FACT_ERRORS = {**READ_ERRORS, "404": "Unknown tenant (or another tenant's), or no fact of this tenant has this id"}
VIEW_ERRORS = {
    **READ_ERRORS,
    "503": f"The view did not reach `min_position` within {MIN_POSITION_WAIT_S} s (`/problems/view-behind`)",
}
EXPORT_ERRORS = {
    **VIEW_ERRORS,
    "403": "The key lacks the `admin` scope",
    "404": "Unknown tenant (or another tenant's), or no live participant of that id: never named, or erased",
}
ERASURE_ERRORS = {
    "400": READ_ERRORS["400"],
    "401": READ_ERRORS["401"],
    "403": "The key lacks the `admin` scope",
    "404": "Unknown tenant (or another tenant's), or no live participant of that id: never named, or erased already",
    "409": "Other writers kept naming the participant meanwhile (`retryable`)",
    "422": "The participant is no id (`path.participant`), or a query parameter was given (it takes none)",
    "503": "Store unavailable (`Retry-After`)",
}
ERASURE_DESCRIPTION = (
    "Crypto-shredding (DESIGN section 7): the participant's key and id are destroyed and a `participant.erased` "
    "fact is appended at `position`; stored facts are never changed. From then on, wherever they were, answers "
    "show `erased-<token>` and leave out the notes of the facts that named them; their own balance, maintenance "
    "and export answer 404. A later fact naming the same id starts a new participant. Cannot be undone."
)
WEBHOOK_ERRORS = {
    "400": "Not JSON that reads one way only: malformed, not UTF-8, a repeated key or a lone surrogate",
    "401": "Bad or missing signature headers",
    "404": "Unknown tenant or source",
    "408": "The body arrived too slowly",
    "409": "Conflict or unknown reference",
    "413": "Body over the limit",
    "415": "Not JSON",
    "422": "A rule or schema violation; `errors` names path and rule",
    "429": "Over the source's rate limit",
    "503": "Store unavailable or overloaded, or the views too far behind the log (`/problems/views-catching-up`);"
    " `Retry-After`",
}


def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(model, "serialization") for model in _ANSWERS] + [(Batch, "validation")], ref_template=REF
    )
    components = schemas.get("$defs", {})
    components["Webhook"] = TypeAdapter(Webhook).json_schema(ref_template=REF)
    components["Webhook"].pop("$defs", None)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "reciprocity-ledger",
            "version": "1",
            "description": "Webhooks in, the ordered log and the views of social capital out.",
        },
        "paths": _paths(),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "readKey": {"type": "http", "scheme": "bearer", "description": "An API key with the `read` scope"},
                "adminKey": {"type": "http", "scheme": "bearer", "description": "An API key with the `admin` scope"},
            },
        },
    }


_ANSWERS: list[type[BaseModel]] = [
    FactAccepted,
    BatchAnswer,
    Problem,
    EventsPage,
    Balance,
    Pair,
    BalancesPage,
    InfluencePage,
    ParticipantInfluence,
    Maintenance,
    Graph,
    TiesPage,
    UpkeepPage,
    ParticipantExport,
    ParticipantErased,
]


def _paths() -> dict[str, Any]:
    tenant = "/v1/tenants/{tenant}"
    return {
        f"{tenant}/webhooks/{{source}}": {"post": _webhook("Webhook", "One fact", {"201": "FactAccepted"})},
        f"{tenant}/webhooks/{{source}}/batch": {
            "post": _webhook("Batch", f"Up to {BATCH_EVENTS_MAX:,} facts", {"200": "BatchAnswer"})
        },
        f"{tenant}/events": {"get": _read("The tenant's facts in log order", LogQuery, "EventsPage", READ_ERRORS)},
        f"{tenant}/events/{{event_id}}": {
            "get": _read("One fact, as the log shows it", NoQuery, "LoggedFact", FACT_ERRORS, ["event_id"])
        },
        f"{tenant}/participants/{{participant}}/balance": {
            "get": _read("A participant's reciprocity totals", Query, "Balance", VIEW_ERRORS, ["participant"])
        },
        f"{tenant}/pairs/{{a}}/{{b}}": {
            "get": _read("Two participants, in canonical order", Query, "Pair", VIEW_ERRORS, ["a", "b"])
        },
        f"{tenant}/balances": {
            "get": _read("Participants by balance, given or received", BalancesQuery, "BalancesPage", VIEW_ERRORS)
        },
        f"{tenant}/influence": {"get": _read("Participants by influence", PageQuery, "InfluencePage", VIEW_ERRORS)},
        f"{tenant}/participants/{{participant}}/influence": {
            "get": _read(
                "A participant's influence and its explanation",
                Query,
                "ParticipantInfluence",
                VIEW_ERRORS,
                ["participant"],
            )
        },
        f"{tenant}/maintenance": {
            "get": _read("Dormant ties and pending thanks", MaintenanceQuery, "Maintenance", VIEW_ERRORS)
        },
        f"{tenant}/graph": {"get": _graph()},
        f"{tenant}/participants/{{participant}}/ties": {
            "get": _read("A participant's counterparts", TiesQuery, "TiesPage", VIEW_ERRORS, ["participant"])
        },
        f"{tenant}/upkeep": {
            "get": _read(
                "The tenant's pending thanks and dormant ties, oldest first", UpkeepQuery, "UpkeepPage", VIEW_ERRORS
            )
        },
        f"{tenant}/participants/{{participant}}/export": {
            "get": _read(
                "Everything held about a participant (access and portability; query role)",
                Query,
                "ParticipantExport",
                EXPORT_ERRORS,
                ["participant"],
                key="adminKey",
            )
        },
        f"{tenant}/participants/{{participant}}": {
            "delete": {
                **_read(
                    "Erase a participant (ingest role)",
                    NoQuery,
                    "ParticipantErased",
                    ERASURE_ERRORS,
                    ["participant"],
                    key="adminKey",
                ),
                "description": f"{ERASURE_DESCRIPTION} It takes no query parameters; {UNKNOWN_PARAMETER}.",
            }
        },
        "/healthz": {
            "get": _plain(
                "The process is alive",
                unavailable=(
                    "A background loop has been dead longer than RECIPROCITY_DEAD_LOOP_RESTART_S (`dead_loops`): "
                    "only a restart brings its work back"
                ),
            )
        },
        "/readyz": {
            "get": _plain(
                "The store answers and this role's work runs; view lag and NATS state",
                unavailable=(
                    "Not ready: the store does not answer, ingest stopped, a background loop died (`dead_loops`), "
                    "or (projector) a view fails"
                ),
            )
        },
        "/metrics": {"get": _plain("Prometheus metrics", "text/plain")},
        "/openapi.json": {"get": _plain("This document")},
    }


def _graph() -> dict[str, Any]:
    """The graph answers JSON, or GraphML with `?format=graphml` (an XML document, described in words)."""
    operation = _read("The tie graph of live gives", GraphQuery, "Graph", VIEW_ERRORS)
    graphml = {
        "schema": {
            "type": "string",
            "description": (
                "GraphML: node `id` = participant with data `given`, `received`, `balance` (decimal strings) and "
                "`score` (absent without one); edge `source` -> `target` with `count`, `value`, `acknowledged_count`, "
                "`first_at`, `last_at`; the graph's `position` and `truncated`."
            ),
        }
    }
    operation["responses"]["200"]["content"][GRAPHML_CONTENT_TYPE] = graphml
    return operation


def _path_parameters(names: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": description.format(tombstone=TOMBSTONE),
            "schema": {"type": "string", "pattern": pattern},
            "example": example,
        }
        for name in names
        for pattern, example, description in [PATH_PARAMETERS[name]]
    ]


def _webhook(body: str, summary: str, success: dict[str, str]) -> dict[str, Any]:
    # Standard Webhooks headers are ASCII (any other byte: 401, unproven); HTTP trims the spaces around a value.
    visible_ascii = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
    headers = [
        {"name": name, "in": "header", "required": True, "schema": schema, "description": text}
        for name, schema, text in (
            ("webhook-id", {"type": "string", "pattern": visible_ascii}, "The sender's message id"),
            (
                "webhook-timestamp",
                {"type": "string", "pattern": r"^[0-9]{1,19}$"},
                "Seconds since the epoch; at most 5 minutes off the server's clock",
            ),
            (
                "webhook-signature",
                {"type": "string", "pattern": visible_ascii},
                "Space-separated `v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>` (at most 10); "
                "any one made with a current secret of the source proves the sender",
            ),
        )
    ]
    responses = {status: _json(model) for status, model in success.items()}
    if "201" in success:
        responses["200"] = {**_json("FactAccepted"), "description": "The same fact again (duplicate)"}
    return {
        "summary": summary,
        "parameters": _path_parameters(["tenant", "source"]) + headers,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": REF.format(model=body)},
                    "example": {"events": [GIVE_EXAMPLE, ACKNOWLEDGEMENT_EXAMPLE]} if body == "Batch" else GIVE_EXAMPLE,
                }
            },
        },
        "responses": {**responses, **_errors(WEBHOOK_ERRORS)},
    }


def _read(
    summary: str,
    query: type[BaseModel],
    answer: str,
    errors: dict[str, str],
    path: list[str] | None = None,
    key: str = "readKey",
) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": f"Each query parameter may be given once; {UNKNOWN_PARAMETER}.",
        "security": [{key: []}],
        "parameters": _path_parameters(["tenant", *(path or [])]) + _query_parameters(query),
        "responses": {"200": _json(answer), **_errors(errors)},
    }


def _query_parameters(query: type[BaseModel]) -> list[dict[str, Any]]:
    """The model's fields as query parameters; the context filters, of which one at most may be given,
    become one exploded object (`context.location=x` on the wire) whose `maxProperties` says so."""
    schema = query.model_json_schema()
    parameters, filters = [], {}
    for name, spec in schema["properties"].items():
        spec = _query_value(spec)
        if name in CONTEXT_FILTERS:
            filters[name] = spec
            continue
        own_description = spec.pop("description", name)
        description = ROUTE_QUERY_DESCRIPTIONS.get(
            f"{query.__name__}.{name}", QUERY_DESCRIPTIONS.get(name, own_description)
        )
        if name in ("as_of", "since", "until"):
            spec["pattern"] = AS_OF_PATTERN
        required = name in schema.get("required", [])
        parameter = {"name": name, "in": "query", "required": required, "description": description, "schema": spec}
        if name in QUERY_EXAMPLES:
            parameter["example"] = QUERY_EXAMPLES[name]
        parameters.append(parameter)
    if filters:
        parameters.append(
            {
                "name": "context",
                "in": "query",
                "required": False,
                "style": "form",
                "explode": True,
                "description": (
                    f"At most one context filter: {', '.join(f'`{f}`' for f in CONTEXT_FILTERS)} (two or more: "
                    f"422). 1 to {CONTEXT_CHARS_MAX} characters, compared trimmed, NFC-normalised and casefolded."
                ),
                "schema": {
                    "type": "object",
                    "properties": filters,
                    "additionalProperties": False,
                    "maxProperties": 1,
                },
            }
        )
    return parameters


def _query_value(spec: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the `null` an optional field allows in Python: on the wire an absent
    parameter is the default, and `null` has no spelling."""
    spec = {k: v for k, v in spec.items() if k != "title"}
    branches = [b for b in spec.pop("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1:
        spec = {**branches[0], **spec}
    elif branches:
        spec["anyOf"] = branches
    if "default" in spec and spec["default"] is None:
        del spec["default"]
    return spec


def _plain(summary: str, content_type: str = "application/json", unavailable: str | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {content_type: {}}}}
    if unavailable:
        responses["503"] = {"description": unavailable, "content": {content_type: {}}}
    return {"summary": summary, "responses": responses}


def _json(model: str) -> dict[str, Any]:
    return {"description": model, "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def _errors(statuses: dict[str, str]) -> dict[str, Any]:
    return {status: {"description": text, "content": PROBLEM} for status, text in statuses.items()}
