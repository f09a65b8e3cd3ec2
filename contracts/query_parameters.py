"""The query parameters of the read API, validated at the edge like every other input.

Query strings are text, so these models convert numbers (they are not strict); unknown parameters are
refused so a typo never silently changes an answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from contracts.types import ContextFilter, Moment, ParticipantId, WindowBound

PAGE_DEFAULT = 100
PAGE_MAX = 1_000
GRAPH_EDGES_DEFAULT = 500
GRAPH_EDGES_MAX = 5_000
MIN_POSITION_WAIT_S = 5


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    min_position: int | None = Field(
        default=None, ge=0, description=f"Wait (at most {MIN_POSITION_WAIT_S} s) until the view reflects it."
    )


class PageQuery(Query):
    limit: int = Field(default=PAGE_DEFAULT, ge=1, le=PAGE_MAX)
    cursor: str | None = Field(default=None, max_length=512)


def window_end(since: datetime | None, until: datetime | None) -> datetime | None:
    """`until`, checked against `since` (an empty window, since = until, is allowed; a reversed one is a mistake)."""
    if until is not None and since is not None and since > until:
        raise PydanticCustomError("window_order", "must not be before since")
    return until


class ContextFilters(BaseModel):
    """At most one of `context.location`, `context.activity`, `context.subject`."""

    location: ContextFilter | None = Field(default=None, alias="context.location")
    activity: ContextFilter | None = Field(default=None, alias="context.activity")
    subject: ContextFilter | None = Field(default=None, alias="context.subject")

    @field_validator("activity", "subject")
    @classmethod
    def _one_context_at_most(cls, value: str | None, info: ValidationInfo) -> str | None:
        # On the later filter, so the refusal names a parameter (query.context.subject), not the whole query.
        earlier = [f"context.{name}" for name in ("location", "activity") if info.data.get(name) is not None]
        if value is not None and earlier:
            raise PydanticCustomError(
                "one_context_filter", "at most one context filter: {earlier} is given too", {"earlier": earlier[0]}
            )
        return value

    @property
    def context(self) -> tuple[str, str] | None:
        for name in ("location", "activity", "subject"):
            if getattr(self, name) is not None:
                return name, getattr(self, name)
        return None


class BalancesQuery(PageQuery, ContextFilters):
    order: Literal["balance", "given", "received"] = "balance"


class GraphQuery(Query, ContextFilters):
    """The tie graph: a time window `since <= occurred_at < until` (either bound optional), one context filter."""

    since: WindowBound | None = None
    until: WindowBound | None = None
    limit: int = Field(default=GRAPH_EDGES_DEFAULT, ge=1, le=GRAPH_EDGES_MAX)
    format: Literal["json", "graphml"] = "json"

    @field_validator("until")
    @classmethod
    def _not_before_since(cls, until: datetime | None, info: ValidationInfo) -> datetime | None:
        return window_end(info.data.get("since"), until)


class TiesQuery(PageQuery):
    order: Literal["strength", "last_at"] = "strength"


class UpkeepQuery(PageQuery):
    as_of: Moment | None = None


class MaintenanceQuery(Query):
    participant: ParticipantId
    as_of: Moment | None = None


class NoQuery(BaseModel):
    """A route that takes no query parameters: any one given is refused, like a typo anywhere else."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LogQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    after: int = Field(default=0, ge=0, le=2**63 - 1)
    limit: int = Field(default=PAGE_DEFAULT, ge=1, le=PAGE_MAX)
