"""Facts as event-sourced aggregates, and the rules that guard them (DESIGN section 2).

Each fact is an aggregate whose id is its event id. Version 1 is the fact itself: the only event the log
and the stream carry. Later versions record what happened to the fact since (acknowledged, reversed), so
every rule about a fact is checked against one versioned history. Two writers that act on the same fact
at once both try to append the same next version; the store refuses one of them, and the loser re-plans.
That is how "at most once" holds across processes without a read-then-write race.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import register_topic

from contracts.types import FUTURE_MAX, context_key, utc_text
from contracts.webhook_bodies import Webhook

# The namespace of every event id: uuid5(FACT_NAMESPACE, "{tenant}/{source}/{external_id}").
# Fixed forever; changing it would make every known fact look new.
FACT_NAMESPACE = UUID("6f2b0d8e-4a51-5c1e-9d3a-52c1e0a4b7f3")


def fact_event_id(tenant: str, source: str, external_id: str) -> UUID:
    """The event id of a fact: the same sender's same fact always has the same id."""
    return uuid5(FACT_NAMESPACE, f"{tenant}/{source}/{external_id}")


class DomainError(Exception):
    """A fact was refused by a rule; nothing about it is recorded."""


class RuleViolation(DomainError):
    """A rule of DESIGN section 2 is broken (answered 422, naming the field and the rule)."""

    def __init__(self, path: str, rule: str, message: str) -> None:
        super().__init__(message)
        self.path, self.rule, self.message = path, rule, message


class UnknownReference(DomainError):
    """The referenced fact is not (yet) recorded; it may still arrive, so a retry can succeed (409)."""

    def __init__(self, path: str, ref_id: str, ref_source: str) -> None:
        super().__init__(f"no fact with id {ref_id!r} from source {ref_source!r} is recorded (yet)")
        self.path = path


class AlreadyReversed(DomainError):
    """Reversing a reversed fact again: answered as a duplicate of the first reversal."""

    def __init__(self, reversal_id: UUID) -> None:
        super().__init__(f"already reversed by {reversal_id}")
        self.reversal_id = reversal_id


class Fact(Aggregate):
    """A recorded fact. Its `fact` attribute is exactly what the log shows (without the position)."""

    @event("Recorded")
    def __init__(self, id: UUID, fact: dict[str, Any]) -> None:
        self.fact = fact
        self.reversed_by: UUID | None = None
        # Live acknowledgements by acknowledger; only gives and introductions ever fill it.
        self.acknowledgements: dict[str, UUID] = {}

    @property
    def data(self) -> dict[str, Any]:
        return self.fact["data"]

    def acknowledge(self, acknowledger: str, acknowledgement_id: UUID) -> None:
        raise RuleViolation(
            "data.ref", "ref_is_give_or_introduction", "only a give or an introduction can be acknowledged"
        )

    def reverse(self, reversal_id: UUID) -> None:
        if self.reversed_by is not None:
            raise AlreadyReversed(self.reversed_by)
        self._reversed(reversal_id=reversal_id)

    @event("Reversed")
    def _reversed(self, reversal_id: UUID) -> None:
        self.reversed_by = reversal_id


class Acknowledgeable(Fact):
    """A give or an introduction: something that can pay off, and be thanked for once per person."""

    def may_acknowledge(self, participant: str) -> bool:
        raise NotImplementedError

    def acknowledge(self, acknowledger: str, acknowledgement_id: UUID) -> None:
        if self.reversed_by is not None:
            raise RuleViolation("data.ref", "ref_not_reversed", "a reversed fact cannot be acknowledged")
        if not self.may_acknowledge(acknowledger):
            raise RuleViolation(
                "data.acknowledger",
                "acknowledger_was_helped",
                "a give is acknowledged only by its receiver, an introduction only by one of its two introduced",
            )
        if acknowledger in self.acknowledgements:
            raise RuleViolation(
                "data.acknowledger",
                "one_acknowledgement_per_acknowledger",
                f"{acknowledger} already acknowledged this fact",
            )
        self._acknowledged(acknowledger=acknowledger, acknowledgement_id=acknowledgement_id)

    def withdraw_acknowledgement(self, acknowledgement_id: UUID) -> None:
        """The acknowledgement was reversed: the fact is unacknowledged by that person again."""
        for acknowledger, live_id in self.acknowledgements.items():
            if live_id == acknowledgement_id:
                self._acknowledgement_withdrawn(acknowledger=acknowledger)
                return

    @event("Acknowledged")
    def _acknowledged(self, acknowledger: str, acknowledgement_id: UUID) -> None:
        self.acknowledgements[acknowledger] = acknowledgement_id

    @event("AcknowledgementWithdrawn")
    def _acknowledgement_withdrawn(self, acknowledger: str) -> None:
        self.acknowledgements.pop(acknowledger, None)


class Give(Acknowledgeable):
    def may_acknowledge(self, participant: str) -> bool:
        return participant == self.data["receiver"]


