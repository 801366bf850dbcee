"""One instance's sockets and their lifecycle, independent of HTTP routing.

Holds the registry of sockets and the write-behind buffer, admits and closes sockets, runs the
ping, token-expiry and reconcile loops, and sends to the sockets this instance holds. What
spans instances (send, broadcast, timeouts and stats for the whole deployment) is
``gateway.deployment``'s; the Litestar layer (``gateway.app``) and the socket edge
(``gateway.sockets``) only translate to and from these two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from gateway import messages, rooms
from gateway.analytics import ConnectionEvents
from gateway.auth import Identity, TokenVerifier, authorize
from gateway.batching import BatchReader
from gateway.closes import CloseCode
from gateway.exceptions import AuthError
from gateway.heartbeat import SEND_CHUNK, Heartbeat
from gateway.limits import ConnectLimiter
from gateway.messages import ErrorMessage, SignedOut, Timeout, iso, utc_now
from gateway.registry import Connection, Registry
from gateway.schema import (
    HEARTBEAT_AT,
    INSTANCES,
    STOPPED_AT,
)
from gateway.session import SessionLimits
from gateway.settings import Settings
from gateway.store import (
    READ_TIMEOUT,
    Store,
    Write,
    connect_writes,
    disconnect_writes,
    instance_write,
    pong_write,
)
from gateway.stream_delivery import StreamDelivery
from gateway.streams import (
    MemoryStreamStore,
    StreamStore,
)
from gateway.writer import WriteBehind

logger = logging.getLogger("gateway")

#: Application hook for client ``message`` frames: (user_id, session_id, data) -> None.
MessageHandler = Callable[[str, str, Any], Awaitable[None]]

#: Signed out by the service (POST /ws/signout/{user_id}): the client must not reconnect.
SIGNED_OUT_REASON = "signed out by the service"
#: The analytics event of each close the gateway decides on.
CLOSED_BY_SERVICE = {
    CloseCode.SESSION_EXPIRED: "timeout",
    CloseCode.SIGNED_OUT: "signout",
    CloseCode.UNAUTHENTICATED: "token_expired",
}
#: How far back the reconciler looks for sign-outs it may have missed a callback for. A large
#: sweep commits sign-outs minutes after its own start time, which is what signed_out_at holds.
RECONCILE_WINDOW = 600.0
#: How old a sign-out must be before the reconcile poll closes its sockets itself.
RECONCILE_GRACE = 5.0
#: Member records read in one batch at admission (gateway.batching), and batches out at once:
#: under a storm the next batch takes every connect that queued meanwhile.
MEMBER_READ_BATCH = 100
MEMBER_READS_IN_FLIGHT = 4
#: The longest a connect waits for its member record, its turn in a batch included. Each read
#: itself gives up after READ_TIMEOUT (Firestore down: fail open at once); this bounds the queue.
#: Not READ_TIMEOUT as well: in a storm the gateway's own backlog made most connects miss 2 s
#: and skip the revocation check although Firestore answered (make bench --only storm).
ADMISSION_READ_WAIT = 10.0


async def log_message(user_id: str, session_id: str, data: Any) -> None:
    """The default message handler: log the message and do nothing else."""
    logger.info("message from user=%s session=%s: %.200r", user_id, session_id, data)


class PresenceService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        message_handler: MessageHandler = log_message,
        verifier: TokenVerifier | None = None,
        streams: StreamStore | None = None,
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
        #: Durable streams (gateway.stream_delivery); in memory unless given (unit tests).
        self.streams = StreamDelivery(
            streams or MemoryStreamStore({}, settings.streams.history_ttl),
            self.registry,
            self.writer,
            self._send_all,
            send_timeout=settings.sockets.send_timeout,
            history_size=settings.streams.history_size,
            history_ttl=settings.streams.history_ttl,
        )
        #: What every socket's protocol session decides with (gateway.session).
        self.session_limits = SessionLimits(
            max_messages_per_second=settings.sockets.max_messages_per_second,
            max_message_bytes=settings.sockets.max_message_bytes,
            token_grace=settings.auth.token_grace,
        )
        self.connect_limiter = ConnectLimiter(settings.sockets.max_connects_per_minute)
        #: The revocation check's member reads, coalesced across connects waiting at once.
        self.member_reads: BatchReader[dict[str, Any]] = BatchReader(
            lambda user_ids: store.get_members(user_ids, READ_TIMEOUT),
            max_batch=MEMBER_READ_BATCH,
            max_in_flight=MEMBER_READS_IN_FLIGHT,
        )
        #: Connects admitted without the revocation check (their member read failed).
        self.member_reads_failed = 0
        self.timeouts_sent = 0
        self.callbacks_received = 0
        #: Sockets refused or closed by policy, by reason (close reason text).
        self.refusals: Counter[str] = Counter()
        #: user id -> monotonic time of the last pong written (PONG_WRITE_INTERVAL > 0 only).
        self._pong_written: dict[str, float] = {}
        #: Pongs not written because of PONG_WRITE_INTERVAL.
        self.pongs_unwritten = 0
        self.events = ConnectionEvents(settings.instance_id)
        self.rooms: rooms.RoomRegistry[Connection] = rooms.RoomRegistry(
            settings.sockets.max_rooms_per_socket, settings.sockets.max_room_members
        )
        #: Joins refused, by error code (gateway.rooms).
        self.room_refusals: Counter[str] = Counter()
        self._started_at = utc_now()
        self.reconcile_grace = RECONCILE_GRACE
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.writer.start()
        # Registering the instance is best effort: the gateway serves sockets without it.
        self.writer.put(
            instance_write(self.settings.instance_id, self.settings.internal_url, utc_now())
        )
        self._tasks = [
            asyncio.create_task(self.heartbeat.run(), name="ping-loop"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile-loop"),
        ]
        if self.verifier is not None:
            self._tasks.append(asyncio.create_task(self._token_loop(), name="token-expiry"))
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
        # uvicorn has already closed every socket with 1012 (service restart), so clients
        # reconnect elsewhere and their disconnects are in the buffer: mark the instance
        # stopped and flush everything before the process ends.
        self.writer.put(Write(INSTANCES, self.settings.instance_id, {STOPPED_AT: utc_now()}))
        await self.writer.close()
        await self.streams.store.close()
        await self.store.close()
        logger.info("gateway instance %s stopped", self.settings.instance_id)

    # --- admission -----------------------------------------------------------------------

    async def admit(self, user_id: str, token: str | None) -> Identity | None:
        """Check a socket's token before it is accepted; raise AuthError to refuse it.

        Returns None when auth is off."""
        if self.verifier is None:
            return None
        if token is None:
            raise AuthError(CloseCode.UNAUTHENTICATED, "missing token")
        identity = await self.verifier.verify(token)
        try:
            async with asyncio.timeout(ADMISSION_READ_WAIT):
                member = await self.member_reads.get(user_id)
        except Exception as exc:
            # Fail open on the revocation check only: the token itself was verified.
            self.member_reads_failed += 1
            logger.warning("member read failed, admitting on the token alone: %r", exc)
            member = None
        authorize(identity, user_id, member)
        return identity

    def check_socket_limits(self, user_id: str) -> None:
        """Raise AuthError(4429) when the user already holds the most sockets allowed here."""
        limit = self.settings.sockets.max_sockets_per_user
        if limit and self.registry.count_of(user_id) >= limit:
            raise AuthError(CloseCode.RATE_LIMITED, "too many sockets for this user")

    async def refresh_token(self, conn: Connection, token: str) -> Identity:
        """A fresh token for an open socket (``{"type": "auth"}``); raise AuthError if bad."""
        if self.verifier is None:
            raise AuthError(CloseCode.UNAUTHENTICATED, "authentication is off")
        identity = await self.verifier.verify(token)
        authorize(identity, conn.user_id, None)
        conn.room_grants = identity.rooms
        return identity

    async def expire_tokens(self, now: float) -> int:
        """Close sockets whose token expired more than TOKEN_GRACE ago; return how many."""
        stale = [c for c in self.registry if c.session.token_expired(now)]
        if not stale:
            return 0
        text = messages.encode(
            ErrorMessage(
                "error",
                "token_expired",
                'The ID token expired; send {"type": "auth", "token": ...} before it does',
                iso(utc_now()),
            )
        )
        self.refusals["token expired"] += len(stale)
        await self._last_word(stale, text, CloseCode.UNAUTHENTICATED, "token expired")
        return len(stale)

    async def _last_word(
        self, conns: list[Connection], text: str, code: CloseCode, reason: str
    ) -> None:
        """Send each socket a final frame, close it, and drop it from the registry at once, so
        a second pass (a repeated callback, a reconcile) finds nothing left to close."""
        timeout = self.settings.sockets.send_timeout

        async def one(conn: Connection) -> None:
            await conn.send_text(text, timeout)
            await conn.close(code, reason)
            self.registry.remove(conn)
            self.events.closed_by_service(CLOSED_BY_SERVICE[code], conn, code, reason)

        await asyncio.gather(*(one(c) for c in conns))

    async def _token_loop(self) -> None:
        every = min(30.0, max(0.25, self.settings.auth.token_grace / 2))
        while True:
            await asyncio.sleep(every)
            try:
                await self.expire_tokens(time.time())
            except Exception:
                logger.exception("token expiry pass failed")

    # --- socket events -----------------------------------------------------------------------

    def connected(self, conn: Connection) -> None:
        held = self.registry.add(conn)
        for write in connect_writes(
            conn.user_id,
            conn.session_id,
            self.settings.instance_id,
            self.settings.internal_url,
            conn.connected_at,
        ):
            self.writer.put(write)
        self.events.connect(conn, held, self.registry.total_connections)

    def disconnected(self, conn: Connection, code: int | None) -> None:
        conn.closed = True
        for room in self.rooms.leave_all(conn):
            self.events.room_leave(conn, room, "disconnect", 0)
        left = self.registry.remove(conn)
        if not left:
            self._pong_written.pop(conn.user_id, None)
        for write in disconnect_writes(conn.user_id, conn.session_id, code, utc_now()):
            self.writer.put(write)
        self.events.disconnect(conn, code, left, self.registry.total_connections)

    def pong(self, conn: Connection, now: datetime) -> None:
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
        delivered = 0
        batch: list[Connection] = []
        # Chunked gather: a slow client delays its chunk by at most the send timeout instead
        # of serialising everyone behind it, without one task per socket for 10,000 sockets.
        for conn in conns:
            batch.append(conn)
            if len(batch) >= SEND_CHUNK:
                delivered += await self._send_chunk(batch, text, timeout)
                batch = []
        if batch:
            delivered += await self._send_chunk(batch, text, timeout)
        return delivered

    @staticmethod
    async def _send_chunk(batch: list[Connection], text: str, timeout: float) -> int:
        results = await asyncio.gather(*(c.send_text(text, timeout) for c in batch))
        return sum(results)

    async def expire_sessions(self, sessions: Iterable[tuple[str, str]]) -> tuple[int, int]:
        """Send the timeout message to these (user_id, session_id) sockets and close them.

        Returns (closed, not_found). Sessions no longer open here (already closed, or closed by
        an earlier callback or reconcile pass) are not found: each socket gets one timeout.
        """
        wanted: dict[str, set[str]] = {}
        for user_id, session_id in sessions:
            wanted.setdefault(user_id, set()).add(session_id)
        targets: list[Connection] = []
        not_found = 0
        for user_id, session_ids in wanted.items():
            open_here = {c.session_id: c for c in self.registry.sockets_of(user_id)}
            for session_id in session_ids:
                conn = open_here.get(session_id)
                if conn is None or conn.closed:
                    not_found += 1
                else:
                    targets.append(conn)
        if not targets:
            return 0, not_found
        text = messages.encode(Timeout("timeout", self.settings.timeout_text, iso(utc_now())))
        await self._last_word(targets, text, CloseCode.SESSION_EXPIRED, "session expired")
        self.timeouts_sent += len(targets)
        return len(targets), not_found

    async def sign_out_local(self, user_id: str) -> int:
        """Send the user's sockets here the signed_out message and close them with 4410;
        return how many. A second call finds none."""
        targets = [c for c in self.registry.sockets_of(user_id) if not c.closed]
        if not targets:
            return 0
        text = messages.encode(
            SignedOut(
                "signed_out",
                SIGNED_OUT_REASON,
                "You have been signed out. Please sign in again.",
                iso(utc_now()),
            )
        )
        await self._last_word(targets, text, CloseCode.SIGNED_OUT, SIGNED_OUT_REASON)
        return len(targets)

    async def reconcile_once(self) -> int:
        """Close sockets whose sessions a sweep signed out, for when its callback was lost."""
        since = max(
            self._started_at,
            utc_now()
            - timedelta(seconds=max(RECONCILE_WINDOW, 3 * self.settings.fanout.sweep_interval)),
        )
        found = await self.store.signed_out_sessions(self.settings.instance_id, since)
        # The poll is the fallback: a sign-out this recent is still being delivered by its
        # callback or fan-out, which sends the right message (signed_out for one on demand,
        # where the poll would send the timeout); the next pass takes what it missed.
        settled = utc_now() - timedelta(seconds=self.reconcile_grace)
        found = [s for s in found if s.signed_out_at <= settled]
        if not found:
            return 0
        closed, _ = await self.expire_sessions((s.user_id, s.session_id) for s in found)
        if closed:
            logger.warning(
                "reconcile closed %d signed-out sockets whose callback never arrived", closed
            )
        return closed

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.fanout.sweep_interval)
            # The instance's heartbeat rides on the same cadence (one merge-write per interval).
            self.writer.put(Write(INSTANCES, self.settings.instance_id, {HEARTBEAT_AT: utc_now()}))
            try:
                await self.reconcile_once()
            except Exception as exc:
                logger.warning("reconcile pass failed: %r", exc)

    # --- rooms -------------------------------------------------------------------------------

    def join_room(self, conn: Connection, room: str) -> bool:
        """Add the socket to the room if its token and the limits allow; raise RoomRefused
        otherwise. False when it already was a member."""
        try:
            joined = self.rooms.join(
                conn, room, conn.room_grants, self.settings.sockets.public_room_prefixes
            )
        except rooms.RoomRefused as exc:
            self.room_refusals[exc.code] += 1
            raise
        if joined:
            self.events.room_join(conn, room, len(self.rooms.rooms_of(conn)))
        return joined

    def leave_room(self, conn: Connection, room: str, reason: str = "leave") -> bool:
        """Take the socket out of the room; False when it was not a member."""
        left = self.rooms.leave(conn, room)
        if left:
            self.events.room_leave(conn, room, reason, len(self.rooms.rooms_of(conn)))
        return left

    async def drop_ungranted_rooms(self, conn: Connection) -> list[str]:
        """After a token refresh: leave the rooms the new token no longer grants, telling the
        client with ``left`` and ``reason: "not_allowed"``; return those rooms."""
        dropped = [
            room
            for room in self.rooms.rooms_of(conn)
            if not rooms.allows(room, conn.room_grants, self.settings.sockets.public_room_prefixes)
        ]
        for room in dropped:
            self.leave_room(conn, room, "not_allowed")
            frame = messages.Left("left", room, iso(utc_now()), reason="not_allowed")
            await conn.send_text(messages.encode(frame), self.settings.sockets.send_timeout)
        return dropped

    async def send_room_text(self, room: str, text: str) -> tuple[set[str], int]:
        """Send an encoded frame to the room's member sockets here; return the users reached
        and how many sockets took it."""
        targets = self.rooms.members(room)
        if not targets:
            return set(), 0
        delivered = await self._send_all(targets, text)
        return {c.user_id for c in targets if not c.closed}, delivered

    def room_members(self, room: str) -> list[tuple[str, str]]:
        """The room's member sockets here, as (user_id, session_id)."""
        return sorted((c.user_id, c.session_id) for c in self.rooms.members(room))
