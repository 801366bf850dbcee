"""A socket's member entry and its session record move together: at every commit, and so at
whatever moment an instance dies, the member lists exactly the sessions marked active (found by
the soak, make soak: a churning user's member listed a session whose record had ended)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    INSTANCE_ID,
    INSTANCES,
    IS_ACTIVE,
    LAST_PONG_AT,
    MEMBERS,
    SESSIONS,
    STOPPED_AT,
    USER_ID,
)
from gateway.storage.store import MemoryStore, Write
from tests.support import eventually, unit_settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class GatedStore(MemoryStore):
    """Commits matching ``hold`` wait for ``release``, as against a Firestore that stalled
    with them in flight; ``snapshots`` keeps the documents after every commit."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: Callable[[Sequence[Write]], bool] = lambda writes: False
        self.release = asyncio.Event()
        self.held = 0
        self.snapshots: list[dict[tuple[str, str], dict[str, Any]]] = []

    async def commit(self, writes: Sequence[Write]) -> None:
        if self.hold(writes):
            self.held += 1
            await self.release.wait()
        await super().commit(writes)
        self.snapshots.append(copy.deepcopy(self.docs))


def disagreements(docs: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Where the member entries and the active sessions disagree: what the sweep's reaper
    could not repair after the instance died (it ends the sessions marked active on a lost
    instance, and removes those from their members; a member entry without one stays)."""
    listed = {
        (user, session, (entry or {}).get(INSTANCE_ID))
        for (collection, user), doc in docs.items()
        if collection == MEMBERS
        for session, entry in (doc.get(ACTIVE_SESSIONS) or {}).items()
    }
    active = {
        (doc.get(USER_ID), session, doc.get(INSTANCE_ID))
        for (collection, session), doc in docs.items()
        if collection == SESSIONS and doc.get(IS_ACTIVE)
    }
    return [f"member lists {s}, not active" for s in sorted(listed - active, key=str)] + [
        f"active {s}, not listed" for s in sorted(active - listed, key=str)
    ]


def holds_pong(writes: Sequence[Write]) -> bool:
    return any(w.collection == MEMBERS and LAST_PONG_AT in w.fields for w in writes)


async def no_send(message: dict[str, Any]) -> None:
    return None


async def started(store: MemoryStore) -> PresenceService:
    settings = unit_settings(instance_id="i1", ping_interval=60, sweep_interval=60, grace=0.1)
    service = PresenceService(settings, store)
    service.writer.flush_interval = 0.01
    await service.start()
    return service


async def test_a_disconnect_does_not_end_the_session_ahead_of_its_member_entry() -> None:
    """With the member's pong commit stalled in flight, a disconnect's session record waits
    for its member entry, so an instance killed meanwhile leaves the two agreeing."""
    store = GatedStore()
    service = await started(store)
    conn = Connection("u1", "s1", T0, no_send)
    service.connected(conn)

    async def recorded() -> bool:
        return store.docs.get((SESSIONS, "s1"), {}).get(IS_ACTIVE) is True and bool(
            store.docs.get((MEMBERS, "u1"), {}).get(ACTIVE_SESSIONS)
        )

    await eventually(recorded, timeout=5)
    store.hold = holds_pong
    service.pong(conn, T0)

    async def stalled() -> bool:
        return store.held == 1

    await eventually(stalled, timeout=5)
    service.disconnected(conn, 1000)
    await asyncio.sleep(0.2)
    # The instance dies here (SIGKILL): nothing more reaches Firestore.
    assert [disagreements(s) for s in store.snapshots if disagreements(s)] == []
    assert store.docs[(SESSIONS, "s1")][IS_ACTIVE] is True, "ended ahead of its member entry"
    store.release.set()

    async def ended() -> bool:
        return store.docs[(SESSIONS, "s1")][IS_ACTIVE] is False

    await eventually(ended, timeout=5)
    assert store.docs[(MEMBERS, "u1")][ACTIVE_SESSIONS] == {}
    assert [disagreements(s) for s in store.snapshots if disagreements(s)] == []
    await service.stop()


async def test_a_connect_does_not_list_the_session_ahead_of_its_record() -> None:
    """A connect whose member is busy in a stalled commit records neither the member entry
    nor the session until both can go in one commit."""
    store = GatedStore()
    service = await started(store)
    first = Connection("u1", "s1", T0, no_send)
    service.connected(first)

    async def recorded() -> bool:
        return (SESSIONS, "s1") in store.docs

    await eventually(recorded, timeout=5)
    store.hold = holds_pong
    service.pong(first, T0)

    async def stalled() -> bool:
        return store.held == 1

    await eventually(stalled, timeout=5)
    service.connected(Connection("u1", "s2", T0, no_send))
    await asyncio.sleep(0.2)
    assert [disagreements(s) for s in store.snapshots if disagreements(s)] == []
    store.release.set()

    async def both() -> bool:
        return set(store.docs.get((MEMBERS, "u1"), {}).get(ACTIVE_SESSIONS, {})) == {"s1", "s2"}

    await eventually(both, timeout=5)
    assert disagreements(store.docs) == []
    await service.stop()


async def test_a_drain_that_cannot_flush_does_not_mark_the_instance_stopped() -> None:
    """A drain whose disconnect records are stuck behind a stalled Firestore leaves the instance
    unmarked, so the sweep counts it lost and ends the sessions it left marked active."""
    store = GatedStore()
    service = await started(store)
    service.flush_deadline = 0.3
    conn = Connection("u1", "s1", T0, no_send)
    service.connected(conn)

    async def recorded() -> bool:
        return (SESSIONS, "s1") in store.docs

    await eventually(recorded, timeout=5)
    store.hold = lambda writes: True
    service.disconnected(conn, 1012)
    await service.stop()
    assert STOPPED_AT not in store.docs[(INSTANCES, "i1")]
    assert store.docs[(SESSIONS, "s1")][IS_ACTIVE] is True
    assert disagreements(store.docs) == []


async def test_a_drain_marks_the_instance_stopped_after_its_records() -> None:
    """A drain that flushed marks the instance stopped in a commit after the disconnects'."""
    store = GatedStore()
    service = await started(store)
    conn = Connection("u1", "s1", T0, no_send)
    service.connected(conn)

    async def recorded() -> bool:
        return (SESSIONS, "s1") in store.docs

    await eventually(recorded, timeout=5)
    service.disconnected(conn, 1012)
    await service.stop()
    marked = [
        i for i, s in enumerate(store.snapshots) if STOPPED_AT in s.get((INSTANCES, "i1"), {})
    ]
    ended = [
        i
        for i, s in enumerate(store.snapshots)
        if s.get((SESSIONS, "s1"), {}).get(IS_ACTIVE) is False
    ]
    assert ended and marked and ended[0] < marked[0]
    assert store.docs[(MEMBERS, "u1")][ACTIVE_SESSIONS] == {}
