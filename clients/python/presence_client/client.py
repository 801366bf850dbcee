"""The presence client's public class, :class:`PresenceClient`: its options, its members and
its events (see the package docstring).

It holds no logic of its own beyond checking its arguments: it builds the parts of a client and
hands each call to the one it concerns: :class:`~presence_client.connection.Connection` (the
connection loop, frames, closes), :class:`~presence_client.outbox.Outbox` (``send()``),
:class:`~presence_client.rooms.Rooms`, :class:`~presence_client.durable.DurableStream`,
:class:`~presence_client.refresh.TokenRefresh` and
:class:`~presence_client.listeners.Listeners` (events, handlers, ``messages()``).
"""

from __future__ import annotations

import asyncio
import random as _random
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal, Self, overload
from urllib.parse import urlsplit

from presence_client.buffer import RateLimit
from presence_client.closing import TERMINAL_STATES, Backoff, CloseCode, State
from presence_client.connection import Connection
from presence_client.durable import DurableStream
from presence_client.events import (
    Ack,
    AuthError,
    Connected,
    Connecting,
    Disconnected,
    ErrorEvent,
    Joined,
    Left,
    Member,
    Overflow,
    Pong,
    PresenceChange,
    PresenceDiff,
    PresenceSnapshot,
    Published,
    Recovery,
    SignedOut,
    StateChanged,
    StreamMessage,
    TokenRefreshed,
)
from presence_client.frames import Frame
from presence_client.link import Link
from presence_client.listeners import Listeners, MessageStream, Unsubscribe, log_listener_error
from presence_client.outbox import Outbox
from presence_client.presence import RoomPresence
from presence_client.refresh import GetToken, TokenRefresh
from presence_client.rooms import Rooms
from presence_client.streams import StreamPosition


