"""Room presence across instances: the operations that replicate each instance's entries of the
room view (``gateway.protocol.presence.RoomView``) over the fan-out topic, the relay of
members' ``publish`` frames, and the loops that keep the view honest.

- ``presence`` (a notice): an owner's changed entries, batched every PUBLISH_DELAY;
- ``presence_sync``: an instance that starts asks every live instance for its entries; an
  instance whose digest shows it missed messages asks the one it missed them from;
- ``presence_digest`` (a notice, every SWEEP_INTERVAL): how many entries an owner has and its
  newest version, so that a peer that lost messages (a Pub/Sub outage) notices and resyncs;
- ``signal`` (a notice): a member's ``publish``, for the room's members on other instances.

An instance whose heartbeat stopped (``Directory.live_instances``) has its entries dropped,
and the members are sent the leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.cluster.broker import BrokerUnavailable
from gateway.cluster.fanout import Reply, Request
from gateway.cluster.operation import Audience, Context, Gathered, Operation

if TYPE_CHECKING:
    from gateway.cluster.deployment import Deployment

logger = logging.getLogger("gateway.cluster.presence")

#: How long an owner's changes gather before they are published in one message.
PUBLISH_DELAY = 0.05
#: Entries per published message (each under 1 KB: far under Pub/Sub's 10 MB).
PUBLISH_CHUNK = 2000


class PresenceDelta(Request, tag="presence"):
    entries: list[tuple[str, str, int, int, dict[str, Any]]] = []


class PresenceSync(Request, tag="presence_sync"):
    #: Only this instance answers ("": every instance).
    only: str = ""


class PresenceDigest(Request, tag="presence_digest"):
    entries: int = 0
    newest: int = 0


class RoomSignal(Request, tag="signal"):
    room: str = ""
    text: str = ""


class DeltaNotice(Operation[PresenceDelta, None]):
    request = PresenceDelta

    async def here(self, ctx: Context, request: PresenceDelta) -> Reply:
        if request.origin != ctx.me:
            view = ctx.service.presence.view
            for entry in request.entries:
                view.apply(request.origin, entry)
        return Reply()

    def owed(self, request: PresenceDelta, reply: Reply, me: str) -> bool:
        return False


class SyncOp(Operation[PresenceSync, dict[str, Reply]]):
    """Every asked instance's own entries (``ClusterPresence.sync`` puts them in the view in
    place of what it held of them)."""

    request = PresenceSync

    async def here(self, ctx: Context, request: PresenceSync) -> Reply:
        if request.origin in ("", ctx.me) or request.only not in ("", ctx.me):
            return Reply()
        view = ctx.service.presence.view
        return Reply(presence=view.owned(ctx.me), as_of=view.newest_of(ctx.me))

    def owed(self, request: PresenceSync, reply: Reply, me: str) -> bool:
        return request.only in ("", me)

    async def audience(self, ctx: Context, request: PresenceSync, local: Reply) -> Audience:
        if request.only:
            return Audience({request.only})
        return await super().audience(ctx, request, local)

    def merge(self, request: PresenceSync, gathered: Gathered) -> dict[str, Reply]:
        return gathered.replies


class DigestNotice(Operation[PresenceDigest, None]):
    request = PresenceDigest

    async def here(self, ctx: Context, request: PresenceDigest) -> Reply:
        if request.origin != ctx.me:
            view = ctx.service.presence.view
            if view.count_of(request.origin) != request.entries or (
                view.newest_of(request.origin) < request.newest
            ):
                ctx.service.presence.stale_owners.add(request.origin)
        return Reply()

    def owed(self, request: PresenceDigest, reply: Reply, me: str) -> bool:
        return False


class SignalNotice(Operation[RoomSignal, None]):
    request = RoomSignal

    async def here(self, ctx: Context, request: RoomSignal) -> Reply:
        if request.origin != ctx.me:
            await ctx.service.send_room_text(request.room, request.text)
        return Reply()

    def owed(self, request: RoomSignal, reply: Reply, me: str) -> bool:
        return False


DELTA = DeltaNotice()
SYNC = SyncOp()
DIGEST = DigestNotice()
SIGNAL = SignalNotice()
OPERATIONS = (DELTA, SYNC, DIGEST, SIGNAL)
NOTICES: frozenset[type[Request]] = frozenset({PresenceDelta, PresenceDigest, RoomSignal})


class ClusterPresence:
    """The loops of one instance's presence replication (started by the deployment)."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        assert deployment.fanout is not None
        self._fanout = deployment.fanout
        self.local = deployment.service.presence
        self.sweep_interval = deployment.settings.fanout.sweep_interval
        self._tasks: list[asyncio.Task[None]] = []
        #: instance -> monotonic time it was first seen in the view (a new instance's
        #: heartbeat may trail its first message).
        self._first_seen: dict[str, float] = {}
        self.dropped_instances = 0
        self.resyncs = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sync_at_start(), name="presence-sync"),
            asyncio.create_task(self._publish_loop(), name="presence-publish"),
            asyncio.create_task(self._watch_loop(), name="presence-watch"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def sync(self, only: str = "") -> int:
        """Replace what the view holds of the asked instances' entries with their answers;
        return how many answered."""
        replies = await self.deployment.run(SYNC, PresenceSync(only=only))
        for instance, reply in replies.items():
            self.local.view.replace_instance(instance, reply.presence, reply.as_of)
        return len(replies)

    async def _sync_at_start(self) -> None:
        try:
            answered = await self.sync()
            logger.info("presence: view synced from %d instances", answered)
        except Exception as exc:
            logger.warning("presence: start-up sync failed, digests will catch up: %r", exc)

    async def _publish_loop(self) -> None:
        backoff = PUBLISH_DELAY
        while True:
            await self.local.outgoing_ready.wait()
            await asyncio.sleep(backoff)
            wires = self.local.take_outgoing()
            try:
                for start in range(0, len(wires), PUBLISH_CHUNK):
                    chunk = wires[start : start + PUBLISH_CHUNK]
                    await self._fanout.tell(PresenceDelta(entries=chunk))
                backoff = PUBLISH_DELAY
            except BrokerUnavailable as exc:
                logger.warning("presence: %d entries not published yet: %s", len(wires), exc)
                self.local.requeue(wires)
                backoff = min(5.0, backoff * 4)

    async def _watch_loop(self) -> None:
        # At a fixed cadence, as the ping loop keeps: a pass's own registry read and digest
        # publish must not stretch the interval, and with it how long a lost instance's
        # members stay in rooms (two passes; docs/presence.md gives the bound).
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.sweep_interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                await self.watch_once()
            except Exception:
                logger.exception("presence: watch pass failed")
            next_at = max(next_at + self.sweep_interval, loop.time())

    async def watch_once(self) -> None:
        """Drop the entries of instances that stopped beating, resync from owners whose
        digest showed missed messages, and publish this instance's digest."""
        view, me = self.local.view, self.deployment.me
        # Read afresh, once a pass: a cached set could be a second old, and the drop below
        # waits another pass, so a cache here added a second to how long a lost instance's
        # members stay in rooms (docs/presence.md gives the bound).
        live = await self.deployment.directory.live_instances(fresh=True)
        now = time.monotonic()
        if live is not None:
            for instance in set(self._first_seen) & live:
                del self._first_seen[instance]  # a late heartbeat, not a lost instance
            for instance in view.instances() - live - {me}:
                first = self._first_seen.setdefault(instance, now)
                # Missing at two passes in a row: an interval apart, give or take how long
                # each pass's read took, so half an interval tells the second from the first.
                if now - first >= self.sweep_interval / 2:
                    rooms = view.drop_instance(instance)
                    self._first_seen.pop(instance, None)
                    self.dropped_instances += 1
                    logger.warning(
                        "presence: instance %s stopped beating; its entries in %d rooms dropped",
                        instance,
                        len(rooms),
                    )
        for instance in sorted(self.local.stale_owners):
            self.local.stale_owners.discard(instance)
            self.resyncs += 1
            await self.sync(instance)
        try:
            await self._fanout.tell(
                PresenceDigest(entries=view.count_of(me), newest=view.newest_of(me))
            )
        except BrokerUnavailable as exc:
            logger.warning("presence: digest not published: %s", exc)
