"""Influence per tenant: weighted PageRank over endorsements, Burt's structural holes over ties.

Pure maths on index arrays (the caller builds an InfluenceGraph from the ordered log). All graph work is
scipy.sparse / numpy, so the work per edge is in compiled code, never a Python loop. Definitions follow networkx.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

DECIMALS = 6
MICRO_STRIDE = 2**31  # above any weight in micro-units (100 * 10^6)
WEDGE_BLOCK = 2_000_000  # neighbour pairs examined at once: about 100 MB of temporary arrays


@dataclass(frozen=True)
class InfluenceGraph:
    participants: list[str]  # sorted, unique; indices below refer to this list
    src: np.ndarray  # int64, endorsement edges j -> i ("j endorses i"): src=j
    dst: np.ndarray  # int64, dst=i
    weight: np.ndarray  # float64 > 0
    tie_a: np.ndarray  # int64, undirected ties (value exchanged between a and b), a != b
    tie_b: np.ndarray  # int64
    tie_weight: np.ndarray  # float64 > 0


@dataclass(frozen=True)
class InfluenceScore:
    participant: str
    score: float  # rounded to 6 dp, sums to ~100 over the tenant
    rank: int  # 1-based, score descending, ties by participant id
    constraint: float | None  # rounded to 6 dp; None without ties
    effective_size: float | None  # rounded to 6 dp; None without ties
    contributions: list[tuple[str, float]]  # largest incoming endorsement flows (giver id, weight)


@dataclass(frozen=True)
class InfluenceTable:
    """The answers as columns indexed like graph.participants: a whole tenant without an object per participant."""

    participants: list[str]
    scores: list[float]
    constraint: list[float | None]
    effective_size: list[float | None]
    ranking: list[int]  # participant indices in rank order
    givers: list[str]  # everyone's top contributions, concatenated in participant order:
    amounts: list[float]  # participant i's are givers[offsets[i]:offsets[i + 1]], amounts alike
    offsets: list[int]


def compute_influence(graph: InfluenceGraph, **options: float) -> list[InfluenceScore]:
    """Every participant's score, rank, structural-hole measures and top contributions, returned in rank order
    (`options` as for influence_table)."""
    table = influence_table(graph, **options)
    pairs = list(zip(table.givers, table.amounts, strict=True))
    names, scores, offsets = table.participants, table.scores, table.offsets
    constraint, effective_size = table.constraint, table.effective_size
    return [
        InfluenceScore(names[i], scores[i], place, constraint[i], effective_size[i], pairs[offsets[i] : offsets[i + 1]])
        for place, i in enumerate(table.ranking, start=1)
    ]


def influence_table(
    graph: InfluenceGraph,
    *,
    damping: float = 0.85,
    tolerance: float = 1e-10,
    iterations_max: int = 1000,
    contributions_max: int = 5,
) -> InfluenceTable:
    """compute_influence's answers as columns (rank k is held by participant ranking[k - 1])."""
    n = len(graph.participants)
    if n == 0:
        return InfluenceTable([], [], [], [], [], [], [], [0])
    src, dst, tie_a, tie_b = (np.asarray(x, dtype=np.int64) for x in (graph.src, graph.dst, graph.tie_a, graph.tie_b))
    weight, tie_weight = (np.asarray(x, dtype=np.float64) for x in (graph.weight, graph.tie_weight))
    _check_edges(n, src, dst, weight)
    _check_edges(n, tie_a, tie_b, tie_weight)
    if np.any(tie_a == tie_b):
        raise ValueError("a tie joins a participant to itself")

    rank_vector, flow = _pagerank(n, src, dst, weight, damping, tolerance, iterations_max)
    scale = 100.0 / rank_vector.sum()
    scores = np.round(rank_vector * scale, DECIMALS)
    givers, amounts, offsets = _top_contributions(flow, rank_vector, damping * scale, contributions_max)
    constraint, effective_size = (np.round(x, DECIMALS) for x in structural_holes(n, tie_a, tie_b, tie_weight))

    # Ties on the rounded score go to the smaller id: participants are sorted, so index order is id order.
    ranking = np.lexsort((np.arange(n), -scores)).tolist()
    # nan (no ties) becomes None; converting through an object array keeps the per-item work in C.
    constraint, effective_size = (np.where(np.isnan(x), None, x).tolist() for x in (constraint, effective_size))
    return InfluenceTable(
        participants=graph.participants,
        scores=scores.tolist(),
        constraint=constraint,
        effective_size=effective_size,
        ranking=ranking,
        givers=list(map(graph.participants.__getitem__, givers.tolist())),
        amounts=amounts.tolist(),
        offsets=offsets.tolist(),
    )


