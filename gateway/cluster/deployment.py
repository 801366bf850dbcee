"""The deployment view: send, broadcast, timeouts, status and stats across every instance.

A REST call (or the sweep's callback) lands on any instance. That instance acts on the sockets
it holds at once, publishes the work on the fan-out topic (``gateway.cluster.broker``), and every
other instance does the same for the sockets it holds and publishes a receipt addressed to the first
(the requests and receipts themselves: ``gateway.cluster.fanout``; each operation's part:
``gateway.cluster.operations``).
The first answers once every instance it expects has replied, or after ``FANOUT_TIMEOUT`` with
those that did, naming the others in ``unreachable_instances``. Whom to expect comes from
Firestore: the live instances (heartbeats in ``gateway_instances``) for a broadcast, stats or
timeouts; the instances recorded in the member's ``active_sessions`` for a send.

Without a broker (``PUBSUB_TOPIC`` unset) the instance is alone: everything acts on its own
sockets and every answer says ``"scope": "instance"``. Status needs no broker: it is read from
Firestore.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple, TypeVar

from gateway.cluster.batch import (
    SEND_BATCH,
    BatchDelivery,
    EntryStatus,
    SendBatch,
    entry_results,
)
from gateway.cluster.broker import Broker, BrokerUnavailable
from gateway.cluster.directory import Directory
from gateway.cluster.fanout import DEFAULT_LIST_LIMIT, Fanout, Reply, Request, kind_of
from gateway.cluster.operation import Context, Delivery, Gathered, Operation
from gateway.cluster.operations import (
    BROADCAST,
    OPERATIONS,
    ROOM_MEMBERS,
    ROOM_SEND,
    SEND,
    SIGN_OUT,
    STATS,
    TIMEOUT,
    Arrival,
    Broadcast,
    RoomMembers,
    RoomSend,
    Send,
    SignOut,
    Stats,
    Timeout,
)
from gateway.cluster.presence import ClusterPresence, RoomSignal
from gateway.cluster.send_coalescing import SendCoalescer
from gateway.exceptions import DeploymentUnavailable, UserNotConnectedError
from gateway.instance.service import PresenceService
from gateway.protocol import messages
from gateway.protocol.messages import RoomResponse, StatsResponse
from gateway.storage.streams import stream_frame

logger = logging.getLogger("gateway.cluster.deployment")

R = TypeVar("R", bound=Request)
Out = TypeVar("Out")


#: Durable batch entries stored at once (each a Firestore transaction on its user's stream).
DURABLE_BATCH_CONCURRENCY = 16


class BatchOutcome(NamedTuple):
    """One batch entry's answer."""

    position: int
    user_id: str
    connections: int
    status: EntryStatus | Literal["failed"]
    error: str | None = None
    epoch: str | None = None
    offset: int | None = None


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
        self.directory = Directory(
            service.store,
            self.settings,
            service.admission.member_reads,
            lagged_at=lambda: service.endings.lagged_at,
        )
        self.context = Context(self.me, service, self.directory)
        self.fanout = (
            Fanout(
                broker,
                self.me,
                self.settings.fanout.fanout_timeout,
                serve=self._serve,
                holds=lambda user_id: bool(service.registry.count_of(user_id)),
                requests=OPERATIONS,
            )
            if broker is not None
            else None
        )
        #: Cross-instance sends made at one moment, published as one batch.
        self.sends = SendCoalescer(self.fanout) if self.fanout is not None else None
        self._notices: set[asyncio.Task[None]] = set()
        #: Room presence replication; None without presence rooms, or without a broker (then
        #: the view is this instance's alone).
        self.presence = (
            ClusterPresence(self)
            if self.fanout is not None and self.settings.presence.room_prefixes
            else None
        )
        if self.fanout is not None:
            service.admission.announce = self._announce_arrival
            service.relay = self._relay

    async def start(self) -> None:
        if self.fanout is None:
            logger.warning(
                "no PUBSUB_TOPIC: this instance is alone; send, broadcast, stats and the "
                "sweep's timeouts reach the sockets it holds only"
            )
            return
        await self.fanout.start()
        if self.presence is not None:
            self.presence.start()

    async def stop(self) -> None:
        if self.presence is not None:
            await self.presence.stop()
        for task in list(self._notices):
            task.cancel()
        await asyncio.gather(*self._notices, return_exceptions=True)
        if self.sends is not None:
            await self.sends.stop()
        await self.directory.stop()
        if self.fanout is not None:
            await self.fanout.stop()

    # --- the one scatter/gather ----------------------------------------------------------

    async def run(self, op: Operation[R, Out], request: R, *, everywhere: bool = True) -> Out:
        """Do ``op`` on this instance, then (with a broker, and ``everywhere``) on every
        instance its audience names, and merge the receipts."""
        local = await op.here(self.context, request)
        local.instance = self.me

        def answer(replies: dict[str, Reply], missing: list[str], **how: Any) -> Out:
            return op.merge(request, Gathered(self.me, local, replies, missing, **how))

        if self.fanout is None or not everywhere:
            return answer({}, [], scope="instance")
        audience = await op.audience(self.context, request, local)
        if not audience.publish:
            return answer({}, [], scope=audience.scope)
        try:
            if isinstance(request, Send) and audience.expect is not None and self.sends:
                replies, missing = await self.sends.ask(request, audience.expect)
            else:
                replies, missing = await self.fanout.ask(request, audience.expect)
        except BrokerUnavailable as exc:
            logger.warning("%s reached this instance only: %s", kind_of(request), exc)
            expected = sorted(audience.expect or ())
            return answer({}, expected, scope="instance", failure=exc)
        return answer(replies, missing, scope="deployment")

    def _announce_arrival(self, user_id: str) -> None:
        """Admission saw the user's record name other instances: tell them (no wait)."""
        task = asyncio.create_task(self._tell(Arrival(user_id=user_id)))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    def _relay(self, room: str, text: str) -> None:
        """A member's publish, for the room's sockets on the other instances (no wait)."""
        task = asyncio.create_task(self._tell(RoomSignal(room=room, text=text)))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _tell(self, notice: Request) -> None:
        assert self.fanout is not None
        try:
            await self.fanout.tell(notice)
        except BrokerUnavailable as exc:
            # Bounded: the others reread within WHEREABOUTS_SECONDS.
            logger.warning("%s notice not published: %s", kind_of(notice), exc)

    async def _serve(self, request: Request) -> Reply | None:
        """Another instance's request: the operation's work here, and the receipt owed."""
        op = OPERATIONS[type(request)]
        reply = await op.here(self.context, request)
        return reply if op.owed(request, reply, self.me) else None

    # --- operations ----------------------------------------------------------------------

    async def send(
        self, user_id: str, payload: dict[str, Any], *, text: str = "", offset: int = 0
    ) -> Delivery:
        """Send a JSON object to every socket of the user, on whichever instances hold them
        (or, from ``send_durable``, the encoded frame ``text`` of stream ``offset``).

        Raises UserNotConnectedError when no live instance holds one, DeploymentUnavailable
        when the user is not here and Firestore or the broker cannot be reached."""
        text = text if offset else messages.encode(payload)
        return await self.run(SEND, Send(user_id=user_id, text=text, offset=offset))

    async def send_durable(self, user_id: str, payload: dict[str, Any]) -> DurableDelivery:
        """Append a JSON object to the user's stream, then deliver it like ``send``. Stored
        means delivered sooner or later: no socket anywhere, or an instance out of reach, is
        no error (the client recovers the message when it reconnects).

        Raises DeploymentUnavailable when the stream cannot be written (nothing was sent)."""
        body = messages.encode(payload)
        try:
            epoch, offset = await self._append(user_id, body)
        except Exception as exc:
            raise DeploymentUnavailable(
                f"the message could not be stored in user {user_id!r}'s stream: {exc!r}"
            ) from exc
        text = stream_frame(epoch, offset, body)
        try:
            sent = await self.send(user_id, {}, text=text, offset=offset)
        except UserNotConnectedError:
            sent = Delivery(0, 0, [], [], "deployment" if self.broker else "instance")
        except DeploymentUnavailable as exc:
            logger.warning("durable send stored, not delivered live: %s", exc)
            sent = Delivery(0, 0, [], [], "instance")
        return DurableDelivery(sent, epoch, offset)

    async def _append(self, user_id: str, body: str) -> tuple[str, int]:
        """Store a durable message in the user's stream: its (epoch, offset). Raises what
        the stream store raised."""
        place = await self.service.streams.store.append(user_id, body, messages.utc_now())
        self.service.streams.appends += 1
        return place

    async def send_batch(
        self, entries: list[tuple[int, str, str]], *, durable: bool = False
    ) -> tuple[list[BatchOutcome], BatchDelivery]:
        """Each ``(index, user, encoded JSON object)`` to every socket of its user: one
        directory read for all (coalesced), at most one publish. ``durable``: each stored in
        its user's stream first (a few at a time); an entry that cannot be stored fails
        alone."""
        stored: dict[int, tuple[str, int] | Exception] = {}
        bodies = {index: text for index, _, text in entries}
        if durable:
            slots = asyncio.Semaphore(DURABLE_BATCH_CONCURRENCY)

            async def append(index: int, user_id: str) -> None:
                async with slots:
                    try:
                        stored[index] = await self._append(user_id, bodies[index])
                    except Exception as exc:
                        stored[index] = exc

            await asyncio.gather(*(append(index, user_id) for index, user_id, _ in entries))
        wire: list[tuple[int, str, str, int]] = []
        for index, user_id, _ in entries:
            place = stored.get(index)
            if isinstance(place, tuple):
                wire.append((index, user_id, stream_frame(*place, bodies[index]), place[1]))
            elif place is None:
                wire.append((index, user_id, bodies[index], 0))
        if wire:
            delivery = await self.run(SEND_BATCH, SendBatch(entries=list(wire)))
        else:
            delivery = BatchDelivery([], [], [], "deployment" if self.broker else "instance")
        results = {r.position: r for r in entry_results(wire, delivery)}
        outcomes = []
        for index, user_id, _ in entries:
            place = stored.get(index)
            if isinstance(place, Exception):
                outcomes.append(BatchOutcome(index, user_id, 0, "failed", repr(place)))
                continue
            result = results[index]
            epoch, offset = place if isinstance(place, tuple) else (None, None)
            outcomes.append(
                BatchOutcome(index, user_id, result.connections, result.status, None, epoch, offset)
            )
        return outcomes, delivery

    async def broadcast(self, payload: dict[str, Any], exclude_user: str | None = None) -> Delivery:
        """Send to every socket of the deployment except ``exclude_user``'s; users with
        sockets on several instances count once in ``recipients``."""
        request = Broadcast(text=messages.encode(payload), exclude_user=exclude_user)
        return await self.run(BROADCAST, request)

    async def room_send(self, room: str, payload: dict[str, Any]) -> Delivery:
        """Send a JSON object to every member socket of the room on every instance: one
        publish, like a broadcast, each live instance delivering to the members it holds and
        answering with the users it reached (counted once in ``recipients``)."""
        return await self.run(ROOM_SEND, RoomSend(room=room, text=messages.encode(payload)))

    async def room_members(
        self, room: str, limit: int = DEFAULT_LIST_LIMIT, *, everywhere: bool = True
    ) -> RoomResponse:
        """The room's member sockets on every live instance, or on this one
        (``everywhere=False``, no broker, or the broker unreachable; ``scope`` says which):
        the first ``limit`` members and users, and the counts."""
        request = RoomMembers(room=room, limit=limit)
        return await self.run(ROOM_MEMBERS, request, everywhere=everywhere)

    async def expire(self, sessions: Iterable[tuple[str, str]]) -> tuple[int, int]:
        """The sweep's callback: time out these sessions' sockets wherever they are. Returns
        (closed, not_found); raises DeploymentUnavailable when sessions not held here could
        not be handed to the other instances (the reconcile poll closes them later)."""
        return await self.run(TIMEOUT, Timeout(sessions=sorted(set(sessions))))

    async def stats(self, limit: int = DEFAULT_LIST_LIMIT) -> StatsResponse:
        """Every live instance's connections (users once, the first ``limit`` listed), or
        this instance's alone when there is no broker or it cannot be reached (``scope`` says
        which)."""
        return await self.run(STATS, Stats(limit=limit))

    async def close_user(self, user_id: str) -> Delivery:
        """Send the user's sockets on every instance the signed_out message and close them
        with 4410 (``POST /ws/signout/{user_id}``)."""
        return await self.run(SIGN_OUT, SignOut(user_id=user_id))

    async def user_instances(self, user_id: str) -> dict[str, int]:
        """The user's sockets by instance across the deployment: this instance's from its
        registry, the others' from Firestore. Raises when Firestore cannot answer."""
        counts = await self.directory.user_instances(user_id)
        local = self.service.registry.count_of(user_id)
        if local:
            counts[self.me] = local
        return counts
