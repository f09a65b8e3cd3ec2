"""`reciprocity demo`: eight months of a small community, sent through the real HTTP path and read back.

Why: someone new should see what the ledger is for in one command, before wiring up any app of their own.
The demo starts the real service in-process, registers a tenant with two sources the way any app would be
registered, signs every fact per Standard Webhooks, and reads the views over HTTP like any client. It takes
no shortcut around the service, so a demo that runs also shows that the whole path works. With `--keep`
the community stays in the store and the service goes on serving it, so a person can explore it afterwards
in the web UI or the API (the link and a read key are printed); services/demo_text.py says what is printed.

The community lives by the seed text's ideas: value exists only once it is spent, so people share
knowledge and connect others; their ties belong to a place, an activity and a subject; every contact needs
upkeep; and a real "this paid off" counts for more than a like.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import aiohttp
import structlog
from aiohttp import web

from contracts.webhook_bodies import FactType
from ledger.signatures import secret_key, sign
from services.bootstrap import open_registry
from services.demo_text import render
from services.http.app import create_app
from services.listener import ListenError, bound_listener
from services.settings import Settings

TENANT = "demo-community"
MEETUP = "meetup-app"  # records what happens in person: talks, sparring, introductions at events
CHAT = "chat-bot"  # records help given in the community chat, and thanks said there
SOURCES = (MEETUP, CHAT)
FOCUS = ("kees", "lindy", "bram", "eva")  # whose upkeep the demo shows: a broker, a student, a regular, a newcomer
INFLUENCE_WAIT_S = 15.0  # influence is recomputed in the background at most once a second
BALANCES_LIMIT = 20  # the whole community fits on one page, so its totals can be checked

UTRECHT_PYTHON = {"location": "Utrecht", "activity": "meetup", "subject": "python"}
UTRECHT_DESIGN = {"location": "Utrecht", "activity": "meetup", "subject": "design"}
CHAT_PYTHON = {"location": "online", "activity": "chat", "subject": "python"}
CHAT_DESIGN = {"location": "online", "activity": "chat", "subject": "design"}
MENTORING = {"location": "Utrecht", "activity": "mentoring", "subject": "social capital"}
WORKSHOP = {"location": "Amersfoort", "activity": "workshop", "subject": "social business"}


@dataclass(frozen=True)
class Step:
    """One fact as its source sends it, `days_ago` days before the community's latest fact."""

    source: str
    days_ago: int
    type: FactType
    data: dict[str, Any]


@dataclass(frozen=True)
class Batch:
    """Facts one source sends in one signed request, as an app that syncs after an event would."""

    source: str
    steps: tuple[Step, ...]


def give(
    days_ago: int,
    fact_id: str,
    giver: str,
    receiver: str,
    kind: str,
    value: str,
    context: dict[str, str],
    note: str,
    source: str = MEETUP,
) -> Step:
    data = {"id": fact_id, "giver": giver, "receiver": receiver, "kind": kind, "value": value}
    return Step(source, days_ago, FactType.GIVE, {**data, "context": context, "note": note})


def introduce(
    days_ago: int,
    fact_id: str,
    introducer: str,
    first: str,
    second: str,
    context: dict[str, str],
    note: str,
    source: str = MEETUP,
) -> Step:
    data = {"id": fact_id, "introducer": introducer, "introduced": [first, second], "context": context}
    return Step(source, days_ago, FactType.INTRODUCTION, {**data, "note": note})


def thank(
    days_ago: int,
    fact_id: str,
    acknowledger: str,
    ref_id: str,
    note: str,
    source: str = MEETUP,
    ref_source: str | None = None,
) -> Step:
    # Without ref.source the service looks the fact up in the sending source's own facts.
    ref = {"id": ref_id} if ref_source is None else {"id": ref_id, "source": ref_source}
    return Step(
        source,
        days_ago,
        FactType.ACKNOWLEDGEMENT,
        {"id": fact_id, "acknowledger": acknowledger, "ref": ref, "note": note},
    )


