"""Settings: every variable and serve flag is parsed and checked one way, and a bad one names itself."""

from __future__ import annotations

import pytest

from services.cli import build_parser
from services.settings import Settings, SettingsError, env_name


def test_variables_are_parsed_by_type():
    settings = Settings.from_env(
        {
            "RECIPROCITY_HTTP_WORKERS": "2",
            "RECIPROCITY_BACKGROUND_PROCESS": "off",
            "RECIPROCITY_COMMIT_WAIT_MS": "1.5",
            "RECIPROCITY_DATA_DIR": "/tmp/x",
            "RECIPROCITY_LOG_LEVEL": "WARNING",
            "RECIPROCITY_NATS_URL": "",  # empty is unset
        }
    )
    assert (settings.http_workers, settings.background_process, settings.commit_wait_ms) == (2, False, 1.5)
    assert (str(settings.data_dir), settings.log_level, settings.nats_url) == ("/tmp/x", "warning", None)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECIPROCITY_HTTP_WORKERS", "two"),
        ("RECIPROCITY_HTTP_WORKERS", "0"),
        ("RECIPROCITY_HTTP_PORT", "70000"),
        ("RECIPROCITY_ROLE", "boss"),
        ("RECIPROCITY_LOG_FORMAT", "xml"),
        ("RECIPROCITY_GROUP_COMMIT", "maybe"),
        ("RECIPROCITY_COMMIT_BATCH_FACTS_MAX", "999"),
        ("RECIPROCITY_DATABASE_URL", "mysql://root:hunter2@db/x"),
        ("RECIPROCITY_PG_POOL_SIZE", "0"),
        ("RECIPROCITY_PG_MAX_OVERFLOW", "-1"),
        ("RECIPROCITY_PG_CONNECT_TIMEOUT_S", "0"),
        ("RECIPROCITY_LOCK_TIMEOUT_S", "0.5"),
    ],
)
def test_an_invalid_value_names_its_variable(variable, value):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})
    assert str(refused.value).startswith(variable)
    assert "hunter2" not in str(refused.value)  # a URL's password is never repeated


def test_a_role_of_its_own_needs_the_shared_store_and_bus():
    with pytest.raises(SettingsError, match="RECIPROCITY_DATABASE_URL"):
        Settings.from_env({"RECIPROCITY_ROLE": "query"})


def test_the_child_environment_gives_the_same_settings_back():
    settings = Settings(http_workers=3, background_process=False, nats_url="nats://127.0.0.1:4333")
    assert Settings.from_env(settings.as_env()) == settings


def test_every_setting_is_a_serve_flag_and_a_flag_overrides_its_variable(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    serve_help = capsys.readouterr().out
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in serve_help and env_name(name) in serve_help
    args = vars(build_parser().parse_args(["serve", "--http-workers", "2", "--group-commit", "false"]))
    flags = {name: value for name, value in args.items() if name in Settings.model_fields}
    settings = Settings.from_env({"RECIPROCITY_HTTP_WORKERS": "4"}, **flags)
    assert (settings.http_workers, settings.group_commit) == (2, False)


def test_each_role_takes_a_small_share_of_postgresql_unless_its_variables_say_otherwise():
    """README, "Connections": pool size, overflow and readers by role; a RECIPROCITY_PG_* variable wins."""
    shared = {"RECIPROCITY_DATABASE_URL": "postgresql://reciprocity@db/ledger", "RECIPROCITY_NATS_URL": "nats://n:4222"}

    def limits(role: str, **variables: str) -> tuple[int, int, int]:
        found = Settings.from_env({**shared, "RECIPROCITY_ROLE": role, **variables}).connection_limits()
        return found.pool_size, found.max_overflow, found.readers_max

    assert [limits(role) for role in ("ingest", "query", "projector", "relay")] == [
        (1, 1, 1), (1, 2, 2), (1, 2, 3), (1, 1, 1)
    ]  # fmt: skip
    assert limits("all") == (4, 8, 16)
    overridden = {
        "RECIPROCITY_PG_POOL_SIZE": "2",
        "RECIPROCITY_PG_MAX_OVERFLOW": "0",
        "RECIPROCITY_PG_READERS_MAX": "0",
    }
    assert limits("relay", **overridden) == (2, 0, 0)
