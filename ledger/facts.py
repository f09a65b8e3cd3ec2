"""Facts: each as a typed record of what the log shows, its history as an event-sourced aggregate, and the
rules that guard them (DESIGN section 2).

Each fact's history is an aggregate whose id is the fact's event id. Version 1 is the fact itself: the only
event the log and the stream carry. Later versions record what happened to the fact since (acknowledged,
reversed), so every rule about a fact is checked against one versioned history. Two writers that act on the
same fact at once both try to append the same next version; the store refuses one of them, and the loser
re-plans. That is how "at most once" holds across processes without a read-then-write race.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import get_topic, register_topic

from contracts.types import FUTURE_MAX, context_key, utc_text
from contracts.webhook_bodies import FactType, Webhook

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


# --- A recorded fact, as the log shows it ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ref:
    """The fact an acknowledgement or a reversal is about: its recording source and external id."""

    source: str
    id: str

    def event_id(self, tenant: str) -> UUID:
        return fact_event_id(tenant, self.source, self.id)

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "id": self.id}


# Records are built straight from the stored JSON, which the edge validated when the fact arrived: a rebuild
# decodes every fact of the log, so nothing here validates again. `to_json()` gives back exactly the JSON that
# was stored (keys in the same order, absent options absent), which is what the log and the stream show.
# They are read-only by convention, not frozen: a frozen dataclass sets each field through object.__setattr__,
# which made decoding a fact twice as slow, and the relay and the rebuild decode every fact.


@dataclass(slots=True)
class RecordedFact:
    """What every recorded fact has."""

    type: ClassVar[FactType]
    event_id: str
    tenant: str
    source: str
    external_id: str
    occurred_at: str  # as sent, else when it was received
    recorded_at: str
    occurred_at_sent: bool  # only a sent occurred_at is part of the fact's data (and of `same_fact`)

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "tenant": self.tenant,
            "source": self.source,
            "external_id": self.external_id,
            "type": self.type.value,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "data": self.data_json(),
        }

    def data_json(self) -> dict[str, Any]:
        """The fact's data as its sender sent it (validated, normalised, ref.source filled in)."""
        raise NotImplementedError

    def _data_start(self) -> dict[str, Any]:
        # How every fact's data starts: its id, then occurred_at if the sender gave it.
        if self.occurred_at_sent:
            return {"id": self.external_id, "occurred_at": self.occurred_at}
        return {"id": self.external_id}


def _envelope(fact: dict[str, Any], data: dict[str, Any]) -> tuple[str, str, str, str, str, str, bool]:
    return (
        fact["event_id"],
        fact["tenant"],
        fact["source"],
        fact["external_id"],
        fact["occurred_at"],
        fact["recorded_at"],
        "occurred_at" in data,
    )


@dataclass(slots=True)
class Give(RecordedFact):
    """Someone helped someone else (give.recorded)."""

    type: ClassVar[FactType] = FactType.GIVE
    giver: str
    receiver: str
    kind: str
    value: str  # a decimal as sent, normalised ("2.5")
    context: dict[str, str] | None  # location, activity, subject; as sent
    note: str | None

    @classmethod
    def from_json(cls, fact: dict[str, Any]) -> Give:
        data = fact["data"]
        return cls(
            *_envelope(fact, data),
            data["giver"], data["receiver"], data["kind"], data["value"], data.get("context"), data.get("note"),
        )  # fmt: skip

    def data_json(self) -> dict[str, Any]:
        data = self._data_start()
        data["giver"], data["receiver"], data["kind"], data["value"] = self.giver, self.receiver, self.kind, self.value
        if self.context is not None:
            data["context"] = self.context
        if self.note is not None:
            data["note"] = self.note
        return data


@dataclass(slots=True)
class Introduction(RecordedFact):
    """Someone introduced two people to each other (introduction.made)."""

    type: ClassVar[FactType] = FactType.INTRODUCTION
    introducer: str
    introduced: tuple[str, str]
    context: dict[str, str] | None
    note: str | None

    @classmethod
    def from_json(cls, fact: dict[str, Any]) -> Introduction:
        data = fact["data"]
        first, second = data["introduced"]
        return cls(*_envelope(fact, data), data["introducer"], (first, second), data.get("context"), data.get("note"))

    def data_json(self) -> dict[str, Any]:
        data = self._data_start()
        data["introducer"], data["introduced"] = self.introducer, list(self.introduced)
        if self.context is not None:
            data["context"] = self.context
        if self.note is not None:
            data["note"] = self.note
        return data


@dataclass(slots=True)
class Acknowledgement(RecordedFact):
    """Someone who was helped thanks for a give or an introduction (acknowledgement.recorded)."""

    type: ClassVar[FactType] = FactType.ACKNOWLEDGEMENT
    acknowledger: str
    ref: Ref
    note: str | None
    value: str | None  # informational: what came back; never summed

    @classmethod
    def from_json(cls, fact: dict[str, Any]) -> Acknowledgement:
        data = fact["data"]
        ref = data["ref"]
        return cls(
            *_envelope(fact, data),
            data["acknowledger"],
            Ref(ref["source"], ref["id"]),
            data.get("note"),
            data.get("value"),
        )

    def data_json(self) -> dict[str, Any]:
        data = self._data_start()
        data["acknowledger"], data["ref"] = self.acknowledger, self.ref.to_json()
        if self.note is not None:
            data["note"] = self.note
        if self.value is not None:
            data["value"] = self.value
        return data


