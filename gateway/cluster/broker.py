"""The Pub/Sub edge: one topic for the deployment, one subscription per instance.

Cloud Run gives instances no address of their own, so cross-instance work (a send, a
broadcast, the sweep's timeouts, stats) is published once on ``PUBSUB_TOPIC`` by whichever
instance a request lands on, and every instance reads it from a subscription of its own.

This module only moves bytes: :class:`PubSubBroker` creates the topic and this instance's
subscription, publishes, and feeds every message it pulls to a handler on the event loop. What
the messages mean is ``gateway.cluster.deployment``'s business.

Built on the asyncio (grpc.aio) GAPIC clients rather than google-cloud-pubsub's threaded
``SubscriberClient``: messages arrive on the event loop itself, so no callback ever runs on a
thread beside the sockets, and the pull loop can recreate a subscription that vanished (an
emulator restart, an expiry after a long partition) instead of dying with it. Publish and the
streaming pull go as raw protobuf bytes on channels built as those clients' own
(``gateway.cluster.pubsub_rpc``: the GAPIC wrappers were half a call's CPU); the admin calls
go through the clients.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from gateway.cluster.pubsub_clients import publisher_with_channel, subscriber_client
from gateway.cluster.pubsub_rpc import Publisher, is_not_found, open_pull, raw_types

logger = logging.getLogger("gateway.cluster.broker")

#: Pub/Sub's minimum: a subscription nobody pulls from for a day is deleted, which is how a
#: crashed instance's subscription goes away.
EXPIRATION_SECONDS = 86_400
#: Pub/Sub's minimum retention. A message older than a few seconds is useless here (the REST
#: call that published it has answered), so keep the backlog of a stuck subscription small.
RETENTION_SECONDS = 600
ACK_DEADLINE_SECONDS = 10
#: Admin calls (create, delete) and publishes fail fast: a broker outage must not hold a REST
#: call or a shutdown for a minute of library retries.
RPC_TIMEOUT = 5.0
RETRY_FIRST, RETRY_MAX = 0.2, 5.0
#: Publishes are coalesced: those made while a Publish call is out, or in the same loop
#: iteration, go together in the next call (each call's gRPC set-up was most of a publish's
#: CPU). Pub/Sub takes at most 1,000 messages and 10 MB in one call.
PUBLISH_BATCH = 1_000
PUBLISH_BATCH_BYTES = 9_000_000
PUBLISH_IN_FLIGHT = 4
#: Acknowledgements are gathered this long into one write on the pull stream (a write per
#: response pulled was 6 % of the fan-out's samples). Far under the ack deadline; a message
#: left unacknowledged by a broken stream comes again and is dropped as a duplicate.
ACK_LINGER = 0.05

#: handler(data, attributes), called on the event loop for every message pulled.
Handler = Callable[[bytes, Mapping[str, str]], None]


class BrokerUnavailable(Exception):
    """Publishing failed: Pub/Sub did not accept the message in time."""


class Broker(Protocol):
    """What ``gateway.cluster.deployment`` needs of a broker: Pub/Sub here, a loopback in unit
    tests."""

    #: True while messages are being received.
    connected: bool
    #: Messages published, and the Publish calls that carried them (several per call when
    #: they were coalesced).
    published: int
    publish_calls: int

    async def start(self, handler: Handler) -> None:
        """Start receiving; ``handler`` is called on the event loop for every message."""

    async def stop(self) -> None: ...

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        """Publish to every instance; raise BrokerUnavailable on failure."""


def subscription_id(topic: str, instance_id: str) -> str:
    """This instance's subscription: the topic's name plus the instance id, in Pub/Sub's
    alphabet (letters, digits, ``-_.~+%``), at most 255 characters."""
    clean = re.sub(r"[^A-Za-z0-9\-_.~+%]", "-", instance_id)
    return f"{topic}-{clean}"[:255]


def reply_filter(instance_id: str) -> str:
    """A subscription filter keeping requests for everyone and replies for this instance.
    Filters are immutable and at most 256 bytes; the instance drops strays in code as well,
    since the emulator accepts filters without applying them."""
    quoted = instance_id.replace("\\", "\\\\").replace('"', '\\"')
    return f'NOT attributes:to OR attributes.to = "{quoted}"'


class PubSubBroker:
    """Publishes to the deployment's topic and pulls this instance's subscription."""

    def __init__(self, project: str, topic: str, instance_id: str) -> None:
        self.topic_path = f"projects/{project}/topics/{topic}"
        self.subscription_path = (
            f"projects/{project}/subscriptions/{subscription_id(topic, instance_id)}"
        )
        self.instance_id = instance_id
        self._handler: Handler = lambda data, attributes: None
        self._publisher: Any = None
        self._subscriber: Any = None
        self._publish_channel: Any = None
        self._publish_rpc: Publisher | None = None
        self._task: asyncio.Task[None] | None = None
        #: True while the pull stream is open; the stats and /healthz say so.
        self.connected = False
        self.published = 0
        self.publish_failures = 0
        #: Publish calls made (each carrying one or more messages).
        self.publish_calls = 0
        self.received = 0
        self.reconnects = 0
        self._outbox: deque[_Outgoing] = deque()
        self._publishing = 0
        self._scheduled = False
        self._publish_tasks: set[asyncio.Task[None]] = set()

    async def start(self, handler: Handler) -> None:
        """Build the clients and start pulling. The topic and the subscription are created by
        the pull loop, so an unreachable broker delays cross-instance work, not the start."""
        self._handler = handler
        self._publisher, self._publish_channel = publisher_with_channel()
        self._subscriber = subscriber_client()
        self._publish_rpc = Publisher(self._publish_channel, self.topic_path)
        self._task = asyncio.create_task(self._pull_forever(), name="pubsub-pull")

    async def stop(self) -> None:
        """Stop pulling and delete this instance's subscription (best effort: if Pub/Sub cannot
        be reached, the expiration policy collects it within a day)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Publishes under way finish (a receipt in flight is still worth its answer).
        await asyncio.gather(*self._publish_tasks, return_exceptions=True)
        if self._subscriber is not None:
            try:
                await self._subscriber.delete_subscription(
                    subscription=self.subscription_path, timeout=RPC_TIMEOUT, retry=None
                )
                logger.info("deleted subscription %s", self.subscription_path)
            except Exception as exc:
                logger.warning("could not delete %s: %r", self.subscription_path, exc)
            await self._subscriber.transport.close()
        if self._publisher is not None:
            await self._publisher.transport.close()
            await self._publish_channel.close()

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        """Publish one message; raise BrokerUnavailable if Pub/Sub does not take it within
        ``RPC_TIMEOUT`` (a missing topic is created once and the publish retried). Messages
        published at the same moment share one Publish call."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._outbox.append(((data, attributes), done, len(data)))
        if not self._scheduled and self._publishing < PUBLISH_IN_FLIGHT:
            self._scheduled = True
            loop.call_soon(self._start_publishing)
        await done

    def _start_publishing(self) -> None:
        self._scheduled = False
        while self._outbox and self._publishing < PUBLISH_IN_FLIGHT:
            batch: list[_Outgoing] = []
            size = 0
            while (
                self._outbox
                and len(batch) < PUBLISH_BATCH
                and (not batch or size + self._outbox[0][2] <= PUBLISH_BATCH_BYTES)
            ):
                batch.append(self._outbox.popleft())
                size += batch[-1][2]
            self._publishing += 1
            task = asyncio.create_task(self._publish_batch(batch))
            self._publish_tasks.add(task)
            task.add_done_callback(self._publish_tasks.discard)

    async def _publish_batch(self, batch: list[_Outgoing]) -> None:
        try:
            await self._publish_call([message for message, _, _ in batch])
        except BrokerUnavailable as exc:
            self.publish_failures += len(batch)
            for _, done, _ in batch:
                if not done.done():  # a caller that gave up is skipped
                    done.set_exception(exc)
        else:
            self.published += len(batch)
            for _, done, _ in batch:
                if not done.done():
                    done.set_result(None)
        finally:
            self._publishing -= 1
            if self._outbox and not self._scheduled:
                self._start_publishing()

    async def _publish_call(self, messages: list[tuple[bytes, Mapping[str, str]]]) -> None:
        assert self._publish_rpc is not None, "publish before start"
        for attempt in (1, 2):
            try:
                self.publish_calls += 1
                await self._publish_rpc.publish(messages, timeout=RPC_TIMEOUT)
                return
            except Exception as exc:
                if not is_not_found(exc):
                    raise BrokerUnavailable(f"Pub/Sub did not take the message: {exc!r}") from exc
                if attempt == 2:
                    break
            try:
                await self._ensure_topic()
            except Exception as exc:
                raise BrokerUnavailable(f"Pub/Sub topic {self.topic_path}: {exc!r}") from exc
        raise BrokerUnavailable(f"Pub/Sub topic {self.topic_path} cannot be created")

    async def _ensure_topic(self) -> None:
        from google.api_core import exceptions

        try:
            await self._publisher.create_topic(name=self.topic_path, timeout=RPC_TIMEOUT)
            logger.info("created topic %s", self.topic_path)
        except exceptions.AlreadyExists:
            pass

    async def _ensure_subscription(self) -> None:
        from google.api_core import exceptions
        from google.pubsub_v1 import types

        await self._ensure_topic()
        try:
            await self._subscriber.create_subscription(
                request=types.Subscription(
                    name=self.subscription_path,
                    topic=self.topic_path,
                    ack_deadline_seconds=ACK_DEADLINE_SECONDS,
                    message_retention_duration={"seconds": RETENTION_SECONDS},
                    expiration_policy=types.ExpirationPolicy(ttl={"seconds": EXPIRATION_SECONDS}),
                    filter=reply_filter(self.instance_id),
                ),
                timeout=RPC_TIMEOUT,
            )
            logger.info("created subscription %s", self.subscription_path)
        except exceptions.AlreadyExists:
            pass

    async def _pull_forever(self) -> None:
        """Keep one streaming pull open; on any failure wait (0.2 s doubling to 5 s), make
        sure the topic and subscription exist, and open it again."""
        delay, failing = RETRY_FIRST, False
        while True:
            try:
                await self._ensure_subscription()
                await self._pull_stream()
                # The server ended the stream (it does now and then): reopen it soon.
                delay, failing = RETRY_FIRST, False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
                    delay, failing = RETRY_FIRST, False
                if not failing:
                    # Once per outage, not once per retry.
                    logger.warning("Pub/Sub unreachable, retrying in the background: %r", exc)
                    failing = True
                self.reconnects += 1
            finally:
                self.connected = False
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)

    async def _pull_stream(self) -> None:
        import grpc

        pending: list[str] = []
        ready = asyncio.Event()

        async def acks() -> AsyncIterator[bytes]:
            request = raw_types().StreamingPullRequest
            while True:
                await ready.wait()
                await asyncio.sleep(ACK_LINGER)
                ready.clear()
                ack_ids = pending[:]
                pending.clear()
                yield request(ack_ids=ack_ids).SerializeToString()

        first = (
            raw_types()
            .StreamingPullRequest(
                subscription=self.subscription_path,
                stream_ack_deadline_seconds=ACK_DEADLINE_SECONDS,
                max_outstanding_messages=10_000,
            )
            .SerializeToString()
        )
        call = open_pull(self._subscriber, first, acks())
        try:
            await call.wait_for_connection()
            logger.info("pulling %s", self.subscription_path)
            self.connected = True
            # read() rather than ``async for``, whose iterator is one more async generator
            # step per response.
            while (response := await call.read()) is not grpc.aio.EOF:
                received = response.received_messages
                # Acknowledged at once (within ACK_LINGER): a message is a nudge to act on
                # sockets this instance holds now; redelivering it after a crash would find
                # those sockets gone.
                pending.extend(m.ack_id for m in received)
                ready.set()
                self.received += len(received)
                for item in received:
                    try:
                        self._handler(item.message.data, item.message.attributes)
                    except Exception:
                        logger.exception("fan-out message handler failed")
        finally:
            call.cancel()


#: A message waiting in the outbox: (data, attributes), its caller's future, its size.
_Outgoing = tuple[tuple[bytes, Mapping[str, str]], asyncio.Future[None], int]
