"""The OpenAPI 3.1 description of the HTTP interface, generated from the same pydantic contracts the
service validates and answers with (served at /openapi.json, committed as contracts/openapi.json)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from contracts.answers import BatchAnswer, EventsPage, FactAccepted, Problem
from contracts.facts import Batch, Webhook
from contracts.queries import BalancesQuery, LogQuery, MaintenanceQuery, PageQuery, Query
from contracts.views import Balance, BalancesPage, InfluencePage, Maintenance, Pair, ParticipantInfluence

REF = "#/components/schemas/{model}"
PROBLEM = {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}
ERROR_STATUSES = {
    "400": "Malformed JSON",
    "401": "Bad or missing signature or API key",
    "403": "The key lacks the scope",
    "404": "Unknown tenant, source or participant (or another tenant's)",
    "409": "Conflict or unknown reference",
    "413": "Body over the limit",
    "415": "Not JSON",
    "422": "A rule or schema violation; `errors` names path and rule",
    "429": "Over the source's rate limit",
    "503": "Store unavailable, or the view did not reach min_position in 5 s",
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
            "securitySchemes": {"readKey": {"type": "http", "scheme": "bearer"}},
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
]


def _paths() -> dict[str, Any]:
    tenant = "/v1/tenants/{tenant}"
    return {
        f"{tenant}/webhooks/{{source}}": {"post": _webhook("Webhook", "One fact", {"201": "FactAccepted"})},
        f"{tenant}/webhooks/{{source}}/batch": {"post": _webhook("Batch", "Up to 1,000 facts", {"200": "BatchAnswer"})},
        f"{tenant}/events": {"get": _read("The tenant's facts in log order", LogQuery, "EventsPage")},
        f"{tenant}/participants/{{participant}}/balance": {
            "get": _read("A participant's reciprocity totals", Query, "Balance", ["participant"])
        },
        f"{tenant}/pairs/{{a}}/{{b}}": {
            "get": _read("Two participants, in canonical order", Query, "Pair", ["a", "b"])
        },
        f"{tenant}/balances": {
            "get": _read("Participants by balance, given or received", BalancesQuery, "BalancesPage")
        },
        f"{tenant}/influence": {"get": _read("Participants by influence", PageQuery, "InfluencePage")},
        f"{tenant}/participants/{{participant}}/influence": {
            "get": _read(
                "A participant's influence and its explanation", Query, "ParticipantInfluence", ["participant"]
            )
        },
        f"{tenant}/maintenance": {"get": _read("Dormant ties and pending thanks", MaintenanceQuery, "Maintenance")},
        "/healthz": {"get": _plain("The process is alive")},
        "/readyz": {"get": _plain("The store answers and this role's work runs; view lag and NATS state")},
        "/metrics": {"get": _plain("Prometheus metrics", "text/plain")},
        "/openapi.json": {"get": _plain("This document")},
    }


def _path_parameters(names: list[str]) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names]


def _webhook(body: str, summary: str, success: dict[str, str]) -> dict[str, Any]:
    headers = [
        {"name": name, "in": "header", "required": True, "schema": {"type": "string"}, "description": text}
        for name, text in (
            ("webhook-id", "The sender's message id (Standard Webhooks)"),
            ("webhook-timestamp", "Seconds since the epoch; at most 5 minutes off"),
            ("webhook-signature", "v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>, space-separated"),
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
            "content": {"application/json": {"schema": {"$ref": REF.format(model=body)}}},
        },
        "responses": {**responses, **_errors()},
    }


def _read(summary: str, query: type[BaseModel], answer: str, path: list[str] | None = None) -> dict[str, Any]:
    schema = query.model_json_schema()
    parameters = [
        {"name": name, "in": "query", "required": name in schema.get("required", []), "schema": spec}
        for name, spec in schema["properties"].items()
    ]
    return {
        "summary": summary,
        "security": [{"readKey": []}],
        "parameters": _path_parameters(["tenant", *(path or [])]) + parameters,
        "responses": {"200": _json(answer), **_errors()},
    }


def _plain(summary: str, content_type: str = "application/json") -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": {"description": "OK", "content": {content_type: {}}}}}


def _json(model: str) -> dict[str, Any]:
    return {"description": model, "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def _errors() -> dict[str, Any]:
    return {status: {"description": text, "content": PROBLEM} for status, text in ERROR_STATUSES.items()}
