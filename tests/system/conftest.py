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


FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def report_figures(request: pytest.FixtureRequest) -> list[str]:
    """Lines a test measured (failover times), shown in the run's summary whether or not output is captured."""
    return request.config.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if figures:
        terminalreporter.section("measured")
        for line in figures:
            terminalreporter.write_line(line)
