"""Keys and sources as an admin manages them while `serve` runs with two HTTP processes (DESIGN section 6):
a new key or source works the moment its command returns, a revoked key is refused within a second by
every process, and no list shows a secret."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.settings import Settings
from tests.helpers import Sender, envelope, give
from tests.processes import Server, cli, cli_json

pytestmark = pytest.mark.slow

READS_AT_ONCE = 8
REVOKED_WITHIN_S = 1.0


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    cli_json(settings, "tenant", "create", "acme")
    running = Server(settings, tmp_path / "serve.log", RECIPROCITY_HTTP_WORKERS="2").start()
    yield running
    running.stop()


def read(server: Server, api_key: str) -> tuple[int, str]:
    """A read on a new connection (so either HTTP process may take it): its status and which process answered."""
    request = urllib.request.Request(
        server.url + "/v1/tenants/acme/balances", headers={"Authorization": f"Bearer {api_key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["X-Request-Id"].rsplit("-", 1)[0]
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers["X-Request-Id"].rsplit("-", 1)[0]


def reads_at_once(server: Server, api_key: str, count: int) -> list[tuple[int, str]]:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: read(server, api_key), range(count)))


def test_a_new_key_works_the_moment_key_add_returns(settings, server):
    """Twenty times: `key add`, then at once several reads with the new key, on both processes: all 200."""
    processes: set[str] = set()
    for _ in range(20):
        new_key = cli_json(settings, "key", "add", "acme", "--scope", "read")["key"]
        answers = reads_at_once(server, new_key, READS_AT_ONCE)
        assert [status for status, _ in answers] == [200] * READS_AT_ONCE, answers
        processes |= {process for _, process in answers}
    assert len(processes) == 2  # both HTTP processes took new keys at once, not only one


def test_a_new_source_works_the_moment_source_add_returns(settings, server):
    """Five times: `source add`, then at once signed webhooks from it: all 201."""
    for n in range(5):
        source = f"app-{n}"
        sender = Sender("acme", source, cli_json(settings, "source", "add", "acme", source)["secret"], "")

        def post(fact_id: str, sender: Sender = sender) -> int:
            body = json.dumps(envelope(give(fact_id, "ann", "bob"))).encode()
            return server.post(sender.path, body, sender.headers(body))[0]

        with concurrent.futures.ThreadPoolExecutor(READS_AT_ONCE) as pool:
            statuses = list(pool.map(post, [f"{source}-g{i}" for i in range(READS_AT_ONCE)]))
        assert statuses == [201] * READS_AT_ONCE


def test_a_revoked_key_is_refused_within_a_second_by_every_process(settings, server):
    """After `key revoke` returns, reads go on over new connections: from a second on, every answer of both
    processes is 401."""
    added = cli_json(settings, "key", "add", "acme", "--scope", "read")
    assert {status for status, _ in reads_at_once(server, added["key"], READS_AT_ONCE)} == {200}
    revoked = cli_json(settings, "key", "revoke", "acme", added["id"])
    revoked_at = time.monotonic()
    assert revoked == {"tenant": "acme", "id": added["id"], "revoked": True}
    late: list[tuple[int, str]] = []  # answers to reads sent a second or more after the revoke
    while len({process for _, process in late}) < 2 or len(late) < 4 * READS_AT_ONCE:
        assert time.monotonic() - revoked_at < 15, f"both processes did not answer: {late}"
        sent_at = time.monotonic()
        answers = reads_at_once(server, added["key"], READS_AT_ONCE)
        if sent_at - revoked_at >= REVOKED_WITHIN_S:
            late += answers
    assert {status for status, _ in late} == {401}, late


def test_lists_show_what_there_is_and_never_a_key_a_hash_or_a_secret(settings, server):
    """`tenant list`, `source list` and `key list`, as JSON and as text."""
    secret = cli_json(settings, "source", "add", "acme", "crm", "--rate-limit", "50")["secret"]
    added = [cli_json(settings, "key", "add", "acme", "--scope", scope) for scope in ("read", "ingest")]
    tenants = cli_json(settings, "tenant", "list")["tenants"]
    assert [tenant["tenant"] for tenant in tenants] == ["acme"]
    assert tenants[0]["created_at"].endswith("Z")
    sources = cli_json(settings, "source", "list", "acme")
    assert sources["tenant"] == "acme"
    assert [(s["source"], s["rate_limit_per_s"], s["created_at"][-1]) for s in sources["sources"]] == [
        ("crm", 50.0, "Z")
    ]
    keys = cli_json(settings, "key", "list", "acme")
    assert keys["tenant"] == "acme"
    assert [(key["id"], key["scopes"]) for key in keys["keys"]] == [(a["id"], a["scopes"]) for a in added]
    assert all(set(key) == {"id", "scopes", "created_at", "last_used_at"} for key in keys["keys"])
    shown = "".join(
        cli(settings, *command, *flags).stdout
        for command in (("tenant", "list"), ("source", "list", "acme"), ("key", "list", "acme"))
        for flags in ((), ("--json",))
    )
    for hidden in (secret, *(a["key"] for a in added), *(hashlib.sha256(a["key"].encode()).hexdigest() for a in added)):
        assert hidden not in shown
    assert all(a["id"] in shown for a in added)


def test_an_unknown_tenant_or_key_id_is_an_error_with_exit_1(settings, server):
    for command in (("key", "list", "nobody"), ("source", "list", "nobody"), ("key", "revoke", "acme", "0" * 16)):
        refused = cli(settings, *command, "--json")
        assert refused.returncode == 1
        assert json.loads(refused.stdout)["error"].startswith(("no tenant 'nobody'", "no key '0000000000000000'"))
