"""The views' plain readers on PostgreSQL: one per thread, at most `readers_max`, the pool beyond."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from ledger.connections import APPLICATION_NAME_ENV, ConnectionLimits
from projections.runtime import open_view_store


@pytest.mark.postgres
def test_views_read_on_at_most_readers_max_connections_and_through_the_pool_beyond(
    postgres_url, postgres_schema_url, tmp_path, monkeypatch
):
    """Four threads read at once with one reader allowed: each gets its answer, and the process holds the
    reader and the pool's one connection, not a connection per thread."""
    name = f"reciprocity-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(APPLICATION_NAME_ENV, name)
    views = open_view_store(
        postgres_schema_url, tmp_path, limits=ConnectionLimits(pool_size=1, max_overflow=0, readers_max=1)
    )
    together = threading.Barrier(4)

    def read(n: int) -> list:
        together.wait(5)
        return views.read("SELECT ? + 1", (n,))

    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(read, range(4)))
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            held = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()", (name,)
            )
            count = held.fetchone()[0]
    finally:
        views.close()
    assert [list(map(tuple, answer)) for answer in answers] == [[(n + 1,)] for n in range(4)]
    assert 1 <= count <= 2
