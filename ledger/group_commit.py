"""Where a fact enters the store: rules checked in order, many requests committed in one transaction.

`FactWriter` is synchronous and runs on one dedicated thread: it reads what it needs, applies every
gathered fact in order against one working set, and saves the result in one transaction. `GroupCommitter`
is its asyncio front: concurrent requests queue while a transaction is in flight and go together into the
next one; each request is answered only after the transaction that holds its facts committed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import structlog
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from contracts import problems
from contracts.answers import Problem
from contracts.types import utc_text
from ledger.collector import collector_paused
from ledger.facts import (
    Acknowledgement,
    AcknowledgementHistory,
    AlreadyReversed,
    Fact,
    FactHistory,
    ReceivedFact,
    Ref,
    Reversal,
    RuleViolation,
    UnknownReference,
    checked_record,
    fact_event_id,
    fact_from_json,
    history_of,
    received_fact_json,
    same_fact,
)
from ledger.participants import (
    ERASURE_SOURCE,
    PEOPLE_FIELDS_BY_TYPE,
    SEALED_NOTE,
    KeyRow,
    ParticipantKey,
    id_digest,
    new_participant,
    revealed_data,
    seal_note,
)
from ledger.store import Ledger, StoredFact

log = structlog.get_logger(__name__)

CONFLICT_RETRIES_MAX = 5
PEOPLE_CACHED_MAX = 200_000  # participants whose tokens and keys a writer keeps (about 200 bytes each)


@dataclass(frozen=True)
class Outcome:
    """What became of one fact: recorded, a duplicate of a recorded fact, or rejected with a problem."""

    status: Literal["recorded", "duplicate", "rejected"]
    event_id: UUID | None = None
    position: int | None = None
    problem: Problem | None = None

    @property
    def http_status(self) -> int:
        if self.problem is not None:
            return self.problem.status
        return 201 if self.status == "recorded" else 200


def rejected(problem: Problem) -> Outcome:
    return Outcome("rejected", problem=problem)


@dataclass
class _Pending:
    """An accepted fact whose position is known only once its transaction committed."""

    status: Literal["recorded", "duplicate"]
    event_id: UUID


@dataclass
class _Plan:
    outcomes: list[Outcome | _Pending] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    fact_tenants: dict[UUID, str] = field(default_factory=dict)
    working: dict[UUID, FactHistory] = field(default_factory=dict)
    created: dict[UUID, dict[str, Any]] = field(default_factory=dict)  # as the log shows them, to compare resends
    # Participants: (tenant, id) -> token and key, read once per plan or made new in it.
    people: dict[tuple[str, str], ParticipantKey] = field(default_factory=dict)
    new_participants: list[KeyRow] = field(default_factory=list)
    read_at: int = 0  # a log position its participants' keys hold as of: an erasure after it refuses the commit
    keys_by_token: dict[str, bytes | None] = field(default_factory=dict)  # for sealing notes of acks, reversals


@dataclass(frozen=True)
class Erased:
    """A participant's erasure, recorded: their token and the position of the `participant.erased` fact."""

    token: str
    event_id: UUID
    position: int


class ConflictPersisted(Exception):
    """Other writers kept changing the same facts; the sender should retry."""


class MetMeanwhile(Exception):
    """Someone a plan took for new was recorded by another writer after the plan looked them up: the plan
    gave them a token of its own, and a rule comparing tokens would refuse a valid fact."""


