"""The sockets this instance holds, by user. A user may hold several (tabs, devices)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, Protocol

from gateway.protocol.session import Session, SessionLimits

logger = logging.getLogger("gateway.instance.registry")

AsgiSend = Callable[[dict[str, Any]], Awaitable[None]]


class FrameWriter(Protocol):
    """A socket edge that writes pre-encoded frames (``gateway.edge.wsproto_lean``)."""

    def ready(self) -> bool: ...

    def write_frame(self, frame: bytes) -> bool: ...

    def resume_reading(self) -> None: ...


#: For a Connection built without a session (tests, tools): the settings' defaults.
DEFAULT_LIMITS = SessionLimits()


class Connection:
    """One accepted socket. Kept small on purpose: there may be tens of thousands."""

    __slots__ = (
        "user_id",
        "session_id",
        "connected_at",
        "_send",
        "closed",
        "session",
        "room_grants",
        "edge",
        "replay",
        "pong_round",
        "waiting",
        "closed_with",
        "name",
        "publish_grants",
    )

    def __init__(
        self,
        user_id: str,
        session_id: str,
        connected_at: datetime,
        send: AsgiSend,
        session: Session | None = None,
        room_grants: tuple[str, ...] | None = (),
        name: str = "",
        publish_grants: tuple[str, ...] | None = (),
    ) -> None:
        self.user_id = user_id
        self.session_id = session_id
        self.connected_at = connected_at
        self._send = send
        self.closed = False
        #: The socket's protocol decisions and their state (rate bucket, token expiry).
        self.session = session if session is not None else Session(DEFAULT_LIMITS)
        #: The token's room grants (gateway.protocol.rooms); None only without tokens
        #: (AUTH_MODE=off).
        self.room_grants = room_grants
        #: The socket's edge when it writes pre-encoded frames; None for other implementations.
        self.edge: FrameWriter | None = None
        #: While a recovery replays missed durable messages: the live ones that arrive
        #: meanwhile, (offset, frame), sent after the replay; None otherwise.
        self.replay: list[tuple[int, str]] | None = None
        #: The heartbeat's ping generation this socket last had a pong written for (-1:
        #: none yet): one pong write per ping, however many pongs the client sends.
        self.pong_round = -1
        #: Sends of this socket waiting for its client to read: while any does, a message is
        #: not written straight to the edge (``push_frame``), where it would overtake them.
        self.waiting = 0
        #: The code the gateway closed the socket with (None: it did not close it).
        self.closed_with: int | None = None
        #: The token's display name (its ``name`` claim; "" without one): a presence room's
        #: default member info.
        self.name = name
        #: The token's ``rooms_publish`` grants; None only without tokens (AUTH_MODE=off).
        self.publish_grants = publish_grants

    async def send_text(self, text: str, timeout: float) -> bool:
        """Send one text frame; False when the socket is gone or too slow to take it."""
        if self.closed:
            return False
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await self._send({"type": "websocket.send", "text": text})
        except (TimeoutError, OSError, RuntimeError) as exc:
            # A client that cannot take a frame within the timeout is as good as gone; the
            # receive loop notices the disconnect and cleans up.
            logger.info("send failed user=%s session=%s: %r", self.user_id, self.session_id, exc)
            return False
        except Exception as exc:  # uvicorn raises its own ClientDisconnected types
            logger.info("send failed user=%s session=%s: %r", self.user_id, self.session_id, exc)
            return False
        finally:
            self.waiting -= 1
        return True

    async def push(self, text: str) -> bool:
        """Send without a timeout: for the ping loop, where one timer per socket per round costs
        more than the send. uvicorn's wsproto transport never waits on the client (frames queue
        in the transport), so this cannot stall on a slow reader."""
        if self.closed:
            return False
        try:
            await self._send({"type": "websocket.send", "text": text})
        except Exception:
            return False
        return True

    def push_frame(self, frame: bytes) -> bool | None:
        """Write a pre-encoded frame (``text_frame``) without a coroutine: True if written,
        False if the socket is closing or not reading, None when the edge cannot (then
        ``push`` the text)."""
        if self.edge is None:
            return None
        return not self.closed and self.edge.write_frame(frame)

    def takes_frame_now(self) -> bool:
        """Whether ``push_frame`` would write now, with no earlier send waiting to overtake."""
        return self.edge is not None and not self.closed and not self.waiting and self.edge.ready()

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.closed_with = int(code)
        try:
            # The wire number of the code (a CloseCode is an int; the ASGI server wants one).
            await self._send({"type": "websocket.close", "code": int(code), "reason": reason})
        except Exception as exc:
            logger.debug("close failed user=%s: %r", self.user_id, exc)


class Registry:
    """Maps user id to that user's open connections on this instance."""

    def __init__(self) -> None:
        self._by_user: dict[str, dict[str, Connection]] = {}
        self._total = 0

    def add(self, conn: Connection) -> int:
        """Register a socket; return how many the user now holds here."""
        sockets = self._by_user.setdefault(conn.user_id, {})
        if conn.session_id not in sockets:
            sockets[conn.session_id] = conn
            self._total += 1
        return len(sockets)

    def remove(self, conn: Connection) -> int:
        """Forget a socket; return how many the user still holds here."""
        sockets = self._by_user.get(conn.user_id)
        if sockets is None or sockets.pop(conn.session_id, None) is None:
            return len(sockets or ())
        self._total -= 1
        if not sockets:
            del self._by_user[conn.user_id]
            return 0
        return len(sockets)

    def sockets_of(self, user_id: str) -> list[Connection]:
        return list(self._by_user.get(user_id, {}).values())

    def count_of(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def users(self) -> list[str]:
        return list(self._by_user)

    def __iter__(self) -> Iterator[Connection]:
        for sockets in list(self._by_user.values()):
            yield from list(sockets.values())

    @property
    def total_connections(self) -> int:
        return self._total

    @property
    def total_users(self) -> int:
        return len(self._by_user)