@dataclass(slots=True)
class Reversal(RecordedFact):
    """The recording source takes back one of its facts (reversal.recorded)."""

    type: ClassVar[FactType] = FactType.REVERSAL
    ref: Ref
    reason: str

    @classmethod
    def from_json(cls, fact: dict[str, Any]) -> Reversal:
        data = fact["data"]
        ref = data["ref"]
        return cls(*_envelope(fact, data), Ref(ref["source"], ref["id"]), data["reason"])

    def data_json(self) -> dict[str, Any]:
        data = self._data_start()
        data["ref"], data["reason"] = self.ref.to_json(), self.reason
        return data


@dataclass(slots=True)
class Erasure(RecordedFact):
    """The ledger erased a participant (participant.erased): their key and id are destroyed (DESIGN section 7)."""

    type: ClassVar[FactType] = FactType.ERASURE
    token: str

    @classmethod
    def from_json(cls, fact: dict[str, Any]) -> Erasure:
        return cls(*_envelope(fact, fact["data"]), fact["data"]["token"])

    def data_json(self) -> dict[str, Any]:
        return {"token": self.token}


Fact = Give | Introduction | Acknowledgement | Reversal | Erasure
FACT_RECORDS: dict[FactType, type[Fact]] = {
    record.type: record for record in (Give, Introduction, Acknowledgement, Reversal, Erasure)
}


def named_people(fact: Fact) -> tuple[str, ...]:
    """Whom a fact names in its own fields (as stored: tokens), in the order of its fields."""
    if isinstance(fact, Give):
        return (fact.giver, fact.receiver)
    if isinstance(fact, Introduction):
        return (fact.introducer, *fact.introduced)
    if isinstance(fact, Acknowledgement):
        return (fact.acknowledger,)
    return ()


def concerned_tokens(listed: list[str] | None, fact: Fact) -> tuple[str, ...]:
    """The tokens of everyone a stored fact concerns, given its `participants`. Only a fact that concerns someone
    it does not name (an acknowledgement or reversal, through its ref) lists them: for the rest they are whom it
    names."""
    return named_people(fact) if listed is None else tuple(listed)


def fact_from_json(fact: dict[str, Any]) -> Fact:
    """A recorded fact from the JSON the store holds (or the log shows: a `position` is ignored)."""
    return FACT_RECORDS[fact["type"]].from_json(fact)


# --- Its history: the aggregate ----------------------------------------------------------------------
# Stored events name these classes by their first names, in their topics ("ledger.facts:Give.Recorded",
# "ledger.facts:Fact.Reversed") and as the originator topic: `__qualname__` keeps those names (so the classes
# also print by them), and they are registered below, so every store written before or after opens the same.


class FactHistory(Aggregate):
    """A recorded fact (version 1) and what happened to it since (acknowledged, reversed)."""

    __qualname__ = "Fact"

    @event("Recorded")
    def __init__(self, id: UUID, fact: dict[str, Any]) -> None:
        self.fact: Fact = fact_from_json(fact)
        self.listed_participants: list[str] | None = fact.get("participants")  # see `participants`
        self.reversed_by: UUID | None = None
        # Live acknowledgements by acknowledger; only gives and introductions ever fill it.
        self.acknowledgements: dict[str, UUID] = {}

    @property
    def participants(self) -> tuple[str, ...]:
        """The tokens of everyone it concerns: an acknowledgement's or reversal's note is sealed for them too."""
        return concerned_tokens(self.listed_participants, self.fact)

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


class AcknowledgeableHistory(FactHistory):
    """A give or an introduction: something that can pay off, and be thanked for once per person."""

    __qualname__ = "Acknowledgeable"

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
                "the acknowledger already acknowledged this fact",
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


class GiveHistory(AcknowledgeableHistory):
    __qualname__ = "Give"

    def may_acknowledge(self, participant: str) -> bool:
        return participant == self.fact.receiver


class IntroductionHistory(AcknowledgeableHistory):
    __qualname__ = "Introduction"

    def may_acknowledge(self, participant: str) -> bool:
        return participant in self.fact.introduced


class AcknowledgementHistory(FactHistory):
    __qualname__ = "Acknowledgement"

    @property
    def acknowledged_id(self) -> UUID:
        return self.fact.ref.event_id(self.fact.tenant)


class ReversalHistory(FactHistory):
    __qualname__ = "Reversal"

    def reverse(self, reversal_id: UUID) -> None:
        raise RuleViolation("data.ref", "reversal_not_reversible", "a reversal cannot be reversed")


