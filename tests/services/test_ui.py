"""The web UI's files and /docs as the HTTP edge serves them (DESIGN section 8); tests/system/test_ui_browser.py
drives them in a browser."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from services.http.app import create_app
from services.http.ui import UI_DIR

ROOT = Path(__file__).parent.parent.parent


async def test_root_and_ui_lead_to_the_ui(client):
    """`/` and `/ui` answer a redirect to `/ui/`, which is the page."""
    for path in ("/", "/ui"):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 302
        assert response.headers["Location"] == "/ui/"
    page = await client.get("/ui/")
    assert page.status == 200
    assert page.content_type == "text/html"
    assert "<title>reciprocity-ledger</title>" in await page.text()


async def test_pages_allow_no_inline_script_and_nothing_from_elsewhere(client):
    """The UI and /docs carry a Content-Security-Policy that runs only this origin's script files, and
    their HTML holds no inline script or handler attribute."""
    for path, source in (("/ui/", "index.html"), ("/docs", "docs.html")):
        response = await client.get(path)
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "'unsafe-eval'" not in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        html = (UI_DIR / source).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), f"inline script in {source}"
        assert not re.search(r"\son[a-z]+=", html), f"inline handler in {source}"
        assert "http://" not in html and "https://" not in html
    ui_policy = (await client.get("/ui/")).headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in ui_policy


async def test_files_come_with_their_types_and_a_favicon_is_served(client):
    """Scripts, styles and icons have their content types; /favicon.ico answers, so no browser logs a 404."""
    expected = {
        "/ui/app.js": "text/javascript",
        "/ui/app.css": "text/css",
        "/ui/vendor/cytoscape/cytoscape.min.js": "text/javascript",
        "/ui/vendor/redoc/redoc.standalone.js": "text/javascript",
        "/favicon.ico": "image/svg+xml",
        "/ui/favicon.svg": "image/svg+xml",
    }
    for path, content_type in expected.items():
        response = await client.get(path)
        assert response.status == 200, path
        assert response.content_type == content_type, path
    assert (await client.get("/ui/vendor/cytoscape/cytoscape.min.js")).headers["Cache-Control"].startswith("public")
    assert (await client.get("/ui/app.js")).headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path", ["/ui/nothing.js", "/ui/../pyproject.toml", "/ui/%2e%2e/http/ui.py", "/ui/vendor"])
async def test_a_path_outside_the_files_is_a_problem_404(client, path):
    """Unknown files, directories and paths that climb out of the UI's folder are 404 problem+json."""
    response = await client.get(path)
    assert response.status == 404
    assert response.content_type == "application/problem+json"


async def test_static_files_are_counted_under_one_route_label(client):
    """Metrics name the UI's files by their route pattern, so they add one label, not one per file."""
    await client.get("/ui/app.js")
    await client.get("/ui/app.css")
    await client.get("/ui/")
    metrics = await (await client.get("/metrics")).text()
    assert 'reciprocity_query_duration_seconds_count{method="GET",route="/ui/{path}",status="200"} 2.0' in metrics
    assert 'route="/ui/app.js"' not in metrics


async def test_the_ui_is_served_by_the_query_part_only(aiohttp_client, settings):
    """An ingest-only process has no UI (it reads the query API), but still its OpenAPI document."""
    app = create_app(settings, parts=frozenset({"ingest"}))
    ingest = await aiohttp_client(app)
    assert (await ingest.get("/ui/")).status == 404
    assert (await ingest.get("/openapi.json")).status == 200


def test_vendored_libraries_are_the_pinned_ones_with_their_licences():
    """Each vendored file is the one scripts/vendor-ui recorded (version, npm integrity, sha256), and each
    library comes with its licence."""
    manifest = json.loads((UI_DIR / "vendor" / "VENDORED.json").read_text())
    script = (ROOT / "scripts" / "vendor-ui").read_text()
    for library, pinned in manifest.items():
        assert f"{library.upper()}={pinned['version']}" in script
        assert pinned["npm_integrity"].startswith("sha512-")
        folder = UI_DIR / "vendor" / library
        assert "LICENSE" in pinned["files"]
        assert {path.name for path in folder.iterdir()} == set(pinned["files"])
        for name, digest in pinned["files"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{library}/{name}"


@pytest.mark.slow
def test_a_built_wheel_ships_the_ui(tmp_path):
    """A non-editable install (the image's) gets every file of the UI: the wheel holds them all."""
    source = tmp_path / "source"  # built from a copy of what the image's build context holds, leaving ours clean
    for name in ("contracts", "ledger", "projections", "services"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    ours = {f"services/ui/{p.relative_to(UI_DIR).as_posix()}" for p in UI_DIR.rglob("*") if p.is_file()}
    assert ours and ours <= shipped, sorted(ours - shipped)
