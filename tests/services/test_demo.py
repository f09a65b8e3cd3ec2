"""`reciprocity demo`: the community goes through the real HTTP path and the books it prints add up."""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.bootstrap import open_registry
from services.demo import community_steps, run_demo
from services.settings import Settings

HEADINGS = ("Balances", "Top influencers", "Upkeep: pending thanks and dormant ties")
SECRET_MARKERS = ("whsec_", "rk_")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo") / "data"


@pytest.fixture(scope="module")
def first_run(data_dir: Path) -> tuple[dict[str, Any], str]:
    out = io.StringIO()
    return run_demo(Settings(data_dir=data_dir), out=out), out.getvalue()


def expected_books() -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """Value given and received per person, computed from the community's data with reversed gives left out."""
    reversed_ids = {s.data["ref"]["id"] for s in community_steps() if s.type == "reversal.recorded"}
    given: dict[str, Decimal] = defaultdict(Decimal)
    received: dict[str, Decimal] = defaultdict(Decimal)
    for step in community_steps():
        if step.type == "give.recorded" and step.data["id"] not in reversed_ids:
            given[step.data["giver"]] += Decimal(step.data["value"])
            received[step.data["receiver"]] += Decimal(step.data["value"])
    return given, received


def test_the_demo_prints_balanced_books_influence_and_upkeep(first_run):
    """The printed and returned books balance, the reversed mistake does not count, and all three tables show."""
    result, text = first_run
    balances = result["balances"]
    given = {b["participant"]: Decimal(b["given"]["value"]) for b in balances}
    received = {b["participant"]: Decimal(b["received"]["value"]) for b in balances}
    assert sum(Decimal(b["balance"]) for b in balances) == 0
    assert sum(given.values()) == sum(received.values())
    total = re.search(r"^total\s+(\S+)\s+(\S+)\s+(\S+)$", text, re.MULTILINE)
    assert total and Decimal(total[1]) == Decimal(total[2]) == sum(given.values()) and Decimal(total[3]) == 0

    expected_given, expected_received = expected_books()
    mistakes = [s for s in community_steps() if s.type == "reversal.recorded"]
    assert len(mistakes) == 1  # exactly one, and its 40 hours appear nowhere in the books
    assert given == {p: expected_given.get(p, Decimal(0)) for p in given}
    assert received == {p: expected_received.get(p, Decimal(0)) for p in received}
    assert set(given) == set(expected_given) | set(expected_received)

    ranks = [item["rank"] for item in result["influence"]]
    assert ranks and ranks == list(range(1, len(ranks) + 1))
    assert all(item["contributions"] for item in result["influence"])

    maintenance = result["maintenance"].values()
    assert any(answer["pending_thanks"] for answer in maintenance) and "pending thanks" in text
    assert any(answer["dormant_ties"] for answer in maintenance) and "dormant tie" in text
    assert all(heading in text for heading in HEADINGS)
    assert not any(marker in text for marker in SECRET_MARKERS)


def test_a_second_run_keeps_the_first_and_prints_one_json_object(first_run, data_dir):
    """A second demo into the same data dir gets a tenant of its own, same books, and prints only JSON."""
    first, _ = first_run
    out = io.StringIO()
    second = run_demo(Settings(data_dir=data_dir), out=out, as_json=True)

    text = out.getvalue()
    assert json.loads(text) == second and text.count("\n") == 1
    assert not any(marker in text for marker in SECRET_MARKERS)
    assert (first["tenant"], second["tenant"]) == ("demo-community", "demo-community-2")
    registry = open_registry(Settings(data_dir=data_dir))
    try:
        assert {"demo-community", "demo-community-2"} <= registry.snapshot().tenants
    finally:
        registry.db.close()

    def books(result: dict[str, Any]) -> list[dict[str, Any]]:
        # Positions and timestamps differ between runs; the sums and counts may not.
        return [{k: v for k, v in b.items() if k not in ("position", "unacknowledged")} for b in result["balances"]]

    assert books(second) == books(first)
