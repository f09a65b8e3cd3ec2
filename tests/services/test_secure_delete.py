"""SQLite deletes securely on every connection the service opens to its store and registry (DESIGN section 7):
an erased participant's key row is overwritten, not left readable in a free page of the file."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from ledger.connections import sqlite_connect
from ledger.group_commit import FactWriter
from ledger.store import LEDGER_FILE, open_ledger
from services.bootstrap import open_components, open_registry
from services.settings import Settings
from tests.helpers import give, received


def store_setting(ledger) -> int:
    with ledger.recorder.datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA secure_delete")
        return cursor.fetchone()[0]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_the_store_and_the_registry_connections_delete_securely(settings: Settings):
    ledger = open_ledger(settings.database_url, settings.data_dir)
    try:
        assert store_setting(ledger) == 1
    finally:
        ledger.close()
    registry = open_registry(settings)
    try:
        assert registry.db.query("PRAGMA secure_delete") == [(1,)]
    finally:
        registry.db.close()
    with closing(sqlite_connect(settings.data_dir / "any.sqlite3")) as connection:  # the schema checks' too
        assert connection.execute("PRAGMA secure_delete").fetchone()[0] == 1


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
async def test_a_running_services_store_and_registry_delete_securely(settings: Settings):
    components = await open_components(settings)
    try:
        assert store_setting(components.ledger) == 1
        assert components.registry.registry.db.query("PRAGMA secure_delete") == [(1,)]
    finally:
        await components.close()


def file_bytes(data_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(data_dir.glob(LEDGER_FILE + "*")))


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_an_erased_key_row_leaves_nothing_in_the_store_file(settings: Settings):
    ledger = open_ledger(settings.database_url, settings.data_dir)
    try:
        FactWriter(ledger).commit([received(give("g1", "ann", "bob")), received(give("g2", "cas", "bob"))])
        ((_, token, data_key, sealed_id),) = [
            row for row in ledger.recorder.select_key_rows(None) if ledger.names([row[1]]).name(row[1]) == "ann"
        ]
    finally:
        ledger.close()  # a clean stop checkpoints the WAL into the file
    assert data_key in file_bytes(settings.data_dir) and sealed_id in file_bytes(settings.data_dir)
    ledger = open_ledger(settings.database_url, settings.data_dir)
    try:
        assert FactWriter(ledger).erase("acme", "ann") is not None
    finally:
        ledger.close()
    stored = file_bytes(settings.data_dir)
    assert data_key not in stored and sealed_id not in stored
    assert token.encode() in stored  # the events keep the token: only the key is gone
