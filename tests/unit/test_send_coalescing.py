"""Cross-instance sends made at one moment travel as one ``send_batch``
(gateway/cluster/send_coalescing.py), over the loopback bus: each send is answered as its own
``send`` would have been, and every socket gets its frame once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.cluster.fanout import Reply
from gateway.cluster.operation import Delivery
from gateway.cluster.operations import Send
from gateway.cluster.send_coalescing import _Waiting, chunks, split
from gateway.exceptions import DeploymentUnavailable
from gateway.instance.registry import Connection
from gateway.protocol.messages import utc_now
from gateway.storage.schema import ACTIVE_SESSIONS, INSTANCE_ID, MEMBERS
from tests.loopback import Cluster, LoopbackBus, Recorder


async def test_sends_made_together_are_one_batch_and_each_is_answered_as_its_own() -> None:
    """Three sends from A at one moment (users on B, on C, on B and C) go out as one
    send_batch, even with every message delivered twice; each answer counts its own user's
    sockets and instances, and each socket gets its frame once."""
    bus = LoopbackBus()
    bus.duplicate = True
    async with Cluster("a", "b", "c", bus=bus) as cluster:
        on_b = cluster.socket("b", "u1", "s1")
        on_c = cluster.socket("c", "u2", "s2")
        both_b, both_c = cluster.socket("b", "u3", "s3"), cluster.socket("c", "u3", "s4")
        a = cluster.at["a"]
        sent = await asyncio.gather(
            a.send("u1", {"n": 1}), a.send("u2", {"n": 2}), a.send("u3", {"n": 3})
        )
        assert list(sent) == [
            Delivery(1, 1, ["b"], [], "deployment"),
            Delivery(1, 1, ["c"], [], "deployment"),
            Delivery(2, 1, ["b", "c"], [], "deployment"),
        ]
        await asyncio.sleep(0.05)
        assert (on_b.texts(), on_c.texts()) == (['{"n":1}'], ['{"n":2}'])
        assert both_b.texts() == both_c.texts() == ['{"n":3}']
        kinds = [m["kind"] for m in bus.published if m["origin"] == "a"]
        assert kinds == ["send_batch"]
        assert a.sends is not None and a.sends.coalesced == 3


async def test_a_send_alone_at_its_moment_goes_as_a_routed_send() -> None:
    """One send alone is published as ``send``, which instances without the user drop on its
    attributes."""
    async with Cluster("a", "b", "c") as cluster:
        cluster.socket("b", "u", "s1")
        assert await cluster.at["a"].send("u", {"n": 1}) == Delivery(1, 1, ["b"], [], "deployment")
        assert [m["kind"] for m in cluster.bus.published if m["origin"] == "a"] == ["send"]
        assert cluster.at["c"].fanout is not None
        assert cluster.at["c"].fanout.received[("send", "dropped")] == 1


async def test_each_send_names_only_the_silent_instances_it_expected() -> None:
    """A batch waits for B (silent) and C: the send for B's user names B unreachable, the send
    for C's user is answered in full."""
    async with Cluster("a", "b", "c", fanout_timeout=0.3) as cluster:
        cluster.socket("b", "u1", "s1")
        on_c = cluster.socket("c", "u2", "s2")
        cluster.bus.deaf.add("b")
        a = cluster.at["a"]
        sent = await asyncio.gather(a.send("u1", {"n": 1}), a.send("u2", {"n": 2}))
        assert list(sent) == [
            Delivery(0, 0, [], ["b"], "deployment"),
            Delivery(1, 1, ["c"], [], "deployment"),
        ]
        assert on_c.texts() == ['{"n":2}']


async def test_with_the_broker_down_every_coalesced_send_fails_as_its_own_would() -> None:
    """Users held only elsewhere and the broker down: each send answers 503 on its own."""
    async with Cluster("a", "b") as cluster:
        cluster.socket("b", "u1", "s1")
        cluster.socket("b", "u2", "s2")
        cluster.bus.down = True
        a = cluster.at["a"]
        results = await asyncio.gather(
            a.send("u1", {"n": 1}), a.send("u2", {"n": 2}), return_exceptions=True
        )
        assert all(isinstance(r, DeploymentUnavailable) for r in results)


