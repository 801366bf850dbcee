"""Room presence replicated over a loopback bus (gateway.cluster.presence): owners' changes
reach the other instances' views, repeated messages change nothing, an instance that starts
syncs, one that missed messages resyncs from the owner's digest, and a lost instance's entries
are dropped. The same over real Pub/Sub is tests/e2e/test_presence.py."""

from __future__ import annotations

import asyncio

from gateway.cluster.deployment import Deployment
from gateway.instance.registry import Connection
from gateway.protocol.messages import utc_now
from gateway.protocol.presence import PresenceMember
from tests.loopback import Cluster, LoopbackBus, Recorder, register

PRESENCE = {"room_prefixes": ("doc:",), "grace": 0.0, "sweep_interval": 60.0}


def join(deployment: Deployment, user: str, session: str, room: str = "doc:1") -> Connection:
    conn = Connection(user, session, utc_now(), Recorder(), room_grants=None)
    deployment.service.registry.add(conn)
    deployment.service.join_room(conn, room, {"name": user})
    return conn


def members(deployment: Deployment, room: str = "doc:1") -> list[PresenceMember]:
    return deployment.service.presence.view.members(room)


async def test_an_owners_changes_reach_every_view_once_even_when_repeated() -> None:
    """A join on A and a second device on B show on C as one user with two devices; every
    message delivered twice changes nothing."""
    bus = LoopbackBus()
    bus.duplicate = True
    async with Cluster("a", "b", "c", bus=bus, **PRESENCE) as cluster:
        join(cluster.at["a"], "u", "s1")
        join(cluster.at["b"], "u", "s2")
        await asyncio.sleep(0.2)
        for instance in "abc":
            assert members(cluster.at[instance]) == [PresenceMember("u", 2, {"name": "u"})]
        cluster.at["a"].service.leave_room(
            cluster.at["a"].service.registry.sockets_of("u")[0], "doc:1"
        )
        await asyncio.sleep(0.2)
        assert members(cluster.at["c"]) == [PresenceMember("u", 1, {"name": "u"})]


async def test_an_instance_that_starts_asks_the_others_for_their_entries() -> None:
    """A late instance's view holds what the running ones had before it started."""
    async with Cluster("a", "b", **PRESENCE) as cluster:
        join(cluster.at["a"], "u", "s1")
        join(cluster.at["b"], "v", "s2")
        await asyncio.sleep(0.2)
        late = cluster.add("c")
        await late.start()
        try:
            await asyncio.sleep(0.2)
            assert [m.user_id for m in members(late)] == ["u", "v"]
        finally:
            await late.stop()


async def test_an_instance_that_missed_messages_resyncs_from_the_owners_digest() -> None:
    """B is deaf while A's member joins; A's next digest shows B the gap and B's next watch
    asks A for its entries."""
    bus = LoopbackBus()
    async with Cluster("a", "b", bus=bus, **PRESENCE) as cluster:
        bus.deaf.add("b")
        join(cluster.at["a"], "u", "s1")
        await asyncio.sleep(0.2)
        bus.deaf.clear()
        assert members(cluster.at["b"]) == []
        presence_a, presence_b = cluster.at["a"].presence, cluster.at["b"].presence
        assert presence_a is not None and presence_b is not None
        await presence_a.watch_once()
        await asyncio.sleep(0.1)
        await presence_b.watch_once()
        assert [m.user_id for m in members(cluster.at["b"])] == ["u"]
        assert presence_b.resyncs == 1


async def test_a_lost_instances_entries_are_dropped_and_their_users_leave() -> None:
    """A stops beating: after a sweep interval of being seen dead, B drops A's entries, and
    B's members get the leave of the user only A held."""
    async with Cluster("a", "b", **PRESENCE) as cluster:
        join(cluster.at["a"], "gone", "s1")
        watcher = join(cluster.at["b"], "here", "s2")
        await asyncio.sleep(0.2)
        await cluster.at["b"].service.presence.send_diffs()  # the members saw both
        presence = cluster.at["b"].presence
        assert presence is not None
        presence.sweep_interval = 0.0
        register(cluster.store, "a", age=3600)
        await asyncio.sleep(1.1)  # the directory's one-second cache of live instances
        await presence.watch_once()
        assert [m.user_id for m in members(cluster.at["b"])] == ["here"]
        await cluster.at["b"].service.presence.send_diffs()
        wire = watcher._send
        assert isinstance(wire, Recorder)
        assert any('"leaves":[{"user_id":"gone"}]' in text for text in wire.texts())
        assert presence.dropped_instances == 1