def reverse(days_ago: int, fact_id: str, ref_id: str, reason: str, source: str) -> Step:
    return Step(source, days_ago, FactType.REVERSAL, {"id": fact_id, "ref": {"id": ref_id}, "reason": reason})


# The community, oldest first. Two ties start strong and then go quiet (the upkeep the demo should flag),
# introductions at a meetup pay off later in the chat, and one typo is reversed by the source that sent it.
COMMUNITY: list[Step | Batch] = [
    # Kees and Pieter ran social-business workshops together: a strong tie that nobody has tended since.
    give(238, "g01", "pieter", "kees", "knowledge", "2", WORKSHOP, "shared his workshop format"),
    give(236, "g02", "kees", "pieter", "time", "3", WORKSHOP, "co-hosted the first workshop"),
    give(225, "g03", "kees", "pieter", "referral", "4", WORKSHOP, "referred a company that wanted to change"),
    thank(224, "t01", "pieter", "g03", "the referral became a long collaboration"),
    # Kees mentors a student, who interviews him and publishes the interview: knowledge flowing both ways.
    give(215, "g04", "kees", "lindy", "knowledge", "2", MENTORING, "an interview on social capital for her study"),
    give(208, "g05", "lindy", "kees", "knowledge", "2", MENTORING, "worked out the interview and published it"),
    thank(207, "t02", "lindy", "g04", "my thesis starts from this interview"),
    thank(206, "t03", "kees", "g05", "glad to see it shared further"),
    give(205, "g06", "kees", "pieter", "knowledge", "3", WORKSHOP, "wrote the follow-up notes for his clients"),
    thank(203, "t04", "pieter", "g06", "my clients still use these notes"),
    give(170, "g07", "kees", "lindy", "time", "3", MENTORING, "sparring about her thesis plan"),
    thank(168, "t05", "lindy", "g07", "the plan was approved"),
    give(150, "g08", "kees", "eva", "time", "2", MENTORING, "a first sparring session for a new student"),
    # One evening of the Utrecht Python meetup, synced by the meetup app afterwards in one request.
    Batch(
        MEETUP,
        (
            give(120, "g09", "anna", "bram", "knowledge", "2", UTRECHT_PYTHON, "a talk on asyncio"),
            give(120, "g10", "fatima", "anna", "knowledge", "2", UTRECHT_PYTHON, "a lightning talk on data cleaning"),
            give(120, "g11", "mehmet", "anna", "time", "2", UTRECHT_PYTHON, "opened the coworking space for the night"),
            thank(120, "t06", "anna", "g11", "the space made the evening"),
            introduce(120, "i01", "kees", "bram", "sanne", UTRECHT_PYTHON, "he needs a designer, she learns python"),
            introduce(120, "i02", "anna", "fatima", "joost", UTRECHT_PYTHON, "joost's startup needs a data person"),
            introduce(120, "i03", "kees", "lindy", "mehmet", UTRECHT_PYTHON, "both organise events for students"),
        ),
    ),
    # The chat, over the following months: questions answered, and the meetup's introductions paying off.
    give(110, "g12", "fatima", "bram", "help", "1", CHAT_PYTHON, "found the cause of his import error", CHAT),
    thank(108, "t07", "bram", "g09", "the asyncio talk fixed our crawler", CHAT, ref_source=MEETUP),
    give(104, "g13", "bram", "joost", "help", "2", CHAT_PYTHON, "set up the tests for joost's startup", CHAT),
    thank(103, "t08", "joost", "g13", "we ship every day now", CHAT),
    give(95, "g14", "sanne", "bram", "knowledge", "2", CHAT_DESIGN, "reviewed his app's screens", CHAT),
    thank(93, "t09", "bram", "i01", "this paid off: sanne reviewed our screens", CHAT, ref_source=MEETUP),
    give(80, "g15", "fatima", "joost", "knowledge", "3", CHAT_PYTHON, "designed the data model with him", CHAT),
    thank(78, "t10", "joost", "i02", "this paid off: fatima shaped our data model", CHAT, ref_source=MEETUP),
    give(75, "g16", "bram", "sanne", "help", "1", CHAT_PYTHON, "taught her python basics", CHAT),
    thank(74, "t11", "sanne", "g16", "my first script runs", CHAT),
    give(60, "g17", "joost", "bram", "time", "1", CHAT_PYTHON, "tested his side project", CHAT),
    give(50, "g18", "joost", "fatima", "referral", "3", CHAT_PYTHON, "referred a client to her", CHAT),
    give(45, "g19", "anna", "eva", "knowledge", "1", CHAT_PYTHON, "answered her first python questions", CHAT),
    introduce(40, "i04", "anna", "eva", "ruben", CHAT_PYTHON, "ruben hires juniors", CHAT),
    give(35, "g20", "sanne", "kees", "help", "1", CHAT_DESIGN, "redesigned the slides of his workshop", CHAT),
    give(30, "g21", "anna", "mehmet", "knowledge", "2", CHAT_PYTHON, "scripted the coworking bookings", CHAT),
    thank(29, "t12", "mehmet", "g21", "saves me an hour a week", CHAT),
    give(25, "g22", "lindy", "eva", "knowledge", "1", MENTORING, "passed on the thesis tips kees gave her", CHAT),
    thank(24, "t13", "eva", "g22", "exactly what I needed", CHAT),
    # The one mistake: 40 hours typed for 4. Only the chat bot that recorded it may reverse it.
    give(20, "g23", "bram", "anna", "time", "40", UTRECHT_PYTHON, "built the meetup website", CHAT),
    reverse(20, "r01", "g23", "typed 40 hours instead of 4", CHAT),
    give(20, "g24", "bram", "anna", "time", "4", UTRECHT_PYTHON, "built the meetup website", CHAT),
    thank(19, "t14", "anna", "g24", "the website brought twenty new members", CHAT),
    give(12, "g25", "ruben", "eva", "referral", "2", CHAT_PYTHON, "an internship interview", CHAT),
    thank(11, "t15", "eva", "i04", "this paid off: I start my internship in May", CHAT),
    give(8, "g26", "sanne", "anna", "help", "1", CHAT_DESIGN, "designed the poster for the next meetup", CHAT),
    give(5, "g27", "kees", "joost", "knowledge", "2", WORKSHOP, "how to run the startup as a social business"),
    give(3, "g28", "joost", "kees", "time", "1", WORKSHOP, "presented his startup as a case at the workshop"),
    # The latest meetup, synced in one request again.
    Batch(
        MEETUP,
        (
            give(1, "g29", "anna", "bram", "knowledge", "1", UTRECHT_DESIGN, "reviewed his talk proposal"),
            give(0, "g30", "mehmet", "anna", "time", "2", UTRECHT_DESIGN, "hosted the second meetup"),
            give(0, "g31", "sanne", "mehmet", "knowledge", "2", UTRECHT_DESIGN, "a talk on accessible design"),
            give(0, "g32", "fatima", "mehmet", "help", "1", UTRECHT_DESIGN, "helped him choose a booking tool"),
        ),
    ),
]