class Introduction(Acknowledgeable):
    def may_acknowledge(self, participant: str) -> bool:
        return participant in self.data["introduced"]


class Acknowledgement(Fact):
    @property
    def acknowledged_id(self) -> UUID:
        ref = self.data["ref"]
        return fact_event_id(self.fact["tenant"], ref["source"], ref["id"])


class Reversal(Fact):
    def reverse(self, reversal_id: UUID) -> None:
        raise RuleViolation("data.ref", "reversal_not_reversible", "a reversal cannot be reversed")


FACT_CLASSES: dict[str, type[Fact]] = {
    "give.recorded": Give,
    "introduction.made": Introduction,
    "acknowledgement.recorded": Acknowledgement,
    "reversal.recorded": Reversal,
}
FACT_TOPIC = {kind: f"{__name__}:{cls.__name__}.Recorded" for kind, cls in FACT_CLASSES.items()}  # stored events' topic

# Releases up to 457f0f2 kept these classes in services/domain.py, and a stored event's topic names the module
# it was written from. Those topics resolve to this module, and reads of the log ask for both names.
FORMER_MODULE = "services.domain"
register_topic(FORMER_MODULE, sys.modules[__name__])
STORED_TOPICS = {kind: (topic, topic.replace(__name__, FORMER_MODULE, 1)) for kind, topic in FACT_TOPIC.items()}
FACT_TOPICS = tuple(topic for topics in STORED_TOPICS.values() for topic in topics)


def ref_event_id(tenant: str, source: str, data: dict[str, Any]) -> UUID:
    """The event id that an acknowledgement's or reversal's `ref` points at."""
    ref = data["ref"]
    return fact_event_id(tenant, ref.get("source") or source, ref["id"])


@dataclass(frozen=True)
class ReceivedFact:
    """A validated fact as it arrived, in plain data (it crosses to the writer process)."""

    tenant: str
    source: str
    type: str
    data: dict[str, Any]  # the validated webhook data, JSON-ready: decimals as strings, times in UTC
    occurred_at: datetime | None  # as sent; None when the sender left it out
    received_at: datetime
    event_id: UUID

    @classmethod
    def from_webhook(cls, tenant: str, source: str, webhook: Webhook, received_at: datetime) -> ReceivedFact:
        given = webhook.data
        data = given.model_dump(mode="json", exclude_none=True)
        event_id = fact_event_id(tenant, source, given.id)
        return cls(tenant, source, webhook.type, data, given.occurred_at, received_at, event_id)


def record_fact(received: ReceivedFact, recorded_at: str) -> Fact:
    """A new fact, after the rules that need nothing but the fact itself.

    `recorded_at` is already text: one transaction records all its facts at one moment."""
    if received.occurred_at is not None and received.occurred_at > received.received_at + FUTURE_MAX:
        raise RuleViolation("data.occurred_at", "not_in_future", "occurred_at is more than 5 minutes ahead")
    data = received.data
    _check_fact_rules(received.type, received.source, data)
    if "ref" in data:
        data = {**data, "ref": {"source": received.source, **data["ref"]}}
    fact = {
        "event_id": str(received.event_id),
        "tenant": received.tenant,
        "source": received.source,
        "external_id": data["id"],
        "type": received.type,
        "occurred_at": utc_text(received.occurred_at or received.received_at),
        "recorded_at": recorded_at,
        "data": data,
    }
    return FACT_CLASSES[received.type](id=received.event_id, fact=fact)


def _check_fact_rules(fact_type: str, source: str, data: dict[str, Any]) -> None:
    if fact_type == "give.recorded" and data["giver"] == data["receiver"]:
        raise RuleViolation("data.receiver", "giver_is_not_receiver", "a participant cannot give to themselves")
    if fact_type == "introduction.made":
        first, second = data["introduced"]
        if first == second:
            raise RuleViolation("data.introduced", "introduced_differ", "the two introduced must differ")
        if data["introducer"] in (first, second):
            raise RuleViolation(
                "data.introducer",
                "introducer_not_introduced",
                "the introducer cannot be one of the introduced",
            )
    if fact_type == "reversal.recorded" and data["ref"].get("source", source) != source:
        raise RuleViolation(
            "data.ref.source",
            "reversed_by_recording_source",
            "only the source that recorded a fact may reverse it",
        )


def same_fact(recorded: dict[str, Any], candidate: dict[str, Any]) -> bool:
    """Whether a fact with a known identity is the same fact again (a duplicate) or other content (409).

    The envelope timestamp and webhook-id are not part of a fact; a defaulted occurred_at is not in `data`.
    """
    return recorded["type"] == candidate["type"] and _comparable(recorded["data"]) == _comparable(candidate["data"])


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    context = data.get("context")
    if not context:
        return data
    return {**data, "context": {name: context_key(text) for name, text in context.items()}}
