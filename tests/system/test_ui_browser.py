"""The web UI in a real browser against a real `serve` (DESIGN section 8): a community written through signed
webhooks, and each page compared with what the API answers for it. Screenshots go to test-artifacts/ui/."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.settings import Settings
from tests.browser import (
    BROWSER_REQUIRED,
    browser_unavailable,
    community_tenant,
    launch,
    new_tab,
    post_batch,
    read,
    screenshot,
)
from tests.helpers import Sender, acknowledgement, give, introduction
from tests.processes import Server

pytestmark = pytest.mark.slow

START = datetime(2026, 1, 5, 10, tzinfo=UTC)
KEY_STORAGE = "reciprocity.apiKey"


def at(days: float) -> str:
    return (START + timedelta(days=days)).isoformat()


# Ann and Bob traded long ago (a dormant tie), Ann has thanks to give, Dave's introduction of Ann and Erin paid off.
COMMUNITY = [
    give("g1", "ann", "bob", value="5", occurred_at=at(0), context={"subject": "python"}),
    give("g2", "bob", "ann", value="3", occurred_at=at(1)),
    acknowledgement("a1", "bob", "g1", occurred_at=at(2)),
    give("g3", "carol", "ann", value="2", occurred_at=at(10)),
    introduction("i1", "dave", "ann", "erin", occurred_at=at(20)),
    give("g4", "ann", "erin", value="1", occurred_at=at(30)),
    give("g6", "frank", "carol", value="1.5", occurred_at=at(140)),
    give("g5", "erin", "dave", value="4", occurred_at=at(150), context={"subject": "rust"}),
]


def wait_for_views(server: Server, sender: Sender, position: int) -> None:
    """Until the reciprocity and influence views reflect `position` (influence is recomputed in the background)."""
    read(server, sender, f"/balances?min_position={position}")
    deadline = time.monotonic() + 30
    while read(server, sender, "/influence")["position"] < position:
        assert time.monotonic() < deadline, "influence did not catch up in 30 s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def playwright_browser() -> Iterator[Any]:
    reason = browser_unavailable()
    if reason:
        if BROWSER_REQUIRED:
            pytest.fail(f"{reason} (RECIPROCITY_REQUIRE_BROWSER=1 makes this mandatory)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = launch(playwright)
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture(scope="module")
def community(tmp_path_factory: pytest.TempPathFactory, playwright_browser) -> Iterator[tuple[Server, Sender]]:
    home = tmp_path_factory.mktemp("ui")
    server = Server(Settings(data_dir=home / "data", registry_refresh_s=0.05), home / "serve.log").start()
    try:
        sender = community_tenant(server, "acme")
        wait_for_views(server, sender, post_batch(server, sender, COMMUNITY))
        yield server, sender
    finally:
        server.stop()


@pytest.fixture
def page(playwright_browser, community) -> Iterator[tuple[Any, Any]]:
    """A fresh tab (its own sessionStorage) and what it logs; every test ends with no console error."""
    context, tab, watch = new_tab(playwright_browser)
    yield tab, watch
    context.close()
    assert watch.errors == []


def enter_key(tab: Any, sender: Sender) -> None:
    tab.locator("#api-key").fill(sender.read_key)
    tab.keyboard.press("Enter")


def open_page(tab: Any, server: Server, sender: Sender, fragment: str) -> None:
    tab.goto(f"{server.url}/ui/#{fragment}")
    enter_key(tab, sender)


def js_number(value: float) -> str:
    """A JSON number as JavaScript prints it (20.0 is "20")."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def test_the_key_is_asked_for_once_and_no_request_goes_before_it(community, page):
    """A deep link first asks for the key, with no API request; the key is kept in sessionStorage and sent as
    a Bearer key; a reload asks no more."""
    server, sender = community
    tab, watch = page
    tab.goto(f"{server.url}/ui/#/t/acme")
    tab.locator("#api-key").wait_for()
    assert tab.evaluate("document.activeElement.id") == "api-key"
    # The heading, then the explanation: nothing in between (a stray "null" once was).
    assert tab.locator("main").inner_text().split()[:6] == ["Read", "key", "This", "page", "reads", "the"]
    tab.wait_for_timeout(500)  # time for any stray request to go out
    assert watch.api_requests == []
    screenshot(tab, "key-prompt")
    with tab.expect_request(lambda request: "/v1/tenants/acme/" in request.url) as first:
        enter_key(tab, sender)
    assert first.value.headers["authorization"] == f"Bearer {sender.read_key}"
    assert tab.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == sender.read_key
    tab.reload()
    tab.locator(".leaderboard ol").wait_for()
    assert tab.locator("#api-key").count() == 0


