"""What a fact does to the reciprocity views' participant and pair rows (DESIGN section 4), stated once.

Both ways of building the views read these tables: following the log (`reciprocity.Page`) applies a fact's
change of state as the contributions of its state after minus those of its state before; a rebuild
(`rebuild_columns`) sums every rule column-wise over the fact rows as they ended. `tests/reference.py`
derives the views again on its own, on purpose, so a mistake here cannot hide in both.

A rule says which participant a fact touches (its role), in which scopes, what it adds to which column (one
per fact, or its value) and while which condition of the fact's state holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

MICRO = 1_000_000
OVERALL = ""  # the scope of the overall totals
CONTEXT_DIMENSIONS = ("location", "activity", "subject")
# Influence weights decay with a half-life. 2^(-(as_of - t)/h) = 2^((t - epoch)/h) * 2^(-(as_of - epoch)/h),
# so each pair keeps the sum of value * 2^((t - epoch)/h) and influence applies the as_of factor once.
DECAY_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
HALF_LIFE_DAYS = 180.0


class Kind(Enum):
    GIVE = "give"
    INTRODUCTION = "introduction"
    ACKNOWLEDGEMENT = "acknowledgement"


class Condition(Enum):
    """While which state of a fact a rule counts it."""

    LIVE = "live"  # not reversed
    PENDING = "pending"  # a live give not acknowledged yet
    COUNTED = "counted"  # an acknowledgement: it and the fact it acknowledges are live


class Measure(Enum):
    COUNT = "count"  # one per fact
    VALUE = "value"  # the give's value in micro-units


class Scopes(Enum):
    ALL = "all"  # overall and each context value of the fact (an acknowledgement's: its fact's)
    OVERALL = "overall"  # overall only


@dataclass(frozen=True)
class Role:
    """A participant a fact touches, named by `attribute` on the fact's view row; the thanked party of an
    acknowledgement is on the acknowledged fact's row instead (`ACKNOWLEDGED_PARTY`)."""

    name: str
    kind: Kind
    attribute: str | None
    scopes: Scopes = Scopes.ALL


GIVER = Role("giver", Kind.GIVE, "giver")
RECEIVER = Role("receiver", Kind.GIVE, "receiver")
INTRODUCER = Role("introducer", Kind.INTRODUCTION, "introducer")
INTRODUCED_A = Role("a", Kind.INTRODUCTION, "a")
INTRODUCED_B = Role("b", Kind.INTRODUCTION, "b")
ACKNOWLEDGER = Role("acknowledger", Kind.ACKNOWLEDGEMENT, "acknowledger", Scopes.OVERALL)  # a row, no column
THANKING = Role("thanking", Kind.ACKNOWLEDGEMENT, "acknowledger")  # in the acknowledged fact's scopes
THANKED = Role("thanked", Kind.ACKNOWLEDGEMENT, None)  # in the acknowledged fact's scopes
ACKNOWLEDGED_PARTY = {Kind.GIVE: "giver", Kind.INTRODUCTION: "introducer"}  # whom an acknowledgement thanks
ROLES = (GIVER, RECEIVER, INTRODUCER, INTRODUCED_A, INTRODUCED_B, ACKNOWLEDGER, THANKING, THANKED)


@dataclass(frozen=True)
class ParticipantRule:
    column: str
    role: Role
    measure: Measure
    condition: Condition


PARTICIPANT_RULES = (
    ParticipantRule("given_count", GIVER, Measure.COUNT, Condition.LIVE),
    ParticipantRule("given_micro", GIVER, Measure.VALUE, Condition.LIVE),
    ParticipantRule("received_count", RECEIVER, Measure.COUNT, Condition.LIVE),
    ParticipantRule("received_micro", RECEIVER, Measure.VALUE, Condition.LIVE),
    ParticipantRule("unack_count", RECEIVER, Measure.COUNT, Condition.PENDING),
    ParticipantRule("unack_micro", RECEIVER, Measure.VALUE, Condition.PENDING),
    ParticipantRule("intro_made", INTRODUCER, Measure.COUNT, Condition.LIVE),
    ParticipantRule("intro_received", INTRODUCED_A, Measure.COUNT, Condition.LIVE),
    ParticipantRule("intro_received", INTRODUCED_B, Measure.COUNT, Condition.LIVE),
    ParticipantRule("ack_given", THANKING, Measure.COUNT, Condition.COUNTED),
    ParticipantRule("ack_received", THANKED, Measure.COUNT, Condition.COUNTED),
)


