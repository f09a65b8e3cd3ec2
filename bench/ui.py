"""UI benchmark: how long until a large graph is drawn and answers a click (DESIGN section 8: a 2,000-edge graph
is interactive within 2 s).

    .venv/bin/python bench/ui.py                                  # 2,000 and 5,000 edges from the API, 10,000 made up
    .venv/bin/python bench/ui.py --edges 2000 --runs 5

A fresh `reciprocity serve` (SQLite in a temporary data dir) gets a community written through the signed batch
webhook: one give per directed pair, skewed so that a few people give much, enough pairs that `/graph?limit=N`
returns N edges for the largest N the API allows (5,000). Then, per size and run, Chromium (Playwright, the
machine's own) opens `/ui/#/t/bench?limit=N` in a new tab at 1280x800 with the read key already in
sessionStorage, and the figures are, in ms from the start of navigation:
- `api`: when the /graph answer had arrived (resource timing);
- `drawn`: the page's `graph-drawn` mark (the layout done and two frames painted);
- `click`: from a click on the most influential node (pointerdown) to the page following it (hashchange);
- `interactive`: drawn + click.
Sizes above the API's limit are drawn from a made-up answer of the same shape (people and scores like the
real one's), handed to the page in place of /graph: what the page could draw, should the API allow it.
The layout the page chooses (cose up to 150 people, concentric by influence above) is the one measured.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts.query_parameters import GRAPH_EDGES_MAX
from services.settings import Settings
from tests.browser import browser_unavailable, community_tenant, launch, new_tab, post_batch, read
from tests.helpers import give
from tests.processes import Server

BATCH_FACTS_MAX = 1000
TENANT = "bench"
# Set in the tab before the page runs: the key (as if typed), and when the click and the navigation happened.
INIT_SCRIPT = """
sessionStorage.setItem("reciprocity.apiKey", %s);
document.addEventListener("pointerdown", () => { window.benchDown = performance.now(); }, true);
window.addEventListener("hashchange", () => { window.benchFollowed = performance.now(); });
"""


def community(edges: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """`edges` gives, each to a different directed pair: a person's chance to give falls with their number."""
    rng = random.Random(seed)
    people = [f"p{n:05d}" for n in range(max(50, edges // 4))]
    start = datetime.now(UTC) - timedelta(days=365)
    pairs: set[tuple[str, str]] = set()
    while len(pairs) < edges:
        giver, receiver = people[int(len(people) * rng.random() ** 2)], rng.choice(people)
        if giver != receiver:
            pairs.add((giver, receiver))
    return [
        give(
            f"g{n}",
            giver,
            receiver,
            value=str(rng.randint(1, 20)),
            occurred_at=(start + timedelta(hours=n)).isoformat(),
        )
        for n, (giver, receiver) in enumerate(sorted(pairs))
    ]


def write_community(server: Server, edges: int, seed: int) -> tuple[Any, int]:
    sender = community_tenant(server, TENANT)
    facts = community(edges, seed)
    position = 0
    for start in range(0, len(facts), BATCH_FACTS_MAX):
        position = post_batch(server, sender, facts[start : start + BATCH_FACTS_MAX])
    read(server, sender, f"/balances?min_position={position}")
    deadline = time.monotonic() + 120
    while read(server, sender, "/influence?limit=1")["position"] < position:
        if time.monotonic() > deadline:
            raise RuntimeError("influence did not catch up in 120 s")
        time.sleep(0.2)
    return sender, position


def made_up_graph(real: dict[str, Any], edges: int, seed: int) -> dict[str, Any]:
    """An answer of /graph's shape with `edges` edges over 4x fewer people, scores drawn like the real ones."""
    rng = random.Random(seed)
    template = real["nodes"][0]
    people = [f"q{n:05d}" for n in range(edges // 4)]
    scores = [node["score"] or 0 for node in real["nodes"]]
    nodes = [{**template, "participant": p, "score": rng.choice(scores), "rank": n + 1} for n, p in enumerate(people)]
    pairs: set[tuple[str, str]] = set()
    while len(pairs) < edges:
        giver, receiver = people[int(len(people) * rng.random() ** 2)], rng.choice(people)
        if giver != receiver:
            pairs.add((giver, receiver))
    edge = real["edges"][0]
    made = [{**edge, "from": a, "to": b, "value": str(rng.randint(1, 20))} for a, b in pairs]
    made.sort(key=lambda e: (-int(e["value"]), e["from"], e["to"]))
    return {"nodes": nodes, "edges": made, "position": real["position"], "truncated": False}


def measure(browser: Any, server: Server, key: str, edges: int, made_up: dict[str, Any] | None) -> dict[str, float]:
    context, tab, watch = new_tab(browser)
    tab.add_init_script(INIT_SCRIPT % json.dumps(key))
    if made_up is not None:
        body = json.dumps(made_up)
        tab.route("**/v1/tenants/*/graph?*", lambda route: route.fulfill(body=body, content_type="application/json"))
    tab.goto(f"{server.url}/ui/#/t/{TENANT}?limit={edges}")
    tab.locator("#graph[data-drawn]").wait_for(timeout=120_000)
    drawn = tab.evaluate("performance.getEntriesByName('graph-drawn')[0].startTime")
    api = tab.evaluate("performance.getEntriesByType('resource').find((r) => r.name.includes('/graph?')).responseEnd")
    assert tab.evaluate("graph.edges().length") == edges
    top = tab.evaluate("graph.nodes().max((n) => n.data('score')).ele.renderedPosition()")
    box = tab.locator("#graph").bounding_box()
    tab.mouse.click(box["x"] + top["x"], box["y"] + top["y"])
    tab.wait_for_function("window.benchFollowed !== undefined", timeout=60_000)
    click = tab.evaluate("window.benchFollowed - window.benchDown")
    context.close()
    # After the click, the page asks for the clicked person, whom a made-up graph's people never are (404s).
    made_up_person = made_up is not None and all(re.search(r"[/=]q\d{5}", url) for url in watch.refused)
    if watch.errors and not made_up_person:
        raise RuntimeError(f"console errors: {watch.errors} {watch.refused}")
    return {"api": api, "drawn": drawn, "click": click, "interactive": drawn + click}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edges", type=int, nargs="+", default=[2000, GRAPH_EDGES_MAX, 10000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args()
    reason = browser_unavailable()
    if reason:
        sys.exit(reason)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as home:
        server = Server(Settings(data_dir=Path(home) / "data"), Path(home) / "serve.log").start()
        try:
            real_edges = min(max(args.edges), GRAPH_EDGES_MAX)
            sender, position = write_community(server, real_edges, args.seed)
            print(f"community: {real_edges} gives, one per pair, log position {position}", flush=True)
            real = read(server, sender, f"/graph?limit={real_edges}")
            with sync_playwright() as playwright:
                browser = launch(playwright)
                rows = []
                for edges in args.edges:
                    made_up = made_up_graph(real, edges, args.seed) if edges > GRAPH_EDGES_MAX else None
                    runs = [measure(browser, server, sender.read_key, edges, made_up) for _ in range(args.runs)]
                    rows.append((edges, made_up is not None, runs))
                    print(f"{edges} edges: done", flush=True)
                browser.close()
        finally:
            server.stop()
    report(rows)


def report(rows: list[tuple[int, bool, list[dict[str, float]]]]) -> None:
    print(f"\n{'edges':>7} {'source':<8} {'api ms':>8} {'drawn ms':>9} {'click ms':>9} {'interactive ms':>15}")
    figures = []
    for edges, made_up, runs in rows:
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        worst = max(r["interactive"] for r in runs)
        source = "made up" if made_up else "API"
        print(
            f"{edges:>7} {source:<8} {median['api']:>8.0f} {median['drawn']:>9.0f} {median['click']:>9.0f} "
            f"{median['interactive']:>8.0f}; {worst:.0f}"
        )
        figures.append({"edges": edges, "source": source, "median": median, "runs": runs})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
