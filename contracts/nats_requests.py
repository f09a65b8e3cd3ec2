"""What travels on NATS besides the views' answers: the query service's requests (DESIGN section 5).

Replies are the HTTP answers' JSON (contracts.view_answers); errors use the micro error headers
`Nats-Service-Error` and `Nats-Service-Error-Code` with HTTP-like codes (400, 404).
"""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.query_parameters import PAGE_DEFAULT, PAGE_MAX
from contracts.types import ParticipantId


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
