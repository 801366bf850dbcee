"""User presence in Firestore (``presence/{uid}`` and its private ``presence_holders/{uid}``):
the transactions that apply an instance's counts, and the writer that batches them.

Cost: a user's session costs two transitions (online, offline) of one transaction each, batched
with the other users' transitions of the same moment: 1 read and 2 writes per user per
transition, 2 more writes for another device on or off. Nothing is written per pong. The
decision itself is ``gateway.storage.user_presence.decide``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from gateway.storage.firestore_reads import read_document
from gateway.storage.schema import PRESENCE, PRESENCE_HOLDERS
from gateway.storage.store import MemoryStore, merge_fields
from gateway.storage.user_presence import PresenceEvent, decide

logger = logging.getLogger("gateway.storage.presence")

#: Users per transaction: two writes each, under Firestore's 500 writes per commit.
CHUNK = 200
#: Attempts of one transaction when another instance writes the same users at once.
ATTEMPTS = 8


class Report(NamedTuple):
    """This instance now holds ``held`` of the user's sockets, since ``at``, because of
    ``reason`` (``connect``, or why the count fell)."""

    user_id: str
    held: int
    at: datetime
    reason: str


class PresenceRecords(Protocol):
    async def apply(self, instance: str, reports: Sequence[Report]) -> list[PresenceEvent]:
        """Apply the reports in one transaction; return the transitions they made."""

    async def read(self, user_id: str) -> dict[str, Any] | None:
        """The user's presence document, or None (the console's user view)."""


class MemoryPresenceRecords:
    """The same decisions over a MemoryStore's documents (unit tests)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def read(self, user_id: str) -> dict[str, Any] | None:
        return self.store.docs.get((PRESENCE, user_id))

    async def apply(self, instance: str, reports: Sequence[Report]) -> list[PresenceEvent]:
        if self.store.fail_next:
            self.store.fail_next -= 1
            raise ConnectionError("injected presence failure")
        events = []
        for report in reports:
            record = self.store.docs.get((PRESENCE_HOLDERS, report.user_id))
            outcome = decide(
                report.user_id, record, instance, report.held, report.at, report.reason
            )
            self.store.docs[(PRESENCE_HOLDERS, report.user_id)] = outcome.holders
            if outcome.presence is not None:
                merge_fields(
                    self.store.docs.setdefault((PRESENCE, report.user_id), {}), outcome.presence
                )
            if outcome.event is not None:
                events.append(outcome.event)
        return events


class FirestorePresenceRecords:
    """One transaction per chunk of users on the gateway's async client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def read(self, user_id: str) -> dict[str, Any] | None:
        ref = self._client.collection(PRESENCE).document(user_id)
        snapshot = await read_document(self._client, ref, timeout=2.0)
        return snapshot.to_dict() if snapshot.exists else None

    async def apply(self, instance: str, reports: Sequence[Report]) -> list[PresenceEvent]:
        from google.cloud.firestore import async_transactional

        holders = self._client.collection(PRESENCE_HOLDERS)
        presence = self._client.collection(PRESENCE)

        @async_transactional
        async def run(transaction: Any) -> list[PresenceEvent]:
            refs = [holders.document(r.user_id) for r in reports]
            records: dict[str, dict[str, Any] | None] = {}
            # The client's get_all inside the transaction: AsyncTransaction.get_all awaits the
            # client's async generator, which fails (google-cloud-firestore 2.34).
            async for snapshot in self._client.get_all(refs, transaction=transaction):
                records[snapshot.id] = snapshot.to_dict() if snapshot.exists else None
            events = []
            for report in reports:
                outcome = decide(
                    report.user_id,
                    records.get(report.user_id),
                    instance,
                    report.held,
                    report.at,
                    report.reason,
                )
                transaction.set(holders.document(report.user_id), outcome.holders)
                if outcome.presence is not None:
                    transaction.set(presence.document(report.user_id), outcome.presence, merge=True)
                if outcome.event is not None:
                    events.append(outcome.event)
            return events

        result: list[PresenceEvent] = await run(self._client.transaction(max_attempts=ATTEMPTS))
        return result


#: Takes the transitions a flush made (it must not block: the events publisher queues them).
EventSink = Callable[[list[PresenceEvent]], None]


class PresenceWriter:
    """Reports coalesced per user (the latest wins) and applied every ``interval`` seconds in
    transactions of CHUNK users; a failed transaction's reports are retried with the next
    flush unless a newer report replaced them. Transitions go to ``on_events``."""

    def __init__(self, records: PresenceRecords, instance: str, interval: float = 0.1) -> None:
        self.records = records
        self.instance = instance
        self.interval = interval
        self.on_events: EventSink | None = None
        self._pending: dict[str, Report] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.transitions = 0
        self.applied = 0
        self.failures = 0

    def report(self, report: Report) -> None:
        self._pending[report.user_id] = report
        self._idle.clear()
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="presence-writer")

    async def close(self, timeout: float = 5.0) -> None:
        """Apply what is pending (within ``timeout``), then stop."""
        if self._pending:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                logger.warning("presence: %d users' reports not applied", len(self._pending))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = self.interval
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(backoff)
            if await self.flush():
                backoff = self.interval
            else:
                backoff = min(5.0, backoff * 2)
                self._wake.set()

    async def flush(self) -> bool:
        """Apply the pending reports; False when a transaction failed (they are kept)."""
        taken, self._pending = list(self._pending.values()), {}
        ok = True
        for start in range(0, len(taken), CHUNK):
            chunk = taken[start : start + CHUNK]
            try:
                events = await self.records.apply(self.instance, chunk)
            except Exception as exc:
                if _cancelling():
                    # Cancelled (close) while the transaction began: its rollback, which has no
                    # transaction id yet, raised a ValueError in place of the cancellation
                    # (google-cloud-firestore 2.34), and a loop that went on would never end.
                    raise asyncio.CancelledError from exc
                ok = False
                self.failures += 1
                logger.warning("presence: %d users not written: %r", len(chunk), exc)
                for report in chunk:
                    self._pending.setdefault(report.user_id, report)
                continue
            self.applied += len(chunk)
            self.transitions += len(events)
            if events and self.on_events is not None:
                try:
                    self.on_events(events)
                except Exception:
                    logger.exception("presence: events not published")
        if not self._pending:
            self._idle.set()
        return ok


def _cancelling() -> bool:
    """Whether the running task has been asked to cancel."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