class FactWriter:
    """Records facts in order, every rule checked against the store, many facts per transaction."""

    def __init__(self, ledger: Ledger, clock: Callable[[], datetime] | None = None) -> None:
        self.ledger = ledger
        self.clock = clock or (lambda: datetime.now(UTC))
        # Participants' tokens and keys met before, so a plan looks up only people new to this writer. They
        # were all live at log position `people_live_at`; a transaction does not commit when any process
        # recorded an erasure after its plan's position, and the writer then forgets them all.
        self.people: dict[tuple[str, str], ParticipantKey] = {}
        self.people_live_at = 0

    def commit(self, incoming: Sequence[ReceivedFact]) -> list[Outcome]:
        """Applies the facts in order and commits them together; falls back to one by one on conflicts."""
        with collector_paused():  # a transaction's aggregates and events live on in the aggregate cache
            return self._commit_in_order(incoming)

    def _commit_in_order(self, incoming: Sequence[ReceivedFact]) -> list[Outcome]:
        try:
            return self._commit_with_retries(incoming)
        except ConflictPersisted:
            if len(incoming) == 1:
                return [rejected(_conflict_persisted_problem())]
            # A fact that other processes keep touching must not starve its neighbours.
            return [self._commit_alone(item) for item in incoming]

    def _commit_alone(self, item: ReceivedFact) -> Outcome:
        try:
            return self._commit_with_retries([item])[0]
        except ConflictPersisted:
            return rejected(_conflict_persisted_problem())

    def _commit_with_retries(self, incoming: Sequence[ReceivedFact]) -> list[Outcome]:
        for _ in range(CONFLICT_RETRIES_MAX):
            try:
                plan = self._plan(incoming)
                positions, last = self._save(plan)
            except (IntegrityError, MetMeanwhile):
                self.people.clear()
                # Another process recorded one of these ids, acted on one of their targets, or named one of
                # their people first, after we read. Read again and re-plan, so duplicates are answered as
                # such and the rules see the newer history.
                log.info("commit_conflict_replanned", facts=len(incoming))
                continue
            if len(self.people) > PEOPLE_CACHED_MAX:
                self.people.clear()
            self.people.update(plan.people)
            self.people_live_at = max(plan.read_at, last)
            return [self._resolve(outcome, positions) for outcome in plan.outcomes]
        raise ConflictPersisted

    def _save(self, plan: _Plan) -> tuple[dict[UUID, int], int]:
        """The positions of the plan's new facts, and the last position it wrote."""
        if not plan.events:
            return {}, 0
        # The library's event store directly: Application.save() would only add snapshotting and
        # notification hooks we do not use, and costs a protocol check per event.
        recordings = self.ledger.events.put(
            plan.events,
            fact_tenants=plan.fact_tenants,
            new_participants=plan.new_participants,
            no_erasure_after=plan.read_at,
        )
        positions = {
            r.domain_event.originator_id: r.notification.id
            for r in recordings
            if r.domain_event.originator_version == 1
        }
        return positions, max(r.notification.id for r in recordings)

    def _resolve(self, outcome: Outcome | _Pending, positions: dict[UUID, int]) -> Outcome:
        if isinstance(outcome, Outcome):
            return outcome
        return Outcome(outcome.status, outcome.event_id, positions[outcome.event_id])

    def _plan(self, incoming: Sequence[ReceivedFact]) -> _Plan:
        # Met people's keys hold as of `people_live_at`, and a key read now holds as of now: an erasure after it
        # refuses the commit, and the plan begins again with no one met, from the log's head.
        plan = _Plan(read_at=self.people_live_at if self.people else self.ledger.head_position())
        recorded_at = utc_text(self.clock())
        recorded = self.ledger.find_facts({item.event_id for item in incoming})
        plan.people = self._known_people(incoming)
        for item in incoming:
            plan.outcomes.append(self._apply(plan, item, recorded, recorded_at))
        return plan

    def _known_people(self, incoming: Sequence[ReceivedFact]) -> dict[tuple[str, str], ParticipantKey]:
        """The tokens and keys of the people the facts name whom this writer has not met yet, and who have one:
        one lookup per tenant."""
        met = self.people
        unmet: dict[str, set[str]] = {}
        for item in incoming:
            tenant, data = item.tenant, item.data
            for name in PEOPLE_FIELDS_BY_TYPE.get(item.type, ()):
                value = data[name]
                for person in value if name == "introduced" else (value,):
                    if (tenant, person) not in met:
                        unmet.setdefault(tenant, set()).add(person)
        known: dict[tuple[str, str], ParticipantKey] = {}
        for tenant, people in unmet.items():
            digests = {id_digest(tenant, person): person for person in people}
            for digest, key in self.ledger.participant_keys(tenant, list(digests)).items():
                known[tenant, digests[digest]] = key
        return known

    def _apply(
        self, plan: _Plan, item: ReceivedFact, recorded: dict[UUID, StoredFact], recorded_at: str
    ) -> Outcome | _Pending:
        try:
            shown = received_fact_json(item, recorded_at)
        except RuleViolation as broken:
            return rejected(problems.rule_broken(broken.path, broken.rule, broken.message))
        event_id = item.event_id
        if event_id in recorded or event_id in plan.created:
            return self._resent(plan, shown, recorded.get(event_id))
        target, fresh = None, {}
        try:
            target = self._target(plan, shown)
            stored, fresh = self._sealed(plan, shown, target)
            history = history_of(stored, event_id)
            touched = self._act_on_references(plan, history, target)
        except RuleViolation as broken:
            if target is not None:  # only a stored fact's tokens can differ from a plan's
                self._unless_met_meanwhile(item.tenant, fresh)
            return rejected(problems.rule_broken(broken.path, broken.rule, broken.message))
        except UnknownReference as unknown:
            return rejected(problems.unknown_reference(unknown.path, str(unknown)))
        except AlreadyReversed as first:
            return self._first_reversal(plan, first.reversal_id)
        for person, row in fresh.items():
            plan.people[item.tenant, person] = ParticipantKey(row.token, row.data_key)
            plan.new_participants.append(row)
        plan.created[event_id] = shown
        plan.working[event_id] = history
        plan.fact_tenants[event_id] = item.tenant
        for aggregate in (history, *touched):
            plan.events.extend(aggregate.collect_events())
        return _Pending("recorded", event_id)

    def _unless_met_meanwhile(self, tenant: str, fresh: dict[str, KeyRow]) -> None:
        """Before a fact naming someone new is refused: raises MetMeanwhile if another writer has recorded
        them since the plan looked (say, with the give this acknowledgement thanks for, read after that)."""
        if fresh and self.ledger.participant_keys(tenant, [id_digest(tenant, person) for person in fresh]):
            raise MetMeanwhile

    def _sealed(
        self, plan: _Plan, shown: dict[str, Any], target: FactHistory | None
    ) -> tuple[dict[str, Any], dict[str, KeyRow]]:
        """The fact as it is stored: tokens for ids, the note sealed; and the participants it makes new."""
        tenant = shown["tenant"]
        fresh: dict[str, KeyRow] = {}
        keys: dict[str, bytes] = {}  # the tokens of whom it names, in the order of its fields, and their keys
        data = dict(shown["data"])
        for name in PEOPLE_FIELDS_BY_TYPE.get(shown["type"], ()):
            value = data[name]
            if name == "introduced":
                data[name] = [self._token(plan, tenant, person, keys, fresh) for person in value]
            else:
                data[name] = self._token(plan, tenant, value, keys, fresh)
        if target is None and "note" not in data:  # most facts: whom it names is whom it concerns
            return {**shown, "data": data}, fresh
        named = list(keys)
        concerned = named + [token for token in (target.participants if target else ()) if token not in keys]
        if "note" in data:
            data = self._with_sealed_note(plan, data, concerned, keys, shown["event_id"])
        if len(concerned) == len(named):  # nothing to list: whom it names is whom it concerns
            return {**shown, "data": data}, fresh
        return {**shown, "participants": concerned, "data": data}, fresh

    def _token(
        self, plan: _Plan, tenant: str, person: str, keys: dict[str, bytes], fresh: dict[str, KeyRow]
    ) -> str:  # fmt: skip
        """A person's token (made new if they have none), their key noted in `keys`."""
        key = self.people.get((tenant, person)) or plan.people.get((tenant, person))
        if key is None:
            row = fresh.get(person) or fresh.setdefault(person, new_participant(tenant, person))
            key = ParticipantKey(row.token, row.data_key)
        keys[key.token] = key.data_key
        return key.token

    def _with_sealed_note(
        self, plan: _Plan, data: dict[str, Any], concerned: list[str], keys: dict[str, bytes], event_id: str
    ) -> dict[str, Any]:
        # Only the participants the fact refers to through its ref need a lookup; an erased one's key is gone,
        # and a note that could never be read again is not stored at all.
        missing = [token for token in concerned if token not in keys and token not in plan.keys_by_token]
        if missing:
            found = self.ledger.names(missing).keys
            plan.keys_by_token.update((token, found.get(token)) for token in missing)
        data_keys = [keys.get(token) or plan.keys_by_token.get(token) for token in concerned]
        sealed: dict[str, Any] = {}
        for name, value in data.items():
            if name != "note":
                sealed[name] = value
            elif all(data_keys):
                sealed[SEALED_NOTE] = seal_note(value, data_keys, event_id)  # type: ignore[arg-type]
        return sealed

    def _resent(self, plan: _Plan, shown: dict[str, Any], recorded: StoredFact | None) -> Outcome | _Pending:
        """A fact whose identity is recorded already, or earlier in this plan: a duplicate, or a conflict."""
        try:
            candidate = checked_record(shown)
        except RuleViolation as broken:
            return rejected(problems.rule_broken(broken.path, broken.rule, broken.message))
        if recorded is not None:
            return self._same_or_conflict_stored(recorded, candidate)
        return self._same_or_conflict(fact_from_json(plan.created[UUID(shown["event_id"])]), candidate, None)

    def _same_or_conflict_stored(self, recorded: StoredFact, candidate: Fact) -> Outcome | _Pending:
        names = self.ledger.names_of([recorded])
        event_id = UUID(candidate.event_id)
        if any(names.erased(token) for token in recorded.participants):
            # Its content can no longer be compared, and recording it again would bring the person back.
            return Outcome("duplicate", event_id, recorded.position)
        stored = recorded.stored_json or recorded.fact.to_json()
        revealed = fact_from_json(
            {**stored, "data": revealed_data(stored["data"], recorded.participants, stored["event_id"], names)}
        )
        return self._same_or_conflict(revealed, candidate, recorded.position)

    def _same_or_conflict(self, recorded: Fact, candidate: Fact, position: int | None) -> Outcome | _Pending:
        event_id = UUID(candidate.event_id)
        if not same_fact(recorded, candidate):
            return rejected(problems.identity_conflict(recorded.event_id))
        if position is None:
            return _Pending("duplicate", event_id)
        return Outcome("duplicate", event_id, position)

    def _target(self, plan: _Plan, shown: dict[str, Any]) -> FactHistory | None:
        """The fact an acknowledgement or a reversal refers to (None for other facts)."""
        ref = shown["data"].get("ref")
        if ref is None:
            return None
        return self._load(plan, Ref(ref["source"], ref["id"]), shown["tenant"])

    def _act_on_references(self, plan: _Plan, history: FactHistory, target: FactHistory | None) -> list[FactHistory]:
        """Applies an acknowledgement or reversal to what it refers to; returns the facts it changed."""
        fact = history.fact
        if target is None or not isinstance(fact, Acknowledgement | Reversal):
            return []
        if isinstance(fact, Acknowledgement):
            target.acknowledge(fact.acknowledger, history.id)
            return [target]
        target.reverse(history.id)
        if isinstance(target, AcknowledgementHistory):
            acknowledged = self._load(plan, target.fact.ref, target.fact.tenant)
            acknowledged.withdraw_acknowledgement(target.id)
            return [target, acknowledged]
        return [target]

    def _load(self, plan: _Plan, ref: Ref, tenant: str) -> FactHistory:
        event_id = ref.event_id(tenant)
        if event_id not in plan.working:
            try:
                plan.working[event_id] = self.ledger.repository.get(event_id)
            except AggregateNotFoundError:
                raise UnknownReference("data.ref", ref.id, ref.source) from None
        return plan.working[event_id]

    def _first_reversal(self, plan: _Plan, reversal_id: UUID) -> Outcome | _Pending:
        if reversal_id in plan.created:
            return _Pending("duplicate", reversal_id)
        first = self.ledger.find_facts([reversal_id])[reversal_id]
        return Outcome("duplicate", reversal_id, first.position)

    def erase(self, tenant: str, participant: str) -> Erased | None:
        """Erases a participant: deletes their key row and records `participant.erased`, in one transaction.

        None when no live participant has this id (never named, or erased already)."""
        digest = id_digest(tenant, participant)
        for _ in range(CONFLICT_RETRIES_MAX):
            key = self.ledger.participant_keys(tenant, [digest]).get(digest)
            if key is None:
                return None
            at = utc_text(self.clock())
            external_id = f"erase-{key.token}"
            event_id = fact_event_id(tenant, ERASURE_SOURCE, external_id)
            stored = {
                "event_id": str(event_id), "tenant": tenant, "source": ERASURE_SOURCE, "external_id": external_id,
                "type": "participant.erased", "occurred_at": at, "recorded_at": at,
                "participants": [key.token], "data": {"token": key.token},
            }  # fmt: skip
            try:
                recordings = self.ledger.events.put(
                    history_of(stored, event_id).collect_events(),
                    fact_tenants={event_id: tenant},
                    erased_tokens=[key.token],
                )
            except IntegrityError as conflict:
                self.people.clear()
                log.info("erasure_conflict_replanned", tenant=tenant, error=str(conflict))
                continue
            self.people.pop((tenant, participant), None)
            return Erased(key.token, event_id, recordings[0].notification.id)
        raise ConflictPersisted


