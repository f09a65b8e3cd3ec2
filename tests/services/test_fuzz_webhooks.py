"""A seeded mutation fuzzer for webhooks: valid signed bodies and their headers, changed at random.

Bodies are changed as JSON (a leaf replaced by a hostile value, a key dropped, added or repeated) and as
bytes (flipped, inserted, deleted, non-UTF-8), then signed again so that they get past the signature and
reach JSON and schema validation; some stay unsigned. Header values get raw bytes no client library would
send (>= 0x80, control bytes), so requests go over a plain socket. The properties:

- no answer is a 5xx;
- nothing the contract refuses is accepted: a 2xx came with a signature that proves the exact body, its
  body reads with the edge's own parser, and every recorded item re-validates with the contract;
- every refusal the application makes is application/problem+json naming the same status; only aiohttp's
  own protocol-level 400s (text/plain) for malformed HTTP are left as they are;
- what was recorded is what the contract read: the log holds each accepted fact's data unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.helpers import parse_content_type
from pydantic import ValidationError

from contracts import json_body
from contracts.answers import BatchAnswer, FactAccepted, Problem
from contracts.webhook_bodies import read_webhook, webhook_adapter
from ledger.signatures import SignatureError, secret_key, sign, verify
from tests.helpers import Sender, give

SEED = int(os.environ.get("RECIPROCITY_FUZZ_SEED", "16"))  # another seed explores other mutations
ROUNDS = {"sqlite": 3000, "postgresql": 2000}  # about 10 s each on two cores

PROBLEM = "application/problem+json"


class Raw(str):
    """JSON text written as it is: numbers that a float cannot hold, or no JSON at all."""


class Pairs(list):
    """An object as a list of (key, value) pairs, so a key can be written twice."""


HOSTILE_STRINGS = [
    "",
    " ",
    "   padded   ",
    "x\x00y",
    "\x00",
    "tab\tand\nnewline",
    "\r",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "e\u0301",
    "ﬁ",
    "😀" * 30,
    "\ud800",
    "evil\n",
    "a" * 101,
    "b" * 129,
    "c" * 257,
    "d" * 2001,
    "-",
    "_",
    "a b",
    "ann",
    "bob",
    "Ann",
    "crm",
    "CRM",
    "other-source",
    "1.5",
    "1e3",
    "-1",
    "0",
    "0.0000001",
    "0.99999999999999999",
    "1000000",
    "1000000.000001",
    "NaN",
    "Infinity",
    "0x10",
    "1_000",
    " 1",
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00",
    "2026-02-30T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "1899-12-31T23:59:59Z",
    "1900-01-01T00:30:00+01:00",
    "2999-01-01T00:00:00Z",
    "2026-01-01",
    "give.recorded",
    "introduction.made",
    "acknowledgement.recorded",
    "reversal.recorded",
    "help",
    "HELP",
]
HOSTILE_JSON = [
    Raw("0"),
    Raw("-0"),
    Raw("1"),
    Raw("-1"),
    Raw("1.5"),
    Raw("1e400"),
    Raw("1E-400"),
    Raw("0.99999999999999999"),
    Raw("999999.99999999999"),
    Raw("1000000"),
    Raw("1000000.0000001"),
    Raw("0.000001"),
    Raw("0.0000001"),
    Raw("1e2"),
    Raw("123456789012345678901234567890"),
    Raw("9" * 5000),
    Raw("NaN"),
    Raw("-Infinity"),
    Raw("true"),
    Raw("false"),
    Raw("null"),
    Raw("[]"),
    Raw("{}"),
    Raw("[" * 5000 + "]" * 5000),
    Raw('"\\ud800"'),
    Raw('"\\u0000"'),
    Raw('"\\udfff\\ud800"'),
    Raw('"\\ud83d\\ude00"'),
]
HOSTILE_BYTES = [0x00, 0x09, 0x0A, 0x0D, 0x20, 0x22, 0x2C, 0x5C, 0x7B, 0x7D, 0x7F, 0x80, 0xA0, 0xC3, 0xED, 0xFF]
BODY_TOKENS = [
    b"\\u0000",
    b"\\ud800",
    b'"value":7,',
    b'"type":"give.recorded",',
    b"1e999",
    b"0.99999999999999999",
    b"NaN",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xef\xbb\xbf",
    b"[" * 200,
    b"}",
    b",",
    b"\x00",
]
HEADER_MUTATIONS = ["flip", "high-byte", "control-byte", "utf-8", "truncate", "duplicate", "drop", "pad"]


@dataclass
class Sent:
    """One request as bytes on the wire, and what the fuzzer knows about it."""

    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    label: str
    batch: bool = False


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes


@dataclass
class Fuzzer:
    sender: Sender
    rng: random.Random
    counter: int = 0
    recorded_ids: list[str] = field(default_factory=list)

    def fresh_id(self) -> str:
        self.counter += 1
        return f"fz-{self.counter}"

    def fact(self) -> dict[str, Any]:
        """A valid webhook of any type; acknowledgements and reversals refer to facts recorded before."""
        rng, fact_id = self.rng, self.fresh_id()
        people = ["ann", "bob", "cas", "dee"]
        a, b, c = rng.sample(people, 3)
        kind = rng.choice(["give", "give", "introduction", "acknowledgement", "reversal"])
        ref = rng.choice(self.recorded_ids) if self.recorded_ids else "g-none"
        data: dict[str, Any]
        if kind == "give":
            data = {"id": fact_id, "giver": a, "receiver": b, "kind": rng.choice(["help", "time", "knowledge"])}
            if rng.random() < 0.7:
                data["value"] = rng.choice(["1", "2.5", "0.000001", "999999.999999", 3])
            if rng.random() < 0.5:
                data["context"] = {rng.choice(["location", "activity", "subject"]): rng.choice(["Berlin", " Py "])}
            if rng.random() < 0.3:
                data["note"] = "thanks\nagain"
            fact_type = "give.recorded"
        elif kind == "introduction":
            data = {"id": fact_id, "introducer": a, "introduced": [b, c]}
            fact_type = "introduction.made"
        elif kind == "acknowledgement":
            data = {"id": fact_id, "acknowledger": b, "ref": {"id": ref}}
            fact_type = "acknowledgement.recorded"
        else:
            data = {"id": fact_id, "ref": {"id": ref}, "reason": "sent by mistake"}
            fact_type = "reversal.recorded"
        if rng.random() < 0.3:
            data["occurred_at"] = rng.choice(["2026-03-01T10:00:00+02:00", "1999-12-31T23:59:59Z"])
        return {"type": fact_type, "timestamp": "2026-03-01T10:00:05Z", "data": data}

    def document(self, batch: bool) -> Any:
        if batch and self.rng.random() < 0.03:  # none, the most, one too many, and far too many items
            return {"events": [{}] * self.rng.choice([0, 1000, 1001, 20_000])}
        if batch:
            return {"events": [self.fact() for _ in range(self.rng.randint(1, 5))]}
        return self.fact()

    def mutate_json(self, document: Any) -> Any:
        """One change at a random place: a hostile value, a dropped, unknown or repeated key."""
        containers = _containers(document)
        if not containers:  # the first change replaced the whole document
            return document
        parent = self.rng.choice(containers)
        if isinstance(parent, dict) and parent:
            key = self.rng.choice(list(parent))
            choice = self.rng.random()
            if choice < 0.55:
                parent[key] = self.hostile_value()
            elif choice < 0.7:
                del parent[key]
            elif choice < 0.85:
                parent[self.rng.choice(["extra", "Type", "data ", key.upper(), "\u0000"])] = self.hostile_value()
            else:
                return _with_repeated_key(document, parent, key, self.hostile_value())
        elif isinstance(parent, list) and parent:
            index = self.rng.randrange(len(parent))
            if self.rng.random() < 0.7:
                parent[index] = self.hostile_value()
            else:
                parent.insert(index, self.hostile_value())
        return document

    def hostile_value(self) -> Any:
        roll = self.rng.random()
        if roll < 0.55:
            return self.rng.choice(HOSTILE_STRINGS)
        if roll < 0.9:
            return self.rng.choice(HOSTILE_JSON)
        return self.rng.choice([{}, [], {"id": "x"}, ["ann", "bob"], {"location": "x\x00"}, [{}] * 3])

    def mutate_bytes(self, body: bytes) -> bytes:
        data = bytearray(body)
        for _ in range(self.rng.randint(1, 3)):
            at = self.rng.randrange(len(data) + 1)
            roll = self.rng.random()
            if roll < 0.25 and data:
                data[min(at, len(data) - 1)] ^= 1 << self.rng.randrange(8)
            elif roll < 0.5:
                data[at:at] = bytes([self.rng.choice(HOSTILE_BYTES)])
            elif roll < 0.7:
                data[at:at] = self.rng.choice(BODY_TOKENS)
            elif roll < 0.85:
                del data[at : at + self.rng.randint(1, 8)]
            else:
                data[at:at] = data[at : at + self.rng.randint(1, 16)]
        return bytes(data)

    def mutate_header_value(self, value: bytes) -> bytes | None:
        """A header value as no HTTP client would send it (None: the header is dropped)."""
        how = self.rng.choice(HEADER_MUTATIONS)
        data = bytearray(value)
        at = self.rng.randrange(len(data) + 1)
        if how == "flip" and data:
            data[min(at, len(data) - 1)] ^= 1 << self.rng.randrange(8)
        elif how == "high-byte":
            data[at:at] = bytes([self.rng.randrange(0x80, 0x100)])
        elif how == "control-byte":
            data[at:at] = bytes([self.rng.choice([0x00, 0x01, 0x08, 0x0B, 0x1F, 0x7F])])
        elif how == "utf-8":
            data[at:at] = self.rng.choice(["é", "😀", "\u2028", "ß"]).encode()
        elif how == "truncate":
            del data[at:]
        elif how == "drop":
            return None
        elif how == "pad":
            data = bytearray(b" \t" + bytes(data) + b" ")
        elif how == "duplicate":  # as a proxy joins a repeated header
            data = bytearray(bytes(data) + b", " + bytes(data))
        return bytes(data)

    def signed(self, path: str, body: bytes, label: str, batch: bool, sign_it: bool = True) -> Sent:
        message_id = f"msg_{uuid.UUID(int=self.rng.getrandbits(128)).hex}"
        timestamp = int(time.time())
        signature = sign(secret_key(self.sender.secret), message_id, timestamp, body)
        if not sign_it:
            signature = sign(secret_key(self.sender.secret), message_id, timestamp, body + b" ")
        headers = [
            (b"Content-Type", b"application/json"),
            (b"webhook-id", message_id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
            (b"webhook-signature", signature.encode()),
        ]
        return Sent("POST", path, headers, body, label, batch)

    def request(self) -> Sent:
        """One request of a random kind."""
        batch = self.rng.random() < 0.35
        path = self.sender.path + ("/batch" if batch else "")
        roll = self.rng.random()
        if roll < 0.45:  # changed as JSON, signed again: reaches the contract
            document = self.document(batch)
            for _ in range(self.rng.randint(1, 2)):
                document = self.mutate_json(document)
            return self.signed(path, dump(document), "json", batch)
        if roll < 0.65:  # changed as bytes, signed again: reaches the parser
            return self.signed(path, self.mutate_bytes(dump(self.document(batch))), "bytes", batch)
        if roll < 0.72:  # valid and signed: accepted, and its recorded data is checked at the end
            return self.signed(path, dump(self.document(batch)), "valid", batch)
        if roll < 0.77:  # changed after signing: the signature no longer proves it
            return self.signed(path, dump(self.mutate_json(self.document(batch))), "unsigned", batch, False)
        if roll < 0.92:  # a signature header (or the content type, or the request id) as raw bytes
            sent = self.signed(path, dump(self.document(batch)), "header", batch)
            names = [b"webhook-id", b"webhook-timestamp", b"webhook-signature", b"Content-Type", b"X-Request-Id"]
            target = self.rng.choice(names)
            if target == b"X-Request-Id":
                sent.headers.append((target, b"req-1"))
            sent.headers = self.mutated_headers(sent.headers, target)
            return sent
        # The read key as raw bytes: on a read route, and on a webhook that does not use it.
        read = self.rng.random() < 0.8
        authorization = f"Bearer {self.sender.read_key}".encode()
        if read:
            sent = Sent("GET", "/v1/tenants/acme/balances", [(b"Authorization", authorization)], b"", "auth")
        else:
            sent = self.signed(path, dump(self.document(batch)), "auth", batch)
            sent.headers.append((b"Authorization", authorization))
        sent.headers = self.mutated_headers(sent.headers, b"Authorization")
        return sent

    def mutated_headers(self, headers: list[tuple[bytes, bytes]], target: bytes) -> list[tuple[bytes, bytes]]:
        result = []
        for name, value in headers:
            if name != target:
                result.append((name, value))
                continue
            mutated = self.mutate_header_value(value)
            if mutated is not None:
                result.append((name, mutated))
            if self.rng.random() < 0.1:  # the header twice: the first one counts
                result.append((name, value))
        return result


def dump(value: Any) -> bytes:
    """JSON as bytes, with Raw tokens written as they are and Pairs as objects that may repeat a key."""
    if isinstance(value, Raw):
        return str(value).encode()
    if isinstance(value, Pairs):
        return b"{" + b",".join(dump(k) + b":" + dump(v) for k, v in value) + b"}"
    if isinstance(value, dict):
        return b"{" + b",".join(dump(k) + b":" + dump(v) for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    # ensure_ascii keeps a lone surrogate writable (as an escape the server must refuse)
    return json.dumps(value, ensure_ascii=True).encode()


def _containers(value: Any) -> list[Any]:
    """The objects and lists of a document, outside any object already written with a repeated key."""
    found: list[Any] = []
    if isinstance(value, Pairs):
        return found
    if isinstance(value, dict | list):
        found.append(value)
        for child in value.values() if isinstance(value, dict) else value:
            found.extend(_containers(child))
    return found


def _with_repeated_key(document: Any, parent: dict[str, Any], key: str, value: Any) -> Any:
    """The document with `parent` written as pairs in which `key` appears twice."""
    if document is parent:
        return Pairs([*parent.items(), (key, value)])
    if isinstance(document, Pairs):
        return document
    if isinstance(document, dict):
        return {k: _with_repeated_key(v, parent, key, value) for k, v in document.items()}
    if isinstance(document, list):
        return [_with_repeated_key(v, parent, key, value) for v in document]
    return document


async def send(host: str, port: int, sent: Sent) -> Answer:
    """The request over a plain socket, headers as raw bytes; the connection closes after the answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"{sent.method} {sent.path} HTTP/1.1".encode(), f"Host: {host}:{port}".encode()]
        lines += [name + b": " + value for name, value in sent.headers]
        lines += [f"Content-Length: {len(sent.body)}".encode(), b"Connection: close"]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + sent.body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    assert status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), (sent, raw[:200])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().decode("latin-1")
    return Answer(int(status_line.split()[1]), headers.get(b"content-type", ""), body)