def _waiting(user: str, text: str) -> _Waiting:
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    return _Waiting(Send(user_id=user, text=text), {"b"}, future)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("count", "size", "expected"), [(501, 10, [500, 1]), (3, 600_000, [1, 1, 1])]
)
async def test_batches_stay_under_the_entry_and_byte_caps(
    count: int, size: int, expected: list[int]
) -> None:
    """No batch carries over MAX_BATCH_ENTRIES entries or about MAX_BATCH_BYTES of frames."""
    waiting = [_waiting(f"u{k}", "x" * size) for k in range(count)]
    assert [len(chunk) for chunk in chunks(waiting)] == expected


async def test_a_batch_receipt_is_split_into_each_sends_own_receipts() -> None:
    """Entry 0 expected B and was reached on D (the user moved there): its share is B's empty
    receipt and D's; entry 1 expected C, which was not heard, and only it names C."""
    first = _Waiting(
        Send(user_id="u0", text="x"), {"b"}, asyncio.get_running_loop().create_future()
    )
    second = _Waiting(
        Send(user_id="u1", text="y"), {"c"}, asyncio.get_running_loop().create_future()
    )
    replies = {"b": Reply(instance="b"), "d": Reply(instance="d", counts=[(0, 2)])}
    [(mine0, missing0), (mine1, missing1)] = split([first, second], replies, ["c"])
    assert {i: r.connections for i, r in mine0.items()} == {"b": 0, "d": 2}
    assert mine0["d"].users == ["u0"] and missing0 == []
    assert (mine1, missing1) == ({}, ["c"])


class SlowWire(Recorder):
    """A socket's ASGI send that takes its frames only once released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def __call__(self, message: dict[str, Any]) -> None:
        await self.release.wait()
        await super().__call__(message)


def slow_socket(cluster: Cluster, instance: str, user: str) -> SlowWire:
    wire = SlowWire()
    cluster.at[instance].service.registry.add(Connection(user, f"{user}-s", utc_now(), wire))
    member = cluster.store.docs.setdefault((MEMBERS, user), {})
    member.setdefault(ACTIVE_SESSIONS, {})[f"{user}-s"] = {INSTANCE_ID: instance}
    return wire


async def test_a_slow_socket_holds_up_neither_the_receipt_nor_the_other_send() -> None:
    """Two sends coalesced into one batch, one for a user whose socket on B is slow to take
    its frame: B answers within FANOUT_TIMEOUT, the other send is answered in full, the slow
    one names B unreachable (as alone it would have), and its socket still gets the frame,
    once, when it is ready."""
    async with Cluster("a", "b", fanout_timeout=1.0, send_timeout=5.0) as cluster:
        slow = slow_socket(cluster, "b", "slow")
        fast = cluster.socket("b", "fast", "f1")
        a = cluster.at["a"]
        started = time.monotonic()
        sent = await asyncio.gather(a.send("slow", {"n": 1}), a.send("fast", {"n": 2}))
        assert time.monotonic() - started < 1.0
        assert list(sent) == [
            Delivery(0, 0, [], ["b"], "deployment"),
            Delivery(1, 1, ["b"], [], "deployment"),
        ]
        assert a.sends is not None and a.sends.coalesced == 2
        assert fast.texts() == ['{"n":2}'] and slow.texts() == []
        slow.release.set()
        await asyncio.sleep(0.05)
        assert slow.texts() == ['{"n":1}']


async def test_a_batch_entry_slow_on_another_instance_is_unreachable_not_not_connected() -> None:
    """``POST /ws/send``'s entries: the slow one is ``unreachable`` (its socket may still take
    it), the others ``sent``, answered before the slow socket's send timeout."""
    async with Cluster("a", "b", fanout_timeout=1.0, send_timeout=5.0) as cluster:
        slow = slow_socket(cluster, "b", "slow")
        cluster.socket("b", "fast", "f1")
        started = time.monotonic()
        outcomes, delivery = await cluster.at["a"].send_batch(
            [(0, "slow", '{"n":1}'), (1, "fast", '{"n":2}')]
        )
        assert time.monotonic() - started < 1.0
        assert [(o.status, o.connections) for o in outcomes] == [("unreachable", 0), ("sent", 1)]
        assert delivery.pending == frozenset({0})
        slow.release.set()
        await asyncio.sleep(0.05)
        assert slow.texts() == ['{"n":1}']
