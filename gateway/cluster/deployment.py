"""The deployment view: send, broadcast, timeouts, status and stats across every instance.

A REST call (or the sweep's callback) lands on any instance. That instance acts on the sockets
it holds at once, publishes the work on the fan-out topic (``gateway.cluster.broker``), and every
other instance does the same for the sockets it holds and publishes a receipt addressed to the first
(the requests and receipts themselves: ``gateway.cluster.fanout``).
The first answers once every instance it expects has replied, or after ``FANOUT_TIMEOUT`` with
those that did, naming the others in ``unreachable_instances``. Whom to expect comes from
Firestore: the live instances (heartbeats in ``gateway_instances``) for a broadcast, stats or
timeouts; the instances recorded in the member's ``active_sessions`` for a send.

Without a broker (``PUBSUB_TOPIC`` unset) the instance is alone: everything acts on its own
sockets and every answer says ``"scope": "instance"``. Status needs no broker: it is read from
Firestore.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

from gateway.cluster.broker import Broker, BrokerUnavailable
from gateway.cluster.directory import Directory
from gateway.cluster.fanout import (
    DEFAULT_LIST_LIMIT,
    Event,
    Fanout,
    Recipients,
    RequestKind,
    user_digests,
)
from gateway.cluster.stats import instance_stats, merge_room, merge_stats, room_receipt
from gateway.exceptions import DeploymentUnavailable, UserNotConnectedError
from gateway.instance.service import PresenceService
from gateway.protocol import messages
from gateway.protocol.messages import RoomResponse, StatsResponse
from gateway.storage.streams import stream_frame

logger = logging.getLogger("gateway.cluster.deployment")

Scope = Literal["deployment", "instance"]


class Delivery(NamedTuple):
    """What a send or broadcast reached."""

    connections: int
    #: Distinct users reached.
    recipients: int
    #: Instances that delivered or answered (this one first when it took part).
    instances: list[str]
    #: Live instances that did not answer in time: their sockets may have missed the message.
    unreachable: list[str]
    scope: Scope


class DurableDelivery(NamedTuple):
    """What a durable send stored and reached."""

    delivery: Delivery
    epoch: str
    offset: int


class Deployment:
    """Cross-instance operations over the broker, plus the Firestore-backed status view."""

    def __init__(self, service: PresenceService, broker: Broker | None) -> None:
        self.service = service
        self.settings = service.settings
        self.me = service.settings.instance_id
        #: None: no PUBSUB_TOPIC, this instance is alone.
        self.broker = broker
        self.fanout = (
            Fanout(
                broker,
                self.me,
                self.settings.fanout.fanout_timeout,
                serve=self._serve,
                holds=lambda user_id: bool(service.registry.count_of(user_id)),
            )
            if broker is not None
            else None
        )
        self.directory = Directory(service.store, self.settings)

    async def start(self) -> None:
        if self.fanout is None:
            logger.warning(
                "no PUBSUB_TOPIC: this instance is alone; send, broadcast, stats and the "
                "sweep's timeouts reach the sockets it holds only"
            )
            return
        await self.fanout.start()

    async def stop(self) -> None:
        if self.fanout is not None:
            await self.fanout.stop()

    # --- requests from other instances -----------------------------------------------------

    async def _serve(self, event: Event) -> Event | None:
        """Do a request's work on this instance's sockets; return the receipt (None: none is
        owed, a send that reached nobody here and did not expect this instance)."""
        service = self.service
        reply = Event("reply", event.id, self.me, instance=self.me)
        if event.kind == "send":
            if event.offset:
                reply.connections = await service.streams.send(
                    event.user_id, event.text, event.offset
                )
            else:
                reply.connections = await service.send_text(event.user_id, event.text)
            if not reply.connections and self.me not in event.expect:
                return None
            reply.users = [event.user_id] if reply.connections else []
        elif event.kind == "broadcast":
            users, reply.connections = await service.broadcast_text(event.text, event.exclude_user)
            reply.user_count, reply.digests = len(users), user_digests(users)
        elif event.kind == "timeout":
            reply.closed, _ = await service.endings.expire_sessions(event.sessions)
        elif event.kind == "stats":
            reply.stats = instance_stats(service, event.limit)
        elif event.kind == "signout":
            reply.closed = await service.endings.sign_out_local(event.user_id)
        elif event.kind == "room":
            users, reply.connections = await service.send_room_text(event.room, event.text)
            reply.user_count, reply.digests = len(users), user_digests(users)
        elif event.kind == "room_members":
            room_receipt(service, event.room, event.limit, reply)
        return reply

    def _event(self, kind: RequestKind, **fields: Any) -> Event:
        # Requests are made only with a broker: every caller has checked self.broker.
        assert self.fanout is not None
        return self.fanout.event(kind, **fields)

    async def _ask(
        self, event: Event, expect: set[str] | None
    ) -> tuple[dict[str, Event], list[str]]:
        assert self.fanout is not None
        return await self.fanout.ask(event, expect)

    # --- operations ----------------------------------------------------------------------

    async def send_durable(self, user_id: str, payload: dict[str, Any]) -> DurableDelivery:
        """Append a JSON object to the user's stream, then deliver it like ``send``. Stored
        means delivered sooner or later: no socket anywhere, or an instance out of reach, is
        no error (the client recovers the message when it reconnects).

        Raises DeploymentUnavailable when the stream cannot be written (nothing was sent)."""
        body = messages.encode(payload)
        try:
            epoch, offset = await self.service.streams.store.append(
                user_id, body, messages.utc_now()
            )
        except Exception as exc:
            raise DeploymentUnavailable(
                f"the message could not be stored in user {user_id!r}'s stream: {exc!r}"
            ) from exc
        self.service.streams.appends += 1
        text = stream_frame(epoch, offset, body)
        try:
            sent = await self.send(user_id, {}, text=text, offset=offset)
        except UserNotConnectedError:
            sent = Delivery(0, 0, [], [], "deployment" if self.broker else "instance")
        except DeploymentUnavailable as exc:
            logger.warning("durable send stored, not delivered live: %s", exc)
            sent = Delivery(0, 0, [], [], "instance")
        return DurableDelivery(sent, epoch, offset)

    async def send(
        self, user_id: str, payload: dict[str, Any], *, text: str = "", offset: int = 0
    ) -> Delivery:
        """Send a JSON object to every socket of the user, on whichever instances hold them
        (or, from ``send_durable``, the encoded frame ``text`` of stream ``offset``).

        Raises UserNotConnectedError when no live instance holds one, DeploymentUnavailable
        when the user is not here and Firestore or the broker cannot be reached."""
        if offset:
            delivered = await self.service.streams.send(user_id, text, offset)
        else:
            text = messages.encode(payload)
            delivered = await self.service.send_text(user_id, text)
        here = [self.me] if delivered else []
        if self.broker is None:
            if not delivered:
                raise UserNotConnectedError(user_id)
            return Delivery(delivered, 1, here, [], "instance")
        try:
            elsewhere = await self.directory.user_instances(user_id)
        except Exception as exc:
            if not delivered:
                raise DeploymentUnavailable(
                    f"cannot tell where user {user_id!r} is connected: {exc!r}"
                ) from exc
            logger.warning("send: Firestore unavailable, delivered on this instance: %r", exc)
            return Delivery(delivered, 1, here, [], "instance")
        if not elsewhere and not offset:
            if not delivered:
                raise UserNotConnectedError(user_id)
            return Delivery(delivered, 1, here, [], "deployment")
        # A durable message is published even when Firestore lists no other instance: a socket
        # that connected since (its record trails by one flush) may have recovered before the
        # message was stored, and only the live copy reaches it. Instances without the user's
        # sockets drop it on its attributes; none is waited for beyond those listed.
        event = self._event(
            "send", user_id=user_id, text=text, expect=sorted(elsewhere), offset=offset
        )
        try:
            replies, missing = await self._ask(event, set(elsewhere))
        except BrokerUnavailable as exc:
            if not delivered:
                raise DeploymentUnavailable(
                    f"user {user_id!r} is connected to other instances and the message broker "
                    f"cannot be reached: {exc}"
                ) from exc
            return Delivery(delivered, 1, here, sorted(elsewhere), "instance")
        delivered += sum(r.connections for r in replies.values())
        reached = here + sorted(i for i, r in replies.items() if r.connections)
        if not delivered and not missing:
            raise UserNotConnectedError(user_id)
        return Delivery(delivered, 1 if delivered else 0, reached, missing, "deployment")

    async def broadcast(self, payload: dict[str, Any], exclude_user: str | None = None) -> Delivery:
        """Send to every socket of the deployment except ``exclude_user``'s; users with
        sockets on several instances count once in ``recipients``."""
        text = messages.encode(payload)
        users, delivered = await self.service.broadcast_text(text, exclude_user)
        if self.broker is None:
            return Delivery(delivered, len(users), [self.me], [], "instance")
        expect = await self.directory.live_instances()
        event = self._event("broadcast", text=text, exclude_user=exclude_user)
        try:
            replies, missing = await self._ask(event, expect)
        except BrokerUnavailable as exc:
            logger.warning("broadcast reached this instance only: %s", exc)
            return Delivery(delivered, len(users), [self.me], sorted(expect or ()), "instance")
        recipients = Recipients(users)
        for reply in replies.values():
            delivered += reply.connections
            recipients.add(reply)
        reached = [self.me, *sorted(replies)]
        return Delivery(delivered, len(recipients), reached, missing, "deployment")

    async def room_send(self, room: str, payload: dict[str, Any]) -> Delivery:
        """Send a JSON object to every member socket of the room on every instance: one
        publish, like a broadcast, each live instance delivering to the members it holds and
        answering with the users it reached (counted once in ``recipients``)."""
        text = messages.encode(payload)
        users, delivered = await self.service.send_room_text(room, text)
        if self.broker is None:
            return Delivery(delivered, len(users), [self.me], [], "instance")
        # Every live instance, not only those with members: membership lives in each
        # instance's memory, so none can be left out in advance.
        expect = await self.directory.live_instances()
        try:
            replies, missing = await self._ask(self._event("room", room=room, text=text), expect)
        except BrokerUnavailable as exc:
            logger.warning("room send reached this instance only: %s", exc)
            return Delivery(delivered, len(users), [self.me], sorted(expect or ()), "instance")
        recipients = Recipients(users)
        for reply in replies.values():
            delivered += reply.connections
            recipients.add(reply)
        reached = [self.me, *sorted(replies)]
        return Delivery(delivered, len(recipients), reached, missing, "deployment")

    async def room_members(
        self, room: str, limit: int = DEFAULT_LIST_LIMIT, *, everywhere: bool = True
    ) -> RoomResponse:
        """The room's member sockets on every live instance (gathered like stats), or on this
        one (``everywhere=False``, no broker, or the broker unreachable; ``scope`` says which):
        the first ``limit`` members and users, and the counts."""
        views = {self.me: room_receipt(self.service, room, limit, Event("reply", "", self.me))}
        missing: list[str] = []
        scope: Scope = "instance"
        if everywhere and self.broker is not None:
            expect = await self.directory.live_instances()
            request = self._event("room_members", room=room, limit=limit)
            try:
                replies, missing = await self._ask(request, expect)
            except BrokerUnavailable as exc:
                logger.warning("room members of this instance only: %s", exc)
            else:
                scope = "deployment"
                views.update(replies)
        return merge_room(room, limit, views, scope, missing)

    async def expire(self, sessions: Iterable[tuple[str, str]]) -> tuple[int, int]:
        """The sweep's callback: time out these sessions' sockets wherever they are. Returns
        (closed, not_found); raises DeploymentUnavailable when sessions not held here could
        not be handed to the other instances (the reconcile poll closes them later)."""
        wanted = sorted(set(sessions))
        closed, _ = await self.service.endings.expire_sessions(wanted)
        if self.broker is None or closed == len(wanted):
            return closed, len(wanted) - closed
        expect = await self.directory.live_instances()
        try:
            replies, _missing = await self._ask(self._event("timeout", sessions=wanted), expect)
        except BrokerUnavailable as exc:
            raise DeploymentUnavailable(
                f"closed {closed} sockets here; the others could not be reached through the "
                f"message broker ({exc}); each instance's poll closes them within SWEEP_INTERVAL"
            ) from exc
        closed += sum(r.closed for r in replies.values())
        return closed, len(wanted) - closed

    async def stats(self, limit: int = DEFAULT_LIST_LIMIT) -> StatsResponse:
        """Every live instance's connections (users once, the first ``limit`` listed), or
        this instance's alone when there is no broker or it cannot be reached (``scope`` says
        which)."""
        local = instance_stats(self.service, limit)
        if self.broker is None:
            return local
        expect = await self.directory.live_instances()
        try:
            replies, missing = await self._ask(self._event("stats", limit=limit), expect)
        except BrokerUnavailable as exc:
            logger.warning("stats for this instance only: %s", exc)
            return local
        theirs = [r.stats for r in replies.values() if r.stats is not None]
        return merge_stats(local, theirs, missing, limit)

    async def user_instances(self, user_id: str) -> dict[str, int]:
        """The user's sockets by instance across the deployment: this instance's from its
        registry, the others' from Firestore. Raises when Firestore cannot answer."""
        counts = await self.directory.user_instances(user_id)
        local = self.service.registry.count_of(user_id)
        if local:
            counts[self.me] = local
        return counts

    async def close_user(self, user_id: str) -> Delivery:
        """Send the user's sockets on every instance the signed_out message and close them
        with 4410 (``POST /ws/signout/{user_id}``). Sockets on an instance that Firestore does
        not list yet (the record trails a connect by one flush) are asked for too when it
        cannot answer: then every live instance is."""
        closed = await self.service.endings.sign_out_local(user_id)
        here = [self.me] if closed else []
        if self.broker is None:
            return Delivery(closed, 1 if closed else 0, here, [], "instance")
        try:
            expect: set[str] | None = set(await self.directory.user_instances(user_id))
        except Exception as exc:
            logger.warning("sign-out: Firestore unavailable, asking every instance: %r", exc)
            expect = await self.directory.live_instances()
        event = self._event("signout", user_id=user_id, expect=sorted(expect or ()))
        try:
            replies, missing = await self._ask(event, expect)
        except BrokerUnavailable as exc:
            logger.warning("sign-out reached this instance only: %s", exc)
            return Delivery(closed, 1 if closed else 0, here, sorted(expect or ()), "instance")
        closed += sum(r.closed for r in replies.values())
        reached = here + sorted(i for i, r in replies.items() if r.closed)
        return Delivery(closed, 1 if closed else 0, reached, missing, "deployment")
