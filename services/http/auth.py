"""Bearer API keys: a key belongs to one tenant and has scopes; another tenant's data is simply not there."""

from __future__ import annotations

from aiohttp import web

from contracts import problems
from services.http.keys import COMPONENTS


async def require_key(request: web.Request, tenant: str, scope: str) -> None:
    """401 without a valid key, 404 for another tenant's key (never a hint that the tenant exists), 403 for
    a key of this tenant without the scope."""
    header = request.headers.get("Authorization", "")
    scheme, _, api_key = header.partition(" ")
    # Keys are ASCII; aiohttp hands other header bytes over as surrogates, which cannot even be hashed.
    offered = scheme.lower() == "bearer" and header.isascii()
    registry = request.app[COMPONENTS].registry
    auth = registry.api_key(api_key.strip()) if offered else None
    if auth is None and offered:  # perhaps made a moment ago: refused only once the registry says so
        auth = await registry.api_key_after_refresh(api_key.strip())
    if auth is None:
        raise problems.ProblemException(
            problems.problem(401, "unauthorized", "A valid API key is required", "send Authorization: Bearer <key>"),
            {"WWW-Authenticate": 'Bearer realm="reciprocity"'},
        )
    if auth.tenant != tenant:
        raise problems.ProblemException(problems.problem(404, "not-found", "Not found", f"no tenant {tenant!r}"))
    if not auth.allows(scope):
        raise problems.ProblemException(
            problems.problem(403, "forbidden", "The key lacks a scope", f"this needs a key with scope {scope!r}")
        )
