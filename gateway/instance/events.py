"""Recent connection events kept in memory for the console (docs/console.md): the last
``RECENT_EVENTS`` connects, disconnects (with their close code), timeouts, sign-outs and
refusals of this instance, newest last. Appending is a tuple into a bounded deque, made where
``gateway.instance.analytics`` already writes its log entry: nothing on the ping/pong path."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from gateway.protocol.console import RECENT_EVENTS


class RecentEvent(NamedTuple):
    at: float
    kind: str
    user_id: str | None
    session_id: str | None
    code: int | None
    reason: str


class EventRing:
    """The last ``size`` events; the oldest fall out as new ones come."""

    def __init__(self, size: int = RECENT_EVENTS, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[RecentEvent] = deque(maxlen=size)
        self._clock = clock

    def add(
        self,
        kind: str,
        user_id: str | None,
        session_id: str | None,
        code: int | None = None,
        reason: str = "",
    ) -> None:
        self._events.append(RecentEvent(self._clock(), kind, user_id, session_id, code, reason))

    def newest(
        self, limit: int, kind: str | None = None, user_id: str | None = None
    ) -> list[RecentEvent]:
        """Up to ``limit`` events, newest first, of one kind and one user when given."""
        found: list[RecentEvent] = []
        for event in reversed(self._events):
            if len(found) >= limit:
                break
            if (kind is None or event.kind == kind) and (
                user_id is None or event.user_id == user_id
            ):
                found.append(event)
        return found

    def __len__(self) -> int:
        return len(self._events)
