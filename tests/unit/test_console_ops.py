"""The console's three operations through the one scatter/gather, over the loopback bus (as
tests/unit/test_operations.py plays the others): every instance's part merged, repeated
messages counted once, an instance that does not answer named, the registry's instances that
stopped or went stale shown so, and a broker that is down answered by this instance alone.

Three instances: user ``u`` has a socket on B and one on C, user ``v`` one on A, in room ``r``
on A and B."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec
import pytest

from gateway.cluster import console, console_sampler
from gateway.cluster.console_sampler import sample
from gateway.cluster.fanout import Reply
from gateway.instance.recorder import Counters, SampleRing
from gateway.protocol.console import (
    BUSIEST_ROOMS,
    LISTED_USERS,
    MAX_EVENTS,
    SAMPLES,
    ConsoleEvent,
    ConsoleReceipt,
    InstanceFigures,
)
from gateway.protocol.messages import utc_now
from gateway.storage.schema import INSTANCES, STOPPED_AT
from tests.loopback import Cluster, LoopbackBus, register
from tests.support import eventually

SOCKETS = [("b", "u", "s1"), ("c", "u", "s2"), ("a", "v", "s3")]


def populate(cluster: Cluster) -> None:
    for instance, user, session in SOCKETS:
        cluster.socket(instance, user, session)
        [conn] = cluster.at[instance].service.registry.sockets_of(user)
        if instance in ("a", "b"):
            cluster.at[instance].service.rooms.join(conn, "r", None)
        cluster.at[instance].service.events.recent.add("connect", user, session)
        sample(cluster.at[instance], 1_000.0)


def states(rows: list[console.InstanceRow]) -> dict[str, str]:
    return {r.instance_id: r.state for r in rows}


@pytest.mark.parametrize("duplicate", [False, True], ids=["once", "twice"])
async def test_every_instance_counted_once(duplicate: bool) -> None:
    """Totals, rows, rooms, a user's sockets and the events cover all three instances, the
    same when every message arrives twice."""
    bus = LoopbackBus()
    bus.duplicate = duplicate
    async with Cluster("a", "b", "c", bus=bus) as cluster:
        populate(cluster)
        a = cluster.at["a"]
        overview = await console.overview(a)
        assert overview.scope == "deployment"
        assert (overview.totals.sockets, overview.totals.users) == (3, 2)
        assert overview.totals.users_exact
        assert states(overview.instances) == {"a": "live", "b": "live", "c": "live"}
        assert {r.instance_id: r.sockets for r in overview.instances} == {"a": 1, "b": 1, "c": 1}
        assert [(r.room, r.connections) for r in overview.rooms] == [("r", 2)]
        assert overview.series.connections == [3]
        user = await console.user(a, "u")
        assert sorted(s.instance_id for s in user.sockets) == ["b", "c"]
        assert [s.rooms for s in user.sockets if s.instance_id == "b"] == [["r"]]
        assert user.unreachable_instances == []
        events = await console.events(a, 10, None, None)
        assert sorted(e.instance_id for e in events.events) == ["a", "b", "c"]
        only = await console.events(a, 10, "connect", "u")
        assert sorted(e.session_id or "" for e in only.events) == ["s1", "s2"]
        assert (await console.events(a, 10, "timeout", None)).events == []


@pytest.mark.parametrize("fault", ["deaf", "lost_receipt"])
async def test_an_instance_that_does_not_answer_is_named(fault: str) -> None:
    """C never hears the request, or its receipt is lost: its row is ``unreachable`` (its
    heartbeat is fresh), the counts are A's and B's, and the user and events answers name
    it."""
    bus = LoopbackBus()
    (bus.deaf if fault == "deaf" else bus.lose_replies_from).add("c")
    async with Cluster("a", "b", "c", bus=bus) as cluster:
        populate(cluster)
        a = cluster.at["a"]
        overview = await console.overview(a)
        assert states(overview.instances)["c"] == "unreachable"
        assert overview.totals.sockets == 2
        gone = next(r for r in overview.instances if r.instance_id == "c")
        assert gone.sockets is None and gone.last_heartbeat_at is not None
        user = await console.user(a, "u")
        assert [s.instance_id for s in user.sockets] == ["b"]
        assert user.unreachable_instances == ["c"]
        assert (await console.events(a, 10, None, None)).unreachable_instances == ["c"]


async def test_registry_instances_shown_stopped_or_lost() -> None:
    """Instances the heartbeat registry knows but that are not live: one that said it stopped
    is ``stopped``, one whose heartbeat is past 3 x SWEEP_INTERVAL is ``lost``."""
    async with Cluster("a", "b") as cluster:
        register(cluster.store, "drained")
        cluster.store.docs[(INSTANCES, "drained")][STOPPED_AT] = utc_now()
        register(cluster.store, "crashed", age=3 * 60.0 + 30)
        overview = await console.overview(cluster.at["a"])
        assert states(overview.instances) == {
            "a": "live",
            "b": "live",
            "drained": "stopped",
            "crashed": "lost",
        }


async def test_broker_down_answers_for_this_instance() -> None:
    """With the broker refusing to publish, the answering instance answers alone and says
    ``scope: "instance"``, naming nobody."""
    bus = LoopbackBus()
    async with Cluster("a", "b", bus=bus) as cluster:
        populate_two = [("a", "v", "s3"), ("b", "u", "s1")]
        for instance, user, session in populate_two:
            cluster.socket(instance, user, session)
        bus.down = True
        overview = await console.overview(cluster.at["a"])
        assert overview.scope == "instance"
        assert states(overview.instances) == {"a": "live"}
        assert overview.totals.sockets == 1
        user = await console.user(cluster.at["a"], "u")
        assert (user.scope, user.sockets, user.unreachable_instances) == ("instance", [], [])


async def test_user_view_reads_presence() -> None:
    """The user's presence document is added from the store by the answering instance; no
    acknowledged stream position leaves ``stream_offset`` null."""
    async with Cluster("a") as cluster:
        a = cluster.at["a"]
        cluster.socket("a", "u", "s1")
        cluster.store.docs[("presence", "u")] = {
            "state": "online",
            "devices": 2,
            "last_seen_at": utc_now() - timedelta(seconds=5),
        }
        user = await console.user(a, "u")
        assert user.presence is not None
        assert (user.presence.state, user.presence.devices) == ("online", 2)
        assert user.presence.last_seen_at is not None
        assert user.sockets[0].stream_offset is None


def test_receipts_stay_far_under_the_pubsub_limit() -> None:
    """At their largest (300 samples, 1,000 listed users, 20 rooms, 1,000 events, every id
    128 characters) an overview and an events receipt each encode under 1 MB."""
    ring = SampleRing(0.0)
    for n in range(SAMPLES + 10):
        ring.record(1.7e9 + n * 2.0 + 0.123, Counters(99_999, n * 12_345, n * 12_000), [0.0123])
    figures = InstanceFigures(
        version="0.1.0",
        started_at=1.7e9,
        sockets=99_999,
        users=99_999,
        listed_users=[f"{n:0128d}" for n in range(LISTED_USERS)],
        pong_backlog=123_456,
        oldest_pong_age_seconds=12.345,
        pubsub="ok",
        rooms=[(f"{n:0128d}", 99_999) for n in range(BUSIEST_ROOMS)],
        samples=ring.wire(),
    )
    event = ConsoleEvent(
        at=1.7e9,
        instance_id="i" * 40,
        kind="disconnect",
        user_id="u" * 128,
        session_id="s" * 32,
        code=4410,
        reason="r" * 60,
    )
    for receipt in (
        ConsoleReceipt(figures=figures),
        ConsoleReceipt(events=[event] * MAX_EVENTS),
    ):
        size = len(msgspec.json.encode(Reply(id="x" * 32, instance="i" * 40, console=receipt)))
        assert size < 1_000_000, size


async def test_sampler_fills_the_ring_and_takes_the_fanout_durations() -> None:
    """The sampler's loop adds a sample per interval with the broker's state, and takes the
    durations the fan-out noted (leaving none behind)."""
    async with Cluster("a", "b") as cluster:
        a = cluster.at["a"]
        await console.overview(a)  # one fan-out request: one duration noted
        assert a.fanout is not None and len(a.fanout.durations) == 1
        task = asyncio.create_task(console_sampler.run(a, interval=0.01))
        try:

            async def sampled() -> bool:
                return len(a.service.samples.samples) >= 3

            await eventually(sampled, timeout=5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert a.service.samples.pubsub == "ok"
        assert a.fanout.durations == []
        assert sum(s.fanout_count for s in a.service.samples.samples) == 1
