"""User presence transitions published to ``PRESENCE_EVENTS_TOPIC`` for backends (a Cloud
Function can subscribe): one JSON message per transition, attributes ``user_id`` and ``state``
for subscription filters. The transitions come from the presence writer after its transaction
committed (``gateway.storage.presence_records``); they are queued here and published in
batches, retried while Pub/Sub is out of reach, and dropped beyond ``MAX_QUEUED``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any

from gateway.cluster.pubsub_clients import publisher_client
from gateway.storage.user_presence import PresenceEvent

logger = logging.getLogger("gateway.cluster.presence_events")

RPC_TIMEOUT = 10.0
BATCH = 500
#: Events held while Pub/Sub cannot be reached; the oldest are dropped beyond (and counted).
MAX_QUEUED = 100_000


class EventsTopic:
    def __init__(self, project: str, topic: str) -> None:
        self.topic_path = f"projects/{project}/topics/{topic}"
        self._queue: deque[PresenceEvent] = deque()
        self._ready = asyncio.Event()
        self._publisher: Any = None
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.failures = 0
        self.dropped = 0

    def enqueue(self, events: list[PresenceEvent]) -> None:
        self._queue.extend(events)
        while len(self._queue) > MAX_QUEUED:
            self._queue.popleft()
            self.dropped += 1
        self._ready.set()

    async def start(self) -> None:
        self._publisher = publisher_client()
        self._task = asyncio.create_task(self._run(), name="presence-events")

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish what is queued (within ``timeout``), then close."""
        if self._queue and self._task is not None:
            try:
                async with asyncio.timeout(timeout):
                    while self._queue and not self._task.done():
                        await asyncio.sleep(0.05)
            except TimeoutError:
                logger.warning("presence events: %d not published at stop", len(self._queue))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._publisher is not None:
            await self._publisher.transport.close()

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
                try:
                    await self._publish(batch)
                except Exception as exc:
                    self.failures += 1
                    logger.warning("presence events not published (will retry): %r", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(30.0, backoff * 2)
                    continue
                backoff = 0.5
                for _ in batch:
                    self._queue.popleft()
                self.published += len(batch)

    async def _publish(self, batch: list[PresenceEvent]) -> None:
        from google.api_core import exceptions
        from google.pubsub_v1 import types

        messages = [
            types.PubsubMessage(
                data=json.dumps(event.body()).encode(),
                attributes={"user_id": event.user_id, "state": event.state},
            )
            for event in batch
        ]
        try:
            await self._publisher.publish(
                topic=self.topic_path, messages=messages, timeout=RPC_TIMEOUT, retry=None
            )
        except exceptions.NotFound:
            try:
                await self._publisher.create_topic(name=self.topic_path, timeout=RPC_TIMEOUT)
            except exceptions.AlreadyExists:
                pass
            await self._publisher.publish(
                topic=self.topic_path, messages=messages, timeout=RPC_TIMEOUT, retry=None
            )
