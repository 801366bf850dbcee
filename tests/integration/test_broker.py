"""gateway.cluster.broker against gcloud's Pub/Sub emulator: the subscription's lifecycle, delivery
to every instance, and recovery after the emulator restarts empty."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from gateway.cluster.broker import (
    PUBLISH_IN_FLIGHT,
    BrokerUnavailable,
    PubSubBroker,
    reply_filter,
    subscription_id,
)
from tests.conftest import PubSubEmulator
from tests.support import UNIT, eventually

pytestmark = pytest.mark.integration


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, dict[str, str]]] = []

    def __call__(self, data: bytes, attributes: Mapping[str, str]) -> None:
        self.messages.append((data, dict(attributes)))


def admin(host: str) -> Any:
    """A plain (synchronous) subscriber client on the emulator, to look at subscriptions."""
    import grpc
    from google.pubsub_v1.services.subscriber import SubscriberClient
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    return SubscriberClient(transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(host)))


async def started(topic: str, instance: str, inbox: Inbox) -> PubSubBroker:
    broker = PubSubBroker("demo-broker", topic, instance)
    await broker.start(inbox)

    async def pulling() -> bool:
        return broker.connected

    await eventually(pulling, timeout=20)
    return broker


async def test_each_instance_gets_its_own_expiring_subscription_deleted_on_stop(
    pubsub: PubSubEmulator,
) -> None:
    """Two brokers on one topic: each has a subscription named after its instance with a
    one-day expiration policy and the reply filter; a message published by one reaches both;
    stop() deletes only that instance's subscription."""
    topic = f"fanout-{uuid.uuid4().hex[:8]}"
    inbox_a, inbox_b = Inbox(), Inbox()
    a = await started(topic, "inst-a", inbox_a)
    b = await started(topic, "inst-b", inbox_b)
    try:
        client = admin(pubsub.host)
        sub = client.get_subscription(subscription=a.subscription_path)
        assert sub.name.endswith("/" + subscription_id(topic, "inst-a"))
        assert sub.expiration_policy.ttl.total_seconds() == 86_400
        assert sub.filter == reply_filter("inst-a")
        await a.publish(b'{"n":1}', {"kind": "broadcast", "origin": "inst-a"})

        async def both_got_it() -> bool:
            return len(inbox_a.messages) == 1 and len(inbox_b.messages) == 1

        await eventually(both_got_it)
        assert inbox_b.messages[0] == (b'{"n":1}', {"kind": "broadcast", "origin": "inst-a"})
        await a.stop()
        from google.api_core import exceptions

        with pytest.raises(exceptions.NotFound):
            client.get_subscription(subscription=a.subscription_path)
        assert client.get_subscription(subscription=b.subscription_path).name
    finally:
        await b.stop()


async def test_delivery_resumes_after_the_emulator_restarts_empty(
    pubsub: PubSubEmulator,
) -> None:
    """While the emulator is down a publish raises BrokerUnavailable at once (not after a
    minute of retries); once it is back, without topic or subscription, the broker recreates
    both and delivery resumes without a restart."""
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    broker = await started(topic, "inst-r", inbox)
    try:
        pubsub.stop()
        loop = asyncio.get_running_loop()
        begun = loop.time()
        with pytest.raises(BrokerUnavailable):
            await broker.publish(b"lost", {"kind": "broadcast"})
        assert loop.time() - begun < 10 * UNIT
        pubsub.start()

        async def delivered() -> bool:
            try:
                await broker.publish(b"after", {"kind": "broadcast"})
            except BrokerUnavailable:
                return False
            await asyncio.sleep(0.5)
            return any(data == b"after" for data, _ in inbox.messages)

        await eventually(delivered, timeout=60, interval=0.5)
        assert all(data != b"lost" for data, _ in inbox.messages)
    finally:
        await broker.stop()


async def test_publishes_made_at_once_share_calls_and_each_message_arrives_once(
    pubsub: PubSubEmulator,
) -> None:
    """200 messages published at the same moment go out in a few Publish calls (at most
    PUBLISH_IN_FLIGHT at once, the rest together in the next), and each arrives once, with
    its own attributes."""
    topic = f"fanout-{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    broker = await started(topic, "inst-c", inbox)
    try:
        await asyncio.gather(
            *(broker.publish(f'{{"n":{n}}}'.encode(), {"n": str(n)}) for n in range(200))
        )
        assert broker.published == 200
        assert broker.publish_calls <= 2 * PUBLISH_IN_FLIGHT

        async def all_arrived() -> bool:
            return len(inbox.messages) >= 200

        await eventually(all_arrived)
        assert sorted(int(a["n"]) for _, a in inbox.messages) == list(range(200))
    finally:
        await broker.stop()


async def test_raw_publish_recreates_a_deleted_topic_and_keeps_bytes_and_attributes(
    pubsub: PubSubEmulator,
) -> None:
    """The raw Publish path: after the topic is deleted under a running broker, a publish
    creates it again and succeeds; binary data and non-ASCII attributes arrive intact."""
    import grpc
    from google.pubsub_v1.services.publisher import PublisherClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    topic = f"raw-{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    broker = await started(topic, "inst-raw", inbox)
    try:
        publisher = PublisherClient(
            transport=PublisherGrpcTransport(channel=grpc.insecure_channel(pubsub.host))
        )
        publisher.delete_topic(topic=broker.topic_path)
        calls = broker.publish_calls
        await broker.publish(b"\x00\xffbytes", {"kind": "send", "user_id": "é-ü 1"})
        assert broker.publish_calls == calls + 2  # NOT_FOUND, then the retry
        assert publisher.get_topic(topic=broker.topic_path).name == broker.topic_path
    finally:
        await broker.stop()
    again = Inbox()
    fresh = await started(topic, "inst-raw-2", again)
    try:
        await fresh.publish(b"\x00\xffbytes", {"kind": "send", "user_id": "é-ü 1"})

        async def arrived() -> bool:
            return bool(again.messages)

        await eventually(arrived)
        assert again.messages == [(b"\x00\xffbytes", {"kind": "send", "user_id": "é-ü 1"})]
    finally:
        await fresh.stop()
