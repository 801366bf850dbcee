"""Log lines a client can cause, held to a budget.

Some lines follow from a client's frames (a ``message`` logged by the default handler, an
unknown frame type, a room join or leave): one line per frame would let one socket write up to
``WS_MAX_MESSAGES_PER_SECOND`` lines a second, and Cloud Logging bills every byte. A
``LogBudget`` writes the first ``burst`` lines of each key in a window of ``window`` seconds
and counts the rest; the count comes out as one summary line when the window ends (on a timer
when an event loop runs, else at the key's next line) or when the key is forgotten (a socket's
end). What is summarised is only the line: counters kept elsewhere (``/metrics``) stay exact.

The first window starts at a key's first line, so a key that is quiet costs nothing, and a key
whose window passed without a line held back is dropped at its next line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

#: What a budget is kept per: a site's name, or a socket's (user id, session id).
K = TypeVar("K", bound=Hashable)

#: Lines per key and window for the lines clients' frames cause at one site (an unknown frame
#: type, the default message handler): per instance, not per socket, since they only show an
#: operator what is happening, and a few examples of each do that. At most about one line a
#: second per site, plus a summary every 10 s while a flood lasts.
FRAME_LINES_BURST = 10
FRAME_LINES_WINDOW = 10.0


class _Window:
    __slots__ = ("started", "written", "held")

    def __init__(self, started: float) -> None:
        self.started = started
        self.written = 0
        self.held = 0


class LogBudget(Generic[K]):
    """At most ``burst`` lines per key per ``window`` seconds; the rest counted and reported
    in one summary per key and window. ``summary(key, held back, seconds)`` replaces the
    default summary line (an INFO line on ``logger``); ``clock`` is injectable for tests."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int,
        window: float,
        summary: Callable[[K, int, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self.summary = summary
        self.clock = clock
        self._windows: dict[K, _Window] = {}

    def allow(self, key: K) -> bool:
        """Whether this line of ``key`` may be written now; if not, it is counted."""
        now = self.clock()
        current = self._windows.get(key)
        if current is not None and now - current.started >= self.window:
            self._close(key, current, now)
            current = None
        if current is None:
            current = self._windows[key] = _Window(now)
        if current.written < self.burst:
            current.written += 1
            return True
        current.held += 1
        if current.held == 1:
            self._arm(key, current, now)
        return False

    def info(self, key: K, message: str, *args: Any) -> None:
        """``logger.info(message, *args)`` within the budget of ``key``."""
        if self.allow(key):
            self.logger.info(message, *args)

    def forget(self, key: K) -> None:
        """Drop the key (its socket ended), reporting what it held back first."""
        current = self._windows.get(key)
        if current is not None:
            self._close(key, current, self.clock())

    def held(self, key: K) -> int:
        """Lines of ``key`` held back in its current window, not yet reported."""
        current = self._windows.get(key)
        return current.held if current is not None else 0

    def _arm(self, key: K, current: _Window, now: float) -> None:
        """Report at the window's end even if the key writes nothing more: a flood that stops
        must still say how much of it went unlogged."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the key's next line reports it
        delay = max(0.0, current.started + self.window - now)
        loop.call_later(delay, self._expire, key, current)

    def _expire(self, key: K, current: _Window) -> None:
        if self._windows.get(key) is current:  # not already closed by a line or forget
            self._close(key, current, self.clock())

    def _close(self, key: K, current: _Window, now: float) -> None:
        del self._windows[key]
        if not current.held:
            return
        seconds = round(min(now - current.started, self.window), 3)
        if self.summary is not None:
            self.summary(key, current.held, seconds)
        else:
            self.logger.info(
                "%s: %d more lines suppressed in %gs (at most %d per %gs are logged)",
                key,
                current.held,
                seconds,
                self.burst,
                self.window,
            )
