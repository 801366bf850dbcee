"""The gateway's state and behaviour, independent of HTTP routing.

Holds the registry of sockets and the write-behind buffer, runs the ping loop, and implements
send, broadcast and the message hook. The Litestar layer (``gateway.app``) and the socket edge
(``gateway.sockets``) only translate to and from this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple, TypeVar

from gateway import messages
from gateway.auth import CLOSE_UNAUTHENTICATED, Identity, TokenVerifier, authorize
from gateway.exceptions import (
    AuthError,
    DeploymentUnavailable,
    PeerError,
    UserNotConnectedError,
)
from gateway.limits import CLOSE_RATE_LIMITED, ConnectLimiter
from gateway.messages import ErrorMessage, Timeout, iso, utc_now
from gateway.peers import Instance, Peers, gather_peers
from gateway.registry import Connection, Registry
from gateway.settings import Settings
from gateway.store import (
    ACTIVE_SESSIONS,
    INSTANCES,
    Store,
    Write,
    connect_writes,
    disconnect_writes,
    instance_write,
    is_live,
    pong_write,
)
from gateway.writer import WriteBehind

logger = logging.getLogger("gateway")
T = TypeVar("T")

#: Application hook for client ``message`` frames: (user_id, session_id, data) -> None.
MessageHandler = Callable[[str, str, Any], Awaitable[None]]

SEND_CHUNK = 256
CLOSE_SESSION_EXPIRED = 4408
#: How far back the reconciler looks for sign-outs it may have missed a callback for. A large
#: sweep commits sign-outs minutes after its own start time, which is what signed_out_at holds.
RECONCILE_WINDOW = 600.0
MEMBER_READ_TIMEOUT = 2.0
INSTANCE_CACHE_SECONDS = 1.0


class Delivery(NamedTuple):
    """What a send or broadcast reached."""

    connections: int
    #: Distinct users reached.
    recipients: int
    #: Instances that delivered (this one first when it took part).
    instances: list[str]
    #: Live instances that did not answer: their sockets may have missed the message.
    unreachable: list[str]
    #: "deployment": every live instance was asked; "instance": this one only.
    scope: Literal["deployment", "instance"]


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
        peers: Peers | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        #: None when AUTH_MODE=off (emulators only).
        self.verifier = verifier
        #: None when no internal credential is set: send and broadcast stay on this instance.
        self.peers = peers
        self.registry = Registry()
        self.writer = WriteBehind(
            store,
            flush_interval=settings.flush_interval,
            batch_size=settings.batch_size,
            concurrency=settings.flush_concurrency,
            max_docs=settings.buffer_max_docs,
        )
        self.message_handler = message_handler
        self.connect_limiter = ConnectLimiter(settings.max_connects_per_minute)
        self.pings_sent = 0
        self.timeouts_sent = 0
        self.callbacks_received = 0
        #: Sockets refused or closed by policy, by reason (close reason text).
        self.refusals: Counter[str] = Counter()
        #: user id -> monotonic time of the last pong written (PONG_WRITE_INTERVAL > 0 only).
        self._pong_written: dict[str, float] = {}
        #: Pongs not written because of PONG_WRITE_INTERVAL.
        self.pongs_unwritten = 0
        #: Calls to other instances by (call, "ok" | "failed").
        self.peer_calls: Counter[tuple[str, str]] = Counter()
        self._started_at = utc_now()
        #: instance id -> (monotonic time read, gateway_instances document or {}).
        self._instances_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.writer.start()
        # Registering the instance is best effort: the gateway serves sockets without it.
        self.writer.put(
            instance_write(self.settings.instance_id, self.settings.internal_url, utc_now())
        )
        self._tasks = [
            asyncio.create_task(self._ping_loop(), name="ping-loop"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile-loop"),
        ]
        if self.verifier is not None:
            self._tasks.append(asyncio.create_task(self._token_loop(), name="token-expiry"))
        else:
            logger.warning("AUTH_MODE=off: sockets are accepted without ID tokens")
        logger.info(
            "gateway instance %s started (ping every %gs, pong timeout %gs)",
            self.settings.instance_id,
            self.settings.ping_interval,
            self.settings.pong_timeout,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # uvicorn has already closed every socket with 1012 (service restart), so clients
        # reconnect elsewhere and their disconnects are in the buffer: mark the instance
        # stopped and flush everything before the process ends.
        self.writer.put(Write(INSTANCES, self.settings.instance_id, {"stopped_at": utc_now()}))
        await self.writer.close()
        await self.store.close()
        if self.peers is not None:
            await self.peers.close()
        logger.info("gateway instance %s stopped", self.settings.instance_id)

    # --- admission -----------------------------------------------------------------------

    async def admit(self, user_id: str, token: str | None) -> Identity | None:
        """Check a socket's token before it is accepted; raise AuthError to refuse it.

        Returns None when auth is off."""
        if self.verifier is None:
            return None
        if token is None:
            raise AuthError(CLOSE_UNAUTHENTICATED, "missing token")
        identity = await self.verifier.verify(token)
        try:
            member = await self.store.get_member(user_id, timeout=MEMBER_READ_TIMEOUT)
        except Exception as exc:
            # Fail open on the revocation check only: the token itself was verified.
            logger.warning("member read failed, admitting on the token alone: %r", exc)
            member = None
        authorize(identity, user_id, member)
        return identity

    def check_socket_limits(self, user_id: str) -> None:
        """Raise AuthError(4429) when the user already holds the most sockets allowed here."""
        limit = self.settings.max_sockets_per_user
        if limit and self.registry.count_of(user_id) >= limit:
            raise AuthError(CLOSE_RATE_LIMITED, "too many sockets for this user")

    async def refresh_token(self, conn: Connection, token: str) -> Identity:
        """A fresh token for an open socket (``{"type": "auth"}``); raise AuthError if bad."""
        if self.verifier is None:
            raise AuthError(CLOSE_UNAUTHENTICATED, "authentication is off")
        identity = await self.verifier.verify(token)
        authorize(identity, conn.user_id, None)
        conn.token_expires_at = identity.expires_at
        return identity

    async def expire_tokens(self, now: float) -> int:
        """Close sockets whose token expired more than TOKEN_GRACE ago; return how many."""
        limit = now - self.settings.token_grace
        stale = [c for c in self.registry if c.token_expires_at and c.token_expires_at < limit]
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
        await self._last_word(stale, text, CLOSE_UNAUTHENTICATED, "token expired")
        return len(stale)

    async def _last_word(self, conns: list[Connection], text: str, code: int, reason: str) -> None:
        """Send each socket a final frame, close it, and drop it from the registry at once, so
        a second pass (a repeated callback, a reconcile) finds nothing left to close."""
        timeout = self.settings.send_timeout

        async def one(conn: Connection) -> None:
            await conn.send_text(text, timeout)
            await conn.close(code, reason)
            self.registry.remove(conn)
            logger.info("%s user=%s session=%s", reason, conn.user_id, conn.session_id)

        await asyncio.gather(*(one(c) for c in conns))

    async def _token_loop(self) -> None:
        every = min(30.0, max(0.25, self.settings.token_grace / 2))
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
        logger.info(
            "connect user=%s session=%s sockets_for_user=%d total=%d",
            conn.user_id,
            conn.session_id,
            held,
            self.registry.total_connections,
        )

    def disconnected(self, conn: Connection, code: int | None) -> None:
        conn.closed = True
        left = self.registry.remove(conn)
        if not left:
            self._pong_written.pop(conn.user_id, None)
        for write in disconnect_writes(conn.user_id, conn.session_id, code, utc_now()):
            self.writer.put(write)
        logger.info(
            "disconnect user=%s session=%s code=%s sockets_for_user=%d total=%d",
            conn.user_id,
            conn.session_id,
            code,
            left,
            self.registry.total_connections,
        )

    def pong(self, conn: Connection, now: datetime) -> None:
        every = self.settings.pong_write_interval
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

    # --- deployment-wide view ----------------------------------------------------------------

    def _live_cutoff(self) -> datetime:
        """Instances beat every SWEEP_INTERVAL; three missed beats and an instance is dead."""
        return utc_now() - timedelta(seconds=3 * self.settings.sweep_interval)

    async def live_peers(self) -> list[Instance]:
        """Every other live instance (heartbeat recent, not stopped). Raises when Firestore
        cannot answer."""
        cutoff = self._live_cutoff()
        docs = await self.store.recent_instances(cutoff, timeout=MEMBER_READ_TIMEOUT)
        return [
            Instance(instance_id, str(doc["internal_url"]))
            for instance_id, doc in sorted(docs.items())
            if instance_id != self.settings.instance_id
            and is_live(doc, cutoff)
            and isinstance(doc.get("internal_url"), str)
        ]

    async def _instance_docs(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Registry entries by id, cached for INSTANCE_CACHE_SECONDS: a forwarded send then
        costs one Firestore read (the member), not two. Liveness is judged over three
        SWEEP_INTERVALs, so a second's staleness changes nothing."""
        now = time.monotonic()
        missing = [
            i
            for i in ids
            if now - self._instances_cache.get(i, (-1e9, {}))[0] > INSTANCE_CACHE_SECONDS
        ]
        if missing:
            found = await self.store.get_instances(missing, timeout=MEMBER_READ_TIMEOUT)
            # Instances come and go with every rollout: forget entries too old to be used.
            self._instances_cache = {
                i: entry
                for i, entry in self._instances_cache.items()
                if now - entry[0] <= INSTANCE_CACHE_SECONDS
            }
            for instance_id in missing:
                self._instances_cache[instance_id] = (now, found.get(instance_id, {}))
        return {i: self._instances_cache[i][1] for i in ids}

    async def _user_peers(self, user_id: str) -> dict[str, tuple[int, Instance]]:
        """Other live instances holding the user's sockets, with how many each holds, from
        the member's ``active_sessions``. Sessions of a killed instance stop counting once its
        heartbeat is stale. Raises when Firestore cannot answer."""
        me = self.settings.instance_id
        member = await self.store.get_member(user_id, timeout=MEMBER_READ_TIMEOUT) or {}
        elsewhere: dict[str, int] = {}
        recorded = member.get(ACTIVE_SESSIONS)
        for where in (recorded or {}).values() if isinstance(recorded, dict) else ():
            instance = where.get("instance_id") if isinstance(where, dict) else None
            if isinstance(instance, str) and instance != me:
                elsewhere[instance] = elsewhere.get(instance, 0) + 1
        if not elsewhere:
            return {}
        docs = await self._instance_docs(list(elsewhere))
        cutoff = self._live_cutoff()
        found: dict[str, tuple[int, Instance]] = {}
        for instance, count in elsewhere.items():
            doc = docs.get(instance, {})
            url = doc.get("internal_url")
            if is_live(doc, cutoff) and isinstance(url, str):
                found[instance] = (count, Instance(instance, url))
        return found

    async def deployment_sockets(self, user_id: str) -> dict[str, int]:
        """The user's sockets by instance across the deployment: this instance's from the
        registry, the others' from Firestore. Raises when Firestore cannot answer."""
        counts = {i: count for i, (count, _) in (await self._user_peers(user_id)).items()}
        local = self.registry.count_of(user_id)
        if local:
            counts[self.settings.instance_id] = local
        return counts

    # --- outbound ----------------------------------------------------------------------------

    async def send_local(self, user_id: str, payload: dict[str, Any]) -> int:
        """Send to the user's sockets on this instance only; return how many took it."""
        sockets = self.registry.sockets_of(user_id)
        return await self._send_all(sockets, messages.encode(payload)) if sockets else 0

    async def send_to_user(self, user_id: str, payload: dict[str, Any]) -> Delivery:
        """Send a JSON object to every socket of the user, on whichever instances hold them.

        Raises UserNotConnectedError when no live instance holds one, DeploymentUnavailable
        when the instances that do (or Firestore, with no socket here) cannot be reached."""
        me = self.settings.instance_id
        text = messages.encode(payload)
        local = self.registry.sockets_of(user_id)
        delivered = await self._send_all(local, text) if local else 0
        here = [me] if local else []
        if self.peers is None:
            if not local:
                raise UserNotConnectedError(user_id)
            return Delivery(delivered, 1, here, [], "instance")
        peers = self.peers
        try:
            remote = await self._user_peers(user_id)
        except Exception as exc:
            if not local:
                raise DeploymentUnavailable(
                    f"cannot tell where user {user_id!r} is connected: {exc!r}"
                ) from exc
            logger.warning("send: Firestore unavailable, delivered on this instance: %r", exc)
            return Delivery(delivered, 1, here, [], "instance")
        body = text.encode()
        answers, failures = await self._ask_peers(
            "send", [peer for _, peer in remote.values()], lambda p: peers.send(p, user_id, body)
        )
        delivered += sum(answers.values())
        if not delivered and not local:
            if failures:
                raise DeploymentUnavailable(
                    f"the instances holding user {user_id!r}'s sockets did not answer: "
                    + ", ".join(sorted(failures))
                )
            raise UserNotConnectedError(user_id)
        reached = here + sorted(i for i, n in answers.items() if n)
        return Delivery(delivered, 1 if delivered else 0, reached, sorted(failures), "deployment")

    async def broadcast_local(
        self, payload: dict[str, Any], exclude_user: str | None = None
    ) -> tuple[set[str], int]:
        """Send to every socket here except ``exclude_user``'s; return (users, sockets)."""
        return await self._broadcast_text(messages.encode(payload), exclude_user)

    async def _broadcast_text(self, text: str, exclude_user: str | None) -> tuple[set[str], int]:
        targets = [c for c in self.registry if c.user_id != exclude_user]
        delivered = await self._send_all(targets, text)
        return {c.user_id for c in targets if not c.closed}, delivered

    async def broadcast(self, payload: dict[str, Any], exclude_user: str | None = None) -> Delivery:
        """Send to every socket of the deployment except ``exclude_user``'s; users with
        sockets on several instances count once in ``recipients``."""
        me = self.settings.instance_id
        text = messages.encode(payload)
        reachable = await self._reachable_peers("broadcast")
        if reachable is None:
            users, delivered = await self._broadcast_text(text, exclude_user)
            return Delivery(delivered, len(users), [me], [], "instance")
        client, peers = reachable
        body = text.encode()
        (users, delivered), (answers, failures) = await asyncio.gather(
            self._broadcast_text(text, exclude_user),
            self._ask_peers("broadcast", peers, lambda p: client.broadcast(p, body, exclude_user)),
        )
        for sockets, remote_users in answers.values():
            delivered += sockets
            users.update(remote_users)
        users.discard(exclude_user or "")
        reached = [me, *sorted(answers)]
        return Delivery(delivered, len(users), reached, sorted(failures), "deployment")

    async def peer_stats(self) -> tuple[dict[str, dict[str, Any]], list[str]] | None:
        """Every other live instance's ``/internal/stats`` answer and the instances that did
        not answer; None when the other instances cannot be asked."""
        reachable = await self._reachable_peers("stats")
        if reachable is None:
            return None
        client, peers = reachable
        answers, failures = await self._ask_peers("stats", peers, client.stats)
        return answers, sorted(failures)

    async def _reachable_peers(self, call: str) -> tuple[Peers, list[Instance]] | None:
        """The client and the other live instances, or None when they cannot be asked (no
        internal credential, or Firestore cannot list them): then only this instance acts."""
        if self.peers is None:
            return None
        try:
            return self.peers, await self.live_peers()
        except Exception as exc:
            logger.warning("%s: Firestore unavailable, this instance only: %r", call, exc)
            return None

    async def _ask_peers(
        self, call: str, peers: list[Instance], ask: Callable[[Instance], Awaitable[T]]
    ) -> tuple[dict[str, T], dict[str, PeerError]]:
        """Ask every peer at once; count and log the outcomes. A peer registered under this
        instance's own internal URL (instances that cannot be addressed one by one, such as
        Cloud Run's, all register the default) is not called: the call would come back here."""
        mine = self.settings.internal_url
        answers, failures = await gather_peers([p for p in peers if p.internal_url != mine], ask)
        for peer in peers:
            if peer.internal_url == mine:
                failures[peer.instance_id] = PeerError(
                    peer.instance_id,
                    f"registered this instance's own internal URL {mine}; "
                    "GATEWAY_INTERNAL_URL must address each instance",
                )
        self.peer_calls[(call, "ok")] += len(answers)
        self.peer_calls[(call, "failed")] += len(failures)
        for failure in failures.values():
            logger.warning("%s: %s", call, failure)
        return answers, failures

    async def _send_all(self, conns: Iterable[Connection], text: str) -> int:
        timeout = self.settings.send_timeout
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
        await self._last_word(targets, text, CLOSE_SESSION_EXPIRED, "session expired")
        self.timeouts_sent += len(targets)
        return len(targets), not_found

    async def reconcile_once(self) -> int:
        """Close sockets whose sessions a sweep signed out, for when its callback was lost."""
        since = max(
            self._started_at,
            utc_now() - timedelta(seconds=max(RECONCILE_WINDOW, 3 * self.settings.sweep_interval)),
        )
        found = await self.store.signed_out_sessions(self.settings.instance_id, since)
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
            await asyncio.sleep(self.settings.sweep_interval)
            # The instance's heartbeat rides on the same cadence (one merge-write per interval).
            self.writer.put(
                Write(INSTANCES, self.settings.instance_id, {"heartbeat_at": utc_now()})
            )
            try:
                await self.reconcile_once()
            except Exception as exc:
                logger.warning("reconcile pass failed: %r", exc)

    async def _ping_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.ping_interval
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            started = loop.time()
            try:
                await self.ping_round()
            except Exception:
                logger.exception("ping round failed")
            took = loop.time() - started
            next_at += interval
            if next_at < loop.time():
                # Behind schedule: start the next round now rather than bursting to catch up.
                if took > interval:
                    logger.warning(
                        "ping round took %.2fs, longer than PING_INTERVAL=%gs", took, interval
                    )
                next_at = loop.time()

    async def ping_round(self) -> int:
        """Send one ping to every socket; return how many took it."""
        if not self.registry.total_connections:
            return 0
        text = messages.encode_ping(utc_now())
        sent = 0
        for index, conn in enumerate(list(self.registry), 1):
            sent += await conn.push(text)
            if index % SEND_CHUNK == 0:
                # wsproto sends complete without suspending: yield so pongs keep flowing.
                await asyncio.sleep(0)
        self.pings_sent += sent
        return sent