def _check_edges(n: int, ends_a: np.ndarray, ends_b: np.ndarray, weight: np.ndarray) -> None:
    """Refuse malformed input early: a bad index or a zero weight would silently corrupt every score."""
    if not ends_a.shape == ends_b.shape == weight.shape or ends_a.ndim != 1:
        raise ValueError("edge arrays must be one-dimensional and of equal length")
    if ends_a.size and (min(ends_a.min(), ends_b.min()) < 0 or max(ends_a.max(), ends_b.max()) >= n):
        raise ValueError("edge endpoint outside the participant list")
    if not np.all(weight > 0):  # also refuses nan
        raise ValueError("edge weights must be positive")


def _pagerank(
    n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, damping: float, tolerance: float, iterations_max: int
) -> tuple[np.ndarray, sp.csr_array]:
    """Power iteration as nx.pagerank; also returns flow[i, j] = W_ji / out_weight(j), which explains scores."""
    out_weight = np.bincount(src, weights=weight, minlength=n)
    flow = sp.csr_array((weight, (dst, src)), shape=(n, n))
    flow.sum_duplicates()  # parallel endorsements j -> i are one edge carrying their total weight
    flow.data /= out_weight[flow.indices]
    dangling = np.flatnonzero(out_weight == 0)
    rank = np.full(n, 1.0 / n)
    for _ in range(iterations_max):
        spread = (damping * rank[dangling].sum() + 1.0 - damping) / n
        updated = damping * (flow @ rank) + spread
        change = np.abs(updated - rank).sum()
        rank = updated
        if change < tolerance:
            break
    return rank, flow


