"""The deployment view's decisions over a loopback broker (no Pub/Sub, no sockets).

Several ``Deployment`` objects, one per simulated instance, share a ``LoopbackBus`` that
delivers every published message to every instance asynchronously, as Pub/Sub does (and, like
the emulator, ignores the reply filter, so instances must drop others' replies themselves).
The same behaviour over the real Pub/Sub emulator is in tests/integration/test_broker.py and
tests/e2e/test_fanout.py.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.cluster.deployment import Deployment
from gateway.cluster.operation import Delivery
from gateway.exceptions import DeploymentUnavailable, UserNotConnectedError
from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.protocol.closes import CloseCode
from gateway.protocol.messages import utc_now
from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    INSTANCE_ID,
    MEMBERS,
)
from gateway.storage.store import MemoryStore
from tests.loopback import Cluster, LoopbackBus, Recorder, register, settings


async def test_send_reaches_the_users_sockets_on_every_instance_exactly_once() -> None:
    """A send answered by A reaches the user's sockets on A and C once each (even when the
    bus delivers every message twice); B, not holding the user, neither delivers nor
    replies; the answer counts both sockets."""
    bus = LoopbackBus()
    bus.duplicate = True
    async with Cluster("a", "b", "c", bus=bus) as cluster:
        on_a = cluster.socket("a", "u", "s1")
        on_c = cluster.socket("c", "u", "s2")
        sent = await cluster.at["a"].send("u", {"type": "hello"})
        assert sent == Delivery(2, 1, ["a", "c"], [], "deployment")
        await asyncio.sleep(0.05)
        assert on_a.texts() == on_c.texts() == ['{"type":"hello"}']
        assert cluster.at["b"].fanout.received[("send", "dropped")] == 2
        assert cluster.at["c"].fanout.received[("send", "duplicate")] == 1


async def test_send_to_nobody_is_404_and_to_a_silent_instance_names_it() -> None:
    async with Cluster("a", "b") as cluster:
        with pytest.raises(UserNotConnectedError):
            await cluster.at["a"].send("nobody", {"type": "x"})
        cluster.socket("b", "u", "s1")
        cluster.bus.deaf.add("b")
        sent = await cluster.at["a"].send("u", {"type": "x"})
        assert sent == Delivery(0, 0, [], ["b"], "deployment")


async def test_a_dead_instance_in_the_record_is_not_waited_for() -> None:
    """Sessions recorded under an instance whose heartbeat is stale do not count: the user
    is not connected."""
    async with Cluster("a") as cluster:
        register(cluster.store, "dead", age=600)
        cluster.store.docs[(MEMBERS, "u")] = {ACTIVE_SESSIONS: {"s": {INSTANCE_ID: "dead"}}}
        with pytest.raises(UserNotConnectedError):
            await cluster.at["a"].send("u", {"type": "x"})
        assert cluster.bus.published == []


async def test_broadcast_counts_users_once_and_skips_the_excluded_user() -> None:
    async with Cluster("a", "b", "c") as cluster:
        both_a, both_b = cluster.socket("a", "both", "s1"), cluster.socket("b", "both", "s2")
        solo = cluster.socket("c", "solo", "s3")
        excluded = cluster.socket("c", "skip", "s4")
        sent = await cluster.at["b"].broadcast({"type": "news"}, exclude_user="skip")
        assert sent == Delivery(3, 2, ["b", "a", "c"], [], "deployment")
        await asyncio.sleep(0.05)
        for wire in (both_a, both_b, solo):
            assert wire.texts() == ['{"type":"news"}']
        assert excluded.sent == []


async def test_timeouts_close_the_sessions_wherever_they_are_and_count_the_rest() -> None:
    """The callback's sessions are closed on A and C with the timeout message and 4408; an
    unknown session is not found; a repeated callback closes nothing twice."""
    async with Cluster("a", "b", "c") as cluster:
        on_a, on_c = cluster.socket("a", "u", "s1"), cluster.socket("c", "u", "s2")
        sessions = [("u", "s1"), ("u", "s2"), ("u", "gone")]
        assert await cluster.at["b"].expire(sessions) == (2, 1)
        assert await cluster.at["b"].expire(sessions) == (0, 3)
        for wire in (on_a, on_c):
            assert [m["type"] for m in wire.sent] == ["websocket.send", "websocket.close"]
            assert wire.sent[1]["code"] == CloseCode.SESSION_EXPIRED


async def test_stats_merge_every_instance_and_name_the_silent_ones() -> None:
    async with Cluster("a", "b", "c") as cluster:
        cluster.socket("a", "u1", "s1")
        cluster.socket("b", "u1", "s2")
        cluster.socket("b", "u2", "s3")
        cluster.bus.deaf.add("c")
        stats = await cluster.at["a"].stats()
        assert (stats.scope, stats.instances, stats.unreachable_instances) == (
            "deployment",
            ["a", "b"],
            ["c"],
        )
        assert (stats.total_connections, stats.total_users) == (3, 2)


async def test_with_the_broker_down_local_sockets_are_served_and_the_rest_is_stated() -> None:
    """Send and broadcast deliver here and say ``scope: instance``; a send for a user held
    only elsewhere and a timeout that must travel answer DeploymentUnavailable (503)."""
    async with Cluster("a", "b") as cluster:
        here = cluster.socket("a", "local", "s1")
        cluster.socket("b", "remote", "s2")
        cluster.socket("a", "both", "s3")
        cluster.socket("b", "both", "s4")
        cluster.bus.down = True
        a = cluster.at["a"]
        assert await a.send("local", {"type": "x"}) == Delivery(1, 1, ["a"], [], "deployment")
        assert await a.send("both", {"type": "x"}) == Delivery(1, 1, ["a"], ["b"], "instance")
        with pytest.raises(DeploymentUnavailable, match="broker"):
            await a.send("remote", {"type": "x"})
        cast = await a.broadcast({"type": "y"})
        assert (cast.scope, cast.connections, cast.unreachable) == ("instance", 2, ["b"])
        assert len(here.texts()) == 2
        assert (await a.stats()).scope == "instance"
        with pytest.raises(DeploymentUnavailable, match="poll"):
            await a.expire([("local", "s1"), ("remote", "s2")])
        assert here.sent[-1]["code"] == CloseCode.SESSION_EXPIRED


async def test_without_a_broker_everything_stays_on_this_instance() -> None:
    service = PresenceService(settings("alone", pubsub_topic=""), MemoryStore())
    deployment = Deployment(service, None)
    wire = Recorder()
    service.registry.add(Connection("u", "s1", utc_now(), wire))
    assert await deployment.send("u", {"type": "x"}) == Delivery(1, 1, ["alone"], [], "instance")
    assert await deployment.broadcast({"type": "x"}) == Delivery(1, 1, ["alone"], [], "instance")
    assert (await deployment.stats()).scope == "instance"
    with pytest.raises(UserNotConnectedError):
        await deployment.send("elsewhere", {"type": "x"})


async def test_without_firestore_a_send_falls_back_to_this_instance_and_says_so() -> None:
    async with Cluster("a") as cluster:

        async def down(user_ids: list[str], timeout: float) -> None:
            raise ConnectionError("Firestore unavailable")

        cluster.store.get_members = down  # type: ignore[method-assign]
        cluster.socket("a", "here", "s1")
        sent = await cluster.at["a"].send("here", {"type": "x"})
        assert sent == Delivery(1, 1, ["a"], [], "instance")
        with pytest.raises(DeploymentUnavailable, match="cannot tell where"):
            await cluster.at["a"].send("elsewhere", {"type": "x"})


async def test_garbage_and_replies_for_others_are_dropped() -> None:
    """A message that is not an event, or a receipt addressed to another instance, changes
    nothing and is counted."""
    async with Cluster("a") as cluster:
        a = cluster.at["a"]
        a.fanout.on_message(b"not json", {"kind": "send", "origin": "x", "expect": "a"})
        a.fanout.on_message(b"{}", {"kind": "reply", "to": "someone-else"})
        assert a.fanout.received[("send", "undecodable")] == 1
        assert a.fanout.received[("reply", "dropped")] == 1


async def test_a_send_to_a_user_held_only_here_publishes_nothing_and_reads_once() -> None:
    """The local fast path: the user's sockets are all here, so nothing is published and no
    receipt awaited; a second send with the same sockets here reuses the first's read."""
    async with Cluster("a", "b") as cluster:
        wire = cluster.socket("a", "u", "s1", age=5)
        a = cluster.at["a"]
        for _ in range(2):
            assert await a.send("u", {"type": "x"}) == Delivery(1, 1, ["a"], [], "deployment")
        assert len(wire.texts()) == 2
        assert cluster.bus.published == []
        assert a.directory.whereabouts_hits == 1


