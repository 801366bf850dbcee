"""Half-open handshakes bounded: uvicorn's httptools protocol with a deadline and a cap, and a
limit on the request head's size.

uvicorn starts no timer when a TCP connection opens: a client that connects and never sends
its HTTP request (the WebSocket upgrade included) holds a socket, a protocol object and a file
descriptor for as long as it likes, and thousands of them exhaust the open-file limit. Here
each connection must deliver a complete request head within ``WS_HANDSHAKE_TIMEOUT`` seconds,
or it is closed; and at most ``WS_MAX_PENDING_HANDSHAKES`` connections may have been silent
for longer than ``SILENT_GRACE`` at once: beyond that, the oldest of them are closed as new
connections arrive. Once a request has arrived, uvicorn's own rules apply (its keep-alive
timeout between requests; the socket's own lifetime after an upgrade).

Why a grace, and why the oldest: asyncio accepts up to the listen backlog (uvicorn's 2,048)
connections per readiness event and makes all their protocols before it reads from any of
them, and a loop busy admitting a storm reads them later still. So connections whose request
has already arrived look silent for a moment: counted from arrival (as this cap first was),
2,335 of 4,000 clients that each sent their request as they connected were refused at a cap of
500. A connection in its first ``SILENT_GRACE`` is not counted, a new one is never refused, and
a candidate for closing whose request bytes wait unread is spared (one ``FIONREAD``). Closing
the oldest rather than the newest also lets a real client in during a flood of silent
connections, instead of refusing it until the deadline frees a slot.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import termios
from collections import OrderedDict
from typing import Any, Protocol

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

logger = logging.getLogger("gateway.edge.handshake")

#: Seconds a connection may wait for its request before it counts against the cap: longer than
#: a storm's accepted connections wait for the loop to read them (the e2e storm passes at 0.1 s)
#: and than a lost request segment's retransmission (TCP's minimum timeout is 0.2 s), far
#: shorter than ``WS_HANDSHAKE_TIMEOUT``'s default (10 s).
SILENT_GRACE = 1.0

#: The most bytes a request head's target and headers may hold. llhttp, unlike h11, sets no
#: limit of its own; h11 (uvicorn's default, 16 KiB) applied its limit only to a head split
#: across reads, so whether a large head was answered depended on how it arrived. Here the
#: head is counted whatever the reads, and one over the limit gets uvicorn's HTTP 400.
MAX_HEAD_BYTES = 16 * 1024


class Waiting(Protocol):
    """A connection waiting for its request, as the cap sees it."""

    def has_unread_request(self) -> bool: ...

    def close_silent(self) -> None: ...


class HandshakeLimits:
    """The deadline and the cap, and the connections waiting now (one per server).

    Waiting connections are kept in arrival order in two ordered maps, so that every step is
    O(1) per connection: ``recent`` (arrival time by connection, not counted yet) and
    ``silent`` (waiting longer than the grace, oldest first: the ones the cap counts).
    Connections move from the first to the second when the next connection arrives, the only
    moment the count matters.
    """

    def __init__(self, timeout: float, max_pending: int, grace: float = SILENT_GRACE) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self.grace = grace
        self.recent: OrderedDict[Waiting, float] = OrderedDict()
        self.silent: OrderedDict[Waiting, None] = OrderedDict()
        #: Silent connections closed for the cap, for the warning's count.
        self.evicted = 0

    @property
    def pending(self) -> int:
        return len(self.recent) + len(self.silent)

    def arrived(self, conn: Waiting, now: float) -> None:
        """Track a new connection and, at the cap, close the oldest silent ones."""
        self.recent[conn] = now
        if not self.max_pending:
            return
        recent, silent = self.recent, self.silent
        cutoff = now - self.grace
        while recent:
            oldest, since = next(iter(recent.items()))
            if since > cutoff:
                break
            del recent[oldest]
            silent[oldest] = None
        while len(silent) > self.max_pending:
            oldest, _ = silent.popitem(last=False)
            if oldest.has_unread_request():
                # Its bytes are in, the loop has not read them yet: not silent, another grace.
                recent[oldest] = now
                continue
            self.evicted += 1
            if self.evicted == 1 or self.evicted % 1000 == 0:
                logger.warning(
                    "%d connections sent no request for %gs (WS_MAX_PENDING_HANDSHAKES=%d): "
                    "closing the oldest (%d so far)",
                    len(silent) + 1,
                    self.grace,
                    self.max_pending,
                    self.evicted,
                )
            oldest.close_silent()

    def forget(self, conn: Waiting) -> None:
        if self.recent.pop(conn, None) is None:
            self.silent.pop(conn, None)


class BadHead(Exception):
    """A request head refused here (past ``MAX_HEAD_BYTES``, or HTTP/1.1 without ``Host``):
    raised in a parser callback, which httptools turns into the parse error uvicorn answers
    with HTTP 400."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose request head does not arrive in
    time, and the oldest silent ones while too many are waiting; and refusing a request head
    (target and headers) larger than ``MAX_HEAD_BYTES``, which llhttp would take whole."""

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
        self._head_bytes = 0
        #: When the last response completed, while no request has arrived since.
        self._idle_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting = True
        self._deadline = self.loop.call_later(self.limits.timeout, self._handshake_timed_out)
        self.limits.arrived(self, self.loop.time())

    # Parser callbacks (httptools calls them from feed_data).
    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Four for the separator and the line end, so that empty headers count too.
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._handshake_done()  # a request head arrived (an upgrade's too)
        for name, _ in self.headers:
            if name == b"host":
                break
        else:
            if self.parser.get_http_version() == "1.1":
                # RFC 9112 3.2 requires the 400 that h11 gave, which llhttp does not.
                raise BadHead("an HTTP/1.1 request without Host")
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._handshake_done()
        self._idle_since = None
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    # Keep-alive: uvicorn arms a timer after every response and cancels it at the next
    # request's first bytes, a timer made and dropped per request (9 % of a targeted send's
    # samples, docs/benchmarks.md, REST delivery). Here one timer per idle spell checks, when
    # it fires, whether the connection has been idle for the whole timeout, and re-arms for the
    # rest if a request came meanwhile.
    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None

    def on_response_complete(self) -> None:
        # uvicorn's, but for the keep-alive timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_due
            )

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # a request arrived: its response arms the timer again
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def has_unread_request(self) -> bool:
        """Whether bytes from the client wait in the socket's receive buffer, unread."""
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            unread = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return False
        return bool(struct.unpack("i", unread)[0])

    def close_silent(self) -> None:
        """Close this connection for the cap (already out of the limits' maps)."""
        self._waiting = False
        self._handshake_done()
        self.transport.abort()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise BadHead(f"request head over {MAX_HEAD_BYTES} bytes")

    def _handshake_done(self) -> None:
        if self._waiting:
            self._waiting = False
            self.limits.forget(self)
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


def bounded_http(timeout: float, max_pending: int) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to give uvicorn as ``http=``, with its own limits."""
    limits = HandshakeLimits(timeout, max_pending)
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})
