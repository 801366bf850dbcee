"""The socket edge: a raw ASGI handler for ``/ws/connect/{user_id}``.

``gateway.web.app.SocketFastPath`` routes the socket path here before Litestar, because it is the
one path held open by every client: talking ASGI directly skips a request object and the
router's frames per socket, which is measurable at 10,000 sockets (see docs/benchmarks.md).
With the default edge (``gateway.edge.wsproto_lean``) the socket keeps no task once accepted: the
edge hands frames to ``SocketSink``, which takes pongs synchronously and runs every other event
through ``_on_event``. Other WebSocket implementations run the same ``_on_event`` from a receive
loop.

The edge decides nothing about a frame: ``gateway.protocol.session.Session`` does (replies, the rate
limit, close codes, token expiry), and the edge carries its decision out. What it does decide is
admission (``_admit``: connect rate, user id, token, sockets per user). Close codes are
``gateway.protocol.closes.CloseCode``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from gateway.edge.wsproto_lean import FRAMES_EXTENSION
from gateway.exceptions import AuthError
from gateway.instance.auth import token_from
from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.logs import FRAME_LINES_BURST, FRAME_LINES_WINDOW, LogBudget
from gateway.protocol import messages, rooms
from gateway.protocol.closes import CloseCode
from gateway.protocol.frames import (
    AuthRefresh,
    JoinRoom,
    LeaveRoom,
    MessageReceived,
    PongReceived,
    PublishRoom,
    StreamAck,
    UnknownType,
)
from gateway.protocol.limits import connect_address
from gateway.protocol.messages import iso, utc_now
from gateway.protocol.session import Session, Step
from gateway.storage.streams import Position, recovery_request

logger = logging.getLogger("gateway.web.sockets")
#: Unknown frame types are logged within a budget: one line per frame would let a client
#: write log lines at its frame rate (gateway.logs).
_unknown_lines: LogBudget[str] = LogBudget(
    logger, burst=FRAME_LINES_BURST, window=FRAME_LINES_WINDOW
)


# Firebase uids are at most 128 characters; Firestore document ids may not contain "/" nor be
# "." or ".." nor look like "__name__". Allowing this set keeps every id a safe document id.
_USER_ID = re.compile(r"[A-Za-z0-9_\-.@:+=]{1,128}")


def valid_user_id(user_id: str) -> bool:
    return (
        _USER_ID.fullmatch(user_id) is not None
        and user_id not in (".", "..")
        and not (user_id.startswith("__") and user_id.endswith("__"))
    )


#: Events a detached socket may hold unhandled before its reading is paused (backpressure on
#: a client that sends faster than its messages are handled).
MAX_BACKLOG = 32


class SocketSink:
    """What the socket edge (``gateway.edge.wsproto_lean``) hands a client's frames to, in its
    ``data_received``, once the handshake is done: the socket then keeps no task of its own.

    * ``take_text``: pongs, the most frequent frame, taken synchronously; anything else, and
      a pong over the rate limit, is declined and comes back through ``put_event``.
    * ``put_event``: every other event (messages, pings, auth, rooms, the disconnect), handled
      in order by ``_on_event`` in a task that exists only while there are events to handle.
    """

    __slots__ = ("service", "conn", "backlog", "worker", "finished", "recovery")

    def __init__(self, service: PresenceService, conn: Connection) -> None:
        self.service = service
        self.conn = conn
        #: Events waiting for the worker; None while there are none (an idle socket).
        self.backlog: list[Any] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.finished = False
        #: A replay of missed durable messages in progress (gateway.storage.streams), if any.
        self.recovery: asyncio.Task[Any] | None = None

    def take_text(self, text: str) -> bool:
        conn = self.conn
        if conn.closed or not conn.session.take_pong(text, time.monotonic()):
            return False  # declined: _on_event decides it (and closes a flood)
        self.service.pong(conn, utc_now())
        return True

    def put_event(self, event: Any) -> bool:
        """Take one event from the edge; False asks it to pause reading (a backlog)."""
        if self.finished:
            return True
        if self.worker is None and event["type"] == "websocket.disconnect":
            # Nothing in flight: the socket's end needs no task (a drain closes thousands).
            self._finish(int(event.get("code", 1005)))
            return True
        if self.backlog is None:
            self.backlog = [event]
        else:
            self.backlog.append(event)
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())
        return len(self.backlog) < MAX_BACKLOG

    async def _work(self) -> None:
        code: int | None = None
        try:
            while code is None and self.backlog:
                event = self.backlog.pop(0)
                if len(self.backlog) == MAX_BACKLOG - 1 and self.conn.edge is not None:
                    self.conn.edge.resume_reading()
                code = await _on_event(self.service, self.conn, event)
        except Exception:
            logger.exception(
                "socket handler failed user=%s session=%s", self.conn.user_id, self.conn.session_id
            )
            code = CloseCode.INTERNAL_ERROR
            await self.conn.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self.worker = None
        if code is not None:
            self._finish(code)
        elif not self.backlog:
            self.backlog = None

    def _finish(self, code: int) -> None:
        self.finished = True
        self.backlog = None
        if self.recovery is not None and not self.recovery.done():
            self.recovery.cancel()
        self.recovery = None
        self.service.disconnected(self.conn, code)


async def serve_socket(
    service: PresenceService, user_id: str, scope: Any, receive: Any, send: Any
) -> None:
    """Run one client socket from handshake to close."""
    # The edge's fast paths (gateway.edge.wsproto_lean), when the server runs that protocol.
    edge = (scope.get("extensions") or {}).get(FRAMES_EXTENSION)
    # Read before the accept: the lean edge trims the scope to the socket's identity then.
    wanted, position = _position(scope)
    conn = await _admit(service, user_id, scope, receive, send)
    if conn is None:
        return
    if edge is not None:
        # The edge calls the sink from here on, and this task ends: an idle socket is held by
        # its transport alone (see docs/benchmarks.md).
        conn.edge = edge
        sink = SocketSink(service, conn)
        edge.set_text_sink(sink)
        sink.recovery = _connected(service, conn, wanted, position)
        await service.heartbeat.first_ping(conn)
        edge.detach(sink)
        return
    recovery = _connected(service, conn, wanted, position)
    await service.heartbeat.first_ping(conn)
    code: int | None = None
    try:
        while code is None:
            code = await _on_event(service, conn, await receive())
    except Exception:
        logger.exception("socket handler failed user=%s session=%s", user_id, conn.session_id)
        code = CloseCode.INTERNAL_ERROR
        await conn.close(CloseCode.INTERNAL_ERROR, "internal error")
    finally:
        if recovery is not None and not recovery.done():
            recovery.cancel()
        service.disconnected(conn, code)


def _connected(
    service: PresenceService, conn: Connection, wanted: bool, position: Position | None
) -> asyncio.Task[Any] | None:
    """Register the accepted socket, and start replaying what it missed when it asked to."""
    if not wanted:
        service.connected(conn)
        return None
    # Queue live durable messages from the moment the socket is registered, so none
    # overtakes the replay (see StreamDelivery.recover).
    conn.replay = []
    service.connected(conn)
    recovery = asyncio.create_task(service.streams.recover(conn, position))
    recovery.add_done_callback(_log_failure)
    return recovery


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("recovery failed", exc_info=task.exception())


def _position(scope: Any) -> tuple[bool, Position | None]:
    """Whether the socket's URL asks for a recovery, and from which position (None: from the
    user's acknowledged one). A malformed position counts as none: the recovery frame then
    tells the client where the stream stands."""
    try:
        return recovery_request(scope.get("query_string", b""))
    except ValueError:
        return True, None


async def _admit(
    service: PresenceService, user_id: str, scope: Any, receive: Any, send: Any
) -> Connection | None:
    """The handshake: accept the socket and return its Connection, or refuse it (None)."""
    event = await receive()
    if event["type"] != "websocket.connect":
        return None
    identity = None
    refusal: tuple[int, str] | None = None
    address = connect_address(
        scope.get("client"),
        scope.get("headers", ()),
        trust_every_peer=service.settings.sockets.forwarded_allow_ips.strip() == "*",
    )
    if not service.admission.connect_limiter.allow(address, time.time()):
        # Before the token check: a flood of attempts costs no Auth or Firestore call.
        refusal = (CloseCode.RATE_LIMITED, "too many connection attempts")
    elif not valid_user_id(user_id):
        refusal = (CloseCode.INVALID_USER_ID, "invalid user id")
    else:
        try:
            token = token_from(scope.get("query_string", b""), dict(scope.get("headers", ())))
            identity = await service.admission.admit(user_id, token)
            service.admission.check_socket_limits(user_id)
        except AuthError as exc:
            refusal = (exc.close_code, exc.reason)
    # Accept, then close with the reason: a browser sees close codes, not handshake statuses.
    await send({"type": "websocket.accept"})
    if refusal is not None:
        refused_with, reason = refusal
        service.refusals[reason] += 1
        service.events.refused(user_id, None, refused_with, reason)
        await send({"type": "websocket.close", "code": refused_with, "reason": reason})
        logger.info("refused socket user=%.80r: %s (%d)", user_id, reason, refused_with)
        return None
    return Connection(
        user_id,
        uuid.uuid4().hex,
        utc_now(),
        send,
        session=Session(service.session_limits, identity.expires_at if identity else 0.0),
        room_grants=identity.rooms if identity else None,
        name=identity.name if identity else "",
        publish_grants=identity.publish if identity else None,
    )


async def _on_event(service: PresenceService, conn: Connection, event: Any) -> int | None:
    """Carry out the session's decision on one event of an accepted socket; return the close
    code once the socket is done."""
    kind = event["type"]
    if kind == "websocket.disconnect":
        return int(event.get("code", 1005))
    if kind != "websocket.receive":
        return None
    at = utc_now()
    step = conn.session.receive(event.get("text"), event.get("bytes"), time.monotonic(), at)
    await _send_replies(service, conn, step)
    if step.close is not None:
        code, reason, counted_as = step.close
        if code == CloseCode.RATE_LIMITED:
            logger.info("closing flooding socket user=%s", conn.user_id)
        service.refusals[counted_as] += 1
        service.events.refused(conn.user_id, conn.session_id, int(code), reason)
        await conn.close(code, reason)
        return int(code)
    work = step.work
    if isinstance(work, PongReceived):
        service.pong(conn, at)
    elif isinstance(work, MessageReceived):
        try:
            await service.message_handler(conn.user_id, conn.session_id, work.data)
        except Exception:
            # The application's handler failing must not take the socket down.
            logger.exception("message handler failed user=%s", conn.user_id)
    elif isinstance(work, AuthRefresh):
        try:
            identity = await service.admission.refresh_token(conn, work.token)
        except AuthError as exc:
            await _send_replies(service, conn, conn.session.refresh_refused(exc.reason, utc_now()))
            return None
        await _send_replies(service, conn, conn.session.refreshed(identity.expires_at, utc_now()))
        await service.drop_ungranted_rooms(conn)
    elif isinstance(work, StreamAck):
        service.streams.ack(conn, work.epoch, work.offset)
    elif isinstance(work, JoinRoom | LeaveRoom):
        refused: rooms.RoomRefused | None = None
        try:
            if isinstance(work, JoinRoom):
                service.join_room(conn, work.room, work.info)
            else:
                service.leave_room(conn, work.room)
        except rooms.RoomRefused as exc:
            refused = exc
        await _send_replies(service, conn, conn.session.room_answer(work, refused, utc_now()))
        if refused is None and isinstance(work, JoinRoom):
            if service.presence.is_presence_room(work.room):
                # After "joined": who is in the room, from this instance's replicated view.
                text = service.presence.snapshot_text(work.room)
                await conn.send_text(text, service.settings.sockets.send_timeout)
    elif isinstance(work, PublishRoom):
        try:
            await service.publish(conn, work.room, work.data)
        except rooms.RoomRefused as exc:
            reply = messages.RoomErrorMessage(
                "error", exc.code, exc.message, iso(utc_now()), exc.room, work.id
            )
            await conn.send_text(messages.encode(reply), service.settings.sockets.send_timeout)
    elif isinstance(work, UnknownType):
        _unknown_lines.info(
            "unknown message types",
            "ignored unknown message type %.64r from user=%s",
            work.type,
            conn.user_id,
        )
    return None


async def _send_replies(service: PresenceService, conn: Connection, step: Step) -> None:
    for reply in step.replies:
        await conn.send_text(messages.encode(reply), service.settings.sockets.send_timeout)
