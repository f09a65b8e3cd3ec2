"""RECIPROCITY_NATS_CREDS: a NATS .creds file (mounted from a Secret in k8s/) that every NATS connection uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from projections import nats_bus
from services.cli import build_parser
from services.settings import Settings, SettingsError

# The shape of a creds file; the test never talks to a server, so the JWT and seed need not be real.
CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
SUAEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLE
------END USER NKEY SEED------
"""


@pytest.fixture
def creds_file(tmp_path: Path) -> Path:
    path = tmp_path / "nats.creds"
    path.write_text(CREDS)
    return path


def test_the_creds_path_comes_from_its_variable_and_survives_the_child_environment(creds_file):
    """The variable names the file; a child process given as_env() sees the same file."""
    settings = Settings.from_env({"RECIPROCITY_NATS_CREDS": str(creds_file)})
    assert settings.nats_creds == creds_file
    assert Settings.from_env(settings.as_env()) == settings
    assert Settings.from_env({}).nats_creds is None


def test_a_creds_file_that_is_not_there_stops_start_up_naming_the_variable(tmp_path):
    """A Secret that was not mounted is a clear start-up error, not a NATS authorization loop later."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"RECIPROCITY_NATS_CREDS": str(tmp_path / "missing.creds")})
    assert str(refused.value).startswith("RECIPROCITY_NATS_CREDS")


def test_serve_takes_the_creds_as_a_flag(creds_file):
    """`serve --nats-creds PATH` overrides the variable, like every setting."""
    args = vars(build_parser().parse_args(["serve", "--nats-creds", str(creds_file)]))
    flags = {name: value for name, value in args.items() if name in Settings.model_fields}
    assert Settings.from_env({"RECIPROCITY_NATS_CREDS": "/nowhere"}, **flags).nats_creds == creds_file


async def test_the_bus_connection_hands_the_creds_file_to_the_client(creds_file, monkeypatch):
    """nats.connect gets user_credentials explicitly, so a failover to another server authenticates too."""
    given: list[dict[str, Any]] = []

    async def fake_connect(**options: Any) -> object:
        given.append(options)
        return object()

    monkeypatch.setattr(nats_bus.nats, "connect", fake_connect)
    await nats_bus.connect("nats://a:4222", "reciprocity", creds=creds_file)
    await nats_bus.connect("nats://a:4222", "reciprocity")
    assert [call["user_credentials"] for call in given] == [str(creds_file), None]
