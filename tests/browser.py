"""A real browser for the web UI's tests and bench/ui.py: Playwright driving the machine's own Chromium.

Playwright's own browser download is never used (the machines running this have no network): the browser is
Debian's `chromium` package, or the one RECIPROCITY_CHROMIUM names. Without it the browser tests skip, saying
why; RECIPROCITY_REQUIRE_BROWSER=1 (set by .ci/run) makes them fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import Sender, envelope
from tests.processes import Server, cli_json

CHROMIUM = os.environ.get("RECIPROCITY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_REQUIRED = os.environ.get("RECIPROCITY_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts" / "ui"
VIEWPORT = {"width": 1280, "height": 800}  # DESIGN section 8: readable at 1280x800


def browser_unavailable() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set RECIPROCITY_CHROMIUM)"
    return None


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM)


@dataclass
class PageWatch:
    """What a page did that a user does not see: console errors, uncaught exceptions and API requests."""

    errors: list[str] = field(default_factory=list)
    api_requests: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "404 <url>": the console's own message names no URL

    def attach(self, page: Any) -> Any:
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("request", lambda request: "/v1/" in request.url and self.api_requests.append(request.url))
        page.on(
            "response", lambda answer: answer.status >= 400 and self.refused.append(f"{answer.status} {answer.url}")
        )
        return page


def new_tab(browser: Any) -> tuple[Any, Any, PageWatch]:
    """A tab in a context of its own (so its own sessionStorage) at 1280x800, and its watch."""
    context = browser.new_context(viewport=VIEWPORT)
    watch = PageWatch()
    return context, watch.attach(context.new_page()), watch


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def community_tenant(server: Server, tenant: str, source: str = "crm") -> Sender:
    """A tenant with a source and a read key, made with the CLI as an operator would, while serve runs."""
    cli_json(server.settings, "tenant", "create", tenant)
    secret = cli_json(server.settings, "source", "add", tenant, source)["secret"]
    key = cli_json(server.settings, "key", "add", tenant, "--scope", "read")["key"]
    return Sender(tenant=tenant, source=source, secret=secret, read_key=key)


def post_batch(server: Server, sender: Sender, facts: list[tuple[str, dict[str, Any]]]) -> int:
    """Facts through the signed batch webhook; the position of the last one."""
    body = json.dumps({"events": [envelope(fact) for fact in facts]}).encode()
    status, answer = server.post(sender.path + "/batch", body, sender.headers(body))
    assert status == 200, answer
    outcomes = answer["results"]
    assert all(outcome["status"] in ("recorded", "duplicate") for outcome in outcomes), outcomes
    return max(outcome["position"] for outcome in outcomes)


def read(server: Server, sender: Sender, path: str) -> Any:
    status, answer = server.get(f"/v1/tenants/{sender.tenant}{path}", sender.read_headers())
    assert status == 200, (path, answer)
    return answer