class PresenceClient:
    """A client for the presence gateway's socket protocol; see the package docstring."""

    def __init__(
        self,
        url: str,
        user_id: str,
        get_token: GetToken | None,
        *,
        buffer_size: int = 100,
        backoff_min: float = 0.5,
        backoff_max: float = 20.0,
        backoff_rate_limited: float = 5.0,
        restart_jitter: float = 2.0,
        reset_after: float = 10.0,
        reconnect: bool = True,
        answer_pings: bool = True,
        token_refresh_lead: float = 300.0,
        token_retry_delay: float = 30.0,
        rate_limit: RateLimit | None = RateLimit(),  # noqa: B008 (frozen dataclass)
        max_message_bytes: int = 65_536,
        connect_timeout: float = 15.0,
        token_in_url: bool = False,
        recover: bool = False,
        ack_interval: float = 0.5,
        random: Callable[[], float] = _random.random,
        connect_options: Mapping[str, Any] | None = None,
        report_error: Callable[[BaseException], None] = log_listener_error,
    ) -> None:
        scheme = urlsplit(url.strip()).scheme.lower()
        if scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"url must be ws://, wss://, http:// or https://, not {url!r}")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError("need 0 < backoff_min <= backoff_max")
        self._user_id = user_id
        self._listeners = Listeners(report_error)
        self._link = Link(self._listeners)
        self._outbox = Outbox(self._link, buffer_size, rate_limit, max_message_bytes)
        self._rooms = Rooms(self._link, self._outbox, RoomPresence(self._link), max_message_bytes)
        #: Durable streams: present the position on every connect, de-duplicate, acknowledge.
        self._durable = DurableStream(self._link, recover, ack_interval)
        self._refresh = TokenRefresh(self._link, get_token, token_refresh_lead, token_retry_delay)
        self._connection = Connection(
            self._link,
            self._outbox,
            self._rooms,
            self._durable,
            self._refresh,
            url=url,
            user_id=user_id,
            get_token=get_token,
            backoff=Backoff(
                backoff_min, backoff_max, backoff_rate_limited, restart_jitter, reset_after
            ),
            reconnect=reconnect,
            answer_pings=answer_pings,
            connect_timeout=connect_timeout,
            token_in_url=token_in_url,
            random=random,
            connect_options=connect_options or {},
        )

    # --- public surface --------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._link.state

    @property
    def user_id(self) -> str:
        return self._user_id

    @property
    def buffered(self) -> int:
        """Messages waiting to be sent (offline, or paced by the rate limit)."""
        return self._outbox.buffer.waiting

    @property
    def unacked(self) -> int:
        """Messages sent on the current socket whose ack has not arrived."""
        return self._outbox.buffer.unacked

    @property
    def answer_pings(self) -> bool:
        """Testing aid: False keeps receiving pings but stops answering them, so the gateway's
        sweep signs the user out after ``PONG_TIMEOUT``. Never turn it off in an application."""
        return self._connection.answer_pings

    @answer_pings.setter
    def answer_pings(self, value: bool) -> None:
        self._connection.answer_pings = bool(value)

    @property
    def stream_position(self) -> StreamPosition:
        """The durable stream's position (epoch, offset), kept across reconnects; assign one
        to resume a stream another client held."""
        return self._durable.position

    @stream_position.setter
    def stream_position(self, position: StreamPosition) -> None:
        self._durable.position = position

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start connecting and return (the connection runs in a task; see ``wait_for_state``).
        A no-op while connecting, connected or reconnecting; from a terminal state it starts
        over, with the backoff and the token retry reset."""
        await self._connection.start()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "client closed") -> None:
        """Close for good: no reconnect (state ``closed``); buffered and unacknowledged sends
        raise :class:`PresenceSendError` with code ``closed``."""
        await self._connection.close(code, reason)

    def send(self, data: Any = None) -> asyncio.Future[Ack]:
        """Send ``{"type":"message","data":data,"id":N}`` (N = 1, 2, 3...). Never raises; the
        returned future (await it, or not) resolves with the gateway's :class:`Ack`, or fails
        with :class:`PresenceSendError`. While disconnected (also before ``start()``) the
        message waits in the buffer. Cancelling the future before the message went out
        withdraws it. Needs a running event loop."""
        return self._outbox.send(data)

    @property
    def rooms(self) -> list[str]:
        """The rooms joined, or to be joined on the next socket, sorted."""
        return self._rooms.names

    def join(self, room: str, info: Mapping[str, Any] | None = None) -> asyncio.Future[Joined]:
        """Join a room, now or when the next socket opens, and again after every reconnect,
        each time with ``info`` (a JSON object the other members of a presence room see).
        The future resolves with :class:`Joined` on the gateway's ``joined`` and fails with
        :class:`PresenceRoomError` when the gateway refuses (the room is then dropped: the
        token decides), the info is not a JSON object, or the client stops."""
        return self._rooms.join(room, info)

    def members(self, room: str) -> list[Member]:
        """A presence room's members as last heard: its snapshot, then its diffs. Empty before
        the snapshot, after leaving the room and while disconnected."""
        return self._rooms.presence.members(room)

    def publish(self, room: str, data: Any) -> bool:
        """Relay ``data`` to the room's other sockets. Not buffered, not acknowledged: True
        when it goes out on the live socket, False when offline or not in the room. Raises
        :class:`PresenceSendError` (``invalid_data``, ``message_too_large``)."""
        return self._rooms.publish(room, data)

    def leave(self, room: str) -> asyncio.Future[str]:
        """Leave a room; the future resolves with the room on the gateway's ``left``, at once
        when offline (the membership died with the socket). It never fails."""
        return self._rooms.leave(room)

    async def refresh_token(self) -> None:
        """Ask ``get_token(False)`` now and send the token on the live socket if it changed
        (e.g. when the application learns of a new token by other means)."""
        await self._refresh.refresh(forced=False, only_if_changed=True)

    async def wait_for_state(self, *states: State, timeout: float | None = None) -> State:
        """Wait until the client is in one of ``states`` (now or later); return that state.
        Raises ``TimeoutError`` after ``timeout`` seconds."""
        return await self._link.wait_for_state(frozenset(states), timeout)

    def messages(self, *types: str) -> MessageStream:
        """Server frames of these types (all frames when none given) as an async iterator that
        ends when the client reaches a terminal state."""
        return self._listeners.messages(frozenset(types), ended=self._link.state in TERMINAL_STATES)

    @overload
    def on(
        self, event: Literal["state"], callback: Callable[[StateChanged], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["connecting"], callback: Callable[[Connecting], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["connected"], callback: Callable[[Connected], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["disconnected"], callback: Callable[[Disconnected], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["signed_out"], callback: Callable[[SignedOut], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["auth_error"], callback: Callable[[AuthError], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["message", "ping"], callback: Callable[[Frame], object]
    ) -> Unsubscribe: ...
    @overload
    def on(self, event: Literal["pong"], callback: Callable[[Pong], object]) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["overflow"], callback: Callable[[Overflow], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["token_refreshed"], callback: Callable[[TokenRefreshed], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["error"], callback: Callable[[ErrorEvent], object]
    ) -> Unsubscribe: ...
    @overload
    def on(self, event: Literal["joined"], callback: Callable[[Joined], object]) -> Unsubscribe: ...
    @overload
    def on(self, event: Literal["left"], callback: Callable[[Left], object]) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["stream"], callback: Callable[[StreamMessage], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self,
        event: Literal["recovery", "not_recovered"],
        callback: Callable[[Recovery], object],
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["presence"], callback: Callable[[PresenceSnapshot], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["presence_diff"], callback: Callable[[PresenceDiff], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["presence_change"], callback: Callable[[PresenceChange], object]
    ) -> Unsubscribe: ...
    @overload
    def on(
        self, event: Literal["publish"], callback: Callable[[Published], object]
    ) -> Unsubscribe: ...
    def on(self, event: str, callback: Callable[[Any], object]) -> Unsubscribe:
        """Subscribe ``callback`` to an event; returns a function that unsubscribes. A callback
        may be a plain function (called inline, so keep it short) or return an awaitable (run
        as a task). Its exceptions go to ``report_error``; the client carries on."""
        return self._listeners.on(event, callback)

    def on_message(self, type: str, callback: Callable[[Frame], object]) -> Unsubscribe:
        """Subscribe to server frames of one ``type`` (``"notification"``, ``"ping"``...)."""
        return self._listeners.on_message(type, callback)

    def __repr__(self) -> str:
        return f"<PresenceClient user={self._user_id!r} state={self._link.state.value}>"
