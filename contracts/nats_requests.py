"""What travels on NATS besides the views' answers: the query service's requests (DESIGN section 5).

Replies are the HTTP answers' JSON (contracts.view_answers); errors use the micro error headers
`Nats-Service-Error` and `Nats-Service-Error-Code` with HTTP-like codes (400, 404).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from contracts.query_parameters import GRAPH_EDGES_DEFAULT, GRAPH_EDGES_MAX, PAGE_DEFAULT, PAGE_MAX, window_end
from contracts.types import ContextFilter, Moment, ParticipantId, WindowBound


class BusRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class BalanceRequest(BusRequest):
    participant: ParticipantId


class PairRequest(BusRequest):
    a: ParticipantId
    b: ParticipantId


class InfluenceRequest(BusRequest):
    limit: int = Field(default=PAGE_DEFAULT, ge=1, le=PAGE_MAX)


class MaintenanceRequest(BusRequest):
    participant: ParticipantId
    as_of: AwareDatetime | None = None


class ContextRequest(BusRequest):
    """One context dimension, as the graph's `context.*` filter."""

    location: ContextFilter | None = None
    activity: ContextFilter | None = None
    subject: ContextFilter | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ContextRequest:
        if sum(v is not None for v in (self.location, self.activity, self.subject)) != 1:
            raise ValueError("exactly one of location, activity or subject")
        return self

    @property
    def filter(self) -> tuple[str, str]:
        return next((name, value) for name, value in self.model_dump().items() if value is not None)


class GraphRequest(BusRequest):
    limit: int = Field(default=GRAPH_EDGES_DEFAULT, ge=1, le=GRAPH_EDGES_MAX)
    since: WindowBound | None = None
    until: WindowBound | None = None
    context: ContextRequest | None = None

    @field_validator("until")
    @classmethod
    def _not_before_since(cls, until: datetime | None, info: ValidationInfo) -> datetime | None:
        return window_end(info.data.get("since"), until)


class TiesRequest(BusRequest):
    participant: ParticipantId
    order: Literal["strength", "last_at"] = "strength"
    limit: int = Field(default=PAGE_DEFAULT, ge=1, le=PAGE_MAX)
    cursor: str | None = Field(default=None, max_length=512)


class UpkeepRequest(BusRequest):
    as_of: Moment | None = None
    limit: int = Field(default=PAGE_DEFAULT, ge=1, le=PAGE_MAX)
    cursor: str | None = Field(default=None, max_length=512)
