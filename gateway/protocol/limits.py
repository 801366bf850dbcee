"""Abuse limits, as plain decisions over numbers and a clock (no I/O).

* Messages per socket: a token bucket refilled at ``rate`` per second holding at most
  ``burst``; a frame that finds it empty closes the socket with 4429.
* Connection attempts per client address: a fixed one-minute window; attempts beyond the limit
  are closed with 4429 before any token check or Firestore read. The address is the one the
  trusted front end saw (``connect_address``), never one the client wrote.
* Sockets per user are counted by the registry; see ``Admission.check_socket_limits``.

A limit of 0 disables it.
"""

from __future__ import annotations

from collections.abc import Iterable


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


def connect_address(
    client: tuple[str, int] | None,
    headers: Iterable[tuple[bytes, bytes]],
    trust_every_peer: bool,
) -> str:
    """The address a connection attempt counts against: the client as the front end saw it.

    uvicorn's proxy-headers middleware has already put an ``X-Forwarded-For`` entry in
    ``client``. With a list of trusted peers (FORWARDED_ALLOW_IPS) it walks the header from the
    right and takes the first entry that is not one of them: the address the nearest trusted
    proxy saw, which is right. With ``*`` (every peer trusted, Cloud Run's default) it takes
    the leftmost entry, which is whatever the client sent: a front end that appends the
    address it saw to the client's header (``X-Forwarded-For: anything, 203.0.113.9``) would
    let one client spread its attempts over as many addresses as it likes, or spend another
    address's allowance. So with ``*`` the rightmost entry is used, the one the peer (the
    trusted front end) added; without the header, the peer itself.
    """
    if trust_every_peer:
        forwarded: bytes | None = None
        for name, value in headers:
            if name == b"x-forwarded-for":
                forwarded = value  # several headers read as one list: the last one's end
        if forwarded is not None:
            return forwarded.rsplit(b",", 1)[-1].strip().decode("latin-1")
    return str(client[0]) if client else "unknown"