def _first(sent: Sent, name: bytes) -> bytes | None:
    return next((value for key, value in sent.headers if key.lower() == name.lower()), None)


def _proves(sender: Sender, sent: Sent) -> bool:
    """Whether the signature headers, read as the server reads them (first of each, trimmed, ASCII), prove
    this exact body."""
    headers = {}
    for name in (b"webhook-id", b"webhook-timestamp", b"webhook-signature"):
        value = _first(sent, name)
        if value is None:
            return False
        value = value.strip(b" \t")
        if not value.isascii():
            return False
        headers[name.decode()] = value.decode()
    try:
        verify([secret_key(sender.secret)], headers, sent.body, time.time())
    except SignatureError:
        return False
    return True


def _problem(answer: Answer) -> Problem:
    assert answer.content_type.startswith(PROBLEM), answer
    problem = Problem.model_validate_json(answer.body)
    assert problem.status == answer.status, problem
    return problem


def check(sender: Sender, sent: Sent, answer: Answer, accepted: dict[str, dict[str, Any]]) -> None:
    """The properties of one exchange; `accepted` collects each recorded fact's expected data by event id."""
    assert answer.status < 500, (sent, answer)
    if answer.status >= 300:
        if answer.status == 400 and answer.content_type.startswith("text/plain"):
            return  # aiohttp's own refusal of malformed HTTP, before the application sees the request
        _problem(answer)
        return
    if sent.method == "GET":  # an Authorization header that, as the server trims it, is still the key
        value = (_first(sent, b"Authorization") or b"").strip(b" \t")
        scheme, _, key = value.partition(b" ")
        assert scheme.lower() == b"bearer" and key.strip() == sender.read_key.encode(), (sent, answer)
        return
    assert _proves(sender, sent), ("accepted without a signature that proves the body", sent, answer)
    # Read as aiohttp reads it (Unicode whitespace around the type is no part of it).
    content_type = (_first(sent, b"Content-Type") or b"").decode("utf-8", "surrogateescape")
    assert parse_content_type(content_type)[0] == "application/json", sent
    try:
        if not sent.batch:
            _expect(accepted, FactAccepted.model_validate_json(answer.body), read_webhook(sent.body))
            return
        results = BatchAnswer.model_validate_json(answer.body).results
        items = json_body.parse(sent.body)["events"]
        assert len(items) == len(results), (sent, answer)
        for item, result in zip(items, results, strict=True):
            if isinstance(result, FactAccepted):
                _expect(accepted, result, webhook_adapter.validate_python(item))
            else:
                assert result.problem.status in (409, 422), result
    except (json_body.JsonBodyError, ValidationError) as refused:
        pytest.fail(f"accepted what the contract refuses ({refused}): {sent} -> {answer}")


