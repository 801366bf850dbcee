"""Each frame of an open socket, handed to the part of the client it concerns.

The connection loop (``presence_client.connection``) reads the frames; here each is parsed,
offered to the listeners' streams first, then routed by kind: acknowledgements to the outbox,
room answers and presence to the rooms, stream messages and recoveries to the durable stream,
token answers to the refresh. The reactions that change the connection itself (a ping, a
sign-out) go back to it through the callbacks it gives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from presence_client.durable import DurableStream
from presence_client.events import ErrorEvent
from presence_client.frames import Frame, FrameKind, classify_frame, parse_frame
from presence_client.link import Link
from presence_client.outbox import Outbox
from presence_client.refresh import TokenRefresh
from presence_client.rooms import Rooms


class FrameDispatch:
    """Routes the frames of one client's sockets."""

    def __init__(
        self,
        link: Link,
        outbox: Outbox,
        rooms: Rooms,
        durable: DurableStream,
        refresh: TokenRefresh,
        *,
        pinged: Callable[[Frame], Awaitable[None]],
        signed_out: Callable[[str | None, bool], None],
    ) -> None:
        self._link, self._outbox, self._rooms = link, outbox, rooms
        self._durable, self._refresh = durable, refresh
        #: The connection's reactions: answer a ping; stop on a sign-out (message, by_service).
        self._pinged, self._signed_out = pinged, signed_out

    async def on_frame(self, raw: str | bytes) -> None:
        link = self._link
        frame = parse_frame(raw)
        if frame is None:
            binary = not isinstance(raw, str)
            link.emit(
                "error",
                ErrorEvent(
                    "protocol",
                    "binary_frame" if binary else "invalid_frame",
                    "binary frame ignored" if binary else "not a JSON object",
                ),
            )
            return
        kind = classify_frame(frame)
        if kind is FrameKind.STREAM and not self._durable.on_stream(frame):
            return  # a duplicate (or malformed): nobody hears of it again
        # Queued before anything else reacts to the frame, so that a stream also gets the frame
        # that ends it (the timeout message); its reader runs later, after the pong went out.
        link.listeners.offer(frame)
        if kind is FrameKind.PING:
            await self._pinged(frame)
        elif kind is FrameKind.ACK:
            self._outbox.ack(frame)
        elif kind is FrameKind.AUTH_OK:
            self._refresh.on_auth_ok(frame)
        elif kind is FrameKind.JOINED:
            self._rooms.on_joined(frame)
        elif kind is FrameKind.LEFT:
            self._rooms.on_left(frame)
        elif kind is FrameKind.ERROR:
            code, message = frame.get("code"), frame.get("message")
            link.emit("error", ErrorEvent("server", str(code), str(message), frame=frame))
            self._rooms.on_error(frame)
            self._refresh.on_error(frame)
        elif kind is FrameKind.RECOVERY:
            self._durable.on_recovery(frame)
        elif kind is FrameKind.PRESENCE:
            self._rooms.on_presence(frame)
        elif kind is FrameKind.PRESENCE_DIFF:
            self._rooms.presence.on_diff(frame)
        elif kind is FrameKind.PUBLISH:
            self._rooms.presence.on_publish(frame)
        elif kind in (FrameKind.TIMEOUT, FrameKind.SIGNED_OUT):
            message = frame.get("message")
            self._signed_out(
                message if isinstance(message, str) else None, kind is FrameKind.SIGNED_OUT
            )
        link.emit("message", frame)
        frame_type = frame.get("type")
        if isinstance(frame_type, str):
            link.listeners.handle(frame_type, frame)
