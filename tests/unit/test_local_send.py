"""A send decided without an await (gateway.cluster.local_send) and the directory's knowledge it
relies on (``Directory.held_here_only``: the whereabouts last read, or no other live
instance), over the loopback broker of tests/unit/test_deployment.py: what it delivers, when
it declines, and that a user who moves, or opens a socket on an instance started since, is
not missed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.cluster.directory import CACHE_SECONDS, REFRESH_AT
from gateway.cluster.local_send import send_now
from gateway.cluster.operation import Delivery
from gateway.exceptions import UserNotConnectedError
from gateway.storage.schema import ACTIVE_SESSIONS, MEMBERS
from tests.edge_fakes import FrameEdge
from tests.loopback import Cluster


def socket(cluster: Cluster, at: str, user: str, session: str, age: float = 0) -> FrameEdge:
    """A socket on instance ``at`` (recorded on the member) whose edge takes frames."""
    cluster.socket(at, user, session, age=age)
    edge = FrameEdge()
    [conn] = [
        c for c in cluster.at[at].service.registry.sockets_of(user) if c.session_id == session
    ]
    conn.edge = edge
    return edge


def count_member_reads(cluster: Cluster) -> list[list[str]]:
    """Every member read the instances make from now on, as the users asked for."""
    reads: list[list[str]] = []
    real = cluster.store.get_members

    async def counted(user_ids: list[str], timeout: float) -> Any:
        reads.append(list(user_ids))
        return await real(user_ids, timeout)

    cluster.store.get_members = counted  # type: ignore[method-assign]
    return reads


async def test_an_instance_alone_sends_to_its_settled_users_without_a_member_read() -> None:
    """With a broker and no other live instance, sends to a user whose sockets here are
    settled read no member record and publish nothing, awaited or not."""
    async with Cluster("a") as cluster:
        a = cluster.at["a"]
        wire = socket(cluster, "a", "u", "s1", age=5)
        reads = count_member_reads(cluster)
        assert await a.send("u", {"n": 0}) == Delivery(1, 1, ["a"], [], "deployment")
        assert send_now(a, "u", {"n": 1}) == Delivery(1, 1, ["a"], [], "deployment")
        assert wire.texts() == ['{"n":0}', '{"n":1}']
        assert reads == [] and cluster.bus.published == []
        assert a.directory.alone_hits == 2


async def test_without_a_broker_it_delivers_here_or_says_not_connected() -> None:
    """No broker: the user's sockets here get the frame (``scope: instance``); a user with
    none is not connected, decided without an await either."""
    async with Cluster("a") as cluster:
        a = cluster.at["a"]
        a.fanout = None
        wire = socket(cluster, "a", "u", "s1")
        assert send_now(a, "u", {"n": 1}) == Delivery(1, 1, ["a"], [], "instance")
        assert wire.texts() == ['{"n":1}']
        with pytest.raises(UserNotConnectedError):
            send_now(a, "nobody", {"n": 1})


async def test_it_declines_whatever_needs_an_await() -> None:
    """None, and nothing written, for: a user with no socket here (the record says where),
    young sockets (a read), another live instance not yet asked about the user, a socket with
    a send still waiting on it, and an announced arrival elsewhere."""
    async with Cluster("a", "b") as cluster:
        a, b = cluster.at["a"], cluster.at["b"]
        assert send_now(a, "nobody", {"n": 1}) is None
        young = socket(cluster, "a", "young", "s0")
        assert send_now(a, "young", {"n": 1}) is None
        wire = socket(cluster, "a", "u", "s1", age=5)
        assert send_now(a, "u", {"n": 1}) is None  # b is live: read the record first
        await a.send("u", {"n": 1})
        assert send_now(a, "u", {"n": 2}) == Delivery(1, 1, ["a"], [], "deployment")
        [conn] = a.service.registry.sockets_of("u")
        conn.waiting = 1
        assert send_now(a, "u", {"n": 3}) is None
        conn.waiting = 0
        assert await b.service.admission.admit("u", None) is None  # announces u on b
        await asyncio.sleep(0.05)
        assert send_now(a, "u", {"n": 4}) is None
        assert (young.texts(), wire.texts()) == ([], ['{"n":1}', '{"n":2}'])


async def test_a_user_who_moves_to_an_instance_started_since_gets_the_next_send() -> None:
    """A answers alone from its own sockets; instance B starts, the user leaves A and
    connects to B: A's next send, inside the second the live set is trusted, is not decided
    without an await (no socket here), reads the record and reaches B."""
    async with Cluster("a") as cluster:
        a = cluster.at["a"]
        on_a = socket(cluster, "a", "u", "s1", age=5)
        assert send_now(a, "u", {"n": 1}) is None  # the live set is read once, awaited
        assert await a.send("u", {"n": 1}) == Delivery(1, 1, ["a"], [], "deployment")
        b = cluster.add("b")
        await b.start()
        try:
            [conn] = a.service.registry.sockets_of("u")
            a.service.registry.remove(conn)
            del cluster.store.docs[(MEMBERS, "u")][ACTIVE_SESSIONS]["s1"]
            on_b = socket(cluster, "b", "u", "s2")
            assert send_now(a, "u", {"n": 2}) is None
            assert await a.send("u", {"n": 2}) == Delivery(1, 1, ["b"], [], "deployment")
            await asyncio.sleep(0.05)
            assert (on_a.texts(), on_b.texts()) == (['{"n":1}'], ['{"n":2}'])
        finally:
            await b.stop()


async def test_a_socket_opened_on_an_instance_started_since_is_reached_at_once() -> None:
    """A answers alone; B starts and the user, still on A, opens a socket on B, whose
    admission announces it: A's next sends, while its live set still says it is alone, wait
    for B and reach both sockets."""
    async with Cluster("a") as cluster:
        a = cluster.at["a"]
        on_a = socket(cluster, "a", "u", "s1", age=5)
        await a.send("u", {"n": 1})
        b = cluster.add("b")
        await b.start()
        try:
            assert await b.service.admission.admit("u", None) is None
            on_b = socket(cluster, "b", "u", "s2")
            await asyncio.sleep(0.05)  # the notice crosses the bus
            assert a.directory.alone(time.monotonic())  # still within the second
            assert send_now(a, "u", {"n": 2}) is None
            assert await a.send("u", {"n": 2}) == Delivery(2, 1, ["a", "b"], [], "deployment")
            await asyncio.sleep(0.05)
            assert (on_a.texts(), on_b.texts()) == (['{"n":1}', '{"n":2}'], ['{"n":2}'])
        finally:
            await b.stop()


async def test_the_live_set_is_read_once_for_all_who_ask_and_ahead_of_its_expiry() -> None:
    """Sends waiting at once share one registry read; a send decided without an await late in
    the live set's life starts the next read in the background, and sends keep being decided
    without an await past the second it is trusted for."""
    async with Cluster("a") as cluster:
        a = cluster.at["a"]
        socket(cluster, "a", "u", "s1", age=5)
        reads = []
        real = cluster.store.recent_instances

        async def counted(cutoff: Any, timeout: float) -> Any:
            reads.append(cutoff)
            await asyncio.sleep(0.01)
            return await real(cutoff, timeout)

        cluster.store.recent_instances = counted  # type: ignore[method-assign]
        answers = await asyncio.gather(*(a.send("u", {"n": n}) for n in range(10)))
        assert {x.scope for x in answers} == {"deployment"} and len(reads) == 1
        for _ in range(3):
            await asyncio.sleep(CACHE_SECONDS * (REFRESH_AT + 0.1))
            assert send_now(a, "u", {"n": 0}) is not None
        await asyncio.sleep(0.05)  # the last one's read runs
        assert len(reads) == 4  # one at first, then one for each send late in the life


async def test_stopping_cancels_a_registry_read_still_in_flight() -> None:
    """A background refresh of the live set that Firestore has not answered is cancelled at
    stop, not left to outlive the instance's client."""
    cluster = Cluster("a")
    a = cluster.at["a"]
    answered = asyncio.Event()

    async def never(since: object, timeout: float) -> dict[str, dict[str, Any]]:
        await answered.wait()
        return {}

    cluster.store.recent_instances = never  # type: ignore[method-assign]
    async with cluster:
        read = a.directory._read_live_once()
        await asyncio.sleep(0)
        assert not read.done()
    assert read.cancelled() and a.directory._live_read is None
