"""Which instances a fan-out waits for (gateway.cluster.liveness): by the heartbeat clock while
the registry is current, and from the last live set while it is behind or unreadable, so that a
room send after a Firestore stall names a silent member's instance instead of answering complete
(found by the soak, docs/soak.md). The same over the real emulators: tests/e2e/test_stall_fanout.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.cluster.liveness import MIN_STALL_GRACE, Liveness
from gateway.storage.schema import HEARTBEAT_AT, STOPPED_AT
from gateway.storage.store import MemoryStore
from tests.loopback import Cluster, register

INTERVAL = 2.0
WALL = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def beat(age: float, **extra: Any) -> dict[str, Any]:
    return {HEARTBEAT_AT: WALL - timedelta(seconds=age), **extra}


def test_a_current_registry_is_judged_by_the_clock() -> None:
    """With this instance's own heartbeat fresh: fresh others are live; a heartbeat three
    intervals old, or a stopped entry, is not; this instance is never listed."""
    live = Liveness("me", INTERVAL)
    docs = {"me": beat(1), "a": beat(5.9), "b": beat(6.1), "c": beat(1, **{STOPPED_AT: WALL})}
    assert live.registry(docs, WALL, mono=100.0) == {"a"}
    assert live.behind_at is None


def test_every_heartbeat_stale_at_once_keeps_the_last_live_set() -> None:
    """After a Firestore stall every heartbeat, this instance's own too, is stale: the registry
    is behind, not the instances dead, so the last live set stands (but a drained one goes)."""
    live = Liveness("me", INTERVAL)
    assert live.registry({"me": beat(1), "a": beat(1), "b": beat(1)}, WALL, 100.0) == {"a", "b"}
    stalled = {"me": beat(9), "a": beat(9), "b": beat(9, **{STOPPED_AT: WALL})}
    assert live.registry(stalled, WALL, 109.0) == {"a"}
    assert live.behind_at == 109.0


def test_instances_live_before_a_stall_get_a_grace_to_catch_up() -> None:
    """Once this instance's heartbeat is fresh again, the others' still stale ones keep their
    place for the grace after the registry was last seen behind, then the clock decides."""
    live = Liveness("me", INTERVAL)
    live.registry({"me": beat(0), "a": beat(0), "b": beat(0)}, WALL, 100.0)
    assert live.registry({"me": beat(9), "a": beat(9), "b": beat(9)}, WALL, 109.0) == {"a", "b"}
    caught_up = {"me": beat(0), "a": beat(0), "b": beat(9)}
    assert live.registry(caught_up, WALL, 110.0) == {"a", "b"}
    assert live.registry(caught_up, WALL, 109.0 + MIN_STALL_GRACE) == {"a"}


def test_without_a_stall_a_dead_instance_is_dropped_at_once() -> None:
    """A crash is noticed as before: three intervals after its last heartbeat, no grace."""
    live = Liveness("me", INTERVAL)
    live.registry({"me": beat(0), "a": beat(0), "b": beat(0)}, WALL, 100.0)
    assert live.registry({"me": beat(0), "a": beat(0), "b": beat(7)}, WALL, 107.0) == {"a"}


def test_this_instances_own_write_lag_says_the_registry_is_behind() -> None:
    """Own writes lagging (Endings.lagged_at) count as the registry seen behind, though its
    own heartbeat already caught up when the registry is read."""
    live = Liveness("me", INTERVAL)
    live.registry({"me": beat(0), "a": beat(0)}, WALL, 100.0)
    live.note_lag(105.0)
    assert live.registry({"me": beat(0), "a": beat(8)}, WALL, 108.0) == {"a"}
    live.note_lag(None)
    live.note_lag(90.0)  # an older lag does not move the grace back
    assert live.behind_at == 105.0


def test_an_unreadable_registry_gives_the_last_live_set() -> None:
    """Unreadable: the last live set, or None when the registry was never read."""
    live = Liveness("me", INTERVAL)
    assert live.unreadable(100.0) is None
    live.registry({"me": beat(0), "a": beat(0)}, WALL, 101.0)
    assert live.unreadable(102.0) == {"a"}


def test_instances_read_by_id_while_the_registry_is_behind() -> None:
    """A send's instances (read by id, with this instance's own entry): by the clock while
    the registry is current; while it is behind, every entry that exists and has not
    stopped."""
    live = Liveness("me", INTERVAL)
    docs = {"me": beat(0), "a": beat(0), "b": beat(8), "c": {}}
    assert live.alive(docs, WALL, 100.0) == {"a"}
    stale = {**docs, "me": beat(8), "d": beat(8, **{STOPPED_AT: WALL})}
    assert live.alive(stale, WALL, 101.0) == {"a", "b"}


class UnreadableStore(MemoryStore):
    """The registry query fails on demand, as against a stopped Firestore."""

    down = False

    async def recent_instances(self, since: datetime, timeout: float) -> dict[str, Any]:
        if self.down:
            raise TimeoutError("registry read timed out")
        return await super().recent_instances(since, timeout)


async def room_cluster() -> Cluster:
    """Three instances (sweep interval 2 s), one member of room "team" on each."""
    cluster = Cluster("a", "b", "c", sweep_interval=INTERVAL)
    for instance in "abc":
        cluster.socket(instance, f"u{instance}", instance)
        service = cluster.at[instance].service
        [held] = list(service.registry)
        held.room_grants = ("team",)
        service.join_room(held, "team")
    return cluster


async def test_a_room_send_after_a_stall_names_the_silent_instance() -> None:
    """Every heartbeat stale at once (a Firestore stall) and C deaf (its subscription gone):
    the room send waits for B and C as before the stall and names C unreachable."""
    async with await room_cluster() as cluster:
        first = await cluster.at["a"].room_send("team", {"type": "before"})
        assert (first.connections, first.unreachable) == (3, [])
        for instance in "abc":
            register(cluster.store, instance, age=10 * INTERVAL)
        cluster.at["a"].directory._instances_cache = None
        cluster.bus.deaf.add("c")
        sent = await cluster.at["a"].room_send("team", {"type": "after"})
        assert (sent.connections, sent.unreachable, sent.scope) == (2, ["c"], "deployment")


async def test_a_room_send_with_the_registry_unreadable_names_the_silent_instance() -> None:
    """The registry unreadable and C deaf: the last live set is waited for, C is named."""
    async with await room_cluster() as cluster:
        store = UnreadableStore()
        store.docs = cluster.store.docs
        directory = cluster.at["a"].directory
        directory.store = store
        await cluster.at["a"].room_send("team", {"type": "before"})
        store.down = True
        directory._instances_cache = None
        cluster.bus.deaf.add("c")
        sent = await cluster.at["a"].room_send("team", {"type": "after"})
        assert (sent.connections, sent.unreachable, sent.scope) == (2, ["c"], "deployment")


def test_a_new_instance_holds_the_live_set_only_until_it_reads_its_own_entry() -> None:
    """Right after start this instance's registration may not be committed yet: its absence
    holds the last live set, as a stall would; once its own entry is read fresh the clock
    decides again, so a crash then is not kept live for MIN_STALL_GRACE."""
    live = Liveness("me", INTERVAL)
    assert live.registry({"a": beat(0), "b": beat(0)}, WALL, 100.0) == {"a", "b"}
    assert live.registry({"a": beat(7), "b": beat(0)}, WALL, 101.0) == {"a", "b"}
    assert live.registry({"me": beat(0), "a": beat(7), "b": beat(0)}, WALL, 102.0) == {"b"}
    assert live.behind_at is None


def test_a_real_lag_before_the_first_sighting_keeps_the_grace() -> None:
    """Own writes lagging while unregistered is a stall, not a start: the grace stands, and a
    member read's liveness (``alive``) clears a start-only absence the same way."""
    lagged = Liveness("me", INTERVAL)
    lagged.registry({"a": beat(0)}, WALL, 100.0)
    lagged.note_lag(101.0)
    assert lagged.registry({"me": beat(0), "a": beat(7)}, WALL, 102.0) == {"a"}
    fresh = Liveness("me", INTERVAL)
    assert fresh.alive({"a": beat(7)}, WALL, 100.0) == {"a"}
    assert fresh.alive({"me": beat(0), "a": beat(7)}, WALL, 101.0) == set()


async def test_cached_registry_entries_are_judged_as_of_their_read() -> None:
    """This instance's own entry, fresh when read and reused from the directory's one-second
    cache, does not make the registry look behind (which would keep dead instances live for
    MIN_STALL_GRACE) just because the cache aged it."""
    cluster = Cluster("a", "b", sweep_interval=0.5)
    cluster.socket("b", "u", "s1")
    register(cluster.store, "a", age=1.2)
    directory = cluster.at["a"].directory
    assert await directory.user_instances("u") == {"b": 1}
    await asyncio.sleep(0.6)
    assert await directory.user_instances("u") == {"b": 1}
    assert directory.liveness.behind_at is None
