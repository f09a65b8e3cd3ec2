"""`reciprocity rebuild [VIEW]`: empty a view and build it again from position 0 under the projector lock.

Rebuilding gives the same rows as following the log did (the property test checks it), so this is how a
changed view definition, or a view one no longer trusts, is brought back. The reciprocity views are built in
one pass (`projections/replay.py`), not page by page; influence is then recomputed for every tenant.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ledger.connections import DEFAULT_LIMITS, ConnectionLimits
from ledger.locks import WorkerLock
from ledger.store import open_ledger
from projections import influence_view, reciprocity
from projections.influence_view import InfluenceView
from projections.kv import forget_written
from projections.nats_bus import BUCKETS
from projections.queries import ReciprocityQueries
from projections.replay import Progress, replay
from projections.runtime import open_view_store

VIEWS = ("reciprocity", "influence")


class RebuildRefused(Exception):
    """Another process holds the projector lock."""


def rebuild(
    database_url: str | None, data_dir: Path, view: str | None, wait_s: float,
    limits: ConnectionLimits = DEFAULT_LIMITS, on_progress: Progress = lambda stage, done, total: None,
) -> dict[str, Any]:  # fmt: skip
    """`on_progress` hears replay's stages (`projections/replay.py`), then ("influence", tenants recomputed,
    tenants) after each tenant."""
    lock = WorkerLock(database_url, data_dir, "projector", limits)
    if not lock.acquire(wait_s):
        raise RebuildRefused(
            f"another process projects (a running `reciprocity serve`?) and held the lock for {wait_s:g} s; "
            "stop it first, or rebuild in a standby deployment"
        )
    ledger = open_ledger(database_url, data_dir, limits)
    store = open_view_store(database_url, data_dir, limits=limits)
    try:
        started = time.perf_counter()
        applied = 0
        if view in (None, "reciprocity"):
            store.reset(reciprocity.VIEW, (*reciprocity.TABLES, *influence_view.TABLES))
            applied = replay(ledger, store, on_progress)
        projected_s = time.perf_counter() - started
        store.reset(influence_view.VIEW, influence_view.TABLES)
        influence = InfluenceView(store, ReciprocityQueries(store))
        tenants = influence.stale_tenants()
        on_progress("influence", 0, len(tenants))
        for done, tenant in enumerate(tenants, 1):
            influence.recompute(tenant)
            on_progress("influence", done, len(tenants))
        forget_written(store, BUCKETS)  # a changed view definition changed values the buckets hold
        return {
            "view": view or "all",
            "facts": applied,
            "events_per_s": round(applied / projected_s) if applied else 0,
            "tenants": len(tenants),
            "position": store.position(reciprocity.VIEW),
            "seconds": round(time.perf_counter() - started, 3),
        }
    finally:
        store.close()
        ledger.close()
        lock.release()
