"""Half-open handshakes bounded: uvicorn's h11 protocol with a deadline and a cap.

uvicorn starts no timer when a TCP connection opens: a client that connects and never sends
its HTTP request (the WebSocket upgrade included) holds a socket, a protocol object and a file
descriptor for as long as it likes, and thousands of them exhaust the open-file limit. Here
each connection must deliver a complete request head within ``WS_HANDSHAKE_TIMEOUT`` seconds,
or it is closed; and at most ``WS_MAX_PENDING_HANDSHAKES`` connections may be waiting for
theirs at once: beyond that, a new connection is closed as soon as it opens. Once a request
has arrived, uvicorn's own rules apply (its keep-alive timeout between requests; the socket's
own lifetime after an upgrade).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

logger = logging.getLogger("gateway.handshake")


class HandshakeLimits:
    """The deadline and the cap, and the connections waiting now (one per server)."""

    def __init__(self, timeout: float, max_pending: int) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self.pending = 0
        #: Connections closed on arrival, for the warning's count.
        self.refused = 0


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request head does not arrive in
    time, and refusing new ones while too many are waiting."""

    limits: HandshakeLimits  # set by ``bounded_http``

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if limits.max_pending and limits.pending >= limits.max_pending:
            limits.refused += 1
            if limits.refused == 1 or limits.refused % 1000 == 0:
                logger.warning(
                    "%d connections waiting for their handshake (WS_MAX_PENDING_HANDSHAKES): "
                    "closing new ones (%d so far)",
                    limits.pending,
                    limits.refused,
                )
            transport.abort()
            return
        limits.pending += 1
        self._waiting = True
        self._deadline = self.loop.call_later(limits.timeout, self._handshake_timed_out)

    def handle_events(self) -> None:
        super().handle_events()
        if self._waiting and (self.cycle is not None or self.transport.get_protocol() is not self):
            self._handshake_done()  # a request head arrived (an upgrade hands over the socket)

    def connection_lost(self, exc: Exception | None) -> None:
        self._handshake_done()
        super().connection_lost(exc)

    def _handshake_done(self) -> None:
        if self._waiting:
            self._waiting = False
            self.limits.pending -= 1
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        if not self._waiting:
            return
        self._handshake_done()
        logger.info("closed a connection that sent no request within %gs", self.limits.timeout)
        self.transport.abort()


def bounded_http(timeout: float, max_pending: int) -> type[BoundedH11Protocol]:
    """The protocol class to give uvicorn as ``http=``, with its own limits."""
    limits = HandshakeLimits(timeout, max_pending)
    return type("BoundedH11Protocol", (BoundedH11Protocol,), {"limits": limits})