def test_a_refused_key_is_asked_for_again(community, playwright_browser):
    """A wrong key brings the prompt back, saying it was refused, and is not kept."""
    server, _ = community
    context, tab, watch = new_tab(playwright_browser)
    tab.goto(f"{server.url}/ui/#/t/acme")
    tab.locator("#api-key").fill("not-a-key")
    tab.keyboard.press("Enter")
    tab.get_by_role("alert").filter(has_text="The key was refused").wait_for()
    assert tab.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None
    # The browser logs the 401 itself; nothing else may be logged.
    assert [error for error in watch.errors if "401" not in error] == []
    context.close()


def test_the_community_page_shows_the_graph_and_leaderboard_the_api_gives(community, page):
    """The graph holds the API's people and ties, sized by influence; the leaderboard lists the API's
    influence items in order, with each score and where it comes from."""
    server, sender = community
    tab, _ = page
    open_page(tab, server, sender, "/t/acme")
    tab.locator(".leaderboard ol").wait_for()
    graph = read(server, sender, "/graph")
    tab.get_by_text(f"{len(graph['nodes'])} people, {len(graph['edges'])} ties").wait_for()
    drawn = tab.evaluate("graph.nodes().map((n) => [n.id(), n.data('size')])")
    assert {node for node, _ in drawn} == {node["participant"] for node in graph["nodes"]}
    assert tab.evaluate("graph.edges().length") == len(graph["edges"])
    sizes = dict(drawn)
    by_score = sorted(graph["nodes"], key=lambda node: node["score"] or 0)
    assert [sizes[node["participant"]] for node in by_score] == sorted(sizes.values())
    influence = read(server, sender, "/influence?limit=20")["items"]
    rows = tab.locator(".leaderboard li")
    assert rows.count() == len(influence)
    for row, item in zip(rows.all(), influence, strict=True):
        text = row.inner_text()
        assert text.startswith(f"{item['participant']} score {js_number(item['score'])}")
        assert [link.inner_text() for link in row.locator(".explanation a").all()] == [
            contribution["from"] for contribution in item["contributions"]
        ]
    screenshot(tab, "community")


def test_filtering_by_context_and_time_shows_the_api_graph_for_them(community, page):
    """Context `subject` = Python narrows the graph to what /graph answers for it; a time window likewise."""
    server, sender = community
    tab, _ = page
    open_page(tab, server, sender, "/t/acme")
    tab.locator(".leaderboard ol").wait_for()
    tab.locator("#context-kind").select_option("subject")
    tab.locator("#context-value").fill("Python")
    tab.locator("#context-value").press("Enter")
    tab.wait_for_url(re.compile(r"#/t/acme\?context\.subject=Python$"))  # the filtered view is a link
    python = read(server, sender, "/graph?context.subject=Python")
    tab.get_by_text(f"{len(python['nodes'])} people, {len(python['edges'])} ties").wait_for()
    assert sorted(tab.evaluate("graph.nodes().map((n) => n.id())")) == sorted(n["participant"] for n in python["nodes"])
    tab.locator("#context-kind").select_option("")
    tab.locator("#since").fill("2026-05-01")
    tab.locator("#since").press("Enter")
    recent = read(server, sender, "/graph?since=2026-05-01T00:00:00Z")
    tab.get_by_text(f"{len(recent['nodes'])} people, {len(recent['edges'])} ties").wait_for()
    assert sorted(tab.evaluate("graph.edges().map((e) => e.data('edge').from + '>' + e.data('edge').to)")) == sorted(
        f"{edge['from']}>{edge['to']}" for edge in recent["edges"]
    )