def _expect(accepted: dict[str, dict[str, Any]], outcome: FactAccepted, webhook: Any) -> None:
    data = webhook.data.model_dump(mode="json", exclude_none=True)
    if outcome.status == "recorded":
        accepted[str(outcome.event_id)] = {"type": webhook.type, "data": data}


async def _logged(client: Any, sender: Sender) -> dict[str, dict[str, Any]]:
    facts, after = {}, 0
    while True:
        response = await client.get(f"/v1/tenants/acme/events?after={after}&limit=1000", headers=sender.read_headers())
        page = await response.json()
        for fact in page["events"]:
            facts[fact["event_id"]] = fact
        if not page["events"]:
            return facts
        after = page["next_after"]


async def test_mutated_webhooks_are_refused_as_problems_and_accepted_ones_keep_the_contract(client, settings):
    store = "postgresql" if settings.database_url else "sqlite"
    sender: Sender = client.sender
    fuzzer = Fuzzer(sender, random.Random(SEED))
    host, port = client.server.host, client.server.port
    accepted: dict[str, dict[str, Any]] = {}
    labels: dict[tuple[str, int], int] = {}
    for _ in range(ROUNDS[store]):
        sent = fuzzer.request()
        answer = await send(host, port, sent)
        check(sender, sent, answer, accepted)
        labels[sent.label, answer.status] = labels.get((sent.label, answer.status), 0) + 1
        if 200 <= answer.status < 300 and sent.method == "POST" and not sent.batch:
            fuzzer.recorded_ids.append(json_body.parse(sent.body)["data"]["id"])
    # The fuzzing reached every layer: accepted facts, schema refusals, parser refusals and unproven ones.
    statuses = {status for _, status in labels}
    assert {200, 201, 400, 401, 422} <= statuses, labels
    logged = await _logged(client, sender)
    for event_id, expected in accepted.items():
        fact = logged[event_id]
        data = {**fact["data"], "ref": {**fact["data"]["ref"]}} if "ref" in fact["data"] else dict(fact["data"])
        if "ref" in data and "source" not in expected["data"]["ref"]:
            data["ref"].pop("source")  # the log names the default source of a ref explicitly
        assert (fact["type"], data) == (expected["type"], expected["data"]), (event_id, fact, expected)
    # Nothing that was accepted stalls the views: a fact recorded now is reflected, and no fact failed.
    response = await sender.post(client, give("after-fuzzing", "ann", "bob"))
    position = (await response.json())["position"]
    balance = await client.get(
        f"/v1/tenants/acme/participants/bob/balance?min_position={position}", headers=sender.read_headers()
    )
    assert balance.status == 200, await balance.text()
    ready = await (await client.get("/readyz")).json()
    assert ready["views"]["failures"] == [], ready


def test_the_fuzzer_writes_what_no_json_library_would():
    """Repeated keys, numbers beyond a float and lone surrogates reach the wire as written."""
    assert dump(Pairs([("a", 1), ("a", Raw("2"))])) == b'{"a":1,"a":2}'
    assert dump({"value": Raw("0.99999999999999999")}) == b'{"value":0.99999999999999999}'
    assert dump(["\ud800"]) == b'["\\ud800"]'