async def test_a_user_who_moves_to_another_instance_between_sends_gets_both() -> None:
    """Right after a send A answered from its own sockets, the user leaves A and connects to
    B: the next send answered by A, within the reuse window, is looked up afresh and reaches
    B (what A remembered was tied to the socket that left)."""
    async with Cluster("a", "b") as cluster:
        a = cluster.at["a"]
        on_a = cluster.socket("a", "u", "s1", age=5)
        assert (await a.send("u", {"n": 1})).instances == ["a"]
        [conn] = a.service.registry.sockets_of("u")
        a.service.registry.remove(conn)
        del cluster.store.docs[(MEMBERS, "u")][ACTIVE_SESSIONS]["s1"]
        on_b = cluster.socket("b", "u", "s2")
        assert await a.send("u", {"n": 2}) == Delivery(1, 1, ["b"], [], "deployment")
        await asyncio.sleep(0.05)
        assert (on_a.texts(), on_b.texts()) == (['{"n":1}'], ['{"n":2}'])
        assert a.directory.whereabouts_hits == 0


async def test_a_second_socket_here_makes_the_next_send_look_again() -> None:
    """A user who keeps a socket on A, opens one on B and another on A: the next send at A
    reads Firestore again (A's sockets of the user changed) and reaches B too."""
    async with Cluster("a", "b") as cluster:
        a = cluster.at["a"]
        cluster.socket("a", "u", "s1", age=5)
        await a.send("u", {"n": 1})
        on_b = cluster.socket("b", "u", "s2")
        cluster.socket("a", "u", "s3", age=5)
        assert await a.send("u", {"n": 2}) == Delivery(3, 1, ["a", "b"], [], "deployment")
        await asyncio.sleep(0.05)
        assert on_b.texts() == ['{"n":2}']


