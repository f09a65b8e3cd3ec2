"""`reciprocity demo`: the community goes through the real HTTP path, the books it prints add up and say
what they are, and `--keep` leaves a community to explore."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.bootstrap import open_registry
from services.demo import FOCUS, DemoError, community_steps, run_demo
from services.demo_text import KEEP_LAST_LINE
from services.settings import Settings
from tests.processes import Server, environment, free_port

HEADINGS = ("Balances", "Top influencers", "Upkeep of a selection of 4 of the 11 people")
SECRET_MARKERS = ("whsec_", "rk_")
WIDTH_MAX = 100  # what the issue asks of every printed line
CAPTIONS = (
    "reciprocity: share of what they gave that came back from the same people",
    "score: their share, in points, of the 100 points of influence",
    "score points from: how many of those points each person they gave to or introduced passes on",
    "X should thank Y: Y gave X something over 14 days ago that X has not acknowledged yet",
    "X should reach out to Y: one of the community's strongest ties",
)


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
    assert any(answer["pending_thanks"] for answer in maintenance) and " should thank " in text
    assert any(answer["dormant_ties"] for answer in maintenance) and " should reach out to " in text
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


def test_every_line_fits_in_100_columns_and_the_captions_say_what_each_number_is(first_run):
    """No printed line is wider than 100 columns; the captions name each number's meaning and unit."""
    _, text = first_run
    wide = [line for line in text.splitlines() if len(line) > WIDTH_MAX]
    assert wide == []
    flat = " ".join(text.split())  # captions wrap; their wording is checked across line ends
    assert all(caption in flat for caption in CAPTIONS), [c for c in CAPTIONS if c not in flat]
    assert "To explore it afterwards: reciprocity demo --keep" in text


def test_the_printed_numbers_are_those_the_api_answered(first_run):
    """Every number in the three tables is the one the views answered over HTTP, in the printed order."""
    result, text = first_run
    assert_printed_matches(text, result["balances"], result["influence"], result["maintenance"])


def test_score_points_from_others_are_part_of_the_score(first_run):
    """The caption's unit holds: the points shown as coming from others, plus the share every person gets
    alike (15 of the 100 points spread evenly), add up to at most the score."""
    result, _ = first_run
    even_share = 15 / len(result["balances"])
    for item in result["influence"]:
        from_others = sum(contribution["weight"] for contribution in item["contributions"])
        assert 0 < from_others <= item["score"] - even_share + 1e-5, item["participant"]


