"""Every cross-instance operation, declared once: its request on the wire, its work on one
instance, whom it waits for, and how the receipts merge into the answer.

``Deployment.run`` (``gateway.cluster.deployment``) is the one scatter/gather that serves them
all: the operation's work on this instance first (``here``); nothing more without a broker;
else the instances to wait for (``audience``, which may decide that nobody else needs asking),
the request published and the receipts gathered; then ``merge`` turns the receipts into the
answer. Every other instance does the same ``here`` when the request reaches it and publishes
the receipt (unless the operation says none is ``owed``). Adding an operation means adding
one request struct and one ``Operation`` (here, or in a module of its own like
``gateway.cluster.batch``) and listing it in ``OPERATIONS``;
tests/unit/test_operations.py runs each through lost, duplicated and unanswered messages.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.cluster import console, presence
from gateway.cluster.batch import SEND_BATCH
from gateway.cluster.directory import settled
from gateway.cluster.fanout import DEFAULT_LIST_LIMIT, Recipients, Reply, Request, user_digests
from gateway.cluster.operation import Audience, Context, Delivery, Gathered, Operation
from gateway.cluster.stats import instance_stats, merge_room, merge_stats, room_receipt
from gateway.exceptions import DeploymentUnavailable, UserNotConnectedError
from gateway.protocol.messages import RoomResponse, StatsResponse

logger = logging.getLogger("gateway.cluster.operations")

# --- requests ---------------------------------------------------------------------------------


class Send(Request, tag="send"):
    routed = True
    user_id: str = ""
    #: The encoded JSON frame: encoded once, by the origin.
    text: str = ""
    #: Instances that must answer even when they deliver nothing.
    expect: list[str] = []
    #: A durable send's offset in the user's stream (0: a plain send).
    offset: int = 0

    def attributes(self) -> dict[str, str]:
        return {"user_id": self.user_id, "expect": ",".join(self.expect)}


class SignOut(Request, tag="signout"):
    routed = True
    user_id: str = ""
    expect: list[str] = []

    def attributes(self) -> dict[str, str]:
        return {"user_id": self.user_id, "expect": ",".join(self.expect)}


class Broadcast(Request, tag="broadcast"):
    text: str = ""
    exclude_user: str | None = None


class RoomSend(Request, tag="room"):
    room: str = ""
    text: str = ""


class Timeout(Request, tag="timeout"):
    sessions: list[tuple[str, str]] = []


class Stats(Request, tag="stats"):
    limit: int = DEFAULT_LIST_LIMIT


class RoomMembers(Request, tag="room_members"):
    room: str = ""
    limit: int = DEFAULT_LIST_LIMIT


class Arrival(Request, tag="arrival"):
    """A notice, not a request: the origin accepted a socket of a user its member record
    shows on other instances. Only instances holding the user decode it; nobody answers."""

    routed = True
    user_id: str = ""

    def attributes(self) -> dict[str, str]:
        return {"user_id": self.user_id}


# --- operations -------------------------------------------------------------------------------


class SendOp(Operation[Send, Delivery]):
    """A frame to every socket of one user, on the instances Firestore says hold them."""

    request = Send

    async def here(self, ctx: Context, request: Send) -> Reply:
        service, user_id = ctx.service, request.user_id
        if request.offset:
            connections = await service.streams.send(user_id, request.text, request.offset)
        else:
            connections = await service.send_text(user_id, request.text)
        return Reply(connections=connections, users=[user_id] if connections else [])

    def owed(self, request: Send, reply: Reply, me: str) -> bool:
        return bool(reply.connections) or me in request.expect

    async def audience(self, ctx: Context, request: Send, local: Reply) -> Audience:
        held_here = settled(ctx.service.registry.sockets_of(request.user_id))
        try:
            elsewhere = await ctx.directory.user_instances(request.user_id, held_here=held_here)
        except Exception as exc:
            if not local.connections:
                raise DeploymentUnavailable(
                    f"cannot tell where user {request.user_id!r} is connected: {exc!r}"
                ) from exc
            logger.warning("send: Firestore unavailable, delivered on this instance: %r", exc)
            return Audience(set(), publish=False, scope="instance")
        # A durable message is published even when Firestore lists no other instance: a
        # socket that connected since (its record trails by one flush) may have recovered
        # before the message was stored, and only the live copy reaches it. Instances without
        # the user's sockets drop it on its attributes; none is waited for beyond those listed.
        request.expect = sorted(elsewhere)
        return Audience(set(elsewhere), publish=bool(elsewhere) or bool(request.offset))

    def merge(self, request: Send, gathered: Gathered) -> Delivery:
        local = gathered.local.connections
        here = [gathered.me] if local else []
        if gathered.failure is not None and not local:
            raise DeploymentUnavailable(
                f"user {request.user_id!r} is connected to other instances and the message "
                f"broker cannot be reached: {gathered.failure}"
            )
        delivered = sum(r.connections for r in gathered.receipts())
        reached = here + sorted(i for i, r in gathered.replies.items() if r.connections)
        if not delivered and not gathered.missing:
            raise UserNotConnectedError(request.user_id)
        return Delivery(delivered, 1 if delivered else 0, reached, gathered.missing, gathered.scope)


class SignOutOp(Operation[SignOut, Delivery]):
    """The signed_out message and a 4410 close to every socket of one user. Sockets on an
    instance Firestore does not list yet (the record trails a connect by one flush) are asked
    for too when it cannot answer: then every live instance is."""

    request = SignOut

    async def here(self, ctx: Context, request: SignOut) -> Reply:
        return Reply(closed=await ctx.service.endings.sign_out_local(request.user_id))

    async def audience(self, ctx: Context, request: SignOut, local: Reply) -> Audience:
        try:
            expect: set[str] | None = set(await ctx.directory.user_instances(request.user_id))
        except Exception as exc:
            logger.warning("sign-out: Firestore unavailable, asking every instance: %r", exc)
            expect = await ctx.directory.live_instances()
        request.expect = sorted(expect or ())
        return Audience(expect)

    def merge(self, request: SignOut, gathered: Gathered) -> Delivery:
        closed = sum(r.closed for r in gathered.receipts())
        here = [gathered.me] if gathered.local.closed else []
        reached = here + sorted(i for i, r in gathered.replies.items() if r.closed)
        return Delivery(closed, 1 if closed else 0, reached, gathered.missing, gathered.scope)


def reach(gathered: Gathered) -> Delivery:
    """A broadcast's or room send's answer: sockets summed, users counted once by digest."""
    recipients = Recipients(())
    for reply in gathered.receipts():
        recipients.add(reply)
    reached = [gathered.me, *sorted(gathered.replies)]
    delivered = sum(r.connections for r in gathered.receipts())
    return Delivery(delivered, len(recipients), reached, gathered.missing, gathered.scope)


class BroadcastOp(Operation[Broadcast, Delivery]):
    """A frame to every socket of the deployment but one user's."""

    request = Broadcast

    async def here(self, ctx: Context, request: Broadcast) -> Reply:
        users, connections = await ctx.service.broadcast_text(request.text, request.exclude_user)
        return Reply(connections=connections, user_count=len(users), digests=user_digests(users))

    def merge(self, request: Broadcast, gathered: Gathered) -> Delivery:
        return reach(gathered)


