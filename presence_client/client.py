"""The asyncio shell of the presence client, on ``websockets.asyncio.client.connect``.

One supervisor task per started client runs the connection loop: ask ``get_token``, open the
socket, read frames until it closes, ask :func:`~presence_client.closing.decide_close` what to do,
wait, go again. Per live socket two helper tasks run beside it: the pump, which sends buffered
messages paced by a token bucket, and the token refresh timer. Every decision is made by
the sans-I/O modules; this module only waits, reads and writes.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random as _random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, overload
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from presence_client.buffer import Outgoing, RateLimit, SendBuffer, TokenBucket, encode_message
from presence_client.closing import (
    ACTIVE_STATES,
    SIGNED_OUT_BY_SERVICE_REASON,
    SIGNED_OUT_REASON,
    TERMINAL_STATES,
    Action,
    Backoff,
    CloseCode,
    State,
    backoff_delay,
    decide_close,
    is_stable,
)
from presence_client.events import (
    EVENTS,
    Ack,
    AuthError,
    Connected,
    Connecting,
    Disconnected,
    ErrorEvent,
    Joined,
    Left,
    Overflow,
    Pong,
    PresenceRoomError,
    PresenceSendError,
    Recovery,
    SignedOut,
    StateChanged,
    StreamMessage,
    TokenRefreshed,
)
from presence_client.frames import (
    PONG_FRAME,
    Frame,
    FrameKind,
    classify_frame,
    parse_frame,
    room_frame,
    room_refused,
    socket_url,
)
from presence_client.streams import StreamPosition
from presence_client.tokens import on_invalid_token, refresh_delay, token_expiry, token_is_stale

logger = logging.getLogger("presence_client")

#: ``get_token(force_refresh)``: a Firebase ID token for the user (``None``: connect without
#: one, for a gateway with ``AUTH_MODE=off``).
GetToken = Callable[[bool], Awaitable[str | None]]
Unsubscribe = Callable[[], None]
Waiter = asyncio.Future[Ack]

# After the timeout message the gateway closes with 4408 at once; if that close frame never
# comes, the client closes the socket itself after this long rather than hold it open.
SIGN_OUT_CLOSE_WAIT = 5.0


def _log_listener_error(error: BaseException) -> None:
    logger.error("a presence client listener raised", exc_info=error)


def _retrieve(future: asyncio.Future[Any]) -> None:
    # The caller may never await a send (fire and forget): mark its exception as retrieved so
    # that asyncio does not log "Future exception was never retrieved". Events say what happened.
    if not future.cancelled():
        future.exception()


class MessageStream:
    """``async for frame in client.messages()``: server frames (of the given types, or all),
    until the client reaches a terminal state or the stream is closed. Unbounded: read it."""

    def __init__(self, client: PresenceClient, types: frozenset[str]) -> None:
        self._client = client
        self.types = types
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._ended = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Frame:
        if self._ended and self._queue.empty():
            raise StopAsyncIteration
        frame = await self._queue.get()
        if frame is None:
            self._ended = True
            raise StopAsyncIteration
        return frame

    def close(self) -> None:
        """Stop receiving frames; the iteration ends after those already queued."""
        self._end()

    def _offer(self, frame: Frame) -> None:
        if not self._ended and (not self.types or frame.get("type") in self.types):
            self._queue.put_nowait(frame)

    def _end(self) -> None:
        if not self._ended:
            self._queue.put_nowait(None)
            self._client._streams.discard(self)


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
        report_error: Callable[[BaseException], None] = _log_listener_error,
    ) -> None:
        scheme = urlsplit(url.strip()).scheme.lower()
        if scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"url must be ws://, wss://, http:// or https://, not {url!r}")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError("need 0 < backoff_min <= backoff_max")
        self._url = url
        self._user_id = user_id
        self._get_token = get_token
        self._backoff = Backoff(
            backoff_min, backoff_max, backoff_rate_limited, restart_jitter, reset_after
        )
        self._reconnect = reconnect
        self._answer_pings = answer_pings
        self._token_refresh_lead = token_refresh_lead
        self._token_retry_delay = token_retry_delay
        self._rate_limit = rate_limit
        self._max_message_bytes = max_message_bytes
        self._connect_timeout = connect_timeout
        self._token_in_url = token_in_url
        #: Durable streams: present the position on every connect, de-duplicate, acknowledge.
        self._recover = recover
        self._ack_interval = ack_interval
        self.stream_position = StreamPosition()
        self._ack_task: asyncio.Task[None] | None = None
        self._random = random
        self._connect_options = dict(connect_options or {})
        self._report_error = report_error

        self._state = State.IDLE
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._attempt = 0  # consecutive failed connections: the backoff exponent
        self._auth_retried = False  # a 4401 was answered with one forced token refresh
        self._force_next = False
        self._got_ping = False
        self._token: str | None = None
        self._token_exp: float | None = None
        self._pending_auth: tuple[str, bool] | None = None  # (token, was it forced)
        self._refresh_task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()  # strong references until done
        self._wakeup = asyncio.Event()
        self._buffer: SendBuffer[Waiter] = SendBuffer(buffer_size)
        self._bucket: TokenBucket | None = None
        self._next_id = 1
        self._listeners: dict[str, list[Callable[[Any], object]]] = {}
        self._handlers: dict[str, list[Callable[[Any], object]]] = {}
        self._streams: set[MessageStream] = set()
        self._state_waiters: list[tuple[frozenset[State], asyncio.Future[State]]] = []
        #: Rooms to be in: joined again on every new socket (membership belongs to a socket).
        self._rooms: set[str] = set()
        #: join/leave frames for the current socket, sent before buffered messages.
        self._control: deque[str] = deque()
        self._join_waiters: dict[str, list[asyncio.Future[Joined]]] = {}
        self._leave_waiters: dict[str, list[asyncio.Future[str]]] = {}

    # --- public surface --------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def user_id(self) -> str:
        return self._user_id

    @property
    def buffered(self) -> int:
        """Messages waiting to be sent (offline, or paced by the rate limit)."""
        return self._buffer.waiting

    @property
    def unacked(self) -> int:
        """Messages sent on the current socket whose ack has not arrived."""
        return self._buffer.unacked

    @property
    def answer_pings(self) -> bool:
        """Testing aid: False keeps receiving pings but stops answering them, so the gateway's
        sweep signs the user out after ``PONG_TIMEOUT``. Never turn it off in an application."""
        return self._answer_pings

    @answer_pings.setter
    def answer_pings(self, value: bool) -> None:
        self._answer_pings = bool(value)

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
        if self._state in ACTIVE_STATES:
            return
        # Claimed before the first await, so that a concurrent start() is a no-op.
        self._set_state(State.CONNECTING)
        await self._abandon()
        if self._state is not State.CONNECTING:
            return  # closed while the old socket was being let go
        self._attempt, self._auth_retried, self._force_next = 0, False, False
        self._task = asyncio.create_task(self._run(), name=f"presence-client:{self._user_id}")

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "client closed") -> None:
        """Close for good: no reconnect (state ``closed``); buffered and unacknowledged sends
        raise :class:`PresenceSendError` with code ``closed``."""
        if self._state is State.CLOSED and self._task is None:
            return
        ws, already_closed = self._ws, self._state is State.CLOSED
        self._stop(State.CLOSED, "closed", "the client was closed")
        await self._abandon(code, reason)
        if ws is not None and not already_closed:
            self._emit("disconnected", Disconnected(int(code), reason, False))

    def send(self, data: Any = None) -> asyncio.Future[Ack]:
        """Send ``{"type":"message","data":data,"id":N}`` (N = 1, 2, 3...). Never raises; the
        returned future (await it, or not) resolves with the gateway's :class:`Ack`, or fails
        with :class:`PresenceSendError`. While disconnected (also before ``start()``) the
        message waits in the buffer. Cancelling the future before the message went out
        withdraws it. Needs a running event loop."""
        waiter: Waiter = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(_retrieve)
        message_id = self._next_id
        self._next_id += 1
        try:
            frame = encode_message(data, message_id)
        except (TypeError, ValueError, RecursionError) as exc:
            waiter.set_exception(
                PresenceSendError(
                    "invalid_data", f"data is not JSON: {exc}", id=message_id, data=data
                )
            )
            return waiter
        if len(frame.encode()) > self._max_message_bytes:
            waiter.set_exception(
                PresenceSendError(
                    "message_too_large",
                    f"the frame exceeds {self._max_message_bytes} bytes",
                    id=message_id,
                    data=data,
                )
            )
            return waiter
        if self._state in TERMINAL_STATES:
            waiter.set_exception(
                PresenceSendError(
                    self._state.value, f"the client is {self._state}", id=message_id, data=data
                )
            )
            return waiter
        for dropped in self._buffer.push(Outgoing(message_id, data, frame, waiter)):
            self._overflow(dropped)
        waiter.add_done_callback(lambda f: f.cancelled() and self._buffer.withdraw(message_id))
        self._wakeup.set()
        return waiter

    @property
    def rooms(self) -> list[str]:
        """The rooms joined, or to be joined on the next socket, sorted."""
        return sorted(self._rooms)

    def join(self, room: str) -> asyncio.Future[Joined]:
        """Join a room, now or when the next socket opens, and again after every reconnect.
        The future resolves with :class:`Joined` on the gateway's ``joined`` and fails with
        :class:`PresenceRoomError` when the gateway refuses (the room is then dropped: the
        token decides) or the client stops."""
        future: asyncio.Future[Joined] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        if self._state in TERMINAL_STATES:
            future.set_exception(
                PresenceRoomError(
                    self._state.value, f"the client is {self._state.value}", room=room
                )
            )
            return future
        self._join_waiters.setdefault(room, []).append(future)
        self._rooms.add(room)
        if self._state is State.CONNECTED:
            self._control.append(room_frame("join", room))
            self._wakeup.set()
        return future

    def leave(self, room: str) -> asyncio.Future[str]:
        """Leave a room; the future resolves with the room on the gateway's ``left``, at once
        when offline (the membership died with the socket). It never fails."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._rooms.discard(room)
        if self._state is not State.CONNECTED:
            future.set_result(room)
            return future
        self._leave_waiters.setdefault(room, []).append(future)
        self._control.append(room_frame("leave", room))
        self._wakeup.set()
        return future

    async def refresh_token(self) -> None:
        """Ask ``get_token(False)`` now and send the token on the live socket if it changed
        (e.g. when the application learns of a new token by other means)."""
        await self._refresh(forced=False, only_if_changed=True)

    async def wait_for_state(self, *states: State, timeout: float | None = None) -> State:
        """Wait until the client is in one of ``states`` (now or later); return that state.
        Raises ``TimeoutError`` after ``timeout`` seconds."""
        if self._state in states:
            return self._state
        future: asyncio.Future[State] = asyncio.get_running_loop().create_future()
        entry = (frozenset(states), future)
        self._state_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if entry in self._state_waiters:
                self._state_waiters.remove(entry)

    def messages(self, *types: str) -> MessageStream:
        """Server frames of these types (all frames when none given) as an async iterator that
        ends when the client reaches a terminal state."""
        stream = MessageStream(self, frozenset(types))
        if self._state in TERMINAL_STATES:
            stream._end()
        else:
            self._streams.add(stream)
        return stream

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
    def on(self, event: str, callback: Callable[[Any], object]) -> Unsubscribe:
        """Subscribe ``callback`` to an event; returns a function that unsubscribes. A callback
        may be a plain function (called inline, so keep it short) or return an awaitable (run
        as a task). Its exceptions go to ``report_error``; the client carries on."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; one of {', '.join(sorted(EVENTS))}")
        return self._subscribe(self._listeners, event, callback)

    def on_message(self, type: str, callback: Callable[[Frame], object]) -> Unsubscribe:
        """Subscribe to server frames of one ``type`` (``"notification"``, ``"ping"``...)."""
        return self._subscribe(self._handlers, type, callback)

    def __repr__(self) -> str:
        return f"<PresenceClient user={self._user_id!r} state={self._state.value}>"

    # --- connection loop -------------------------------------------------------------------

    async def _run(self) -> None:
        delay: float | None = 0.0
        try:
            while delay is not None:
                if delay > 0:
                    await asyncio.sleep(delay)
                delay = await self._connect_once()
        except Exception as exc:
            # A bug here must not leave a client that looks alive and does nothing.
            logger.exception("presence client stopped by an internal error")
            self._emit("error", ErrorEvent("client", "internal_error", repr(exc), exception=exc))
            self._stop(State.CLOSED, "closed", "internal error")

    async def _connect_once(self) -> float | None:
        """One connection attempt and, once it closes, the wait before the next (None: stop)."""
        force = self._force_next
        self._force_next = False
        self._set_state(State.CONNECTING)
        self._emit("connecting", Connecting(self._attempt, force))
        token: str | None = None
        if self._get_token is not None:
            try:
                token = await self._get_token(force)
            except Exception as exc:
                self._emit("error", self._token_error(exc))
                if force:
                    # The gateway refused our token and no fresh one can be had: signing in
                    # again is the only way out.
                    self._stop_with_auth_error(CloseCode.UNAUTHENTICATED, "token refresh failed")
                    return None
                self._set_state(State.RECONNECTING)
                return self._next_backoff()
        try:
            url, options = self._connect_args(token)
            ws = await connect(url, **options)
        except (OSError, WebSocketException) as exc:
            # What a browser reports as 1006: refused, unreachable, handshake failed or timed
            # out. Nothing opened, so the backoff keeps growing. Unlike a browser, we can say
            # why: an error event carries the exception.
            self._emit("error", ErrorEvent("socket", "connect_failed", str(exc), exception=exc))
            return self._after_close(CloseCode.ABNORMAL, f"connect failed: {exc}", stable=False)
        return await self._session(ws, token)

    def _connect_args(self, token: str | None) -> tuple[str, dict[str, Any]]:
        # The header keeps the token out of URLs, which proxies and servers log; browsers
        # cannot set it, which is why the JavaScript client uses ?token=.
        in_url = self._token_in_url and token is not None
        params = self.stream_position.params() if self._recover else None
        url = socket_url(self._url, self._user_id, token if in_url else None, params)
        options: dict[str, Any] = {"open_timeout": self._connect_timeout or None}
        options.update(self._connect_options)
        headers = dict(options.pop("additional_headers", None) or {})
        if token is not None and not in_url:
            headers["Authorization"] = f"Bearer {token}"
        if headers:
            options["additional_headers"] = headers
        return url, options

    async def _session(self, ws: ClientConnection, token: str | None) -> float | None:
        loop = asyncio.get_running_loop()
        self._ws = ws
        self._token, self._token_exp, self._pending_auth = token, token_expiry(token), None
        opened_at, self._got_ping = loop.time(), False
        self._set_state(State.CONNECTED)
        self._emit("connected", Connected(self._attempt))
        self._schedule_refresh()
        # A new socket is in no room: join them all again, ahead of any buffered message.
        self._control = deque(room_frame("join", room) for room in sorted(self._rooms))
        self._pump_task = self._spawn(self._pump(ws))
        try:
            async with asyncio.timeout(None) as deadline:
                async for raw in ws:
                    await self._on_frame(raw)
                    if self._state in TERMINAL_STATES and deadline.when() is None:
                        deadline.reschedule(loop.time() + SIGN_OUT_CLOSE_WAIT)
        except ConnectionClosed:
            pass
        except TimeoutError:
            await ws.close()
        finally:
            self._ws = None
            self._pending_auth = None
            self._settle_rooms()
            self._cancel_refresh()
            if self._pump_task is not None:
                self._pump_task.cancel()
                self._pump_task = None
        code = ws.close_code if ws.close_code is not None else CloseCode.ABNORMAL
        stable = is_stable(self._got_ping, loop.time() - opened_at, self._backoff.reset_after)
        return self._after_close(code, ws.close_reason or "", stable=stable)

    def _after_close(self, code: int, reason: str, *, stable: bool) -> float | None:
        if self._state in TERMINAL_STATES:
            # Signed out by the timeout message while the socket was open.
            self._emit("disconnected", Disconnected(code, reason, False))
            return None
        decision = decide_close(
            code,
            attempt=self._attempt,
            auth_retried=self._auth_retried,
            stable=stable,
            reconnect=self._reconnect,
            backoff=self._backoff,
            random=self._random,
        )
        self._attempt, self._auth_retried = decision.attempt, decision.auth_retried
        if decision.action is Action.SIGN_OUT:
            self._sign_out(None, close_reason=reason, by_service=code == CloseCode.SIGNED_OUT)
        elif decision.action is Action.AUTH_ERROR:
            self._stop_with_auth_error(code, reason)
        elif decision.action is Action.STOP:
            if decision.error_code is not None:
                self._stop(State.CLOSED, "closed", f"the gateway refused the user id: {reason}")
                self._emit("error", ErrorEvent("server", decision.error_code, reason))
            else:
                self._settle(decision.resend_unacked, code)
                self._stop(State.CLOSED, "closed", "the connection closed and reconnect is off")
        else:
            self._settle(decision.resend_unacked, code)
            self._force_next = decision.force_refresh
            self._set_state(State.RECONNECTING)
            self._emit("disconnected", Disconnected(code, reason, True, decision.delay))
            return decision.delay
        self._emit("disconnected", Disconnected(code, reason, False))
        return None

    def _next_backoff(self) -> float:
        delay = backoff_delay(
            self._attempt, self._backoff.minimum, self._backoff.maximum, self._random
        )
        self._attempt += 1
        return delay

    async def _abandon(self, code: int = CloseCode.NORMAL, reason: str = "client closed") -> None:
        """Stop the supervisor (and the socket it holds), e.g. one still waiting for the close
        after a sign-out."""
        task, ws = self._task, self._ws
        self._task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # asyncio.wait: never raises the task's CancelledError, yet lets our own through.
            await asyncio.wait([task])
        if ws is not None:
            await ws.close(code, reason)

    # --- frames ----------------------------------------------------------------------------

    async def _on_frame(self, raw: str | bytes) -> None:
        frame = parse_frame(raw)
        if frame is None:
            binary = not isinstance(raw, str)
            self._emit(
                "error",
                ErrorEvent(
                    "protocol",
                    "binary_frame" if binary else "invalid_frame",
                    "binary frame ignored" if binary else "not a JSON object",
                ),
            )
            return
        kind = classify_frame(frame)
        if kind is FrameKind.STREAM and not self._on_stream(frame):
            return  # a duplicate (or malformed): nobody hears of it again
        # Queued before anything else reacts to the frame, so that a stream also gets the frame
        # that ends it (the timeout message); its reader runs later, after the pong went out.
        for stream in list(self._streams):
            stream._offer(frame)
        if kind is FrameKind.PING:
            await self._on_ping(frame)
        elif kind is FrameKind.ACK:
            item = self._buffer.ack(frame.get("id"))
            if item is not None and not item.waiter.done():
                timestamp = frame.get("timestamp")
                item.waiter.set_result(
                    Ack(item.id, timestamp if isinstance(timestamp, str) else None)
                )
        elif kind is FrameKind.AUTH_OK:
            self._on_auth_ok(frame)
        elif kind is FrameKind.JOINED:
            self._on_joined(frame)
        elif kind is FrameKind.LEFT:
            self._on_left(frame)
        elif kind is FrameKind.ERROR:
            self._on_server_error(frame)
        elif kind is FrameKind.RECOVERY:
            self._on_recovery(frame)
        elif kind in (FrameKind.TIMEOUT, FrameKind.SIGNED_OUT):
            message = frame.get("message")
            self._sign_out(
                message if isinstance(message, str) else None,
                by_service=kind is FrameKind.SIGNED_OUT,
            )
        self._emit("message", frame)
        frame_type = frame.get("type")
        if isinstance(frame_type, str):
            for handler in list(self._handlers.get(frame_type, ())):
                self._call(handler, frame)

    def _on_stream(self, frame: Frame) -> bool:
        """Deliver a durable message unless it is a duplicate; acknowledge it afterwards."""
        epoch, offset = frame.get("epoch"), frame.get("offset")
        if not isinstance(epoch, str) or not isinstance(offset, int) or isinstance(offset, bool):
            self._emit(
                "error", ErrorEvent("protocol", "invalid_frame", "stream frame", frame=frame)
            )
            return False
        if not self.stream_position.accept(epoch, offset):
            return False
        data = frame.get("data")
        self._emit("stream", StreamMessage(epoch, offset, data))
        inner = data.get("type") if isinstance(data, dict) else None
        if isinstance(inner, str):
            # The backend's message reaches on_message(type) as if it had been sent plainly.
            for handler in list(self._handlers.get(inner, ())):
                self._call(handler, data)
        self._schedule_ack()
        return True

    def _on_recovery(self, frame: Frame) -> None:
        epoch, offset = frame.get("epoch"), frame.get("offset")
        if not isinstance(epoch, str) or not isinstance(offset, int):
            return
        recovered = frame.get("recovered") is True
        missed, reason = frame.get("missed"), frame.get("reason")
        self.stream_position.recovered(epoch, offset, recovered)
        event = Recovery(
            recovered,
            epoch,
            offset,
            missed if isinstance(missed, int) else 0,
            reason if isinstance(reason, str) else None,
        )
        self._emit("recovery", event)
        if not recovered:
            self._emit("not_recovered", event)

    def _schedule_ack(self) -> None:
        # One stream_ack per ack_interval at most: a replay of 300 messages must not cost 300
        # frames against the gateway's per-socket rate limit.
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = self._spawn(self._ack_later())

    async def _ack_later(self) -> None:
        await asyncio.sleep(self._ack_interval)
        frame = self.stream_position.ack_frame()
        if frame is not None and not await self._send_text(frame):
            self.stream_position.acked = 0  # not sent: the next message acknowledges again

    async def _on_ping(self, frame: Frame) -> None:
        if self._state is not State.CONNECTED:
            return
        # Answer before anything else (listeners included): the pong is what keeps the user
        # signed in.
        answered = self._answer_pings and await self._send_text(PONG_FRAME)
        # A ping proves the token was accepted and the connection works: start over on backoff.
        self._got_ping, self._attempt, self._auth_retried = True, 0, False
        self._emit("ping", frame)
        if answered:
            self._emit("pong", Pong(time.time(), frame))

    def _on_auth_ok(self, frame: Frame) -> None:
        pending, self._pending_auth = self._pending_auth, None
        if pending is not None:
            self._token, self._token_exp = pending[0], token_expiry(pending[0])
        expires_at = frame.get("expires_at")
        if not isinstance(expires_at, str):
            expires_at = None
        if self._token_exp is None and expires_at is not None:
            try:
                self._token_exp = datetime.fromisoformat(expires_at).timestamp()
            except ValueError:
                pass
        self._schedule_refresh()
        self._emit("token_refreshed", TokenRefreshed(expires_at))

    def _on_joined(self, frame: Frame) -> None:
        room, timestamp = str(frame.get("room")), frame.get("timestamp")
        joined = Joined(room, timestamp if isinstance(timestamp, str) else None)
        for future in self._join_waiters.pop(room, []):
            if not future.done():
                future.set_result(joined)
        self._emit("joined", joined)

    def _on_left(self, frame: Frame) -> None:
        room, reason = str(frame.get("room")), frame.get("reason") or "leave"
        if reason != "leave":
            self._rooms.discard(room)  # e.g. not_allowed: the refreshed token lost it
        for future in self._leave_waiters.pop(room, []):
            if not future.done():
                future.set_result(room)
        self._emit("left", Left(room, str(reason)))

    def _settle_rooms(self, stop_code: str | None = None, why: str = "") -> None:
        """The socket is gone: leaves are done; joins wait for the next socket, or fail when
        there will be none (``stop_code``)."""
        self._control.clear()
        for room, futures in self._leave_waiters.items():
            for left in futures:
                if not left.done():
                    left.set_result(room)
        self._leave_waiters.clear()
        if stop_code is None:
            return
        for room, waiting in self._join_waiters.items():
            for joined in waiting:
                if not joined.done():
                    joined.set_exception(
                        PresenceRoomError(stop_code, f"not joined: {why}", room=room)
                    )
        self._join_waiters.clear()

    def _on_server_error(self, frame: Frame) -> None:
        code, message = frame.get("code"), frame.get("message")
        self._emit("error", ErrorEvent("server", str(code), str(message), frame=frame))
        refused = room_refused(frame)
        if refused is not None:
            # Final for this token: the room is not asked for again on the next socket.
            self._rooms.discard(refused)
            for future in self._join_waiters.pop(refused, []):
                if not future.done():
                    future.set_exception(PresenceRoomError(str(code), str(message), room=refused))
        if code == "invalid_token" and self._pending_auth is not None:
            forced = self._pending_auth[1]
            self._pending_auth = None
            if on_invalid_token(forced) == "force":
                self._cancel_refresh()
                self._refresh_task = self._spawn(self._refresh(forced=True))
            else:
                self._schedule_refresh(self._token_retry_delay)

    # --- tokens ----------------------------------------------------------------------------

    def _schedule_refresh(self, delay: float | None = None) -> None:
        self._cancel_refresh()
        if self._get_token is None or self._state is not State.CONNECTED:
            return
        if delay is None:
            if self._token_exp is None:
                return  # not a JWT, or no exp: nothing to schedule by
            delay = refresh_delay(self._token_exp, time.time(), self._token_refresh_lead)
        self._refresh_task = self._spawn(self._refresh_later(delay))

    async def _refresh_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._refresh(forced=False)

    def _cancel_refresh(self) -> None:
        task, self._refresh_task = self._refresh_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _refresh(self, *, forced: bool, only_if_changed: bool = False) -> None:
        if self._get_token is None or self._state is not State.CONNECTED:
            return
        ws = self._ws
        try:
            token = await self._get_token(forced)
            if self._ws is not ws:
                return
            stale = token_is_stale(token, self._token, self._token_exp)
            if stale and only_if_changed:
                return
            if stale and not forced:
                # Firebase hands out its cached token until shortly before expiry: ask for a
                # new one.
                forced = True
                token = await self._get_token(True)
                if self._ws is not ws:
                    return
        except Exception as exc:
            if self._ws is not ws:
                return
            self._emit("error", self._token_error(exc))
            self._schedule_refresh(self._token_retry_delay)
            return
        if token is None or self._state is not State.CONNECTED:
            return
        self._pending_auth = (token, forced)
        await self._send_text(json.dumps({"type": "auth", "token": token}))

    @staticmethod
    def _token_error(exc: Exception) -> ErrorEvent:
        return ErrorEvent("get_token", "token_unavailable", str(exc) or repr(exc), exception=exc)

    # --- outgoing --------------------------------------------------------------------------

    async def _send_text(self, text: str) -> bool:
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(text)
        except ConnectionClosed:
            return False
        return True

    async def _pump(self, ws: ClientConnection) -> None:
        """Send buffered messages in order, paced under the gateway's per-socket limit."""
        loop = asyncio.get_running_loop()
        if self._rate_limit is not None and self._bucket is None:
            self._bucket = TokenBucket(self._rate_limit, loop.time())
        while True:
            if not self._control and self._buffer.peek() is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._bucket is not None:
                wait = self._bucket.take(loop.time())
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
            if self._control:
                # Joins and leaves count against the same per-socket limit as messages.
                try:
                    await ws.send(self._control[0])
                except ConnectionClosed:
                    return
                if self._control:
                    self._control.popleft()
                continue
            item = self._buffer.take()
            assert item is not None  # peeked above, nothing awaited since
            try:
                # Counted as in flight before the write: if the socket dies mid-send, the close
                # code decides (resend after a clean close, "maybe delivered" otherwise).
                await ws.send(item.frame)
            except ConnectionClosed:
                return

    def _overflow(self, item: Outgoing[Waiter]) -> None:
        self._reject(item, "overflow", "dropped: the offline buffer is full")
        self._emit("overflow", Overflow(item.id, item.data))

    def _settle(self, resend: bool, code: int) -> None:
        settled = self._buffer.settle(resend)
        for item in settled.failed:
            self._reject(
                item,
                "disconnected",
                f"the connection closed ({code}) before the gateway acknowledged the message",
                maybe_delivered=True,
            )
        for item in settled.dropped:
            self._overflow(item)

    @staticmethod
    def _reject(
        item: Outgoing[Waiter], code: str, message: str, *, maybe_delivered: bool = False
    ) -> None:
        if not item.waiter.done():
            item.waiter.set_exception(
                PresenceSendError(
                    code, message, id=item.id, data=item.data, maybe_delivered=maybe_delivered
                )
            )

    # --- stopping --------------------------------------------------------------------------

    def _sign_out(
        self, message: str | None, *, close_reason: str | None = None, by_service: bool = False
    ) -> None:
        if self._state is State.SIGNED_OUT:
            return
        reason = SIGNED_OUT_BY_SERVICE_REASON if by_service else SIGNED_OUT_REASON
        code = CloseCode.SIGNED_OUT if by_service else CloseCode.SESSION_EXPIRED
        self._stop(State.SIGNED_OUT, "signed_out", reason)
        self._emit("signed_out", SignedOut(reason, message, code, close_reason))

    def _stop_with_auth_error(self, code: int, reason: str) -> None:
        self._stop(State.AUTH_ERROR, "auth_error", f"authentication failed: {reason}")
        self._emit("auth_error", AuthError(code, reason))

    def _stop(self, state: State, reject_code: str, why: str) -> None:
        self._cancel_refresh()
        self._set_state(state)
        for item in self._buffer.clear():
            self._reject(item, reject_code, f"not sent: {why}")
        self._settle_rooms(reject_code, why)
        for stream in list(self._streams):
            stream._end()

    # --- plumbing --------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state is self._state:
            return
        previous, self._state = self._state, state
        for states, future in list(self._state_waiters):
            if state in states and not future.done():
                future.set_result(state)
        self._emit("state", StateChanged(state, previous))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    def _subscribe(
        table: dict[str, list[Callable[[Any], object]]],
        key: str,
        callback: Callable[[Any], object],
    ) -> Unsubscribe:
        if not callable(callback):
            raise TypeError("callback must be callable")
        callbacks = table.setdefault(key, [])
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def _emit(self, event: str, payload: object) -> None:
        for callback in list(self._listeners.get(event, ())):
            self._call(callback, payload)

    def _call(self, callback: Callable[[Any], object], payload: object) -> None:
        try:
            result = callback(payload)
        except Exception as exc:
            # A listener's bug must not break the connection's bookkeeping.
            self._report_error(exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._listener_done)

    def _listener_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._report_error(error)
