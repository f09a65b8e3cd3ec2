"""Fixtures of the system tests."""

import pytest

from services.natsserver import EmbeddedNatsServer
from tests.processes import free_port


@pytest.fixture
def nats_server(tmp_path):
    server = EmbeddedNatsServer(tmp_path / "nats-home", free_port())
    server.start()
    yield server
    server.stop()
