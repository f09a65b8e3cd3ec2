"""The reciprocity rules: every column of the participant and pair rows is defined by them, once, and their
arithmetic gives the same bits on Python numbers (following the log) as on numpy arrays (a rebuild)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from projections.reciprocity import PAIR_COLUMNS, PARTICIPANT_COLUMNS
from projections.reciprocity_rules import (
    DECAYED_BACKWARD,
    DECAYED_FORWARD,
    EXTREMES,
    PAIR_RULES,
    PARTICIPANT_RULES,
    Condition,
    Kind,
    Measure,
    decay_exponent,
    decayed_weight,
    fact_scopes,
    give_conditions,
    reciprocated_micro,
)

SHARED_FROM_PAIRS = {"counterparts", "returned_micro"}  # what each pair in use gives both its participants


def test_every_view_column_is_defined_by_one_rule():
    """Each participant and pair column comes from the rules and nowhere else; only intro_received adds up
    two roles' counts."""
    participant_columns = Counter(rule.column for rule in PARTICIPANT_RULES)
    participant_columns.update(e.column for e in EXTREMES if e.role is not None)
    participant_columns.update(SHARED_FROM_PAIRS)
    assert sorted(participant_columns) == sorted(PARTICIPANT_COLUMNS)
    assert {column for column, n in participant_columns.items() if n > 1} == {"intro_received"}
    pair_columns = [column for rule in PAIR_RULES for column in (rule.forward, rule.backward)]
    pair_columns += [e.column for e in EXTREMES if e.role is None] + [DECAYED_FORWARD, DECAYED_BACKWARD]
    assert sorted(pair_columns) == sorted(PAIR_COLUMNS)


def test_a_rule_counts_a_value_only_of_gives_and_a_condition_of_its_kind():
    """Only gives have a value; pending is a give's state, counted an acknowledgement's."""
    kinds = {Condition.LIVE: set(Kind), Condition.PENDING: {Kind.GIVE}, Condition.COUNTED: {Kind.ACKNOWLEDGEMENT}}
    for rule in PARTICIPANT_RULES:
        assert rule.measure is Measure.COUNT or rule.role.kind is Kind.GIVE, rule
        assert rule.role.kind in kinds[rule.condition], rule


def test_a_give_is_pending_while_live_and_unacknowledged():
    assert give_conditions(1, 0) == {Condition.LIVE, Condition.PENDING}
    assert give_conditions(1, 1) == {Condition.LIVE}
    assert give_conditions(0, 0) == give_conditions(0, 1) == set()


def test_the_decayed_weight_is_the_same_bits_on_numbers_and_arrays_and_doubles_when_acknowledged():
    """An acknowledgement adds the weight once more: after less before is exactly the weight, both ways."""
    times = ["2026-01-01T00:00:00+00:00", "2003-07-09T12:34:56.789000+00:00", "2000-01-01T00:00:00+00:00"]
    values = [1, 2_500_000, 7_250_001]
    decays = np.array([decay_exponent(at) for at in times])
    on_arrays = decayed_weight(decays, np.array(values, np.int64), 0)
    for at, value, weight in zip(times, values, on_arrays, strict=True):
        once = decayed_weight(decay_exponent(at), value, 0)
        twice = decayed_weight(decay_exponent(at), value, 1)
        assert once == weight and twice == 2 * once and twice - once == once and 0.0 - twice == -2 * once


def test_what_went_both_ways_is_the_smaller_way_on_numbers_and_arrays():
    ab, ba = [0, 5, 7, 3_000_000, 10], [0, 9, 7, 1, 0]
    assert [reciprocated_micro(x, y) for x, y in zip(ab, ba, strict=True)] == [0, 5, 7, 1, 0]
    assert reciprocated_micro(np.array(ab), np.array(ba)).tolist() == np.minimum(ab, ba).tolist()


def test_a_fact_counts_overall_then_in_each_context_value_it_has():
    assert fact_scopes((None, None, None)) == ("",)
    assert fact_scopes(("utrecht", None, "python")) == ("", "location=utrecht", "subject=python")
