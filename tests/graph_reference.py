"""A deliberately simple reference of the graph, ties and upkeep (DESIGN section 8), computed straight from the
log in plain Python: nothing shared with `projections/` but the answer formats (decimal text, time text)."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from contracts.types import context_key, decimal_text, utc_text
from ledger.facts import fact_event_id


def _money(value: Decimal) -> str:
    return decimal_text(value) if value else "0"


def _target(fact: dict[str, Any]) -> tuple[str, str]:
    ref = fact["data"]["ref"]
    return fact["tenant"], str(fact_event_id(fact["tenant"], ref["source"], ref["id"]))


class History:
    """One tenant's facts, and which of them still count."""

    def __init__(self, log: list[dict[str, Any]], tenant: str) -> None:
        self.log = [f for f in log if f["tenant"] == tenant]
        facts = {(f["tenant"], f["event_id"]): f for f in self.log}
        reversed_ids = {_target(f) for f in self.log if f["type"] == "reversal.recorded"}
        self.unreversed = [f for f in self.log if (f["tenant"], f["event_id"]) not in reversed_ids]
        self.gives = [f for f in self.unreversed if f["type"] == "give.recorded"]
        live_ids = {(f["tenant"], f["event_id"]) for f in self.unreversed}
        self.acknowledged = {
            _target(f)[1]
            for f in self.unreversed
            if f["type"] == "acknowledgement.recorded"
            and _target(f) in live_ids
            and facts[_target(f)]["type"] == "give.recorded"
        }

    def given(self, giver: str, receiver: str) -> list[dict[str, Any]]:
        return [f for f in self.gives if (f["data"]["giver"], f["data"]["receiver"]) == (giver, receiver)]

    def introducers(self, a: str, b: str) -> list[str]:
        return [
            f["data"]["introducer"]
            for f in self.unreversed
            if f["type"] == "introduction.made" and sorted(f["data"]["introduced"]) == sorted((a, b))
        ]


def reference_graph(
    log: list[dict[str, Any]], tenant: str, context: tuple[str, str] | None, since: str | None, until: str | None,
    limit: int, balances: dict[tuple[str, str, str], dict],
) -> tuple[list[dict], list[dict], bool]:  # fmt: skip
    """(nodes without score and rank, edges, truncated)."""
    history = History(log, tenant)
    edges: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in history.gives:
        shown = f["data"].get("context") or {}
        if context and (context[0] not in shown or context_key(shown[context[0]]) != context_key(context[1])):
            continue
        if (since and f["occurred_at"] < since) or (until and f["occurred_at"] >= until):
            continue
        edges[(f["data"]["giver"], f["data"]["receiver"])].append(f)
    summed = [
        {
            "from": giver,
            "to": receiver,
            "count": len(gives),
            "value": sum((Decimal(f["data"]["value"]) for f in gives), Decimal(0)),
            "acknowledged_count": sum(f["event_id"] in history.acknowledged for f in gives),
            "first_at": min(f["occurred_at"] for f in gives),
            "last_at": max(f["occurred_at"] for f in gives),
        }
        for (giver, receiver), gives in edges.items()
    ]
    summed.sort(key=lambda e: (-e["value"], e["from"], e["to"]))
    kept = [{**e, "value": _money(e["value"])} for e in summed[:limit]]
    people = sorted({p for e in kept for p in (e["from"], e["to"])})
    nodes = [
        {"participant": p, **{k: balances[(tenant, "", p)][k] for k in ("given", "received", "balance")}}
        for p in people
    ]
    return nodes, kept, len(summed) > limit


def reference_ties(log: list[dict[str, Any]], tenant: str, participant: str, order: str) -> list[dict]:
    history = History(log, tenant)
    counterparts = {
        f["data"]["receiver"] if f["data"]["giver"] == participant else f["data"]["giver"]
        for f in history.gives
        if participant in (f["data"]["giver"], f["data"]["receiver"])
    }
    ties = []
    for q in counterparts:
        mine, theirs = history.given(participant, q), history.given(q, participant)
        given = sum((Decimal(f["data"]["value"]) for f in mine), Decimal(0))
        received = sum((Decimal(f["data"]["value"]) for f in theirs), Decimal(0))
        times = [f["occurred_at"] for f in (*mine, *theirs)]
        ties.append(
            {
                "counterpart": q,
                "given": {"count": len(mine), "value": _money(given)},
                "received": {"count": len(theirs), "value": _money(received)},
                "balance": _money(given - received),
                "reciprocity": round(float(1 - abs(given - received) / (given + received)), 6),
                "first_at": min(times),
                "last_at": max(times),
                "introduced_by": history.introducers(participant, q),
                "_strength": given + received,
            }
        )
    ties.sort(key=lambda t: t["counterpart"])
    ties.sort(key=lambda t: t["_strength"] if order == "strength" else t["last_at"], reverse=True)  # stable
    return [{k: v for k, v in t.items() if k != "_strength"} for t in ties]


def reference_upkeep(log: list[dict[str, Any]], tenant: str, as_of: str | None) -> tuple[str | None, list[dict]]:
    """(as_of, items oldest first)."""
    history = History(log, tenant)
    counted = ("give.recorded", "introduction.made", "acknowledgement.recorded")
    as_of = as_of or max((f["occurred_at"] for f in history.unreversed if f["type"] in counted), default=None)
    if as_of is None:
        return None, []
    moment = datetime.fromisoformat(as_of)
    thanks_before, quiet_since = utc_text(moment - timedelta(days=14)), utc_text(moment - timedelta(days=90))
    keyed = [
        (
            (f["occurred_at"], "pending_thanks", f["data"]["receiver"], f["data"]["giver"], f["position"]),
            {
                "kind": "pending_thanks",
                "participant": f["data"]["receiver"],
                "counterpart": f["data"]["giver"],
                "since": f["occurred_at"],
                "value": _money(Decimal(f["data"]["value"])),
                "event_id": f["event_id"],
            },
        )
        for f in history.gives
        if f["event_id"] not in history.acknowledged and f["occurred_at"] < thanks_before
    ]
    pairs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in history.gives:
        pairs[tuple(sorted((f["data"]["giver"], f["data"]["receiver"])))].append(f)  # type: ignore[index]
    strength = {pair: sum((Decimal(f["data"]["value"]) for f in gives), Decimal(0)) for pair, gives in pairs.items()}
    if strength:
        threshold = sorted(strength.values(), reverse=True)[math.ceil(len(strength) / 4) - 1]
        for (a, b), gives in pairs.items():
            last_at = max(f["occurred_at"] for f in gives)
            if strength[(a, b)] >= threshold and last_at < quiet_since:
                item = {"kind": "dormant_tie", "participant": a, "counterpart": b, "since": last_at}
                item |= {"value": _money(strength[(a, b)]), "event_id": None}
                keyed.append(((last_at, "dormant_tie", a, b, 0), item))
    return as_of, [item for _, item in sorted(keyed, key=lambda k: k[0])]
