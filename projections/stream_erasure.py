"""Erasure on the stream: the messages of the facts that concerned an erased participant, deleted with
JetStream's secure erase (DESIGN section 7).

The store knows the positions of those facts (`Ledger.participant_positions`); the stream holds every fact
once, in position order, so each message is found by a search over sequences rather than a scan. A probe is a
direct get of the first message at or after a sequence (earlier erasures leave gaps) and reads its
`Reciprocity-Position`. Between two messages at positions p < q lie at most q - p - 1 others, which bounds the
search on both sides, and positions grow nearly linearly with sequences, so an interpolated probe mostly lands
on the message itself. Several searchers run at once, each over a run of the positions: a search is a chain of
round trips, and the server answers direct gets many at a time. The deletes then go one at a time: the server
erases one message at a time anyway, and deletes queued at once held every other JetStream API request (a
`stream_info`, a consumer's) back until the last was done, seconds for a few thousand.

`delete_msg` asks without `no_erase`, so the server overwrites the message with random bytes (`eraseMsg`)
instead of only marking it deleted. That is what costs: nats-server 2.15 rewrites and syncs the message's whole
block file (8 MB in an unlimited stream) for each erased message, one at a time under the stream's lock, about
7 ms each on our test machine, while finding one costs about 0.05 ms (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from projections.nats_bus import EVENT_SUBJECTS, POSITION_HEADER, STREAM

SEARCHERS = 8  # concurrent searches, each a chain of direct gets
SEQUENCE_NOT_FOUND = 10057  # JetStream's error code for a message that is gone already


class Located(NamedTuple):
    """A message of the stream: its sequence and the position of its fact."""

    sequence: int
    position: int


class StreamEraser:
    def __init__(self, js: JetStreamContext, searchers: int = SEARCHERS) -> None:
        self.js = js
        self.searchers = searchers
        self.probes = 0  # direct gets made, for the log and the tests

    async def erase(self, positions: Sequence[int], upper: Located) -> int:
        """Deletes the messages of the facts at these positions (ascending, all below `upper`, a message known
        to be in the stream: the erasure's own). Returns how many it deleted; a message already gone (an
        earlier erasure, or this one run before) is skipped, so running it again is harmless."""
        first = await self.probe(1)
        if first is None or not positions:
            return 0
        runs = max(1, min(self.searchers, len(positions)))
        size = -(-len(positions) // runs)
        chunks = [positions[start : start + size] for start in range(0, len(positions), size)]
        found = await asyncio.gather(*(self._locate_run(chunk, first, upper) for chunk in chunks))
        deleted = 0
        for sequence in (sequence for run in found for sequence in run):
            if await self._delete(sequence):
                deleted += 1
        return deleted

    async def _locate_run(self, positions: Sequence[int], first: Located, upper: Located) -> list[int]:
        sequences = []
        below, above = first, upper
        for position in positions:
            if above.position <= position:
                above = upper
            found, below, above = await self.locate(position, below, above)
            if found is not None:
                sequences.append(found)
        return sequences

    async def locate(self, position: int, below: Located, above: Located) -> tuple[int | None, Located, Located]:
        """The sequence of the message at `position` (None when it is not in the stream), searched between two
        messages known to be at or below and above it; also the closest such messages seen, for the next
        search."""
        if position <= below.position:
            return (below.sequence if position == below.position else None), below, above
        cap = above.sequence - 1  # lowered when a probe shows the sequences from its guess on to be gaps
        width: int | None = None
        while True:
            # Between two messages there are no more messages than positions.
            low = max(below.sequence + 1, above.sequence - (above.position - position))
            high = min(cap, below.sequence + (position - below.position))
            if low > high:
                return None, below, above
            # Interpolation while it keeps halving the range, else one bisection: a skewed stretch costs a log.
            interpolating = width is None or (high - low) * 2 <= width
            width = high - low
            guess = _interpolated(position, below, above) if interpolating else (low + high) // 2
            guess = min(max(guess, low), high)
            found = await self.probe(guess)
            if found is not None and found.position == position:
                return found.sequence, found, above
            if found is None or found.position > position:
                cap = guess - 1
                above = found or above
            else:
                below = found

    async def probe(self, sequence: int) -> Located | None:
        """The first message at or after this sequence (None past the end)."""
        self.probes += 1
        try:
            message = await self.js.get_msg(STREAM, seq=sequence, subject=EVENT_SUBJECTS, next=True, direct=True)
        except NotFoundError:
            return None
        assert message.seq is not None and message.headers is not None
        return Located(message.seq, int(message.headers[POSITION_HEADER]))

    async def _delete(self, sequence: int) -> bool:
        try:
            return await self.js.delete_msg(STREAM, sequence)
        except APIError as failure:
            if failure.err_code == SEQUENCE_NOT_FOUND:
                return False
            raise


def _interpolated(position: int, below: Located, above: Located) -> int:
    span = above.position - below.position
    return below.sequence + round((position - below.position) * (above.sequence - below.sequence) / span)