def community_steps() -> Iterator[Step]:
    """Every fact of the community in sending order, batches unpacked."""
    for entry in COMMUNITY:
        yield from entry.steps if isinstance(entry, Batch) else (entry,)


class DemoError(RuntimeError):
    """The service refused or failed a demo request; the message says which and why (never a secret)."""


@dataclass(frozen=True)
class DemoTenant:
    name: str
    secrets: dict[str, str] = field(repr=False)  # per source; never printed
    read_key: str = field(repr=False)


def run_demo(
    settings: Settings, *, out: TextIO = sys.stdout, as_json: bool = False, keep: bool = False
) -> dict[str, Any]:
    """Runs the community through the service on `settings` and prints what it reads back.

    With `keep` the service goes on serving the community on settings.http_host:http_port, and the output
    adds the UI link and a read key, until SIGINT or SIGTERM stop it cleanly; the data stays in the store.
    Without it the service listens on a free port of 127.0.0.1 and stops once the views are read."""

    def show(result: dict[str, Any]) -> None:
        out.write(json.dumps(result) + "\n" if as_json else render(result))
        out.flush()  # a person, or a script waiting for the link and key, reads it while the service runs on

    with _quiet_service_logs():
        result = asyncio.run(_run(settings, show, keep))
    if keep:  # on stderr: with --json, stdout holds the one JSON object
        print("reciprocity demo: stopped; the community stays in the store", file=sys.stderr)
    return result