class RoomSendOp(Operation[RoomSend, Delivery]):
    """A frame to every member socket of a room, on every instance."""

    request = RoomSend

    async def here(self, ctx: Context, request: RoomSend) -> Reply:
        users, connections = await ctx.service.send_room_text(request.room, request.text)
        return Reply(connections=connections, user_count=len(users), digests=user_digests(users))

    def merge(self, request: RoomSend, gathered: Gathered) -> Delivery:
        return reach(gathered)


class TimeoutOp(Operation[Timeout, tuple[int, int]]):
    """The sweep's callback: these sessions' sockets timed out wherever they are, as
    (closed, not found). Nobody else is asked when this instance held them all."""

    request = Timeout

    async def here(self, ctx: Context, request: Timeout) -> Reply:
        closed, _ = await ctx.service.endings.expire_sessions(request.sessions)
        return Reply(closed=closed)

    async def audience(self, ctx: Context, request: Timeout, local: Reply) -> Audience:
        if local.closed == len(request.sessions):
            return Audience(set(), publish=False)
        return await super().audience(ctx, request, local)

    def merge(self, request: Timeout, gathered: Gathered) -> tuple[int, int]:
        if gathered.failure is not None:
            raise DeploymentUnavailable(
                f"closed {gathered.local.closed} sockets here; the others could not be reached "
                f"through the message broker ({gathered.failure}); each instance's poll closes "
                "them within SWEEP_INTERVAL"
            )
        closed = sum(r.closed for r in gathered.receipts())
        return closed, len(request.sessions) - closed


class StatsOp(Operation[Stats, StatsResponse]):
    """Every live instance's connections and pong writer; this instance's alone without a
    broker or when it cannot be reached."""

    request = Stats

    async def here(self, ctx: Context, request: Stats) -> Reply:
        return Reply(stats=instance_stats(ctx.service, request.limit))

    def merge(self, request: Stats, gathered: Gathered) -> StatsResponse:
        local = gathered.local.stats
        assert local is not None
        if gathered.scope == "instance":
            return local
        theirs = [r.stats for r in gathered.replies.values() if r.stats is not None]
        return merge_stats(local, theirs, gathered.missing, request.limit)


class RoomMembersOp(Operation[RoomMembers, RoomResponse]):
    """A room's member sockets on every live instance (gathered like stats)."""

    request = RoomMembers

    async def here(self, ctx: Context, request: RoomMembers) -> Reply:
        return room_receipt(ctx.service, request.room, request.limit, Reply())

    def merge(self, request: RoomMembers, gathered: Gathered) -> RoomResponse:
        views = {gathered.me: gathered.local, **gathered.replies}
        # Like stats, a broker that cannot be reached makes it this instance's view.
        unreachable = [] if gathered.failure is not None else gathered.missing
        return merge_room(request.room, request.limit, views, gathered.scope, unreachable)


class ArrivalNotice(Operation[Arrival, None]):
    """Sends answered here wait for the announcing instance too (gateway.cluster.directory)."""

    request = Arrival

    async def here(self, ctx: Context, request: Arrival) -> Reply:
        if request.origin != ctx.me:
            ctx.directory.note_arrival(request.user_id, request.origin)
        return Reply()

    def owed(self, request: Arrival, reply: Reply, me: str) -> bool:
        return False


SEND = SendOp()
ARRIVAL = ArrivalNotice()
SIGN_OUT = SignOutOp()
BROADCAST = BroadcastOp()
ROOM_SEND = RoomSendOp()
TIMEOUT = TimeoutOp()
STATS = StatsOp()
ROOM_MEMBERS = RoomMembersOp()

#: Every operation an instance serves, by its request type.
OPERATIONS: dict[type[Request], Operation[Any, Any]] = {
    op.request: op
    for op in (
        *(SEND, SIGN_OUT, BROADCAST, ROOM_SEND, TIMEOUT, STATS, ROOM_MEMBERS, SEND_BATCH),
        ARRIVAL,
        *presence.OPERATIONS,
        *console.OPERATIONS,
    )
}
#: Operations published without waiting for anyone (``Deployment.tell``).
NOTICES: frozenset[type[Request]] = frozenset({Arrival, *presence.NOTICES})
