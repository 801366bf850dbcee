"""The connection loop of the presence client, on ``websockets.asyncio.client.connect``.

One supervisor task per started client runs it: ask ``get_token``, open the socket, read frames
until it closes, ask :func:`~presence_client.closing.decide_close` what to do, wait, go again.
Per live socket two helper tasks run beside it: the outbox's pump and the token refresh timer.
Each frame goes to the part it concerns (outbox, rooms, durable stream, token refresh) through
``presence_client.dispatch``; stopping (``close()``, a sign-out, an auth error) settles them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

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
from presence_client.dispatch import FrameDispatch
from presence_client.durable import DurableStream
from presence_client.events import (
    AuthError,
    Connected,
    Connecting,
    Disconnected,
    ErrorEvent,
    Pong,
    SignedOut,
)
from presence_client.frames import PONG_FRAME, Frame, connect_args
from presence_client.link import Link
from presence_client.outbox import Outbox
from presence_client.refresh import GetToken, TokenRefresh, token_error
from presence_client.rooms import Rooms

logger = logging.getLogger("presence_client")

# After the timeout message the gateway closes with 4408 at once; if that close frame never
# comes, the client closes the socket itself after this long rather than hold it open.
SIGN_OUT_CLOSE_WAIT = 5.0


class Connection:
    """The supervisor of one client: its task, the backoff counters and the reactions to
    frames and closes."""

    def __init__(
        self,
        link: Link,
        outbox: Outbox,
        rooms: Rooms,
        durable: DurableStream,
        refresh: TokenRefresh,
        *,
        url: str,
        user_id: str,
        get_token: GetToken | None,
        backoff: Backoff,
        reconnect: bool,
        answer_pings: bool,
        connect_timeout: float,
        token_in_url: bool,
        random: Callable[[], float],
        connect_options: Mapping[str, Any],
    ) -> None:
        self._link, self._outbox, self._rooms = link, outbox, rooms
        self._durable, self._refresh = durable, refresh
        self._url = url
        self._user_id = user_id
        self._get_token = get_token
        self._backoff = backoff
        self._reconnect = reconnect
        self.answer_pings = answer_pings
        self._connect_timeout = connect_timeout
        self._token_in_url = token_in_url
        self._random = random
        self._connect_options = dict(connect_options)
        self._task: asyncio.Task[None] | None = None
        self._attempt = 0  # consecutive failed connections: the backoff exponent
        self._auth_retried = False  # a 4401 was answered with one forced token refresh
        self._force_next = False
        self._got_ping = False
        self._frames = FrameDispatch(
            link,
            outbox,
            rooms,
            durable,
            refresh,
            pinged=self._on_ping,
            signed_out=lambda message, by_service: self._sign_out(message, by_service=by_service),
        )

    async def start(self) -> None:
        link = self._link
        if link.state in ACTIVE_STATES:
            return
        # Claimed before the first await, so that a concurrent start() is a no-op.
        link.set_state(State.CONNECTING)
        await self._abandon()
        if link.state is not State.CONNECTING:
            return  # closed while the old socket was being let go
        self._attempt, self._auth_retried, self._force_next = 0, False, False
        self._task = asyncio.create_task(self._run(), name=f"presence-client:{self._user_id}")

    async def close(self, code: int, reason: str) -> None:
        link = self._link
        if link.state is State.CLOSED and self._task is None:
            return
        ws, already_closed = link.ws, link.state is State.CLOSED
        self._stop(State.CLOSED, "closed", "the client was closed")
        await self._abandon(code, reason)
        if ws is not None and not already_closed:
            link.emit("disconnected", Disconnected(int(code), reason, False))

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
            self._link.emit(
                "error", ErrorEvent("client", "internal_error", repr(exc), exception=exc)
            )
            self._stop(State.CLOSED, "closed", "internal error")

    async def _connect_once(self) -> float | None:
        """One connection attempt and, once it closes, the wait before the next (None: stop)."""
        force = self._force_next
        self._force_next = False
        self._link.set_state(State.CONNECTING)
        self._link.emit("connecting", Connecting(self._attempt, force))
        token: str | None = None
        if self._get_token is not None:
            try:
                token = await self._get_token(force)
            except Exception as exc:
                self._link.emit("error", token_error(exc))
                if force:
                    # The gateway refused our token and no fresh one can be had: signing in
                    # again is the only way out.
                    self._stop_with_auth_error(CloseCode.UNAUTHENTICATED, "token refresh failed")
                    return None
                self._link.set_state(State.RECONNECTING)
                return self._next_backoff()
        try:
            url, options = connect_args(
                self._url,
                self._user_id,
                token,
                token_in_url=self._token_in_url,
                params=self._durable.params(),
                timeout=self._connect_timeout,
                options=self._connect_options,
            )
            ws = await connect(url, **options)
        except (OSError, WebSocketException) as exc:
            # What a browser reports as 1006: refused, unreachable, handshake failed or timed
            # out. Nothing opened, so the backoff keeps growing. Unlike a browser, we can say
            # why: an error event carries the exception.
            self._link.emit(
                "error", ErrorEvent("socket", "connect_failed", str(exc), exception=exc)
            )
            return self._after_close(CloseCode.ABNORMAL, f"connect failed: {exc}", stable=False)
        return await self._session(ws, token)

    async def _session(self, ws: ClientConnection, token: str | None) -> float | None:
        loop = asyncio.get_running_loop()
        link = self._link
        link.ws = ws
        self._refresh.opened(token)
        opened_at, self._got_ping = loop.time(), False
        link.set_state(State.CONNECTED)
        link.emit("connected", Connected(self._attempt))
        self._refresh.schedule()
        # A new socket is in no room: join them all again, ahead of any buffered message.
        self._outbox.open(ws, self._rooms.join_frames())
        try:
            async with asyncio.timeout(None) as deadline:
                async for raw in ws:
                    await self._frames.on_frame(raw)
                    if link.state in TERMINAL_STATES and deadline.when() is None:
                        deadline.reschedule(loop.time() + SIGN_OUT_CLOSE_WAIT)
        except ConnectionClosed:
            pass
        except TimeoutError:
            await ws.close()
        finally:
            link.ws = None
            self._rooms.settle()
            self._refresh.closed()
            self._outbox.stop_pump()
        code = ws.close_code if ws.close_code is not None else CloseCode.ABNORMAL
        stable = is_stable(self._got_ping, loop.time() - opened_at, self._backoff.reset_after)
        return self._after_close(code, ws.close_reason or "", stable=stable)

    def _after_close(self, code: int, reason: str, *, stable: bool) -> float | None:
        if self._link.state in TERMINAL_STATES:
            # Signed out by the timeout message while the socket was open.
            self._link.emit("disconnected", Disconnected(code, reason, False))
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
                self._link.emit("error", ErrorEvent("server", decision.error_code, reason))
            else:
                self._outbox.settle(decision.resend_unacked, code)
                self._stop(State.CLOSED, "closed", "the connection closed and reconnect is off")
        else:
            self._outbox.settle(decision.resend_unacked, code)
            self._force_next = decision.force_refresh
            self._link.set_state(State.RECONNECTING)
            self._link.emit("disconnected", Disconnected(code, reason, True, decision.delay))
            return decision.delay
        self._link.emit("disconnected", Disconnected(code, reason, False))
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
        task, ws = self._task, self._link.ws
        self._task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # asyncio.wait: never raises the task's CancelledError, yet lets our own through.
            await asyncio.wait([task])
        if ws is not None:
            await ws.close(code, reason)

    # --- pings and stopping -------------------------------------------------------------

    async def _on_ping(self, frame: Frame) -> None:
        if self._link.state is not State.CONNECTED:
            return
        # Answer before anything else (listeners included): the pong is what keeps the user
        # signed in.
        answered = self.answer_pings and await self._link.send_text(PONG_FRAME)
        # A ping proves the token was accepted and the connection works: start over on backoff.
        self._got_ping, self._attempt, self._auth_retried = True, 0, False
        self._link.emit("ping", frame)
        if answered:
            self._link.emit("pong", Pong(time.time(), frame))

    def _sign_out(
        self, message: str | None, *, close_reason: str | None = None, by_service: bool = False
    ) -> None:
        if self._link.state is State.SIGNED_OUT:
            return
        reason = SIGNED_OUT_BY_SERVICE_REASON if by_service else SIGNED_OUT_REASON
        code = CloseCode.SIGNED_OUT if by_service else CloseCode.SESSION_EXPIRED
        self._stop(State.SIGNED_OUT, "signed_out", reason)
        self._link.emit("signed_out", SignedOut(reason, message, code, close_reason))

    def _stop_with_auth_error(self, code: int, reason: str) -> None:
        self._stop(State.AUTH_ERROR, "auth_error", f"authentication failed: {reason}")
        self._link.emit("auth_error", AuthError(code, reason))

    def _stop(self, state: State, reject_code: str, why: str) -> None:
        self._refresh.cancel()
        self._link.set_state(state)
        self._outbox.fail_all(reject_code, why)
        self._rooms.settle(reject_code, why)
        self._link.listeners.end_streams()
