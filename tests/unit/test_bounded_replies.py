"""Bounded answers: ``/ws/stats`` and ``/ws/rooms/{room}`` list at most ``limit`` users and
members, merged across instances with exact counts, and every receipt an instance publishes
stays under Pub/Sub's message limit however many sockets it holds (loopback broker, as in
tests/unit/test_deployment.py).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping
from typing import cast

import msgspec

from gateway.cluster.deployment import Deployment
from gateway.cluster.fanout import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    PUBSUB_MAX_MESSAGE_BYTES,
    Recipients,
    Reply,
    user_digests,
)
from gateway.cluster.stats import count_users
from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.storage.store import MemoryStore
from tests.loopback import Cluster, Endpoint, LoopbackBus, register, settings

#: The sockets one instance is sized for, each of a distinct user with the longest id allowed.
SOCKETS = 100_000


class SizingBus(LoopbackBus):
    """A loopback bus that also records the size of every message, by (origin, kind)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[tuple[str, str], list[int]] = defaultdict(list)

    def endpoint(self, instance_id: str) -> Endpoint:
        return SizingEndpoint(self, instance_id)


class SizingEndpoint(Endpoint):
    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        assert isinstance(self.bus, SizingBus)
        self.bus.sizes[(attributes["origin"], attributes["kind"])].append(len(data))
        await super().publish(data, attributes)


class FakeSocket:
    """What the registry, the rooms and a broadcast use of a socket, and nothing else."""

    __slots__ = ("user_id", "session_id", "closed", "waiting")

    def __init__(self, user_id: str) -> None:
        self.user_id, self.session_id, self.closed = user_id, uuid.uuid4().hex, False
        self.waiting = 0

    def push_frame(self, frame: bytes) -> bool | None:
        return None  # no frame-taking edge: sent as text

    async def send_text(self, text: str, timeout: float) -> bool:
        return True


def holding(cluster: Cluster, instance: str, room: str, *users: str) -> None:
    """Sockets of these users on that instance, each a member of ``room``."""
    service = cluster.at[instance].service
    for user in users:
        session = uuid.uuid4().hex
        cluster.socket(instance, user, session)
        [conn] = [c for c in service.registry.sockets_of(user) if c.session_id == session]
        service.rooms.join(conn, room, None)


async def test_receipts_of_an_instance_with_100000_sockets_stay_under_pubsubs_limit() -> None:
    """With 100,000 sockets of distinct 128-character users, all in one room, the receipts
    for stats, room members, a broadcast and a room send are each under a third of 10 MB,
    and the answers list ``limit`` entries while counting every socket and user."""
    bus = SizingBus()
    store = MemoryStore()
    at = {}
    for instance in ("big", "asker"):
        # Generous timeout: the big instance's broadcast writes to 100,000 sockets first.
        config = settings(instance, fanout_timeout=60.0, max_room_members=0)
        at[instance] = Deployment(PresenceService(config, store), bus.endpoint(instance))
        register(store, instance)
        await at[instance].start()
    try:
        big = at["big"].service
        for n in range(SOCKETS):
            socket = cast(Connection, FakeSocket(f"{n:0128d}"))
            big.registry.add(socket)
            big.rooms.join(socket, "everyone", None)
        asker = at["asker"]

        stats = await asker.stats(MAX_LIST_LIMIT)
        assert (stats.instances, stats.unreachable_instances) == (["asker", "big"], [])
        assert len(stats.connected_users) == MAX_LIST_LIMIT and stats.truncated
        assert stats.connected_users == [f"{n:0128d}" for n in range(MAX_LIST_LIMIT)]
        assert (stats.total_connections, stats.total_users) == (SOCKETS, SOCKETS)
        assert stats.total_users_exact, "only one instance holds users: the bounds meet"
        assert len((await asker.stats()).connected_users) == DEFAULT_LIST_LIMIT

        room = await asker.room_members("everyone", MAX_LIST_LIMIT)
        assert room.unreachable_instances == []
        assert len(room.members) == len(room.users) == MAX_LIST_LIMIT and room.truncated
        assert (room.connections, room.total_users, room.total_users_exact) == (
            SOCKETS,
            SOCKETS,
            True,
        )

        cast_ = await asker.broadcast({"type": "news"})
        sent = await asker.room_send("everyone", {"type": "news"})
        for delivery in (cast_, sent):
            assert delivery.unreachable == []
            assert (delivery.connections, delivery.recipients) == (SOCKETS, SOCKETS)

        receipts = bus.sizes[("big", "reply")]
        assert len(receipts) == 5
        assert max(receipts) < PUBSUB_MAX_MESSAGE_BYTES / 3, receipts
        # The answers themselves: what the REST API encodes.
        assert len(msgspec.json.encode(stats)) < 1_500_000
        assert len(msgspec.json.encode(room)) < 4_000_000
    finally:
        for deployment in at.values():
            await deployment.stop()