def _conflict_persisted_problem() -> Problem:
    return problems.problem(
        409,
        "write-contention",
        "Other writers kept changing the same facts",
        "the store refused this fact repeatedly because other requests acted on the same facts; retry",
        retryable=True,
    )


# --- Where the writer runs -----------------------------------------------------------------------------


class ThreadWriter:
    """The writer on one thread of this process, so the event loop keeps serving while it commits.

    (Not a process of its own: every batch would be pickled across, which costs about what sharing the
    interpreter lock does; docs/performance.md.)"""

    def __init__(self, writer: FactWriter) -> None:
        self.writer = writer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fact-writer")

    async def commit(self, items: list[ReceivedFact]) -> list[Outcome]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.writer.commit, items)

    async def erase(self, tenant: str, participant: str) -> Erased | None:
        """On the writer's thread, between two commits of facts."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.writer.erase, tenant, participant)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)


# --- Group commit -------------------------------------------------------------------------------------


class Overloaded(Exception):
    """More facts are waiting than the committer will queue; the sender should retry later."""


class StoreFailed(Exception):
    """The transaction could not commit; nothing of it was recorded."""


@dataclass
class _Submission:
    items: list[ReceivedFact]
    future: asyncio.Future[list[Outcome]]


class GroupCommitter:
    """Gathers concurrent requests into one transaction; answers each after its transaction committed."""

    def __init__(
        self,
        writer: ThreadWriter,
        *,
        batch_facts_max: int,
        wait_s: float,
        queue_facts_max: int,
        group: bool = True,
        observe_batch: Callable[[int, float], None] = lambda facts, seconds: None,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.writer = writer
        self.batch_facts_max = batch_facts_max
        self.wait_s = wait_s
        self.queue_facts_max = queue_facts_max
        self.group = group
        self.observe_batch = observe_batch
        self.on_commit = on_commit
        self._queue: deque[_Submission] = deque()
        self._queued_facts = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    @property
    def queued_facts(self) -> int:
        """Facts submitted and not yet taken into a transaction (the commit queue's depth)."""
        return self._queued_facts

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-committer")

    async def close(self) -> None:
        """Commits what is queued, then stops; requests arriving after this are refused."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await self.writer.close()

    async def submit(self, items: list[ReceivedFact]) -> list[Outcome]:
        if self._closing:
            raise Overloaded("the service is shutting down")
        if self._queued_facts + len(items) > self.queue_facts_max and self._queue:
            raise Overloaded(f"{self._queued_facts} facts are waiting to be committed")
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Submission(items, future))
        self._queued_facts += len(items)
        self._wakeup.set()
        # Not shielded: a request cancelled while it waits cancels only its future, which the commit skips;
        # its facts are committed all the same, as they were taken.
        return await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                if self.wait_s and self.group:
                    await self._linger()
                await self._commit(self._take())
            if self._closing:
                return

    async def _linger(self) -> None:
        # A bounded wait for more requests when the queue is not yet full: a larger transaction.
        deadline = time.monotonic() + self.wait_s
        while self._queued_facts < self.batch_facts_max and time.monotonic() < deadline:
            await asyncio.sleep(min(0.0005, self.wait_s))

    def _take(self) -> list[_Submission]:
        batch = [self._queue.popleft()]
        facts = len(batch[0].items)
        while self.group and self._queue and facts + len(self._queue[0].items) <= self.batch_facts_max:
            batch.append(self._queue.popleft())
            facts += len(batch[-1].items)
        self._queued_facts -= facts
        return batch

    async def _commit(self, batch: list[_Submission]) -> None:
        items = [item for submission in batch for item in submission.items]
        started = time.perf_counter()
        try:
            outcomes = await self.writer.commit(items)
        except Exception as failure:  # the store refused or is unreachable: nothing was recorded
            log.error("commit_failed", facts=len(items), error=str(failure))
            for submission in batch:
                if not submission.future.done():
                    submission.future.set_exception(StoreFailed(str(failure)))
            return
        self.observe_batch(len(items), time.perf_counter() - started)
        self.on_commit()
        offset = 0
        for submission in batch:
            count = len(submission.items)
            if not submission.future.done():
                submission.future.set_result(outcomes[offset : offset + count])
            offset += count
