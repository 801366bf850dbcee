"""Sockets the service closes on purpose, each with a last word: a session the sweep expired
(the ``timeout`` message, 4408), a sign-out on demand (``signed_out``, 4410), an ID token
expired past ``TOKEN_GRACE`` (``token_expired``, 4401), and the reconcile poll that closes
signed-out sessions whose callback never arrived.

Each closed socket leaves the registry at once, so a repeated callback, fan-out or poll finds
nothing left to close: every socket gets one last word.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from gateway.instance.analytics import ConnectionEvents
from gateway.instance.registry import Connection, Registry
from gateway.protocol import messages
from gateway.protocol.closes import CloseCode
from gateway.protocol.messages import ErrorMessage, SignedOut, Timeout, iso, utc_now
from gateway.settings import Settings
from gateway.storage.schema import HEARTBEAT_AT, INSTANCES, INTERNAL_URL, PONG_BACKLOG_SECONDS
from gateway.storage.store import Store, Write
from gateway.storage.writer import WriteBehind

logger = logging.getLogger("gateway.instance.endings")

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
#: A write lag (in SWEEP_INTERVALs) past which the sweep may have counted this instance lost.
#: The sweep does once the stored heartbeat is three intervals old, and the last heartbeat that
#: reached Firestore before the lag began may have been up to one interval old already.
LOST_AFTER_INTERVALS = 2


class Endings:
    """The closes the service decides on (``PresenceService.endings``)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: Store,
        writer: WriteBehind,
        events: ConnectionEvents,
        refusals: Counter[str],
        started_at: datetime,
    ) -> None:
        self.registry = registry
        self.store = store
        self.writer = writer
        self.events = events
        #: The service's refusals by reason (``/metrics``), shared.
        self.refusals = refusals
        self.instance_id = settings.instance_id
        self.internal_url = settings.internal_url
        self.send_timeout = settings.sockets.send_timeout
        self.token_grace = settings.auth.token_grace
        self.sweep_interval = settings.fanout.sweep_interval
        self.timeout_text = settings.timeout_text
        self.started_at = started_at
        self.reconcile_grace = RECONCILE_GRACE
        self.timeouts_sent = 0
        #: Called once the write-behind buffer caught up after lagging past
        #: ``LOST_AFTER_INTERVALS`` heartbeats (the service re-asserts its sockets' records and
        #: presence then).
        self.on_recovered: Callable[[], None] | None = None
        self._lagged = False
        #: Monotonic time the write buffer was last seen lagging past ``LOST_AFTER_INTERVALS``:
        #: this instance's heartbeat was (nearly) stale in the registry then, and so, probably,
        #: was every other's (a Firestore stall). gateway.cluster.liveness keeps waiting for the
        #: instances it knew live meanwhile.
        self.lagged_at: float | None = None

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
        timeout = self.send_timeout

        async def one(conn: Connection) -> None:
            await conn.send_text(text, timeout)
            await conn.close(code, reason)
            self.registry.remove(conn)
            self.events.closed_by_service(CLOSED_BY_SERVICE[code], conn, code, reason)

        await asyncio.gather(*(one(c) for c in conns))

    async def token_loop(self) -> None:
        """Close expired tokens' sockets every TOKEN_GRACE / 2 (between 0.25 and 30 s)."""
        every = min(30.0, max(0.25, self.token_grace / 2))
        while True:
            await asyncio.sleep(every)
            try:
                await self.expire_tokens(time.time())
            except Exception:
                logger.exception("token expiry pass failed")

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
        text = messages.encode(Timeout("timeout", self.timeout_text, iso(utc_now())))
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
            self.started_at,
            utc_now() - timedelta(seconds=max(RECONCILE_WINDOW, 3 * self.sweep_interval)),
        )
        found = await self.store.signed_out_sessions(self.instance_id, since)
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

    async def reconcile_loop(self) -> None:
        """Write the instance's heartbeat and watch its write lag every SWEEP_INTERVAL, and
        reconcile as often, one pass at a time. A pass reads Firestore and, while Firestore is
        stalled, waits with it: the heartbeat and the lag watch must not wait behind it, since
        a stall is exactly when the sweep may count this instance lost."""
        reconciling: asyncio.Task[None] | None = None
        try:
            while True:
                await asyncio.sleep(self.sweep_interval)
                # The instance's heartbeat rides on the same cadence (one merge-write per
                # interval), and repeats the internal URL: the registry is the only place the
                # sweep finds it, so a lost start-up registration must not leave this instance
                # unaddressable.
                self.writer.put(
                    Write(
                        INSTANCES,
                        self.instance_id,
                        {
                            HEARTBEAT_AT: utc_now(),
                            INTERNAL_URL: self.internal_url,
                            # The sweep's measure of how far this instance's records lag.
                            PONG_BACKLOG_SECONDS: round(self.writer.backlog_age(), 1),
                        },
                    )
                )
                self._watch_lag()
                if reconciling is None or reconciling.done():
                    reconciling = asyncio.create_task(self._reconcile_pass())
        finally:
            if reconciling is not None:
                reconciling.cancel()

    async def _reconcile_pass(self) -> None:
        try:
            await self.reconcile_once()
        except Exception as exc:
            logger.warning("reconcile pass failed: %r", exc)

    def _watch_lag(self) -> None:
        """A buffer lagging past ``LOST_AFTER_INTERVALS`` heartbeats' time means the heartbeats
        did not reach Firestore either: the sweep may count such an instance lost and end its
        sessions and presence. Once the buffer has caught up, say so (``on_recovered``)."""
        age = self.writer.backlog_age()
        if age > LOST_AFTER_INTERVALS * self.sweep_interval:
            self._lagged = True
            self.lagged_at = time.monotonic()
        elif self._lagged and age < self.sweep_interval:
            self._lagged = False
            if self.on_recovered is not None:
                self.on_recovered()
