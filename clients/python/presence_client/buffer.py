"""Outgoing messages: the ``message`` frame, the send buffer with its unacknowledged messages,
and the pacing of sends under the gateway's per-socket rate limit.

Sans-I/O state holders generic over whatever the shell waits on (a future), so that the buffer
and ack rules of the JavaScript client (clients/js/README.md) are tested without a socket;
:mod:`presence_client.outbox` drives them.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

W = TypeVar("W")


def encode_message(data: Any, message_id: int) -> str:
    """The ``message`` frame for ``data``. Raises ``ValueError``/``TypeError`` for data that is
    not JSON: ``NaN`` and infinities are refused here because the gateway refuses them."""
    return json.dumps(
        {"type": "message", "data": data, "id": message_id},
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
    )


@dataclass(slots=True)
class Outgoing(Generic[W]):
    """One ``send()``: its id, its data, the encoded frame and whatever the shell waits on."""

    id: int
    data: Any
    frame: str
    waiter: W


@dataclass(slots=True)
class Settled(Generic[W]):
    """What became of the unacknowledged messages when a socket closed."""

    resent: list[Outgoing[W]] = field(default_factory=list)
    failed: list[Outgoing[W]] = field(default_factory=list)
    dropped: list[Outgoing[W]] = field(default_factory=list)


class SendBuffer(Generic[W]):
    """Messages waiting to go out (oldest first, at most ``size``) and messages sent on the
    current socket whose ack has not arrived."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("buffer_size must be 1 or more")
        self.size = size
        self._queue: deque[Outgoing[W]] = deque()
        self._inflight: dict[int, Outgoing[W]] = {}

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def unacked(self) -> int:
        return len(self._inflight)

    def push(self, item: Outgoing[W]) -> list[Outgoing[W]]:
        """Queue ``item``; return the oldest messages dropped to stay within ``size``."""
        self._queue.append(item)
        return self._trim()

    def peek(self) -> Outgoing[W] | None:
        return self._queue[0] if self._queue else None

    def take(self) -> Outgoing[W] | None:
        """The next message to send, now counted as in flight until its ack."""
        if not self._queue:
            return None
        item = self._queue.popleft()
        self._inflight[item.id] = item
        return item

    def ack(self, message_id: Any) -> Outgoing[W] | None:
        """The in-flight message the gateway acknowledged, or None (unknown or repeated id)."""
        if isinstance(message_id, bool) or not isinstance(message_id, int):
            return None
        return self._inflight.pop(message_id, None)

    def withdraw(self, message_id: int) -> bool:
        """Remove a message that has not gone out yet (its send was cancelled)."""
        for item in self._queue:
            if item.id == message_id:
                self._queue.remove(item)
                return True
        return False

    def settle(self, resend: bool) -> Settled[W]:
        """After a close: the unacknowledged messages go back to the front of the buffer in id
        order (``resend``), or fail (the gateway may have handled them; it has no id to remove
        duplicates with, so they are not sent twice)."""
        pending = sorted(self._inflight.values(), key=lambda item: item.id)
        self._inflight.clear()
        if not resend:
            return Settled(failed=pending)
        self._queue.extendleft(reversed(pending))
        return Settled(resent=pending, dropped=self._trim())

    def clear(self) -> list[Outgoing[W]]:
        """Everything still waiting or unacknowledged, in id order (the client stopped)."""
        items = sorted([*self._inflight.values(), *self._queue], key=lambda item: item.id)
        self._inflight.clear()
        self._queue.clear()
        return items

    def __iter__(self) -> Iterator[Outgoing[W]]:
        return iter(self._queue)

    def _trim(self) -> list[Outgoing[W]]:
        dropped: list[Outgoing[W]] = []
        while len(self._queue) > self.size:
            dropped.append(self._queue.popleft())
        return dropped


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Pacing of ``send()`` frames. The gateway closes a socket with 4429 beyond
    ``WS_MAX_MESSAGES_PER_SECOND`` (20/s, bursts of 40) and counts pongs and auth frames too,
    so the default stays at half of that."""

    per_second: float = 10.0
    burst: int = 20


class TokenBucket:
    """A token bucket over an injected clock: ``take(now)`` spends one token, or says how long
    to wait for one."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        if limit.per_second <= 0 or limit.burst < 1:
            raise ValueError("rate_limit needs per_second > 0 and burst >= 1")
        self.limit = limit
        self.tokens = float(limit.burst)
        self.at = now

    def take(self, now: float) -> float:
        """0.0 when a token was spent; otherwise the seconds until one is available."""
        elapsed = max(0.0, now - self.at)
        self.tokens = min(float(self.limit.burst), self.tokens + elapsed * self.limit.per_second)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.limit.per_second