def _top_contributions(
    flow: sp.csr_array, rank: np.ndarray, factor: float, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per receiver, its `limit` largest endorsement flows (teleport and dangling spread are nobody's).

    Returns giver indices and rounded weights, weight descending, ties by giver; receiver i owns offsets[i]:[i+1].
    """
    per_receiver = np.diff(flow.indptr)
    receiver = np.repeat(np.arange(per_receiver.size), per_receiver)
    amount = np.round(factor * flow.data * rank[flow.indices], DECIMALS)
    # One integer key (receiver, then micro-units descending): one sort, where np.lexsort sorts per key. A flow is at
    # most its receiver's score, so micro-units stay below 10^8 < MICRO_STRIDE. The sort is stable and the
    # canonical CSR lists givers ascending within a row, so equal weights stay in giver-id order.
    micro = np.rint(amount * 10**DECIMALS).astype(np.int64)
    order = np.argsort(receiver * MICRO_STRIDE + (MICRO_STRIDE - 1 - micro), kind="stable")
    kept = order[np.arange(order.size) - flow.indptr[receiver] < limit]
    offsets = np.concatenate(([0], np.cumsum(np.minimum(per_receiver, limit))))
    return flow.indices[kept], amount[kept], offsets


def structural_holes(n: int, tie_a: np.ndarray, tie_b: np.ndarray, tie_weight: np.ndarray) -> tuple[np.ndarray, ...]:
    """Burt's constraint and effective size per participant (nan without ties), as networkx defines them.

    With s_i = sum_k w_ik and p_ij = w_ij / s_i (w symmetric):
      constraint_i = sum_j (p_ij + sum_q p_iq p_qj)^2 = sum_j ((w_ij + sum_q w_iq w_qj / s_q) / s_i)^2
      effective_i  = sum_j (1 - sum_q p_iq w_jq / max_k w_jk) = degree_i - sum_j (sum_q w_iq w_qj) / (s_i max_j)
    so both need only two sums over the common neighbours q of each tie. Effective size follows networkx's
    documented per-node definition; its vectorised path (nodes=None) divides w_jq by q's max (networkx #8906).
    """
    pairs = sp.csr_array((tie_weight, (np.minimum(tie_a, tie_b), np.maximum(tie_a, tie_b))), shape=(n, n))
    pairs.sum_duplicates()  # repeated exchanges between the same two people are one tie
    degree = np.diff(pairs.indptr) + np.bincount(pairs.indices, minlength=n)
    # Renumber people by degree (ties by index) and point each tie to its higher-degree end; see below.
    node_at = np.lexsort((np.arange(n), degree))
    position = np.empty(n, np.int64)
    position[node_at] = np.arange(n)
    ends = position[np.repeat(np.arange(n), np.diff(pairs.indptr))], position[pairs.indices]
    ties = sp.csr_array((pairs.data, (np.minimum(*ends), np.maximum(*ends))), shape=(n, n))
    ties.sort_indices()
    a, b, w = np.repeat(np.arange(n), np.diff(ties.indptr)), ties.indices.astype(np.int64), ties.data
    degree, strength, strongest = degree[node_at], np.bincount(a, w, n) + np.bincount(b, w, n), np.zeros(n)
    np.maximum.at(strongest, np.concatenate((a, b)), np.concatenate((w, w)))
    shared, shared_scaled = _common_neighbour_sums(ties, a, strength)
    local = w + shared_scaled
    constraint = np.bincount(a, (local / strength[a]) ** 2, n) + np.bincount(b, (local / strength[b]) ** 2, n)
    redundancy = np.bincount(a, shared / (strength[a] * strongest[b]), n)
    redundancy += np.bincount(b, shared / (strength[b] * strongest[a]), n)
    constraint, effective_size = (
        np.where(degree > 0, constraint, np.nan),
        np.where(degree > 0, degree - redundancy, np.nan),
    )
    return constraint[position], effective_size[position]


def _common_neighbour_sums(ties: sp.csr_array, row: np.ndarray, strength: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per tie (a, b): sum_q w_aq w_qb and sum_q w_aq w_qb / s_q over common neighbours q, i.e. W @ W at ties only.

    Materialising W @ W needs sum(degree^2) entries, far more than there are ties to ask about. Instead each
    triangle is found once: ties point from the lower- to the higher-degree end, each node pairs its few
    "later" neighbours (wedge u-v, u-x) and looks up the closing tie v-x. Wedges go in blocks of WEDGE_BLOCK,
    so a dense community (a clique of k people has k^3/6 wedges) costs time but memory stays bounded.
    """
    tie_of = sp.csr_array((np.arange(1.0, row.size + 1.0), ties.indices, ties.indptr), shape=ties.shape)  # id + 1
    later = ties.indptr[row + 1] - np.arange(row.size) - 1  # entries after this one in its row
    wedges_until = np.cumsum(later)
    total = int(wedges_until[-1]) if later.size else 0
    cuts = np.searchsorted(wedges_until, np.arange(WEDGE_BLOCK, total, WEDGE_BLOCK), side="right")
    bounds = np.unique(np.concatenate(([0], cuts, [later.size]))).tolist()
    w, col = ties.data, ties.indices
    shared, shared_scaled = np.zeros(w.size), np.zeros(w.size)
    for start, stop in itertools.pairwise(bounds):
        count = later[start:stop]
        uv = np.repeat(np.arange(start, stop), count)
        if uv.size == 0:
            continue
        ux = uv + 1 + np.arange(uv.size) - np.repeat(np.cumsum(count) - count, count)
        vx = tie_of[col[uv], col[ux]].astype(np.int64) - 1  # -1 where the wedge is open
        uv, ux, vx = uv[vx >= 0], ux[vx >= 0], vx[vx >= 0]
        # Each tie of a triangle gains the path through the third node: the product of the other two ties' weights.
        paths = np.concatenate((w[ux] * w[vx], w[uv] * w[vx], w[uv] * w[ux]))
        third = np.concatenate((col[ux], col[uv], row[uv]))
        shared_ties = np.concatenate((uv, ux, vx))
        shared += np.bincount(shared_ties, paths, w.size)
        shared_scaled += np.bincount(shared_ties, paths / strength[third], w.size)
    return shared, shared_scaled