def test_clicking_a_person_in_the_graph_opens_their_page(community, page):
    """A click on Ann's node leads to /ui/#/t/acme/p/ann."""
    server, sender = community
    tab, _ = page
    open_page(tab, server, sender, "/t/acme")
    tab.locator(".leaderboard ol").wait_for()
    tab.locator("#graph[data-drawn]").wait_for()
    box = tab.locator("#graph").bounding_box()
    spot = tab.evaluate("graph.$id('ann').renderedPosition()")
    tab.mouse.click(box["x"] + spot["x"], box["y"] + spot["y"])
    tab.wait_for_url(re.compile(r"#/t/acme/p/ann$"))
    tab.get_by_role("heading", name="Balance").wait_for()


def field(tab: Any, name: str) -> str:
    return tab.locator(f'dd[data-field="{name}"]').first.inner_text()


def table_rows(section: Any) -> list[list[str]]:
    return [[cell.inner_text() for cell in row.locator("td").all()] for row in section.locator("tbody tr").all()]


def test_the_person_page_shows_what_the_api_says_about_them(community, page):
    """Ann's balance, reciprocity, influence and its sources, ties, thanks to give and ties to revive, each as
    the API answers them; a contribution's fact opens as the log API answers it."""
    server, sender = community
    tab, _ = page
    open_page(tab, server, sender, "/t/acme/p/ann")
    tab.get_by_role("heading", name="Ties to revive").wait_for()
    balance = read(server, sender, "/participants/ann/balance")
    assert field(tab, "given") == f"{balance['given']['value']} in {balance['given']['count']} gives"
    assert field(tab, "received") == f"{balance['received']['value']} in {balance['received']['count']} gives"
    assert field(tab, "balance") == balance["balance"]
    assert field(tab, "reciprocity") == f"{balance['reciprocity'] * 100:.1f}%".replace(".0%", "%")
    influence = read(server, sender, "/participants/ann/influence")
    assert field(tab, "score") == js_number(influence["score"])
    assert field(tab, "rank") == str(influence["rank"])
    sources = table_rows(tab.get_by_role("region", name="Influence", exact=True))
    assert [row[0] for row in sources] == [c["from"] for c in influence["contributions"]]
    facts = tab.get_by_role("region", name="Influence", exact=True).locator("[data-event-id]")
    assert [f.get_attribute("data-event-id") for f in facts.all()] == [
        fact for c in influence["contributions"] for fact in c["facts"]
    ]
    ties = read(server, sender, "/participants/ann/ties?order=strength")["items"]
    tie_rows = table_rows(tab.get_by_role("region", name="Ties", exact=True))

    def flow(side: dict[str, Any]) -> str:
        return f"{side['value']} ({side['count']})"

    assert [tuple(row[:4]) for row in tie_rows] == [
        (t["counterpart"], flow(t["given"]), flow(t["received"]), t["balance"]) for t in ties
    ]
    maintenance = read(server, sender, "/maintenance?participant=ann")
    thanks = table_rows(tab.get_by_role("region", name="Thanks still to give", exact=True))
    assert [(row[0], row[1]) for row in thanks] == [(t["giver"], t["value"]) for t in maintenance["pending_thanks"]]
    assert len(thanks) == 2  # to Bob and to Carol: the community is built so that both are due
    dormant = table_rows(tab.get_by_role("region", name="Ties to revive", exact=True))
    revive = maintenance["dormant_ties"]
    assert [tuple(row[:2]) for row in dormant] == [(t["counterpart"], t["strength"]) for t in revive]
    assert [row[0] for row in dormant] == ["bob"]
    screenshot(tab, "person")
    event_id = facts.first.get_attribute("data-event-id")
    facts.first.click()  # a contribution's fact opens as the log shows it
    tab.wait_for_url(re.compile(rf"#/t/acme/f/{event_id}$"))
    fact = read(server, sender, f"/events/{event_id}")
    tab.get_by_role("heading", name=f"{fact['type']} {fact['external_id']}").wait_for()
    assert field(tab, "event id") == event_id
    assert (field(tab, "source"), field(tab, "position")) == (fact["source"], str(fact["position"]))