async def test_an_announced_arrival_is_waited_for_although_the_last_read_said_nobody() -> None:
    """A user's settled socket on A; A's send reads Firestore once (nobody elsewhere). The
    user opens a socket on B, whose admission sees A in the record and announces it: A's next
    send, within the reuse window and without a read, waits for B and reaches it."""
    async with Cluster("a", "b") as cluster:
        a, b = cluster.at["a"], cluster.at["b"]
        cluster.socket("a", "u", "s1", age=5)
        assert (await a.send("u", {"n": 1})).instances == ["a"]
        assert await b.service.admission.admit("u", None) is None  # AUTH_MODE=off: no token
        on_b = cluster.socket("b", "u", "s2")
        await asyncio.sleep(0.05)  # the notice crosses the bus
        assert await a.send("u", {"n": 2}) == Delivery(2, 1, ["a", "b"], [], "deployment")
        assert a.directory.whereabouts_hits == 1
        await asyncio.sleep(0.05)
        assert on_b.texts() == ['{"n":2}']


async def test_young_sockets_make_every_send_read_afresh() -> None:
    """While one of the user's sockets here is younger than SETTLED_SECONDS, nothing is
    reused: another socket opened at the same moment elsewhere is found once recorded."""
    async with Cluster("a", "b") as cluster:
        a = cluster.at["a"]
        cluster.socket("a", "u", "s1")
        await a.send("u", {"n": 1})
        on_b = cluster.socket("b", "u", "s2")
        assert (await a.send("u", {"n": 2})).instances == ["a", "b"]
        assert a.directory.whereabouts_hits == 0
        await asyncio.sleep(0.05)
        assert on_b.texts() == ['{"n":2}']
