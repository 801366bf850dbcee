"""One instance's sockets and their lifecycle, independent of HTTP routing.

Holds the registry of sockets and the write-behind buffer, admits sockets (through
``gateway.instance.admission``) and closes them, runs the ping, token-expiry and reconcile
loops, and sends to the sockets this instance holds. What spans instances (send, broadcast,
timeouts and stats for the whole deployment) is ``gateway.cluster.deployment``'s; the Litestar
layer (``gateway.web.app``) and the socket edge (``gateway.web.sockets``) only translate to and
from these two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from gateway.edge.framing import text_frame
from gateway.instance.admission import Admission
from gateway.instance.analytics import ConnectionEvents
from gateway.instance.auth import TokenVerifier
from gateway.instance.endings import Endings
from gateway.instance.heartbeat import SEND_CHUNK, Heartbeat
from gateway.instance.idle_trim import trim_when_idle
from gateway.instance.presence import LocalPresence
from gateway.instance.recorder import SampleRing
from gateway.instance.registry import Connection, Registry
from gateway.instance.room_methods import RoomMethods
from gateway.instance.stream_delivery import StreamDelivery
from gateway.logs import FRAME_LINES_BURST, FRAME_LINES_WINDOW, LogBudget
from gateway.protocol import rooms
from gateway.protocol.messages import utc_now
from gateway.protocol.session import SessionLimits
from gateway.settings import Settings
from gateway.storage.presence_records import (
    MemoryPresenceRecords,
    PresenceRecords,
    PresenceWriter,
)
from gateway.storage.schema import INSTANCES, STOPPED_AT
from gateway.storage.store import (
    MemoryStore,
    Store,
    Write,
    connect_writes,
    disconnect_writes,
    instance_write,
    pong_write,
    reassert_writes,
)
from gateway.storage.streams import MemoryStreamStore, StreamStore
from gateway.storage.writer import WriteBehind

logger = logging.getLogger("gateway")
#: The default handler's lines, within a budget: one per message would let a client write log
#: lines at its frame rate (gateway.logs).
_message_lines: LogBudget[str] = LogBudget(
    logger, burst=FRAME_LINES_BURST, window=FRAME_LINES_WINDOW
)

#: Seconds a drain gives the write-behind buffer to flush (gateway.storage.writer).
FLUSH_DEADLINE = 10.0
#: Seconds a drain gives the commit marking the instance stopped, once the rest is written.
STOPPED_MARK_TIMEOUT = 2.0

#: Application hook for client ``message`` frames: ``(user_id, session_id, data)``, and a
#: keyword-only ``gateway`` when it declares one (gateway.cluster.handle).
MessageHandler = Callable[..., Awaitable[None]]


async def log_message(user_id: str, session_id: str, data: Any) -> None:
    """The default message handler: log the message (within a budget) and do nothing else."""
    _message_lines.info(
        "messages", "message from user=%s session=%s: %.200r", user_id, session_id, data
    )


class PresenceService(RoomMethods):
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        message_handler: MessageHandler = log_message,
        verifier: TokenVerifier | None = None,
        streams: StreamStore | None = None,
        presence_records: PresenceRecords | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        #: None when AUTH_MODE=off (emulators only).
        self.verifier = verifier
        self.registry = Registry()
        self.writer = WriteBehind(
            store,
            flush_interval=settings.writer.flush_interval,
            batch_size=settings.writer.batch_size,
            concurrency=settings.writer.flush_concurrency,
            max_docs=settings.writer.buffer_max_docs,
        )
        self.message_handler = message_handler
        self.heartbeat = Heartbeat(self.registry, settings.sockets.ping_interval)
        #: Durable streams (gateway.instance.stream_delivery); in memory unless given (unit tests).
        self.streams = StreamDelivery(
            streams or MemoryStreamStore({}, settings.streams.history_ttl),
            self.registry,
            self.writer,
            self._send_all,
            send_timeout=settings.sockets.send_timeout,
            history_size=settings.streams.history_size,
            history_ttl=settings.streams.history_ttl,
        )
        #: What every socket's protocol session decides with (gateway.protocol.session).
        self.session_limits = SessionLimits(
            max_messages_per_second=settings.sockets.max_messages_per_second,
            max_message_bytes=settings.sockets.max_message_bytes,
            token_grace=settings.auth.token_grace,
        )
        #: Connect and token checks (gateway.instance.admission).
        self.admission = Admission(
            settings.sockets, self.registry, store, verifier, settings.instance_id
        )
        self.callbacks_received = 0
        #: Sockets refused or closed by policy, by reason (close reason text).
        self.refusals: Counter[str] = Counter()
        #: user id -> monotonic time of the last pong written (PONG_WRITE_INTERVAL > 0 only).
        self._pong_written: dict[str, float] = {}
        #: Pongs not written because of PONG_WRITE_INTERVAL.
        self.pongs_unwritten = 0
        self.pongs_unrequested = 0
        self.events = ConnectionEvents(settings.instance_id)
        self.rooms: rooms.RoomRegistry[Connection] = rooms.RoomRegistry(
            settings.sockets.max_rooms_per_socket, settings.sockets.max_room_members
        )
        #: Joins refused, by error code (gateway.protocol.rooms).
        self.room_refusals: Counter[str] = Counter()
        self._started_at = utc_now()
        #: The console's series (gateway.instance.recorder), fed while the console is enabled.
        self.samples = SampleRing(self._started_at.timestamp())
        self.endings = Endings(
            settings,
            self.registry,
            store,
            self.writer,
            self.events,
            self.refusals,
            self._started_at,
        )
        self._tasks: list[asyncio.Task[None]] = []
        #: Seconds ``stop`` gives the buffer to flush (FLUSH_DEADLINE; tests shorten it).
        self.flush_deadline = FLUSH_DEADLINE
        if presence_records is None and isinstance(store, MemoryStore):
            presence_records = MemoryPresenceRecords(store)
        #: User presence in Firestore; None with USER_PRESENCE=off (or no records given).
        self.presence_writer = (
            PresenceWriter(presence_records, settings.instance_id)
            if presence_records is not None and settings.presence.users_enabled
            else None
        )
        #: Presence of users and rooms on this instance (gateway.instance.presence).
        self.presence = LocalPresence(settings, self.presence_writer, self._send_room_local)
        self.endings.on_recovered = self.reassert
        #: Hands a room frame to the other instances (set by the deployment with a broker).
        self.relay: Callable[[str, str], None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.writer.start()
        if self.presence_writer is not None:
            self.presence_writer.start()
        self.presence.start()
        # Registering the instance is best effort: the gateway serves sockets without it.
        self.writer.put(
            instance_write(self.settings.instance_id, self.settings.internal_url, utc_now())
        )
        self._tasks = [
            asyncio.create_task(self.heartbeat.run(), name="ping-loop"),
            asyncio.create_task(self.endings.reconcile_loop(), name="reconcile-loop"),
            asyncio.create_task(trim_when_idle(lambda: self.registry.total_connections)),
        ]
        if self.verifier is not None:
            self._tasks.append(asyncio.create_task(self.endings.token_loop(), name="token-expiry"))
        else:
            logger.warning("AUTH_MODE=off: sockets are accepted without ID tokens")
        logger.info(
            "gateway instance %s started (ping every %gs, pong timeout %gs)",
            self.settings.instance_id,
            self.settings.sockets.ping_interval,
            self.settings.sockets.pong_timeout,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.presence.stop()
        if self.presence_writer is not None:
            await self.presence_writer.close()
        # uvicorn has already closed every socket with 1012 (service restart), so clients
        # reconnect elsewhere and their disconnects are in the buffer: flush everything before
        # the process ends.
        self.streams.flush_acks()
        flushed = await self.writer.close(self.flush_deadline)
        if self.presence_writer is not None and self.presence_writer.backlog:
            flushed = False
        await self._mark_stopped(flushed)
        await self.streams.store.close()
        await self.store.close()
        logger.info("gateway instance %s stopped", self.settings.instance_id)

    async def _mark_stopped(self, flushed: bool) -> None:
        """Mark the instance stopped, only once every record it owed is written: the sweep
        leaves a stopped instance's sessions and presence alone (it ended them itself), and
        reaps an instance that just went silent as lost. So a drain that could not flush (a
        Firestore stall) must not say it stopped, or what it left unwritten stays for good: a
        member listing a closed socket, a user online on no instance."""
        instance = self.settings.instance_id
        if not flushed:
            logger.warning(
                "instance %s not marked stopped: some of its records are unwritten, so the "
                "sweep will count it lost and end the sessions it left marked active",
                instance,
            )
            return
        try:
            async with asyncio.timeout(STOPPED_MARK_TIMEOUT):
                await self.store.commit([Write(INSTANCES, instance, {STOPPED_AT: utc_now()})])
        except Exception as exc:
            # Then the sweep counts it lost: it finds no session left active, nothing changes.
            logger.warning("instance %s not marked stopped: %r", instance, exc)

    # --- socket events -----------------------------------------------------------------------

    def connected(self, conn: Connection) -> None:
        held = self.registry.add(conn)
        # Member entry and session record in one commit: see gateway.storage.write_buffer.
        self.writer.put_together(
            connect_writes(
                conn.user_id, conn.session_id, self.settings.instance_id, conn.connected_at
            )
        )
        self.events.connect(conn, held, self.registry.total_connections)
        self.presence.socket_opened(conn.user_id)

    def disconnected(self, conn: Connection, code: int | None) -> None:
        conn.closed = True
        # The gateway's own close code when it closed the socket (a timeout, a sign-out):
        # presence reports those at once, without the grace.
        code = conn.closed_with or code
        for room in self.rooms.leave_all(conn):
            self.events.room_leave(conn, room, "disconnect", 0)
            if self.presence.is_presence_room(room):
                self.presence.left(room, conn.user_id, code)
        self.presence.socket_closed(conn.user_id, code)
        left = self.registry.remove(conn)
        if not left:
            self._pong_written.pop(conn.user_id, None)
        self.writer.put_together(disconnect_writes(conn.user_id, conn.session_id, code, utc_now()))
        # The client's last acknowledgement may be held in its one-second window: a device
        # that closes now and another that connects without a position must resume after it.
        self.streams.release_ack(conn.user_id)
        self.events.disconnect(conn, code, left, self.registry.total_connections)

    def reassert(self) -> None:
        """After records lagged long enough for the sweep to count this instance lost: write
        every open socket's member entry and session again, and its presence counts."""
        logger.warning(
            "records lagged past 2 x SWEEP_INTERVAL: re-asserting %d sockets and their presence",
            self.registry.total_connections,
        )
        for conn in self.registry:
            self.writer.put_together(
                reassert_writes(conn.user_id, conn.session_id, self.settings.instance_id)
            )
        self.presence.reassert()

    def pong(self, conn: Connection, now: datetime) -> None:
        generation = self.heartbeat.generation
        if conn.pong_round == generation:
            # The socket already answered this ping: a client that pongs unasked (or floods
            # pongs within its frame rate) must not turn each one into a Firestore write. The
            # pong still moves a write that is pending anyway, which costs nothing.
            if not self.writer.refresh(pong_write(conn.user_id, now)):
                self.pongs_unrequested += 1
            return
        conn.pong_round = generation
        every = self.settings.writer.pong_write_interval
        if every:
            # The knob trading precision for writes: at most one last_pong_at write per user
            # per PONG_WRITE_INTERVAL; the record then lags the real last pong by less than it.
            moment = time.monotonic()
            last = self._pong_written.get(conn.user_id)
            if last is not None and moment - last < every:
                self.pongs_unwritten += 1
                return
            self._pong_written[conn.user_id] = moment
        self.writer.put(pong_write(conn.user_id, now), pong=True)

    # --- outbound ----------------------------------------------------------------------------

    async def send_text(self, user_id: str, text: str) -> int:
        """Send an encoded frame to the user's sockets on this instance; return how many
        took it."""
        sockets = self.registry.sockets_of(user_id)
        return await self._send_all(sockets, text) if sockets else 0

    async def broadcast_text(self, text: str, exclude_user: str | None) -> tuple[set[str], int]:
        """Send an encoded frame to every socket here except ``exclude_user``'s; return the
        users reached and how many sockets took it."""
        targets = [c for c in self.registry if c.user_id != exclude_user]
        delivered = await self._send_all(targets, text)
        return {c.user_id for c in targets if not c.closed}, delivered

    async def _send_all(self, conns: Iterable[Connection], text: str) -> int:
        timeout = self.settings.sockets.send_timeout
        # Encoded once for every socket: the lean edge takes the frame's bytes as they are.
        frame = text_frame(text)
        delivered = 0
        batch: list[Connection] = []
        # Chunked gather: a slow client delays its chunk by at most the send timeout instead
        # of serialising everyone behind it, without one task per socket for 10,000 sockets.
        for conn in conns:
            batch.append(conn)
            if len(batch) >= SEND_CHUNK:
                delivered += await self._send_chunk(batch, text, frame, timeout)
                batch = []
        if batch:
            delivered += await self._send_chunk(batch, text, frame, timeout)
        return delivered

    @staticmethod
    async def _send_chunk(batch: list[Connection], text: str, frame: bytes, timeout: float) -> int:
        """Write the frame to every socket whose edge takes it now, without a coroutine; the
        others (another edge, a client not reading, an earlier send still waiting) are sent
        the text the ordinary way, with the send timeout."""
        delivered, slow = 0, []
        for conn in batch:
            if not conn.waiting and conn.push_frame(frame):
                delivered += 1
            else:
                slow.append(conn)
        if slow:
            results = await asyncio.gather(*(c.send_text(text, timeout) for c in slow))
            delivered += sum(results)
        return delivered
