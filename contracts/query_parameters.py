"""The query parameters of the read API, validated at the edge like every other input.

Query strings are text, so these models convert numbers (they are not strict); unknown parameters are
refused so a typo never silently changes an answer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.types import ContextFilter, Moment, ParticipantId

PAGE_DEFAULT = 100
PAGE_MAX = 1_000
MIN_POSITION_WAIT_S = 5


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    min_position: int | None = Field(
        default=None, ge=0, description=f"Wait (at most {MIN_POSITION_WAIT_S} s) until the view reflects it."
    )


class PageQuery(Query):
    limit: int = Field(default=PAGE_DEFAULT, ge=1, le=PAGE_MAX)
    cursor: str | None = Field(default=None, max_length=512)


class BalancesQuery(PageQuery):
    order: Literal["balance", "given", "received"] = "balance"
    location: ContextFilter | None = Field(default=None, alias="context.location")
    activity: ContextFilter | None = Field(default=None, alias="context.activity")
    subject: ContextFilter | None = Field(default=None, alias="context.subject")

    @model_validator(mode="after")
    def _one_context_at_most(self) -> BalancesQuery:
        if sum(v is not None for v in (self.location, self.activity, self.subject)) > 1:
            raise ValueError("at most one context filter (context.location, context.activity or context.subject)")
        return self

    @property
    def context(self) -> tuple[str, str] | None:
        for name in ("location", "activity", "subject"):
            if getattr(self, name) is not None:
                return name, getattr(self, name)
        return None


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
