"""Erasure in the view buckets: an erased participant's keys taken out so that nothing in a bucket names them
(DESIGN section 7).

Each key naming them is first deleted the ordinary way, so a live watcher hears of it and drops its copy; then
every message on those subjects, values and delete markers alike, is purged from the bucket's stream, so a
watcher that starts afterwards, even one replaying history and deletes, never sees the id. The views have
already renamed them to their tombstone by then, and the KV writer has written the renamed keys.

A KV bucket's stream refuses `delete_msg` (nats-py creates buckets with `deny_delete`), so a purge is the way
out of the stream here; see the README on what JetStream's files may hold until their blocks are compacted.
"""

from __future__ import annotations

import re

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts.types import PARTICIPANT_PATTERN, SLUG_PATTERN
from projections.nats_bus import BUCKET_PAIRS
from projections.publisher import AckedPublisher

DELETE = {"KV-Operation": "DEL"}
ACK_TIMEOUT_S = 10.0
KEYS_MAX = 100_000  # one participant's pairs in one tenant: far more than any community has


class UnsafeSubject(ValueError):
    """A tenant or participant that is not a plain subject token: it could widen a purge to other keys."""


def erased_subjects(bucket: str, tenant: str, participant: str) -> list[str]:
    """The bucket's subjects whose keys name the participant: `{tenant}.{p}`, or in pairs `{tenant}.{p}.*` and
    `{tenant}.*.{p}`."""
    if not (re.fullmatch(PARTICIPANT_PATTERN, participant) and re.fullmatch(SLUG_PATTERN, tenant)):
        raise UnsafeSubject(f"not a subject token: {tenant!r}, {participant!r}")
    prefix = f"$KV.{bucket}.{tenant}"
    if bucket == BUCKET_PAIRS:
        return [f"{prefix}.{participant}.*", f"{prefix}.*.{participant}"]
    return [f"{prefix}.{participant}"]


async def erase_from_bucket(
    js: JetStreamContext, publisher: AckedPublisher, bucket: str, tenant: str, participant: str
) -> int:
    """Deletes the participant's keys from the bucket, then purges their subjects; returns how many keys there
    were. Running it again finds nothing and purges nothing."""
    subjects = erased_subjects(bucket, tenant, participant)
    live: list[str] = []
    for pattern in subjects:
        live.extend(await live_keys(js, f"KV_{bucket}", pattern))
    if live:
        await publisher.publish(((subject, b"", DELETE) for subject in live), ACK_TIMEOUT_S)
    for pattern in subjects:
        await js.purge_stream(f"KV_{bucket}", subject=pattern)
    return len(live)


async def live_keys(js: JetStreamContext, stream: str, pattern: str) -> list[str]:
    """The subjects matching the pattern whose last message is a value (not a delete or purge marker), read
    with direct gets from one matching message to the next: the bucket keeps one message per key."""
    found: list[str] = []
    sequence = 1
    while len(found) < KEYS_MAX:
        try:
            message = await js.get_msg(stream, seq=sequence, subject=pattern, next=True, direct=True)
        except NotFoundError:
            break
        assert message.seq is not None and message.subject is not None
        if "KV-Operation" not in (message.headers or {}):
            found.append(message.subject)
        sequence = message.seq + 1
    return found
