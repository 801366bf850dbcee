"""Keeping the live socket's token fresh: ``{"type": "auth", "token": ...}`` sent ahead of the
JWT's ``exp`` on a timer, or when the application asks, and the answers to it (``auth_ok``,
``invalid_token``).

When to refresh and whether a token is new are decided by :mod:`presence_client.tokens`; this
module asks ``get_token``, keeps the timer and writes the frame.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from presence_client.closing import State
from presence_client.events import ErrorEvent, TokenRefreshed
from presence_client.frames import Frame
from presence_client.link import Link
from presence_client.tokens import on_invalid_token, refresh_delay, token_expiry, token_is_stale

#: ``get_token(force_refresh)``: a Firebase ID token for the user (``None``: connect without
#: one, for a gateway with ``AUTH_MODE=off``).
GetToken = Callable[[bool], Awaitable[str | None]]


def token_error(exc: Exception) -> ErrorEvent:
    """The ``error`` event for a ``get_token`` that raised."""
    return ErrorEvent("get_token", "token_unavailable", str(exc) or repr(exc), exception=exc)


class TokenRefresh:
    """The token of the current socket, its expiry, the ``auth`` frame awaiting an answer and
    the timer of the next refresh."""

    def __init__(
        self, link: Link, get_token: GetToken | None, lead: float, retry_delay: float
    ) -> None:
        self._link = link
        self._get_token = get_token
        self._lead = lead
        self._retry_delay = retry_delay
        self._token: str | None = None
        self._token_exp: float | None = None
        self._pending_auth: tuple[str, bool] | None = None  # (token, was it forced)
        self._task: asyncio.Task[None] | None = None

    def opened(self, token: str | None) -> None:
        """A new socket, authenticated with ``token``."""
        self._token, self._token_exp, self._pending_auth = token, token_expiry(token), None

    def closed(self) -> None:
        self._pending_auth = None
        self.cancel()

    def schedule(self, delay: float | None = None) -> None:
        """The next refresh, after ``delay`` or ``token_refresh_lead`` before the expiry."""
        self.cancel()
        if self._get_token is None or self._link.state is not State.CONNECTED:
            return
        if delay is None:
            if self._token_exp is None:
                return  # not a JWT, or no exp: nothing to schedule by
            delay = refresh_delay(self._token_exp, time.time(), self._lead)
        self._task = self._link.spawn(self._refresh_later(delay))

    def cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def refresh(self, *, forced: bool, only_if_changed: bool = False) -> None:
        if self._get_token is None or self._link.state is not State.CONNECTED:
            return
        ws = self._link.ws
        try:
            token = await self._get_token(forced)
            if self._link.ws is not ws:
                return
            stale = token_is_stale(token, self._token, self._token_exp)
            if stale and only_if_changed:
                return
            if stale and not forced:
                # Firebase hands out its cached token until shortly before expiry: ask for a
                # new one.
                forced = True
                token = await self._get_token(True)
                if self._link.ws is not ws:
                    return
        except Exception as exc:
            if self._link.ws is not ws:
                return
            self._link.emit("error", token_error(exc))
            self.schedule(self._retry_delay)
            return
        if token is None or self._link.state is not State.CONNECTED:
            return
        self._pending_auth = (token, forced)
        await self._link.send_text(json.dumps({"type": "auth", "token": token}))

    def on_auth_ok(self, frame: Frame) -> None:
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
        self.schedule()
        self._link.emit("token_refreshed", TokenRefreshed(expires_at))

    def on_error(self, frame: Frame) -> None:
        """An ``error`` frame: ``invalid_token`` answers our pending ``auth``."""
        if frame.get("code") != "invalid_token" or self._pending_auth is None:
            return
        forced = self._pending_auth[1]
        self._pending_auth = None
        if on_invalid_token(forced) == "force":
            self.cancel()
            self._task = self._link.spawn(self.refresh(forced=True))
        else:
            self.schedule(self._retry_delay)

    async def _refresh_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.refresh(forced=False)