@contextlib.contextmanager
def _quiet_service_logs() -> Iterator[None]:
    """The service logs a line per request; here they would bury the tables, so only warnings show, on
    stderr. The caller's logging configuration is restored afterwards."""
    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        yield
    finally:
        structlog.configure(**previous)


async def _run(settings: Settings, show: Callable[[dict[str, Any]], None], keep: bool) -> dict[str, Any]:
    started = time.monotonic()
    stop = _stop_on_signals() if keep else None
    # Bound before anything is written: a taken port stops the demo with no tenant left behind.
    listener = _listen(settings.http_host, settings.http_port) if keep else _listen("127.0.0.1", 0)
    # Registered before the service starts, so its first registry snapshot already knows the sources.
    tenant = await asyncio.to_thread(_register, settings)
    runner, base_url = await _start_service(settings, listener)
    try:
        async with aiohttp.ClientSession(base_url, timeout=aiohttp.ClientTimeout(total=30)) as http:
            sent, position = await _send_community(http, tenant)
            views = await _read_views(http, tenant, position)
        result = {"tenant": tenant.name, "url": base_url, "sources": list(SOURCES), "facts_sent": sent}
        result.update(position=position, **views, duration_s=round(time.monotonic() - started, 2))
        if stop is not None:
            result.update(ui_url=f"{base_url}/ui/#/t/{tenant.name}", read_key=tenant.read_key)
            # null on PostgreSQL: the store is the one RECIPROCITY_DATABASE_URL names
            result.update(data_dir=None if settings.database_url else str(settings.data_dir.resolve()))
        show(result)
        if stop is not None:
            await stop.wait()
    finally:
        await runner.cleanup()  # closes the group committer, projections and store with the app
    return result


def _stop_on_signals() -> asyncio.Event:
    """Set by Ctrl-C or SIGTERM: the kept service then stops as serve does, closing the store cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _register(settings: Settings) -> DemoTenant:
    registry = open_registry(settings)
    try:
        name = _unused_tenant(registry.snapshot().tenants)
        registry.create_tenant(name)
        secrets = {source: registry.add_source(name, source) for source in SOURCES}
        return DemoTenant(name, secrets, registry.add_key(name, ["read"]).key)
    finally:
        registry.db.close()


def _unused_tenant(existing: frozenset[str]) -> str:
    """A demo run into a data dir that holds an earlier one gets a tenant of its own, leaving that data be."""
    candidates = (TENANT if n == 1 else f"{TENANT}-{n}" for n in range(1, 10_000))
    return next(name for name in candidates if name not in existing)


def _listen(host: str, port: int) -> socket.socket:
    """The service's listening socket; a host or port it cannot have is a DemoError that says which."""
    try:
        return bound_listener(host, port)
    except ListenError as failure:
        hint = "set RECIPROCITY_HTTP_PORT or --http-port" if failure.taken else "RECIPROCITY_HTTP_HOST, --http-host"
        raise DemoError(f"{failure}: {hint}") from None


async def _start_service(settings: Settings, listener: socket.socket) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_app(settings), access_log=None)
    try:
        await runner.setup()  # opens the store, the views and the group committer
        await web.SockSite(runner, listener).start()
    except BaseException:
        await runner.cleanup()
        listener.close()
        raise
    host, port = listener.getsockname()[:2]
    return runner, f"http://{_link_host(host)}:{port}"


def _link_host(host: str) -> str:
    """The host a link names: a service listening on every address is reached on this machine's loopback."""
    address = ipaddress.ip_address(host)
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]" if address.version == 6 else str(address)


