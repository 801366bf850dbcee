"""uvicorn's wsproto WebSocket protocol, trimmed for sockets that sit idle for hours.

``python -m gateway`` runs this class for ``WS_IMPLEMENTATION=wsproto`` (the default). It is
uvicorn's own ``WSProtocol`` (same handshake, frames, close codes, size limit, drain), minus
state that an idle socket keeps for its whole life and never uses again. Measured per socket
with uvicorn 0.54 and wsproto 1.3 (see docs/benchmarks.md):

* ``asyncio.Queue`` for received events: four deques of ~780 bytes each (a deque allocates a
  64-slot block even when empty). Here an ``Inbox``: a list and, while the application waits,
  one future; ``receive()`` returns that future, so no coroutine frames sit in it either.
* ``asyncio.Event`` for write flow control: one more deque. Here a ``WriteGate`` that makes an
  Event only while the transport is actually paused.
* wsproto's handshake object after the handshake: an h11 connection, the upgrade request with
  all its headers, and a deque. After accepting, the protocol talks to wsproto's frame-level
  ``Connection`` directly (what ``WSConnection`` delegates to from then on), and that
  connection's event deque becomes a list.
* the ASGI scope (headers, query string with the ID token, state copy, extensions), held by
  every suspended frame of the application: trimmed in place after the accept to the socket's
  identity (``SCOPE_KEPT``). The gateway reads the scope only before it accepts.
* uvicorn's ``ProxyHeadersMiddleware`` stays suspended around the application for the
  socket's life; its scope rewrite (client address and scheme from ``X-Forwarded-*`` sent by a
  trusted proxy) is applied once, before the application starts, by the middleware itself.
* uvicorn's 33 instance attributes overflow CPython's shared-key instance dict (a 1.6 KB
  table); declared as slots here, they take 8 bytes each.

Once the application has accepted, it may *detach* (``detach``): every event then goes to its
consumer synchronously, and its task returns without the socket closing, so an idle socket
keeps no task, coroutine frames or future (about 1.7 KB). The consumer reports a backlog to
have reading paused, and calls ``resume_reading`` when it has drained.

Less work per frame, as a side effect: uvicorn pauses reading after each message and resumes
once the application has taken it; here reading is paused only while messages queue up, not
for one that a waiting application takes at once (two epoll_ctl calls fewer per frame).

Two fast paths for the heartbeat, which is most of the traffic (see docs/benchmarks.md), offered
to the application through the scope extension ``gateway.frames`` (this protocol):

* ``write_frame``: the ping round encodes its frame once (``framing.text_frame``) and writes
  the same bytes to every socket, as a server's frames are not masked; no ASGI message, no
  wsproto event, no coroutine per socket.
* ``set_text_sink``: small text frames (one complete, final, masked frame of at most 125 bytes,
  which is every heartbeat) are unmasked here and offered to the sink synchronously; a frame it
  declines goes the usual way, to ``receive()``. wsproto's parser and the application task's
  wake-up are skipped for a pong. Anything else (fragments, control frames, larger or invalid
  frames, bytes left over in wsproto's buffer) takes wsproto's path unchanged.

uvicorn is pinned to 0.54 and wsproto to 1.3 (pyproject.toml) because this subclass relies on
how uvicorn's ``WSProtocol`` uses these attributes and on wsproto's frame decoder: another
release may misbehave quietly, so ``gateway.edge.versions`` stops the gateway at start-up
instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import wsproto
from uvicorn._types import ASGISendEvent, WebSocketEvent
from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from uvicorn.server import ServerState
from wsproto.connection import Connection, ConnectionState
from wsproto.events import TextMessage

from gateway.edge.framing import SMALL_FRAME
from gateway.edge.wsproto_parts import (
    Detached,
    EventConsumer,
    Inbox,
    TextSink,
    WriteGate,
    scope_rewriter,
    trim_scope,
    use_event_list,
)

#: The scope extension under which the protocol offers its fast paths to the application.
FRAMES_EXTENSION = "gateway.frames"
#: A mask repeated past SMALL_FRAME bytes, to XOR a whole payload as one integer.
_MASK_REPEAT = SMALL_FRAME // 4 + 1


#: One read buffer for every socket: the event loop is one thread, and each read is handed
#: on (copied into ``bytes``) before the next one starts.
_READ_BUFFER = memoryview(bytearray(256 * 1024))


class LeanWSProtocol(WSProtocol, asyncio.BufferedProtocol):
    """uvicorn's wsproto protocol with less kept per idle socket (see the module docstring)."""

    # Every attribute uvicorn's WSProtocol sets, as slots: 34 attributes overflow CPython's
    # shared-key instance dict into a ~1.6 KB table, where slots take 8 bytes each. One that a
    # later uvicorn adds still works; it lands in the instance dict.
    __slots__ = (
        "_rewrite_scope",
        "text_sink",
        "detached",
        "app",
        "app_state",
        "asgi_version",
        "buffer",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "default_headers",
        "disconnected",
        "handshake_complete",
        "last_ping_rtt",
        "logger",
        "loop",
        "pending_ping_payload",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "response_started",
        "root_path",
        "scheme",
        "scope",
        "server",
        "tasks",
        "transport",
        "writable",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.queue: Any = Inbox()
        self.writable: Any = WriteGate()
        self._rewrite_scope: ProxyHeadersMiddleware | None = None
        self.text_sink: TextSink | None = None
        self.detached = False
        if isinstance(self.app, ProxyHeadersMiddleware):
            self._rewrite_scope = scope_rewriter(self.app)
            self.app = self.app.app

    def handle_connect(self, event: wsproto.events.Request) -> None:
        # uvicorn builds the scope and creates the application task, which first runs on the
        # next loop iteration: the scope is rewritten before the application sees it.
        super().handle_connect(event)
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[FRAMES_EXTENSION] = self
        if self._rewrite_scope is not None:
            step = self._rewrite_scope(self.scope, self.receive, self.send)
            try:
                step.send(None)
            except StopIteration:
                pass
            else:  # pragma: no cover - the middleware never awaits anything but the inner app
                step.close()
                raise RuntimeError("proxy header rewrite suspended")

    # --- fast paths --------------------------------------------------------------------------

    def set_text_sink(self, sink: TextSink | None) -> None:
        """Offer small text frames to ``sink`` before ``receive()`` (see the module docstring)."""
        self.text_sink = sink

    def detach(self, consumer: EventConsumer) -> None:
        """Hand every received event to ``consumer`` synchronously from now on, and let the
        application's task return without the socket closing: an idle socket then keeps no
        task, coroutine frames or future (about 1.5 KB, see docs/benchmarks.md). Events
        queued before the call are handed over first, in order."""
        inbox = self.queue
        self.queue = Detached(consumer)
        self.detached = True
        if isinstance(inbox, Inbox):
            for item in inbox.take_all():
                self.queue.put_nowait(item)
        if self.read_paused and not self.queue.backlogged:
            self.resume_reading()

    def resume_reading(self) -> None:
        """A detached consumer's backlog has drained: read the socket again."""
        if self.read_paused:
            self.read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def ready(self) -> bool:
        """Whether ``write_frame`` would write now: the socket open, its client reading."""
        return not (
            self.close_sent
            or not self.handshake_complete
            or not self.writable.is_set()
            or self.conn.state is not ConnectionState.OPEN
            or self.transport.is_closing()
        )

    def write_frame(self, frame: bytes) -> bool:
        """Write an already-encoded frame (``gateway.edge.framing.text_frame``) unless the socket
        is closing or its client is not reading (transport paused: skipped rather than queued
        behind); return whether it was written."""
        if not self.ready():
            return False
        self.transport.write(frame)
        return True

    # asyncio.BufferedProtocol: the transport reads into one shared buffer instead of
    # allocating a 256 KB bytes object for every read (what recv() does under data_received).
    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_READ_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.text_sink is not None and not self.read_paused and not self.close_sent:
            data = self._take_small_text(data, self.text_sink)
            if not data:
                return
        super().data_received(data)

    def _take_small_text(self, data: bytes, sink: TextSink) -> bytes:
        """Hand complete small masked text frames at the front of ``data`` to the sink (or to
        ``receive()`` when it declines one); return the bytes left for wsproto."""
        conn = self.conn
        if not isinstance(conn, Connection) or conn.state is not ConnectionState.OPEN:
            return data
        proto = conn._proto
        decoder = proto._frame_decoder
        if (
            decoder.header is not None
            or decoder.buffer
            or proto._message_decoder.opcode is not None
        ):
            return data  # wsproto is part-way through a frame or a fragmented message
        limit = min(SMALL_FRAME, self.config.ws_max_size)
        at, end = 0, len(data)
        while end - at >= 6 and not self.close_sent:
            # 0x81: FIN, no extension bits, text. The second byte with its mask bit cleared is
            # the length; an unmasked frame (a protocol error) or a 16/64-bit length is >= 126.
            size = data[at + 1] ^ 0x80
            if data[at] != 0x81 or size > limit or at + 6 + size > end:
                break
            mask = data[at + 2 : at + 6] * _MASK_REPEAT
            masked = int.from_bytes(data[at + 6 : at + 6 + size], "little")
            raw = (masked ^ int.from_bytes(mask[:size], "little")).to_bytes(size, "little")
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                break  # wsproto answers invalid UTF-8 with 1007
            at += 6 + size
            if not sink.take_text(text):
                self.handle_message(TextMessage(data=text))
        return data[at:] if at else data

    def handle_message(
        self, event: wsproto.events.TextMessage | wsproto.events.BytesMessage
    ) -> None:
        if self.detached and not self.read_paused:
            # The consumer takes the message at once; reading pauses only when it reports
            # a backlog.
            self.read_paused = True
            try:
                super().handle_message(event)
            finally:
                self.read_paused = False
            if self.queue.backlogged and not self.transport.is_closing():
                self.read_paused = True
                self.transport.pause_reading()
            return
        if self.read_paused or not self.queue.waiting:
            super().handle_message(event)
            return
        # The application waits and takes a complete message at once. uvicorn would pause
        # reading until it has, and resume as soon as it has (two epoll_ctl calls per frame);
        # reading paused is only useful while messages queue up. Marked as already paused,
        # uvicorn's handle_message skips the pause; a fragment or a too-large message takes
        # the same path as in uvicorn.
        self.read_paused = True
        try:
            super().handle_message(event)
        finally:
            self.read_paused = False

    def receive(self) -> asyncio.Future[WebSocketEvent]:  # type: ignore[override]
        # A plain method returning a future, not a coroutine: an idle socket's task then waits
        # on that future alone, without uvicorn's receive() and Queue.get() frames above it.
        inbox: Inbox = self.queue
        event = inbox.get(self.loop)
        if self.read_paused and inbox.empty():
            # As uvicorn: reading resumes once the application has taken every queued event.
            self.read_paused = False
            self.transport.resume_reading()
        return event

    async def run_asgi(self) -> None:
        # uvicorn's run_asgi, except that an application that detached (``detach``) returns
        # with the socket open: the consumer runs the socket from then on.
        try:
            result = await self.app(self.scope, self.receive, self.send)  # type: ignore[func-returns-value]
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
            elif self.detached:
                return
        if self.close_timer is None:
            self.transport.close()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if self.handshake_complete and isinstance(self.conn, wsproto.WSConnection):
            self._drop_handshake()

    def _drop_handshake(self) -> None:
        """After the accept (or a refused handshake), forget what only the handshake used."""
        connection = self.conn.connection
        if connection is None:
            return  # refused before accepting: the transport is closing anyway
        # From here on WSConnection only forwards send, receive_data, events and state to this
        # connection; talking to it directly lets the handshake (h11, the request) go.
        self.conn: Any = connection
        use_event_list(connection)
        trim_scope(self.scope)