def test_the_upkeep_page_shows_who_should_thank_or_reach_out_to_whom(community, page):
    """Every item of /upkeep, under the person who should act, in the API's order."""
    server, sender = community
    tab, _ = page
    open_page(tab, server, sender, "/t/acme/upkeep")
    tab.locator("#upkeep-list").wait_for()
    upkeep = read(server, sender, "/upkeep")["items"]
    assert upkeep, "the community is built to need upkeep"
    shown = []
    for section in tab.locator(".upkeep-person").all():
        person = section.get_attribute("data-participant")
        for line in section.locator("li").all():
            shown.append((person, line.get_attribute("data-kind"), line.locator("a").inner_text(), line.inner_text()))
    by_key = {(i["participant"], i["kind"], i["counterpart"]): i for i in upkeep}
    assert sorted((p, k, c) for p, k, c, _ in shown) == sorted(by_key)
    for person, kind, counterpart, text in shown:
        item = by_key[(person, kind, counterpart)]
        verb = "thank" if kind == "pending_thanks" else "reach out to"
        assert text.startswith(f"{verb} {counterpart}") and item["value"] in text and item["since"][:10] in text
    screenshot(tab, "upkeep")


def test_the_keyboard_reaches_the_controls_and_enter_opens_a_person(community, page):
    """Tab walks through the filters and the search to the leaderboard; Enter on a person opens their page."""
    server, sender = community
    tab, _ = page
    open_page(tab, server, sender, "/t/acme")
    tab.locator(".leaderboard ol").wait_for()
    top = read(server, sender, "/influence?limit=1")["items"][0]["participant"]
    tab.evaluate("document.activeElement.blur()")
    reached = []
    for _ in range(40):
        tab.keyboard.press("Tab")
        focused = tab.evaluate("[document.activeElement.id, document.activeElement.textContent]")
        reached.append(focused[0])
        if tab.evaluate("document.activeElement.closest('.leaderboard li') !== null"):
            break
    assert {"context-kind", "context-value", "since", "until", "search"} <= set(reached)
    assert focused[1] == top
    tab.keyboard.press("Enter")
    tab.wait_for_url(re.compile(rf"#/t/acme/p/{top}$"))
    tab.get_by_role("heading", name="Balance").wait_for()


def test_find_a_person_selects_them_and_enter_opens_their_page(community, page):
    """Typing a name in Find selects the node and offers a focused link; Enter follows it."""
    server, sender = community
    tab, _ = page
    open_page(tab, server, sender, "/t/acme")
    tab.locator(".leaderboard ol").wait_for()
    tab.locator("#search").fill("erin")
    tab.locator("#search").press("Enter")
    tab.get_by_role("link", name="Open erin").wait_for()
    assert tab.evaluate("graph.$(':selected').map((n) => n.id())") == ["erin"]
    tab.keyboard.press("Enter")
    tab.wait_for_url(re.compile(r"#/t/acme/p/erin$"))


def test_docs_render_the_openapi_document(community, page):
    """/docs shows the API reference from /openapi.json, with no request leaving the server."""
    server, _ = community
    tab, _ = page
    outside = []
    here = (server.url, f"blob:{server.url}")  # Redoc's search runs in a worker made from a blob of this page
    tab.on("request", lambda request: not request.url.startswith(here) and outside.append(request.url))
    tab.goto(f"{server.url}/docs")
    tab.get_by_text("/v1/tenants/{tenant}/webhooks/{source}", exact=False).first.wait_for(timeout=20000)
    title = read_openapi_title(server)
    tab.get_by_role("heading", name=title).first.wait_for()
    assert outside == []
    screenshot(tab, "docs", full_page=False)  # the whole reference is 20,000 px tall


def read_openapi_title(server: Server) -> str:
    status, document = server.get("/openapi.json")
    assert status == 200
    return document["info"]["title"]