async def test_lists_are_the_first_users_by_id_across_instances_and_counts_stay_exact() -> None:
    """u1 on A and B, u2 on A, u3 on C: each ``limit`` lists the deployment's first users by
    id and says ``truncated`` when it leaves one out; socket counts are always exact, and so
    is the user count once no instance held more users than ``limit`` (before that, it is a
    lower bound and says so)."""
    async with Cluster("a", "b", "c") as cluster:
        holding(cluster, "a", "r", "u2", "u1")
        holding(cluster, "b", "r", "u1")
        holding(cluster, "c", "r", "u3")
        expected = {
            0: ([], 2, False),
            1: (["u1"], 2, False),
            2: (["u1", "u2"], 3, True),
            3: (["u1", "u2", "u3"], 3, True),
        }
        for limit, (users, total_users, exact) in expected.items():
            stats = await cluster.at["b"].stats(limit)
            assert stats.connected_users == users, limit
            assert (stats.total_users, stats.total_users_exact) == (total_users, exact), limit
            assert (stats.total_connections, stats.truncated) == (4, limit < 3), limit
            room = await cluster.at["c"].room_members("r", limit)
            assert room.users == users, limit
            assert (room.total_users, room.total_users_exact) == (total_users, exact), limit
            assert (room.connections, room.truncated) == (4, limit < 4), limit
            assert [m.user_id for m in room.members] == ["u1", "u1", "u2", "u3"][:limit]
        # Members sort by user, then session: u1's socket with the smaller session id.
        u1 = sorted(
            (conn.session_id, instance)
            for instance in ("a", "b")
            for conn in cluster.at[instance].service.registry.sockets_of("u1")
        )
        [first] = (await cluster.at["c"].room_members("r", 1)).members
        assert (first.session_id, first.instance_id) == u1[0]


def test_the_user_count_is_exact_when_the_bounds_meet_and_a_lower_bound_otherwise() -> None:
    """Lists that leave nobody out give the exact union; one instance holding every user
    gives its count; otherwise the largest of the union and the counts, flagged."""
    assert count_users([(["a", "b"], 2), (["b", "c"], 2)]) == ({"a", "b", "c"}, 3, True)
    assert count_users([(["a"], 5), ([], 0)]) == ({"a"}, 5, True)
    assert count_users([(["a"], 5), (["a"], 3)]) == ({"a"}, 5, False)
    assert count_users([]) == (set(), 0, True)


def test_recipients_count_users_once_by_digest_and_the_rest_as_they_come() -> None:
    """A user reached on two instances counts once; users a receipt reached beyond its
    digests are added to the count."""
    recipients = Recipients({"a", "b"})
    recipients.add(Reply(id="1", instance="x", user_count=2, digests=user_digests(["b", "c"])))
    assert len(recipients) == 3
    recipients.add(Reply(id="2", instance="y", user_count=3, digests=user_digests(["a"])))
    assert len(recipients) == 5


async def test_a_message_over_pubsubs_limit_is_not_published() -> None:
    """A broadcast whose frame would make the message too large reaches this instance's
    sockets only and says so; nothing is published."""
    async with Cluster("a", "b") as cluster:
        wire = cluster.socket("a", "u", "s1")
        sent = await cluster.at["a"].broadcast({"blob": "x" * PUBSUB_MAX_MESSAGE_BYTES})
        assert (sent.scope, sent.connections, sent.unreachable) == ("instance", 1, ["b"])
        assert len(wire.texts()) == 1 and cluster.bus.published == []


def test_a_stats_receipt_from_an_instance_without_the_new_fields_decodes() -> None:
    """During a rollout, an older instance's receipt (no ``truncated``, no
    ``total_users_exact``) still counts: its list is complete, so its count is exact."""
    stats = {
        "total_connections": 1,
        "connected_users": ["u"],
        "ping_interval_seconds": 30.0,
        "pong_timeout_seconds": 10800.0,
        "total_users": 1,
        "instance_id": "old",
        "scope": "instance",
        "instances": ["old"],
        "unreachable_instances": [],
        "pong_writers": {},
    }
    data = msgspec.json.encode({"kind": "reply", "id": "1", "origin": "old", "stats": stats})
    event = msgspec.json.decode(data, type=Reply)
    assert event.stats is not None
    assert (event.stats.truncated, event.stats.total_users_exact) == (False, True)