# --- sending -----------------------------------------------------------------------------------------


async def _send_community(http: aiohttp.ClientSession, tenant: DemoTenant) -> tuple[int, int]:
    """Sends every fact in order; returns how many and the position of the last write."""
    # The latest fact lands a minute ago: occurred_at may not lie in the future, and "days ago" stays exact.
    latest = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    sent, position = 0, 0
    for entry in COMMUNITY:
        if isinstance(entry, Batch):
            body = {"events": [_envelope(step, latest) for step in entry.steps]}
            results = (await _post(http, tenant, entry.source, "/batch", body))["results"]
            # A batch answers 200 even when an item is refused, so each outcome is checked on its own.
            positions = [_recorded(r, step)["position"] for r, step in zip(results, entry.steps, strict=True)]
        else:
            answer = await _post(http, tenant, entry.source, "", _envelope(entry, latest))
            positions = [_recorded(answer, entry)["position"]]
        sent += len(positions)
        position = max(position, *positions)
    return sent, position


def _envelope(step: Step, latest: datetime) -> dict[str, Any]:
    occurred_at = (latest - timedelta(days=step.days_ago)).isoformat()
    return {
        "type": step.type,
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {**step.data, "occurred_at": occurred_at},
    }


async def _post(
    http: aiohttp.ClientSession, tenant: DemoTenant, source: str, suffix: str, body: dict[str, Any]
) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    message_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret_key(tenant.secrets[source]), message_id, timestamp, raw),
    }
    path = f"/v1/tenants/{tenant.name}/webhooks/{source}{suffix}"
    async with http.post(path, data=raw, headers=headers) as response:
        answer = await response.json(content_type=None)
        if response.status not in (200, 201):
            raise DemoError(f"POST {path}: {response.status} {answer.get('detail', answer)}")
        return answer


def _recorded(outcome: dict[str, Any], step: Step) -> dict[str, Any]:
    if outcome.get("status") not in ("recorded", "duplicate"):
        raise DemoError(f"{step.type} {step.data['id']} was refused: {outcome.get('problem', outcome)}")
    return outcome


# --- reading -----------------------------------------------------------------------------------------


async def _read_views(http: aiohttp.ClientSession, tenant: DemoTenant, position: int) -> dict[str, Any]:
    """Reads what a client would, each view waiting (min_position) until it reflects the last write."""
    headers = {"Authorization": f"Bearer {tenant.read_key}"}
    views = f"/v1/tenants/{tenant.name}"
    balances = await _get(
        http, f"{views}/balances", headers, order="balance", limit=BALANCES_LIMIT, min_position=position
    )
    influence = await _influence(http, f"{views}/influence", headers, position)
    maintenance = {
        person: await _get(http, f"{views}/maintenance", headers, participant=person, min_position=position)
        for person in FOCUS
    }
    return {"balances": balances["items"], "influence": influence["items"], "maintenance": maintenance}


async def _influence(http: aiohttp.ClientSession, path: str, headers: dict[str, str], position: int) -> dict[str, Any]:
    """The influence page once it reflects `position`. The server waits at most 5 s per request and the
    background recompute runs at most once a second, so a slow machine may need a few requests."""
    deadline = time.monotonic() + INFLUENCE_WAIT_S
    while True:
        async with http.get(path, headers=headers, params={"limit": 5, "min_position": position}) as response:
            answer = await response.json(content_type=None)
        if response.status == 200 and answer["position"] >= position:
            return answer
        if response.status not in (200, 503) or time.monotonic() > deadline:
            raise DemoError(f"GET {path}: {response.status} {answer.get('detail', answer)}")
        await asyncio.sleep(0.25)


async def _get(http: aiohttp.ClientSession, path: str, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    async with http.get(path, headers=headers, params={k: str(v) for k, v in params.items()}) as response:
        answer = await response.json(content_type=None)
        if response.status != 200:
            raise DemoError(f"GET {path}: {response.status} {answer.get('detail', answer)}")
        return answer