class ErasureHistory(FactHistory):
    __qualname__ = "Erasure"

    def reverse(self, reversal_id: UUID) -> None:
        raise RuleViolation("data.ref", "erasure_not_reversible", "an erasure cannot be reversed")


HISTORIES: dict[FactType, type[FactHistory]] = {
    FactType.GIVE: GiveHistory,
    FactType.INTRODUCTION: IntroductionHistory,
    FactType.ACKNOWLEDGEMENT: AcknowledgementHistory,
    FactType.REVERSAL: ReversalHistory,
    FactType.ERASURE: ErasureHistory,
}
# A stored event's topic names the module and class it was written from: releases up to 457f0f2 kept these
# classes in services/domain.py, and later ones here under their former names. Both resolve to the histories,
# and reads of the log ask for both.
FORMER_MODULE = "services.domain"
for _history in (FactHistory, AcknowledgeableHistory, *HISTORIES.values()):
    for _module in (__name__, FORMER_MODULE):
        register_topic(f"{_module}:{_history.__qualname__}", _history)
# The topic of each type's first event in the store, by which the log is read.
FACT_TOPIC = {fact_type: get_topic(history.Recorded) for fact_type, history in HISTORIES.items()}
STORED_TOPICS = {kind: (topic, topic.replace(__name__, FORMER_MODULE, 1)) for kind, topic in FACT_TOPIC.items()}
FACT_TOPICS = tuple(topic for topics in STORED_TOPICS.values() for topic in topics)


@dataclass(frozen=True)
class ReceivedFact:
    """A validated fact as it arrived, in plain data (it crosses to the writer process)."""

    tenant: str
    source: str
    type: FactType
    data: dict[str, Any]  # the validated webhook data, JSON-ready: decimals as strings, times in UTC
    occurred_at: datetime | None  # as sent; None when the sender left it out
    received_at: datetime
    event_id: UUID

    @classmethod
    def from_webhook(cls, tenant: str, source: str, webhook: Webhook, received_at: datetime) -> ReceivedFact:
        given = webhook.data
        data = given.model_dump(mode="json", exclude_none=True)
        event_id = fact_event_id(tenant, source, given.id)
        return cls(tenant, source, FactType(webhook.type), data, given.occurred_at, received_at, event_id)


def received_fact_json(received: ReceivedFact, recorded_at: str) -> dict[str, Any]:
    """A new fact as the log shows it (ids, plain note). Its rules are checked where it becomes a record
    (`history_of`, `checked_record`).

    `recorded_at` is already text: one transaction records all its facts at one moment."""
    if received.occurred_at is not None and received.occurred_at > received.received_at + FUTURE_MAX:
        raise RuleViolation("data.occurred_at", "not_in_future", "occurred_at is more than 5 minutes ahead")
    data = received.data
    if "ref" in data:
        data = {**data, "ref": {"source": received.source, **data["ref"]}}
    return {
        "event_id": str(received.event_id),
        "tenant": received.tenant,
        "source": received.source,
        "external_id": data["id"],
        "type": received.type.value,
        "occurred_at": utc_text(received.occurred_at or received.received_at),
        "recorded_at": recorded_at,
        "data": data,
    }


def checked_record(fact: dict[str, Any]) -> Fact:
    """A fact's record, after the rules that need nothing but the fact itself."""
    record = fact_from_json(fact)
    _check_fact_rules(record)
    return record


def history_of(stored: dict[str, Any], event_id: UUID) -> FactHistory:
    """A new fact's history, from the fact as it is to be stored (tokens, sealed note), after the rules that
    need nothing but the fact itself: they hold on tokens as on ids, one id having one token. A broken rule
    drops the new aggregate: nothing of it was saved."""
    history = HISTORIES[stored["type"]](id=event_id, fact=stored)  # type: ignore[index]  # StrEnum keys
    _check_fact_rules(history.fact)
    return history


def _check_fact_rules(fact: Fact) -> None:
    if isinstance(fact, Give) and fact.giver == fact.receiver:
        raise RuleViolation("data.receiver", "giver_is_not_receiver", "a participant cannot give to themselves")
    if isinstance(fact, Introduction):
        first, second = fact.introduced
        if first == second:
            raise RuleViolation("data.introduced", "introduced_differ", "the two introduced must differ")
        if fact.introducer in (first, second):
            raise RuleViolation(
                "data.introducer",
                "introducer_not_introduced",
                "the introducer cannot be one of the introduced",
            )
    if isinstance(fact, Reversal) and fact.ref.source != fact.source:
        raise RuleViolation(
            "data.ref.source",
            "reversed_by_recording_source",
            "only the source that recorded a fact may reverse it",
        )


def same_fact(recorded: Fact, candidate: Fact) -> bool:
    """Whether a fact with a known identity is the same fact again (a duplicate) or other content (409).

    The envelope timestamp and webhook-id are not part of a fact; a defaulted occurred_at is not in `data`.
    """
    return recorded.type == candidate.type and _comparable(recorded.data_json()) == _comparable(candidate.data_json())


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    context = data.get("context")
    if not context:
        return data
    return {**data, "context": {name: context_key(text) for name, text in context.items()}}
