"""Abuse limits, as plain decisions over numbers and a clock (no I/O).

* Messages per socket: a token bucket refilled at ``rate`` per second holding at most
  ``burst``; a frame that finds it empty closes the socket with 4429.
* Connection attempts per client address: a fixed one-minute window; attempts beyond the limit
  are closed with 4429 before any token check or Firestore read.
* Sockets per user are counted by the registry; see ``PresenceService.check_socket_limits``.

A limit of 0 disables it.
"""

from __future__ import annotations


def take_token(
    tokens: float, last: float, now: float, rate: float, burst: float
) -> tuple[bool, float]:
    """One frame against a bucket holding ``tokens`` at time ``last``.

    Returns (allowed, tokens left). The caller stores ``now`` as the new ``last``.
    """
    tokens = min(burst, tokens + (now - last) * rate)
    if tokens < 1.0:
        return False, tokens
    return True, tokens - 1.0


class ConnectLimiter:
    """Connection attempts per client address in the current minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window = -1
        self._counts: dict[str, int] = {}

    def allow(self, address: str, now: float) -> bool:
        if not self.per_minute:
            return True
        window = int(now // 60)
        if window != self._window:
            # A new minute: forget every address at once, so memory is bounded by one
            # minute's distinct addresses.
            self._window, self._counts = window, {}
        count = self._counts.get(address, 0) + 1
        self._counts[address] = count
        return count <= self.per_minute