def test_keep_on_a_taken_port_says_so_and_writes_nothing(tmp_path):
    """`demo --keep` on a port already taken exits 1 naming the port, before it registers any tenant."""
    settings = Settings(data_dir=tmp_path / "data")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", "demo", "--keep"],
            env=environment(settings, RECIPROCITY_HTTP_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        with pytest.raises(DemoError, match=f"port {port} on 127.0.0.1 is taken"):
            run_demo(settings.with_(http_port=port), out=io.StringIO(), keep=True)
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is taken" in done.stderr
    assert "Traceback" not in done.stderr
    registry = open_registry(settings)
    try:
        assert registry.snapshot().tenants == frozenset()
    finally:
        registry.db.close()


@pytest.mark.parametrize("output", ["text", "json"])
def test_keep_serves_the_community_until_sigterm_and_leaves_it_in_the_data_dir(tmp_path, output):
    """`demo --keep` prints a UI link and a read key that reads the API, matching what it printed; SIGTERM
    stops it cleanly (exit 0), and `serve` on the same data directory answers the same books with that key."""
    settings = Settings(data_dir=tmp_path / "data")
    port = free_port()
    args = ["demo", "--keep", *(["--json"] if output == "json" else [])]
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        env=environment(settings, RECIPROCITY_HTTP_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        printed = read_until(process, f"{KEEP_LAST_LINE}\n" if output == "text" else "\n", timeout_s=60)
        link, key, facts_sent = kept_link_and_key(printed, output)
        url = urllib.parse.urlsplit(link)
        assert (url.scheme, url.netloc, url.path) == ("http", f"127.0.0.1:{port}", "/ui/")
        tenant = re.fullmatch(r"/t/([a-z0-9-]+)", url.fragment)[1]
        kept = KeptService(f"http://127.0.0.1:{port}", tenant, key)
        balances, influence, maintenance = kept.views()
        if output == "text":
            assert max(map(len, printed.splitlines())) <= WIDTH_MAX
            assert f"  reciprocity serve --data-dir {settings.data_dir}\n" in printed
            assert_printed_matches(printed, balances, influence, maintenance)
        else:
            printed_json = json.loads(printed)
            shown = (printed_json["balances"], printed_json["influence"], printed_json["maintenance"])
            assert shown == (balances, influence, maintenance)
            assert printed_json["data_dir"] == str(settings.data_dir.resolve())
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        stderr = process.stderr.read()
        assert "Traceback" not in stderr and "stopped; the community stays" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    server = Server(settings, tmp_path / "serve.log").start()
    try:
        again = KeptService(server.url, tenant, key)
        assert again.views()[0] == balances
        assert len(again.get("events", limit=1000)["events"]) == facts_sent
    finally:
        server.stop()


# --- reading what the demo printed ---------------------------------------------------------------------


def read_until(process: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    """The process's stdout up to and including the first `marker` (the process keeps running)."""
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        text = ""
        while not text.endswith(marker) and (char := process.stdout.read(1)):
            seen.append(char)
            text += char
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout_s):
        pytest.fail(f"no {marker!r} within {timeout_s} s; printed so far: {''.join(seen)}")
    text = "".join(seen)
    assert marker in text, f"the demo ended early ({process.poll()}): {text}{process.stderr.read()}"
    return text


def kept_link_and_key(printed: str, output: str) -> tuple[str, str, int]:
    if output == "json":
        answer = json.loads(printed)
        return answer["ui_url"], answer["read_key"], answer["facts_sent"]
    link = re.search(r"^  open +(\S+)$", printed, re.MULTILINE)
    key = re.search(r"^  read key +(rk_\S+)$", printed, re.MULTILINE)
    sent = re.match(r"(\d+) signed facts", printed)
    assert link and key and sent, printed
    return link[1], key[1], int(sent[1])


class KeptService:
    """A client of a running service that reads with a read key, as a person exploring it would."""

    def __init__(self, url: str, tenant: str, key: str) -> None:
        self.url, self.tenant, self.key = url, tenant, key

    def get(self, route: str, **params: Any) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        request = urllib.request.Request(
            f"{self.url}/v1/tenants/{self.tenant}/{route}?{query}", headers={"Authorization": f"Bearer {self.key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            return json.loads(response.read())

    def views(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """What the demo prints, read from the API again: balances, the top 5 by influence, the upkeep shown."""
        balances = self.get("balances", order="balance", limit=20)["items"]
        influence = self.get("influence", limit=5)["items"]
        maintenance = {person: self.get("maintenance", participant=person) for person in FOCUS}
        return balances, influence, maintenance


def sections(text: str) -> dict[str, list[str]]:
    """The printed tables by the first word of their title, each as its lines below the title's rule."""
    found = {}
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if len(lines) > 2 and set(lines[1]) == {"="}:
            found[lines[0].split()[0].rstrip(":")] = lines[2:]
    return found


def rows_of(lines: list[str]) -> list[str]:
    """A table's lines with a wrapped cell's continuation lines joined to the line they continue."""
    rows: list[str] = []
    for line in lines:
        if line.startswith(" " * 10) and rows:
            rows[-1] += " " + line.strip()
        else:
            rows.append(line)
    return rows


def assert_printed_matches(text: str, balances: list, influence: list, maintenance: dict) -> None:
    tables = sections(text)
    assert_balances_match(rows_of(tables["Balances"]), balances)
    assert_influence_matches(rows_of(tables["Top"]), influence)
    assert_upkeep_matches(rows_of(tables["Upkeep"]), maintenance)


def assert_balances_match(rows: list[str], balances: list[dict[str, Any]]) -> None:
    pattern = re.compile(r"^(\S+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)\s+(\d+)\s+(\d+%|-)\s+(\d+ \([\d.]+\)|-)$")
    printed = [match.groups() for match in map(pattern.match, rows) if match]
    assert [row[0] for row in printed] == [b["participant"] for b in balances]
    for row, answer in zip(printed, balances, strict=True):
        given, received, balance = (Decimal(cell) for cell in row[1:4])
        assert (given, received) == (Decimal(answer["given"]["value"]), Decimal(answer["received"]["value"]))
        assert balance == Decimal(answer["balance"]) and int(row[4]) == answer["counterparts"]
        share = None if row[5] == "-" else Decimal(row[5].rstrip("%")) / 100
        assert share == (None if answer["reciprocity"] is None else round(Decimal(str(answer["reciprocity"])), 2))
        unthanked = answer["unacknowledged"]
        assert row[6] == (f"{unthanked['count']} ({unthanked['value']})" if unthanked["count"] else "-")


def assert_influence_matches(rows: list[str], influence: list[dict[str, Any]]) -> None:
    pattern = re.compile(r"^\s*(\d+)\s+(\S+)\s+([\d.]+)\s+([\d.]+|-)\s+(\d+)\s+(.*)$")
    printed = [match.groups() for match in map(pattern.match, rows) if match]
    assert len(printed) == len(influence) > 0
    for (rank, participant, score, constraint, paid_off, points), answer in zip(printed, influence, strict=True):
        assert (int(rank), participant, int(paid_off)) == (
            answer["rank"],
            answer["participant"],
            answer["introductions_paid_off"],
        )
        assert abs(float(score) - answer["score"]) <= 0.005
        assert abs(float(constraint) - answer["constraint"]) <= 0.0005
        shown = [
            (who, float(weight), int(facts)) for who, weight, facts in re.findall(r"(\S+) ([\d.]+) \((\d+)\)", points)
        ]
        assert [(who, facts) for who, _, facts in shown] == [
            (c["from"], len(c["facts"])) for c in answer["contributions"]
        ]
        assert all(abs(w - c["weight"]) <= 0.005 for (_, w, _), c in zip(shown, answer["contributions"], strict=True))


def assert_upkeep_matches(rows: list[str], maintenance: dict[str, dict[str, Any]]) -> None:
    pattern = re.compile(r"^(\S+) should (thank|reach out to) (\S+)\s+(\d{4}-\d\d-\d\d)\s+(\d+)\s+(\S+)$")
    printed = sorted(match.groups() for match in map(pattern.match, rows) if match)
    expected = []
    for person, answer in maintenance.items():
        as_of = datetime.fromisoformat(answer["as_of"])
        for tie in answer["dormant_ties"]:
            at = datetime.fromisoformat(tie["last_at"])
            expected.append((person, "reach out to", tie["counterpart"], at, as_of, tie["strength"]))
        for thanks in answer["pending_thanks"]:
            at = datetime.fromisoformat(thanks["occurred_at"])
            expected.append((person, "thank", thanks["giver"], at, as_of, thanks["value"]))
    assert len(expected) == len(printed) > 0
    assert printed == sorted(
        (who, what, whom, at.date().isoformat(), str((as_of - at).days), value)
        for who, what, whom, at, as_of, value in expected
    )
