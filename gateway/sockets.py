"""The socket edge: a raw ASGI handler for ``/ws/connect/{user_id}``.

``gateway.app.SocketFastPath`` routes the socket path here before Litestar, because it is the
one path held open by every client: talking ASGI directly skips a request object and the
router's frames per socket, which is measurable at 10,000 sockets (see docs/benchmarks.md).
With the default edge (``gateway.wsproto_lean``) the socket keeps no task once accepted: the
edge hands frames to ``SocketSink``, which takes pongs synchronously and runs every other event
through ``_on_event``. Other WebSocket implementations run the same ``_on_event`` from a receive
loop.

Close codes: 1009 frame too large; 1011 internal error; 4400 invalid user id; 4401 missing,
invalid, expired or revoked token; 4403 token for another user; 4408 session expired; 4429 a
limit exceeded (messages per second, sockets per user, connection attempts per address).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from gateway import messages, rooms
from gateway.auth import token_from
from gateway.closes import CloseCode
from gateway.exceptions import AuthError, ProtocolError
from gateway.limits import take_token
from gateway.messages import Ack, AuthOk, ErrorMessage, ServerPong, iso, utc_now
from gateway.protocol import (
    AuthRefresh,
    JoinRoom,
    LeaveRoom,
    MessageReceived,
    PingReceived,
    PongReceived,
    UnknownType,
    decode_frame,
)
from gateway.registry import Connection
from gateway.service import PresenceService
from gateway.wsproto_lean import FRAMES_EXTENSION

logger = logging.getLogger("gateway.sockets")


# Firebase uids are at most 128 characters; Firestore document ids may not contain "/" nor be
# "." or ".." nor look like "__name__". Allowing this set keeps every id a safe document id.
_USER_ID = re.compile(r"[A-Za-z0-9_\-.@:+=]{1,128}")


def valid_user_id(user_id: str) -> bool:
    return (
        _USER_ID.fullmatch(user_id) is not None
        and user_id not in (".", "..")
        and not (user_id.startswith("__") and user_id.endswith("__"))
    )


#: The pong as the JavaScript and Python clients send it.
CANONICAL_PONG = '{"type":"pong"}'


#: Events a detached socket may hold unhandled before its reading is paused (backpressure on
#: a client that sends faster than its messages are handled).
MAX_BACKLOG = 32


def within_rate(conn: Connection, rate: float) -> bool:
    """Take one frame from the socket's token bucket (``rate`` per second, bursts of twice
    that); False when it is empty (the socket is flooding)."""
    now = time.monotonic()
    allowed, conn.bucket = take_token(conn.bucket, conn.bucket_at, now, rate, 2 * rate)
    conn.bucket_at = now
    return allowed


class SocketSink:
    """What the socket edge (``gateway.wsproto_lean``) hands a client's frames to, in its
    ``data_received``, once the handshake is done: the socket then keeps no task of its own.

    * ``take_text``: pongs, the most frequent frame, taken synchronously; anything else, and
      a pong over the rate limit, is declined and comes back through ``put_event``.
    * ``put_event``: every other event (messages, pings, auth, rooms, the disconnect), handled
      in order by ``_on_event`` in a task that exists only while there are events to handle.
    """

    __slots__ = ("service", "conn", "backlog", "worker", "finished")

    def __init__(self, service: PresenceService, conn: Connection) -> None:
        self.service = service
        self.conn = conn
        #: Events waiting for the worker; None while there are none (an idle socket).
        self.backlog: list[Any] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.finished = False

    def take_text(self, text: str) -> bool:
        # Exactly what both clients send; any other spelling of a pong, and every other
        # frame, is declined here and decoded once, by _on_event.
        if text != CANONICAL_PONG or self.conn.closed:
            return False
        rate = self.service.settings.sockets.max_messages_per_second
        if rate and not within_rate(self.conn, rate):
            return False  # declined: _on_event counts it again and closes the socket
        self.service.pong(self.conn, utc_now())
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
        self.service.disconnected(self.conn, code)


async def serve_socket(
    service: PresenceService, user_id: str, scope: Any, receive: Any, send: Any
) -> None:
    """Run one client socket from handshake to close."""
    # The edge's fast paths (gateway.wsproto_lean), when the server runs that protocol.
    edge = (scope.get("extensions") or {}).get(FRAMES_EXTENSION)
    conn = await _admit(service, user_id, scope, receive, send)
    if conn is None:
        return
    if edge is not None:
        # The edge calls the sink from here on, and this task ends: an idle socket is held by
        # its transport alone (see docs/benchmarks.md).
        conn.edge = edge
        sink = SocketSink(service, conn)
        edge.set_text_sink(sink)
        service.connected(conn)
        edge.detach(sink)
        return
    service.connected(conn)
    code: int | None = None
    try:
        while code is None:
            code = await _on_event(service, conn, await receive())
    except Exception:
        logger.exception("socket handler failed user=%s session=%s", user_id, conn.session_id)
        code = CloseCode.INTERNAL_ERROR
        await conn.close(CloseCode.INTERNAL_ERROR, "internal error")
    finally:
        service.disconnected(conn, code)


async def _admit(
    service: PresenceService, user_id: str, scope: Any, receive: Any, send: Any
) -> Connection | None:
    """The handshake: accept the socket and return its Connection, or refuse it (None)."""
    event = await receive()
    if event["type"] != "websocket.connect":
        return None
    identity = None
    refusal: tuple[int, str] | None = None
    client = scope.get("client") or ("unknown", 0)
    if not service.connect_limiter.allow(str(client[0]), time.time()):
        # Before the token check: a flood of attempts costs no Auth or Firestore call.
        refusal = (CloseCode.RATE_LIMITED, "too many connection attempts")
    elif not valid_user_id(user_id):
        refusal = (CloseCode.INVALID_USER_ID, "invalid user id")
    else:
        try:
            token = token_from(scope.get("query_string", b""), dict(scope.get("headers", ())))
            identity = await service.admit(user_id, token)
            service.check_socket_limits(user_id)
        except AuthError as exc:
            refusal = (exc.close_code, exc.reason)
    # Accept, then close with the reason: a browser sees close codes, not handshake statuses.
    await send({"type": "websocket.accept"})
    if refusal is not None:
        refused_with, reason = refusal
        service.refusals[reason] += 1
        await send({"type": "websocket.close", "code": refused_with, "reason": reason})
        logger.info("refused socket user=%.80r: %s (%d)", user_id, reason, refused_with)
        return None
    return Connection(
        user_id,
        uuid.uuid4().hex,
        utc_now(),
        send,
        token_expires_at=identity.expires_at if identity else 0.0,
        room_grants=identity.rooms if identity else None,
    )


async def _on_event(service: PresenceService, conn: Connection, event: Any) -> int | None:
    """Handle one event of an accepted socket; return the close code once the socket is done."""
    kind = event["type"]
    if kind == "websocket.disconnect":
        return int(event.get("code", 1005))
    if kind != "websocket.receive":
        return None
    timeout = service.settings.sockets.send_timeout
    rate = service.settings.sockets.max_messages_per_second
    if rate and not within_rate(conn, rate):
        logger.info("closing flooding socket user=%s", conn.user_id)
        service.refusals["too many messages"] += 1
        await conn.close(CloseCode.RATE_LIMITED, "too many messages")
        return CloseCode.RATE_LIMITED
    try:
        decoded = decode_frame(
            event.get("text"), event.get("bytes"), service.settings.sockets.max_message_bytes
        )
    except ProtocolError as exc:
        if exc.close_code is not None:
            service.refusals[exc.code] += 1
            await conn.close(exc.close_code, exc.message)
            return exc.close_code
        reply = ErrorMessage("error", exc.code, exc.message, iso(utc_now()))
        await conn.send_text(messages.encode(reply), timeout)
        return None
    if isinstance(decoded, PongReceived):
        service.pong(conn, utc_now())
    elif isinstance(decoded, PingReceived):
        await conn.send_text(messages.encode(ServerPong("pong", iso(utc_now()))), timeout)
    elif isinstance(decoded, MessageReceived):
        ack = Ack("ack", iso(utc_now()), decoded.id)
        await conn.send_text(messages.encode(ack), timeout)
        try:
            await service.message_handler(conn.user_id, conn.session_id, decoded.data)
        except Exception:
            # The application's handler failing must not take the socket down.
            logger.exception("message handler failed user=%s", conn.user_id)
    elif isinstance(decoded, AuthRefresh):
        try:
            identity = await service.refresh_token(conn, decoded.token)
        except AuthError as exc:
            reply = ErrorMessage("error", "invalid_token", exc.reason, iso(utc_now()))
            await conn.send_text(messages.encode(reply), timeout)
            return None
        expires = datetime.fromtimestamp(identity.expires_at, UTC)
        await conn.send_text(
            messages.encode(AuthOk("auth_ok", iso(expires), iso(utc_now()))), timeout
        )
        await service.drop_ungranted_rooms(conn)
    elif isinstance(decoded, JoinRoom | LeaveRoom):
        await _on_room(service, conn, decoded, timeout)
    elif isinstance(decoded, UnknownType):
        logger.info("ignored unknown message type %.64r from user=%s", decoded.type, conn.user_id)
    return None


async def _on_room(
    service: PresenceService, conn: Connection, request: JoinRoom | LeaveRoom, timeout: float
) -> None:
    """Answer a join or leave: ``joined`` / ``left``, or an error naming the room."""
    reply: messages.Joined | messages.Left | messages.RoomErrorMessage
    try:
        if isinstance(request, JoinRoom):
            service.join_room(conn, request.room)
            reply = messages.Joined("joined", request.room, iso(utc_now()), request.id)
        else:
            service.leave_room(conn, request.room)
            reply = messages.Left("left", request.room, iso(utc_now()), request.id)
    except rooms.RoomRefused as exc:
        reply = messages.RoomErrorMessage(
            "error", exc.code, exc.message, iso(utc_now()), exc.room, request.id
        )
    await conn.send_text(messages.encode(reply), timeout)
