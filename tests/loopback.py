"""A loopback broker and a cluster of in-process instances on one in-memory store, for unit tests
of the cross-instance operations (no Pub/Sub, no sockets).

The ``LoopbackBus`` delivers every published message to every started instance asynchronously,
as Pub/Sub does (and, like the emulator, ignores the reply filter, so instances must drop others'
replies themselves). It can lose an instance's messages (``deaf``), lose its receipts
(``lose_replies_from``), deliver everything twice (``duplicate``) or refuse to publish (``down``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from gateway.cluster.broker import BrokerUnavailable, Handler
from gateway.cluster.deployment import Deployment
from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.protocol.messages import utc_now
from gateway.settings import Settings
from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    HEARTBEAT_AT,
    INSTANCE_ID,
    INSTANCES,
    INTERNAL_URL,
    MEMBERS,
)
from gateway.storage.store import MemoryStore
from tests.support import unit_settings


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def texts(self) -> list[str]:
        return [m["text"] for m in self.sent if m["type"] == "websocket.send"]


class LoopbackBus:
    """Every endpoint's publishes reach every started endpoint (its own included), later."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.down = False
        #: Instances whose messages are lost (a hung instance, a partition).
        self.deaf: set[str] = set()
        self.duplicate = False
        #: Instances whose receipts are lost on the way back (they did the work).
        self.lose_replies_from: set[str] = set()
        self.published: list[Mapping[str, str]] = []

    def endpoint(self, instance_id: str) -> Endpoint:
        return Endpoint(self, instance_id)


class Endpoint:
    def __init__(self, bus: LoopbackBus, instance_id: str) -> None:
        self.bus, self.instance_id, self.connected = bus, instance_id, False
        self.published = self.publish_calls = 0

    async def start(self, handler: Handler) -> None:
        self.bus.handlers[self.instance_id] = handler
        self.connected = True

    async def stop(self) -> None:
        self.bus.handlers.pop(self.instance_id, None)

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        if self.bus.down:
            raise BrokerUnavailable("injected outage")
        self.bus.published.append(dict(attributes))
        self.published += 1
        self.publish_calls += 1
        if attributes.get("kind") == "reply" and self.instance_id in self.bus.lose_replies_from:
            return
        loop = asyncio.get_running_loop()
        for instance_id, handler in list(self.bus.handlers.items()):
            if instance_id in self.bus.deaf:
                continue
            for _ in range(2 if self.bus.duplicate else 1):
                loop.call_soon(handler, data, attributes)


def settings(instance_id: str, **overrides: Any) -> Settings:
    return unit_settings(
        instance_id=instance_id,
        **{"pubsub_topic": "fanout", "fanout_timeout": 0.5, **overrides},
    )


class Cluster:
    """Instances on one in-memory store and one loopback bus, all registered as live."""

    def __init__(self, *ids: str, bus: LoopbackBus | None = None, **overrides: Any) -> None:
        self.store = MemoryStore()
        self.bus = bus or LoopbackBus()
        self.overrides = overrides
        self.at: dict[str, Deployment] = {}
        for instance_id in ids:
            self.add(instance_id)

    def add(self, instance_id: str) -> Deployment:
        """One more instance on the bus and the store (``overrides`` are every instance's
        settings); started by the context manager, or by the caller once that has run."""
        service = PresenceService(settings(instance_id, **self.overrides), self.store)
        self.at[instance_id] = Deployment(service, self.bus.endpoint(instance_id))
        register(self.store, instance_id)
        return self.at[instance_id]

    async def __aenter__(self) -> Cluster:
        for deployment in self.at.values():
            await deployment.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for deployment in self.at.values():
            await deployment.stop()

    def socket(
        self, instance_id: str, user_id: str, session_id: str, *, age: float = 0.0
    ) -> Recorder:
        """A socket on that instance, connected ``age`` seconds ago, recorded on the member as
        the gateway records it."""
        wire = Recorder()
        connected_at = utc_now() - timedelta(seconds=age)
        self.at[instance_id].service.registry.add(
            Connection(user_id, session_id, connected_at, wire)
        )
        member = self.store.docs.setdefault((MEMBERS, user_id), {})
        member.setdefault(ACTIVE_SESSIONS, {})[session_id] = {INSTANCE_ID: instance_id}
        return wire


def register(store: MemoryStore, instance_id: str, *, age: float = 0.0) -> None:
    store.docs[(INSTANCES, instance_id)] = {
        INTERNAL_URL: f"http://{instance_id}",
        HEARTBEAT_AT: utc_now() - timedelta(seconds=age),
    }
