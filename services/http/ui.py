"""The web UI at /ui/ and the API reference at /docs (DESIGN section 8): static files shipped in the package.

The pages read the HTTP API from the browser with the read key the user types in; the server only hands out
files. A page's tenant and participant live in the URL's fragment, which browsers never send, so no request
log names a person because someone looked at them.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from contracts import problems

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
# Our own files change with each release and are small: revalidated on every load. The vendored libraries are
# large and change only when scripts/vendor-ui pins another version, which also changes their ETag.
APP_CACHE = "no-cache"
VENDOR_CACHE = "public, max-age=86400"
# No inline script anywhere, and nothing from another origin: the pages run only the files below.
UI_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Redoc's styled-components write <style> elements, and its search index runs in a worker made from a blob.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; worker-src blob:; font-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


# The types of what the folder holds, stated rather than guessed: mimetypes reads the machine's tables, which
# differ between a laptop and the slim image. A file of another kind is not served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}


def static_file(relative: str, policy: str = UI_POLICY) -> web.FileResponse:
    """A file under UI_DIR, or 404 (never one outside it, whatever the path holds)."""
    path = (UI_DIR / relative).resolve()
    content_type = CONTENT_TYPES.get(path.suffix)
    if not path.is_relative_to(UI_DIR) or not path.is_file() or content_type is None:
        raise problems.ProblemException(problems.problem(404, "not-found", "Not found", f"no file /ui/{relative}"))
    cache = VENDOR_CACHE if path.is_relative_to(UI_DIR / "vendor") else APP_CACHE
    return web.FileResponse(
        path,
        headers={
            "Content-Type": content_type,
            "Cache-Control": cache,
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def redirect(location: str) -> web.Response:
    # Returned, not raised: the middleware renders raised HTTP exceptions as problems.
    return web.Response(status=302, headers={"Location": location})


async def to_ui(request: web.Request) -> web.Response:
    """`/` and `/ui` lead to the UI."""
    return redirect("/ui/")


async def index(request: web.Request) -> web.FileResponse:
    return static_file("index.html")


async def asset(request: web.Request) -> web.FileResponse:
    return static_file(request.match_info["path"])


async def favicon(request: web.Request) -> web.FileResponse:
    return static_file("favicon.svg")


async def docs(request: web.Request) -> web.FileResponse:
    return static_file("docs.html", DOCS_POLICY)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", to_ui)
    app.router.add_get("/ui", to_ui)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/{path:.+}", asset)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/docs", docs)