@dataclass(frozen=True)
class PairRule:
    """A live give's pair (its two participants in sorted order, a and b), in each of the give's scopes: the
    `forward` column when a gave, else the `backward` one."""

    forward: str
    backward: str
    measure: Measure
    condition: Condition


PAIR_RULES = (
    PairRule("ab_count", "ba_count", Measure.COUNT, Condition.LIVE),
    PairRule("ab_micro", "ba_micro", Measure.VALUE, Condition.LIVE),
)
# The decayed weights (`decayed_weight`), each way, are kept in the overall scope only.
DECAYED_FORWARD, DECAYED_BACKWARD = "decayed_ab", "decayed_ba"
# An introduction's pair has an overall row (influence reads who introduced it), with no column of its own.


@dataclass(frozen=True)
class Extreme:
    """The earliest or latest time of the facts that meet a condition: of a role's (a participant's column)
    or of a pair's gives (role None). Following the log reads it again when its fact stops counting."""

    column: str
    role: Role | None
    earliest: bool
    condition: Condition


EXTREMES = (
    Extreme("unack_oldest_at", RECEIVER, True, Condition.PENDING),
    Extreme("first_at", None, True, Condition.LIVE),
    Extreme("last_at", None, False, Condition.LIVE),
)


LIVE_ONLY = frozenset({Condition.LIVE})
LIVE_AND_PENDING = frozenset({Condition.LIVE, Condition.PENDING})


def give_conditions(live: int, acknowledged: int) -> frozenset[Condition]:
    """The conditions a give's state meets (an acknowledged give stays acknowledged once reversed)."""
    if not live:
        return frozenset()
    return LIVE_ONLY if acknowledged else LIVE_AND_PENDING


def decayed_weight(decay: Any, value_micro: Any, acknowledged: Any) -> Any:
    """A live give's time-decayed weight: its value times its decay (`decay_exponent` of its time), double
    once acknowledged. On Python numbers when following the log, on numpy arrays in a rebuild: the same
    operations in the same order, so both add the same bits."""
    return decay * value_micro / MICRO * (1 + acknowledged)


def decay_exponent(occurred_at: str) -> float:
    """2^((t - epoch) / half-life) for a fact's time: the as_of-free part of its influence weight."""
    moment = datetime.fromisoformat(occurred_at)
    return 2.0 ** ((moment - DECAY_EPOCH).total_seconds() / 86_400 / HALF_LIFE_DAYS)


def scope_name(dimension: str, key: str) -> str:
    """The scope of one context value (its key, as `context_key` compares it), e.g. `subject=python`."""
    return f"{dimension}={key}"


def fact_scopes(keys: tuple[str | None, ...]) -> tuple[str, ...]:
    """The scopes a give or introduction counts in: overall, then each context value it has, from its
    context keys in CONTEXT_DIMENSIONS order (None where it has none)."""
    scopes = [OVERALL]
    for dimension, key in zip(CONTEXT_DIMENSIONS, keys, strict=True):
        if key is not None:
            scopes.append(scope_name(dimension, key))
    return tuple(scopes)


# Derived columns. Each works on Python ints and on numpy arrays alike.


def balance_micro(given_micro: Any, received_micro: Any) -> Any:
    return given_micro - received_micro


def strength_micro(ab_micro: Any, ba_micro: Any) -> Any:
    return ab_micro + ba_micro


def reciprocated_micro(ab_micro: Any, ba_micro: Any) -> Any:
    """What went both ways between a pair: the smaller way. Each of the two has it as `returned_micro`."""
    return (ab_micro + ba_micro - abs(ab_micro - ba_micro)) // 2


def pair_in_use(ab_count: Any, ba_count: Any) -> Any:
    """A pair with a live give: each of the two counts the other among its `counterparts`."""
    return ab_count + ba_count > 0
