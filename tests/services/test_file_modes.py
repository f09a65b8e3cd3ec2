"""The data directory is this user's alone: 0700, and every file in it 0600 (the registry holds the webhook
secrets), whatever the umask; files left readable by an older version are tightened when opened."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from ledger.store import LEDGER_FILE, open_ledger
from services.bootstrap import open_components, open_registry
from services.http.app import create_app
from tests.conftest import make_sender
from tests.helpers import give


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """A usual umask, so the modes checked are the ones the service sets, not what the machine's umask gave."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_under(data_dir: Path) -> dict[str, int]:
    """Every file and directory under the data dir, but the embedded NATS server's (it keeps its own store)."""
    found = {}
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = [name for name in dirs if not (Path(root) == data_dir and name == "nats")]
        for name in dirs + files:
            path = Path(root) / name
            found[str(path.relative_to(data_dir))] = mode(path)
    return found


async def test_a_fresh_data_dir_and_every_file_in_it_are_private(sqlite_settings, aiohttp_client):
    data_dir = sqlite_settings.data_dir
    with umask(0o022):
        sender = make_sender(sqlite_settings, "acme", "crm")
        components = await open_components(sqlite_settings)
        try:
            client = await aiohttp_client(create_app(sqlite_settings, components))
            assert (await sender.post(client, give("g1", "ann", "bob"))).status == 201
            deadline = time.monotonic() + 10
            while components.projections.reciprocity_position() < 1:  # the views have written the fact too
                assert time.monotonic() < deadline, "the fact was not projected in 10 s"
                await asyncio.sleep(0.05)
            found = modes_under(data_dir)
        finally:
            await components.close()
    assert mode(data_dir) == 0o700
    assert {"registry.sqlite3", LEDGER_FILE, "views.sqlite3", "influence.sqlite3", "ledger.sqlite3-wal"} <= set(found)
    assert {name: oct(m) for name, m in found.items() if m != 0o600} == {}


@pytest.mark.parametrize(
    ("file_name", "opened_by"),
    [
        ("registry.sqlite3", lambda settings: open_registry(settings).snapshot()),
        (LEDGER_FILE, lambda settings: open_ledger(None, settings.data_dir).head_position()),
    ],
)
def test_files_left_readable_are_tightened_when_opened(sqlite_settings, file_name, opened_by):
    data_dir = sqlite_settings.data_dir
    with umask(0o022):
        data_dir.mkdir(mode=0o755)
        path = data_dir / file_name
        # As an older version left it: 0644, with its WAL files, which another connection holds open meanwhile.
        with closing(sqlite3.connect(path, isolation_level=None)) as older:
            older.execute("PRAGMA journal_mode=WAL")
            older.execute("CREATE TABLE IF NOT EXISTS older (x)")
            older.execute("INSERT INTO older VALUES (1)")
            side_files = [data_dir / f"{file_name}-wal", data_dir / f"{file_name}-shm"]
            assert [mode(p) for p in (path, *side_files)] == [0o644] * 3
            opened_by(sqlite_settings)
            assert [mode(p) for p in (path, *side_files)] == [0o600] * 3
            assert older.execute("SELECT x FROM older").fetchall() == [(1,)]  # its locks and data are untouched
    assert mode(data_dir) == 0o700
