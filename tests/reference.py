"""A deliberately simple reference of the reciprocity views, computed straight from the log.

It shares nothing with `projections/` but the answer models: whole-history recomputation in plain
Python, so a bug in the incremental page-by-page projection cannot hide in both.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from contracts.types import context_key, decimal_text
from ledger.facts import fact_event_id


def _money(value: Decimal) -> str:
    return decimal_text(value) if value else "0"


def _scopes(context: dict[str, str] | None) -> list[str]:
    scopes = [""]
    for name in ("location", "activity", "subject"):
        if context and name in context:
            scopes.append(f"{name}={context_key(context[name])}")
    return scopes


def _target(fact: dict[str, Any]) -> tuple[str, str]:
    ref = fact["data"]["ref"]
    return fact["tenant"], str(fact_event_id(fact["tenant"], ref["source"], ref["id"]))


def reference_views(log: list[dict[str, Any]]) -> tuple[dict[tuple[str, str, str], dict], dict]:
    """(tenant, scope, participant) -> balance fields, and (tenant, a, b) -> pair fields (scope "")."""
    facts = {(f["tenant"], f["event_id"]): f for f in log}
    reversed_ids = {_target(f) for f in log if f["type"] == "reversal.recorded"}

    def live(key: tuple[str, str]) -> bool:
        return key in facts and key not in reversed_ids

    counting_acks = [
        f
        for f in log
        if f["type"] == "acknowledgement.recorded" and live((f["tenant"], f["event_id"])) and live(_target(f))
    ]
    acknowledged = {_target(f) for f in counting_acks if facts[_target(f)]["type"] == "give.recorded"}
    named: set[tuple[str, str, str]] = set()
    totals: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(lambda: defaultdict(Decimal))
    given: dict[tuple[str, str, str, str], Decimal] = defaultdict(Decimal)  # tenant, scope, from, to
    gives: dict[tuple[str, str, str, str], int] = defaultdict(int)
    times: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    oldest: dict[tuple[str, str, str], list[str]] = defaultdict(list)

    for f in log:
        tenant, data, key = f["tenant"], f["data"], (f["tenant"], f["event_id"])
        if f["type"] == "give.recorded":
            scopes = _scopes(data.get("context"))
            named.update((tenant, s, p) for s in scopes for p in (data["giver"], data["receiver"]))
            if not live(key):
                continue
            value = Decimal(data["value"])
            for s in scopes:
                giver, receiver = totals[(tenant, s, data["giver"])], totals[(tenant, s, data["receiver"])]
                giver["given_count"] += 1
                giver["given_value"] += value
                receiver["received_count"] += 1
                receiver["received_value"] += value
                given[(tenant, s, data["giver"], data["receiver"])] += value
                gives[(tenant, s, data["giver"], data["receiver"])] += 1
                a, b = sorted((data["giver"], data["receiver"]))
                times[(tenant, s, a, b)].append(f["occurred_at"])
                if key not in acknowledged:
                    receiver["unack_count"] += 1
                    receiver["unack_value"] += value
                    oldest[(tenant, s, data["receiver"])].append(f["occurred_at"])
        elif f["type"] == "introduction.made":
            scopes = _scopes(data.get("context"))
            people = (data["introducer"], *data["introduced"])
            named.update((tenant, s, p) for s in scopes for p in people)
            if live(key):
                for s in scopes:
                    totals[(tenant, s, data["introducer"])]["intro_made"] += 1
                    for p in data["introduced"]:
                        totals[(tenant, s, p)]["intro_received"] += 1
        elif f["type"] == "acknowledgement.recorded":
            target = facts[_target(f)]
            named.add((tenant, "", data["acknowledger"]))
            named.update((tenant, s, data["acknowledger"]) for s in _scopes(target["data"].get("context")))

    for f in counting_acks:
        target = facts[_target(f)]
        party = target["data"]["giver"] if target["type"] == "give.recorded" else target["data"]["introducer"]
        for s in _scopes(target["data"].get("context")):
            totals[(f["tenant"], s, f["data"]["acknowledger"])]["ack_given"] += 1
            totals[(f["tenant"], s, party)]["ack_received"] += 1

    balances = {}
    for tenant, scope, p in named:
        t = totals[(tenant, scope, p)]
        mine = {q: v for (tt, ss, g, q), v in given.items() if (tt, ss, g) == (tenant, scope, p) and v}
        theirs = {g: v for (tt, ss, g, q), v in given.items() if (tt, ss, q) == (tenant, scope, p) and v}
        returned = sum((min(v, theirs.get(q, Decimal(0))) for q, v in mine.items()), Decimal(0))
        balances[(tenant, scope, p)] = {
            "given": {"count": int(t["given_count"]), "value": _money(t["given_value"])},
            "received": {"count": int(t["received_count"]), "value": _money(t["received_value"])},
            "balance": _money(t["given_value"] - t["received_value"]),
            "introductions": {"made": int(t["intro_made"]), "received": int(t["intro_received"])},
            "acknowledgements": {"given": int(t["ack_given"]), "received": int(t["ack_received"])},
            "unacknowledged": {
                "count": int(t["unack_count"]),
                "value": _money(t["unack_value"]),
                "oldest_at": min(oldest[(tenant, scope, p)], default=None),
            },
            "counterparts": len(set(mine) | set(theirs)),
            "reciprocity": round(float(returned / t["given_value"]), 6) if t["given_value"] else None,
        }

    pairs = {}
    for tenant, scope, a, b in {(t, s, *sorted((g, q))) for (t, s, g, q) in given} | set(times):
        if scope:
            continue
        ab, ba = given[(tenant, "", a, b)], given[(tenant, "", b, a)]
        span = times[(tenant, "", a, b)]
        pairs[(tenant, a, b)] = {
            "a_to_b": {"count": gives[(tenant, "", a, b)], "value": _money(ab)},
            "b_to_a": {"count": gives[(tenant, "", b, a)], "value": _money(ba)},
            "balance": _money(ab - ba),
            "reciprocity": round(float(1 - abs(ab - ba) / (ab + ba)), 6) if ab + ba else None,
            "first_at": min(span, default=None),
            "last_at": max(span, default=None),
            "introduced_by": [
                f["data"]["introducer"]
                for f in log
                if f["type"] == "introduction.made"
                and f["tenant"] == tenant
                and sorted(f["data"]["introduced"]) == [a, b]
                and live((tenant, f["event_id"]))
            ],
        }
    return balances, pairs
