"""Influence maths (projections.influence) against networkx and hand-computed values, on graphs built in memory."""

from __future__ import annotations

import math
from collections.abc import Sequence

import networkx as nx
import numpy as np
import pytest

from projections import influence
from projections.influence import InfluenceGraph, compute_influence

DAMPING = 0.85
Triple = tuple[str, str, float]


def influence_graph(
    participants: list[str], endorsements: Sequence[Triple] = (), ties: Sequence[Triple] = ()
) -> InfluenceGraph:
    """An InfluenceGraph from (giver, receiver, weight) endorsements and (a, b, weight) ties, by participant id."""
    ids = sorted(set(participants))
    index = {participant: i for i, participant in enumerate(ids)}

    def columns(triples):
        first = np.array([index[x] for x, _, _ in triples], dtype=np.int64)
        second = np.array([index[y] for _, y, _ in triples], dtype=np.int64)
        return first, second, np.array([w for _, _, w in triples], dtype=np.float64)

    src, dst, weight = columns(endorsements)
    tie_a, tie_b, tie_weight = columns(ties)
    return InfluenceGraph(ids, src, dst, weight, tie_a, tie_b, tie_weight)


def networkx_pagerank(participants: list[str], endorsements: list[Triple]) -> dict[str, float]:
    """nx.pagerank scaled to 100; a MultiDiGraph so that parallel endorsements are summed by networkx itself."""
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(participants)
    graph.add_weighted_edges_from(endorsements)
    return {p: 100 * v for p, v in nx.pagerank(graph, alpha=DAMPING, weight="weight", tol=1e-12).items()}


def tie_graph(participants: list[str], ties: list[Triple]) -> nx.Graph:
    """The undirected nx.Graph of ties, repeated pairs (in either order) summed into one weight."""
    graph = nx.Graph()
    graph.add_nodes_from(participants)
    for a, b, w in ties:
        graph.add_edge(a, b, weight=graph.get_edge_data(a, b, {"weight": 0.0})["weight"] + w)
    return graph


def random_endorsements(rng: np.random.Generator, people: list[str], count: int) -> list[Triple]:
    """Random weighted endorsements: repeats make parallel edges, and some people endorse nobody (dangling)."""
    givers = people[: int(len(people) * 0.9)]
    return [
        (givers[rng.integers(len(givers))], people[rng.integers(len(people))], float(rng.uniform(0.1, 5)))
        for _ in range(count)
    ]


