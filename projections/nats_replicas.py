"""How many servers keep a stream (the event stream, or a KV bucket's): RECIPROCITY_NATS_REPLICAS.

Created with that many, or with fewer when the cluster cannot place them (a single server, peers down);
raised to it at start when the cluster allows; never lowered: a stream kept on more servers than asked
stays so, since an operator or an earlier setting chose that. Each mismatch is a warning with both numbers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NotFoundError

log = structlog.get_logger(__name__)

# JetStream's answers that mean "not that many replicas here": 10074 replicas > 1 on a server that is not
# clustered, 10005 no suitable peers for placement, 10023 insufficient resources.
REPLICAS_REFUSED = frozenset({10074, 10005, 10023})
# Another process created the stream meanwhile with other settings (10058: name already in use).
STREAM_NAME_IN_USE = 10058


async def ensure_replicas(
    js: JetStreamContext,
    stream: str,
    asked: int,
    create: Callable[[int], Awaitable[None]],
    update: Callable[[StreamConfig, int], Awaitable[StreamConfig]],
) -> int:
    """Creates `stream` (`create(replicas)`) or brings the one there to `asked` replicas
    (`update(its config, replicas)`, which also applies the caller's other settings and returns the config
    the server kept); returns the replicas it has now."""
    try:
        current = (await js.stream_info(stream)).config
    except NotFoundError:
        try:
            return await _create(stream, asked, create)
        except APIError as refused:
            if refused.err_code != STREAM_NAME_IN_USE:
                raise
        current = (await js.stream_info(stream)).config  # made by another process: from here as if found
    return await _reconcile(stream, current, asked, update)


async def _create(stream: str, asked: int, create: Callable[[int], Awaitable[None]]) -> int:
    for replicas in range(asked, 0, -1):
        try:
            await create(replicas)
        except APIError as refused:
            if replicas > 1 and refused.err_code in REPLICAS_REFUSED:
                log.warning(
                    "nats_replicas_refused", stream=stream, asked=asked, tried=replicas, error=refused.description
                )
                continue
            raise
        if replicas < asked:
            log.warning("nats_replicas_below_setting", stream=stream, replicas=replicas, asked=asked)
        return replicas
    raise AssertionError("unreachable: one replica is always tried last")


async def _reconcile(
    stream: str, current: StreamConfig, asked: int, update: Callable[[StreamConfig, int], Awaitable[StreamConfig]]
) -> int:
    replicas = _replicas(current)
    if replicas >= asked:
        if replicas > asked:
            log.warning("nats_replicas_above_setting", stream=stream, replicas=replicas, asked=asked, lowered=False)
        return _replicas(await update(current, replicas))
    try:
        now, why = _replicas(await update(current, asked)), None
    except APIError as refused:
        if refused.err_code not in REPLICAS_REFUSED:
            raise
        now, why = _replicas(await update(current, replicas)), refused.description
    if now < asked:  # refused, or kept lower without a word
        log.warning("nats_replicas_below_setting", stream=stream, replicas=now, asked=asked, error=why)
    else:
        log.info("nats_replicas_raised", stream=stream, replicas=now, was=replicas)
    return now


def _replicas(config: StreamConfig) -> int:
    return config.num_replicas or 1  # a stream made without the field has one
