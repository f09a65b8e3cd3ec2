"""RECIPROCITY_NATS_URL naming several servers: a list for nats-py, the credentials on their own, checked at
start-up, and never shown (errors and log lines hide the password)."""

from __future__ import annotations

from typing import Any

import pytest

from projections import nats_bus
from projections.nats_servers import NatsServers, parse_servers
from services.logs import redact_url
from services.settings import Settings, SettingsError

PASSWORD = "p@ss,w/rd"
ENCODED = "p%40ss%2Cw%2Frd"


def test_a_comma_separated_url_is_a_list_of_servers_without_credentials_and_the_credentials_apart():
    parsed = parse_servers(f"nats://service:{ENCODED}@n1:4222, nats://service:{ENCODED}@n2:4223,n3")
    assert parsed == NatsServers(
        ("nats://n1:4222", "nats://n2:4223", "nats://n3:4222"), user="service", password=PASSWORD
    )
    assert parsed.client_options() == {
        "servers": ["nats://n1:4222", "nats://n2:4223", "nats://n3:4222"],
        "user": "service",
        "password": PASSWORD,
    }


def test_a_user_without_a_password_is_a_token_and_a_url_without_credentials_gives_none():
    assert parse_servers("nats://s3cret@n1,tls://n2:4443").client_options() == {
        "servers": ["nats://n1:4222", "tls://n2:4443"],
        "token": "s3cret",
    }
    assert parse_servers("nats://127.0.0.1:4222").client_options() == {"servers": ["nats://127.0.0.1:4222"]}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"nats://service:{ENCODED}@n1,nats://other:{ENCODED}@n2", "different users or passwords"),
        (f"nats://service:{ENCODED}@n1,,n2", "empty"),
        (f"http://service:{ENCODED}@n1", "server 1: the scheme"),
        (f"nats://n1,nats://service:{ENCODED}@n2:70000", "server 2: the port"),
        (f"nats://n1,ws://service:{ENCODED}@n2", "cannot be mixed"),
    ],
)
def test_a_url_the_client_cannot_use_stops_start_up_naming_the_variable_and_not_the_password(url, problem):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"RECIPROCITY_NATS_URL": url})
    message = str(refused.value)
    assert message.startswith("RECIPROCITY_NATS_URL") and problem in message
    assert ENCODED not in message and PASSWORD not in message


def test_the_replicas_setting_defaults_to_one_and_stays_within_what_jetstream_allows():
    assert Settings.from_env({}).nats_replicas == 1
    assert Settings.from_env({"RECIPROCITY_NATS_REPLICAS": "3"}).nats_replicas == 3
    for refused in ("0", "6"):
        with pytest.raises(SettingsError) as stopped:
            Settings.from_env({"RECIPROCITY_NATS_REPLICAS": refused})
        assert str(stopped.value).startswith("RECIPROCITY_NATS_REPLICAS")


def test_a_log_line_shows_every_server_of_the_list_and_no_password():
    url = f"nats://service:{PASSWORD}@n1:4222,nats://service:{PASSWORD}@n2:4222,nats://service:{ENCODED}@n3:4222"
    assert redact_url(url) == "nats://service:***@n1:4222,nats://service:***@n2:4222,nats://service:***@n3:4222"


async def test_every_connection_hands_nats_py_the_list_and_the_credentials(monkeypatch):
    """nats.connect gets servers as a list (it refuses a comma-separated string) and the user and password as
    options, which nats-py uses for every server, a discovered one too."""
    given: list[dict[str, Any]] = []

    async def fake_connect(**options: Any) -> object:
        given.append(options)
        return object()

    monkeypatch.setattr(nats_bus.nats, "connect", fake_connect)
    await nats_bus.connect(f"nats://service:{ENCODED}@n1,nats://n2", "reciprocity")
    await nats_bus.open_client("n1:4222", "reciprocity-tail", max_reconnect_attempts=-1)
    assert [(call["servers"], call.get("user"), call.get("password"), call["name"]) for call in given] == [
        (["nats://n1:4222", "nats://n2:4222"], "service", PASSWORD, "reciprocity"),
        (["nats://n1:4222"], None, None, "reciprocity-tail"),
    ]