def random_ties(rng: np.random.Generator, people: list[str], count: int) -> list[Triple]:
    """Random weighted ties among a small pool (so triangles and repeats are common), without self ties."""
    pool = people[: max(3, len(people) // 2)]
    pairs = [(pool[rng.integers(len(pool))], pool[rng.integers(len(pool))]) for _ in range(count)]
    return [(a, b, float(rng.uniform(0.1, 5))) for a, b in pairs if a != b]


SMALL_GRAPHS = {
    "cycle with a chord": (
        ["a", "b", "c", "d"],
        [("a", "b", 1), ("b", "c", 2), ("c", "d", 1), ("d", "a", 3), ("a", "c", 1)],
    ),
    "dangling node": (["a", "b", "c", "z"], [("a", "b", 1), ("b", "a", 1), ("a", "z", 4), ("c", "z", 1)]),
    "parallel edges": (["a", "b", "c"], [("a", "b", 1), ("a", "b", 2.5), ("a", "c", 1), ("b", "c", 1), ("c", "a", 1)]),
    "self endorsement and an isolate": (
        ["a", "b", "c", "q"],
        [("a", "a", 2), ("a", "b", 1), ("b", "c", 1), ("c", "a", 1)],
    ),
}


@pytest.mark.parametrize("name", SMALL_GRAPHS)
def test_scores_equal_networkx_pagerank_on_small_graphs(name):
    """Weighted PageRank (teleport, dangling spread, parallel edges summed) equals nx.pagerank scaled to 100."""
    participants, endorsements = SMALL_GRAPHS[name]
    expected = networkx_pagerank(participants, endorsements)
    for score in compute_influence(influence_graph(participants, endorsements)):
        assert score.score == pytest.approx(expected[score.participant], abs=1e-6)


def test_scores_equal_networkx_pagerank_on_a_random_graph_of_2000():
    """On 2,000 people with 12,000 random endorsements every score is within 1e-6 of networkx."""
    rng = np.random.default_rng(2000)
    people = [f"person-{i:05d}" for i in rng.permutation(2000)]
    endorsements = random_endorsements(rng, people, 12_000)
    expected = networkx_pagerank(people, endorsements)
    scores = compute_influence(influence_graph(people, endorsements))
    assert len(scores) == 2000
    assert max(abs(s.score - expected[s.participant]) for s in scores) < 1e-6


def test_scores_sum_to_100_and_ranks_run_1_to_n_ties_broken_by_id():
    """Scores sum to 100 within rounding; ranks are 1..n by score descending, equal scores in id order."""
    participants = ["d", "c", "b", "a", "e"]  # c and d are symmetric, so their scores tie; a and e are isolated
    endorsements = [("c", "b", 1), ("d", "b", 1), ("b", "c", 1), ("b", "d", 1)]
    scores = compute_influence(influence_graph(participants, endorsements))
    assert abs(sum(s.score for s in scores) - 100) <= len(scores) * 5e-7
    assert [s.rank for s in scores] == [1, 2, 3, 4, 5]
    assert [s.participant for s in scores] == ["b", "c", "d", "a", "e"]
    assert scores[1].score == scores[2].score and scores[3].score == scores[4].score


def test_no_participants_gives_nothing_and_no_edges_gives_everyone_an_equal_share():
    """An empty graph gives []; participants without edges each get 100/n, no ties measures, no contributions."""
    assert compute_influence(influence_graph([])) == []
    scores = compute_influence(influence_graph(["c", "a", "b"]))
    assert [(s.participant, s.score, s.rank) for s in scores] == [
        ("a", 33.333333, 1),
        ("b", 33.333333, 2),
        ("c", 33.333333, 3),
    ]
    assert all(s.constraint is None and s.effective_size is None and s.contributions == [] for s in scores)


def test_constraint_and_effective_size_equal_networkx_and_isolates_get_none():
    """Burt's measures on summed, unordered, repeated ties equal networkx's to 6 dp; people without ties get None."""
    participants = ["a", "b", "c", "d", "e", "f", "loner"]
    ties = [("a", "b", 2), ("b", "a", 1), ("a", "c", 1), ("c", "b", 4), ("c", "d", 0.5), ("d", "e", 3)]
    ties += [("e", "c", 1), ("a", "d", 2), ("f", "a", 1.5), ("b", "c", 0.5)]
    graph = tie_graph(participants, ties)
    constraint = nx.constraint(graph, weight="weight")
    # Per-node path: networkx's vectorised path (nodes=None) normalises by the wrong node's maximum (networkx #8906).
    effective_size = nx.effective_size(graph, nodes=list(graph), weight="weight")
    scores = {s.participant: s for s in compute_influence(influence_graph(participants, [], ties))}
    for participant in participants[:-1]:
        assert scores[participant].constraint == round(constraint[participant], 6)
        assert scores[participant].effective_size == round(effective_size[participant], 6)
    assert math.isnan(constraint["loner"]) and scores["loner"].constraint is None
    assert math.isnan(effective_size["loner"]) and scores["loner"].effective_size is None


def test_unrounded_structural_holes_equal_networkx_within_1e9_on_a_random_graph():
    """Before rounding, constraint equals nx.constraint and effective size nx.effective_size within 1e-9."""
    rng = np.random.default_rng(7)
    people = [f"p{i:03d}" for i in range(160)]
    ties = random_ties(rng, people, 900)
    graph = tie_graph(people, ties)
    built = influence_graph(people, [], ties)
    constraint, effective_size = influence.structural_holes(len(people), built.tie_a, built.tie_b, built.tie_weight)
    expected_constraint = nx.constraint(graph, weight="weight")
    expected_effective_size = nx.effective_size(graph, nodes=list(graph), weight="weight")
    assert sum(nx.triangles(graph).values()) > 1000  # the two-step sums are really exercised
    for i, participant in enumerate(built.participants):
        assert constraint[i] == pytest.approx(expected_constraint[participant], abs=1e-9, nan_ok=True)
        assert effective_size[i] == pytest.approx(expected_effective_size[participant], abs=1e-9, nan_ok=True)


def test_effective_size_equals_networkx_default_path_on_equal_weights():
    """With equal weights networkx's two effective-size paths agree, and so does ours with its default call."""
    rng = np.random.default_rng(11)
    people = [f"p{i:03d}" for i in range(60)]
    pairs = {tuple(sorted((a, b))) for a, b, _ in random_ties(rng, people, 200)}  # once each: all weights 1
    ties = [(a, b, 1.0) for a, b in sorted(pairs)]
    expected = nx.effective_size(nx.Graph([(a, b) for a, b, _ in ties]), weight="weight")
    scores = compute_influence(influence_graph(people, [], ties))
    assert {s.participant for s in scores if s.effective_size is None} == set(people) - set(expected)
    for score in scores:
        if score.effective_size is not None:
            assert score.effective_size == pytest.approx(expected[score.participant], abs=1e-6)


def test_triangle_search_in_small_blocks_gives_the_same_measures(monkeypatch):
    """Splitting the wedge search into blocks (bounded memory) changes nothing but summation order."""
    rng = np.random.default_rng(3)
    people = [f"p{i:03d}" for i in range(200)]
    built = influence_graph(people, [], random_ties(rng, people, 1500))
    ties = (len(people), built.tie_a, built.tie_b, built.tie_weight)
    whole = influence.structural_holes(*ties)
    monkeypatch.setattr(influence, "WEDGE_BLOCK", 7)
    for unblocked, blocked in zip(whole, influence.structural_holes(*ties), strict=True):
        np.testing.assert_allclose(blocked, unblocked, rtol=0, atol=1e-12)


def test_contributions_of_a_mutual_pair_are_the_damped_scores():
    """Two people endorsing only each other: each has 50, of which 0.85 * 50 = 42.5 flows from the other."""
    scores = compute_influence(influence_graph(["a", "b"], [("a", "b", 3), ("b", "a", 1)]))
    assert [(s.participant, s.score, s.contributions) for s in scores] == [
        ("a", 50.0, [("b", 42.5)]),
        ("b", 50.0, [("a", 42.5)]),
    ]


def test_contributions_are_the_top_five_flows_by_weight_then_giver_id():
    """Seven equal givers and one boosted: the boosted comes first, then equal flows in giver-id order, five in all."""
    givers = [f"g{i}" for i in range(1, 8)]
    endorsements = [(g, "hub", 1) for g in givers] + [("x", "g6", 1)]
    scores = {s.participant: s for s in compute_influence(influence_graph([*givers, "hub", "x"], endorsements))}
    contributions = scores["hub"].contributions
    assert [giver for giver, _ in contributions] == ["g6", "g1", "g2", "g3", "g4"]
    assert contributions[0][1] > contributions[1][1] == contributions[2][1] == contributions[4][1]
    assert contributions[0][1] == pytest.approx(DAMPING * scores["g6"].score, abs=1e-6)


def test_flows_into_a_node_are_its_score_less_teleport_and_dangling_shares():
    """Before truncation the flows into a node sum to its score minus the teleport and dangling-spread shares."""
    participants = ["a", "b", "c", "d", "sink"]
    endorsements = [("a", "c", 2), ("b", "c", 1), ("d", "c", 1), ("a", "sink", 1), ("c", "a", 1), ("c", "d", 3)]
    scores = {
        s.participant: s for s in compute_influence(influence_graph(participants, endorsements), contributions_max=10)
    }
    n = len(participants)
    spread = (100 * (1 - DAMPING) + DAMPING * scores["sink"].score) / n  # teleport plus the dangling sink's spread
    for score in scores.values():
        assert sum(weight for _, weight in score.contributions) == pytest.approx(score.score - spread, abs=1e-5)
    assert dict(scores["c"].contributions)["a"] == pytest.approx(DAMPING * scores["a"].score * 2 / 3, abs=1e-6)


def test_two_calls_give_identical_results():
    """The same input gives equal output twice, contributions and structural-hole measures included."""
    rng = np.random.default_rng(5)
    people = [f"person-{i:04d}" for i in range(800)]
    graph = influence_graph(people, random_endorsements(rng, people, 5000), random_ties(rng, people, 4000))
    first, second = compute_influence(graph), compute_influence(graph)
    assert first == second
    assert repr(first) == repr(second)


@pytest.mark.parametrize(
    ("endorsements", "ties"),
    [([("a", "b", 0.0)], []), ([("a", "b", -1.0)], []), ([], [("a", "a", 1.0)]), ([], [("a", "b", math.nan)])],
)
def test_malformed_edges_are_refused(endorsements, ties):
    """Zero, negative or nan weights and self ties raise ValueError instead of corrupting every score."""
    with pytest.raises(ValueError):
        compute_influence(influence_graph(["a", "b"], endorsements, ties))
