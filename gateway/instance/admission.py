"""Admission: whether a socket may be accepted, and whether an open one's fresh token is taken.

A connect passes the connect limiter (per address, before any Auth or Firestore call), its ID
token's check and the revocation check against the user's member record (gateway.instance.auth),
and the per-user socket limit. The member reads of connects waiting at once are coalesced into
one batched read (gateway.storage.batching), and a read that fails admits on the token alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from gateway.component_settings import SocketSettings
from gateway.exceptions import AuthError
from gateway.instance.auth import Identity, TokenVerifier, authorize
from gateway.instance.registry import Connection, Registry
from gateway.protocol.closes import CloseCode
from gateway.protocol.limits import ConnectLimiter
from gateway.storage.batching import BatchReader
from gateway.storage.store import READ_TIMEOUT, Store, other_instances

logger = logging.getLogger("gateway")

#: Member records read in one batch at admission (gateway.storage.batching), and batches out at
#: once: under a storm the next batch takes every connect that queued meanwhile.
MEMBER_READ_BATCH = 100
MEMBER_READS_IN_FLIGHT = 4
#: The longest a connect waits for its member record, its turn in a batch included. Each read
#: itself gives up after READ_TIMEOUT (Firestore down: fail open at once); this bounds the queue.
#: Not READ_TIMEOUT as well: in a storm the gateway's own backlog made most connects miss 2 s
#: and skip the revocation check although Firestore answered
#: (docs/benchmarks.md#reconnect-storm).
ADMISSION_READ_WAIT = 10.0


class Admission:
    """The checks a socket passes before it is accepted, and a token refresh's checks."""

    def __init__(
        self,
        sockets: SocketSettings,
        registry: Registry,
        store: Store,
        verifier: TokenVerifier | None,
        instance_id: str = "",
    ) -> None:
        self._me = instance_id
        #: Set by the deployment when it has a broker: told the user of every connect whose
        #: member record shows sockets on other instances, so that those instances stop
        #: answering sends from what they last read (gateway.cluster.directory). Connects then
        #: read their member record also without tokens (AUTH_MODE=off).
        self.announce: Callable[[str], None] | None = None
        self._max_sockets_per_user = sockets.max_sockets_per_user
        self._registry = registry
        #: None when AUTH_MODE=off (emulators only).
        self._verifier = verifier
        self.connect_limiter = ConnectLimiter(sockets.max_connects_per_minute)
        #: The revocation check's member reads, coalesced across connects waiting at once.
        self.member_reads: BatchReader[dict[str, Any]] = BatchReader(
            lambda user_ids: store.get_members(user_ids, READ_TIMEOUT),
            max_batch=MEMBER_READ_BATCH,
            max_in_flight=MEMBER_READS_IN_FLIGHT,
        )
        #: Connects admitted without the revocation check (their member read failed).
        self.member_reads_failed = 0

    async def admit(self, user_id: str, token: str | None) -> Identity | None:
        """Check a socket's token before it is accepted; raise AuthError to refuse it.

        Returns None when auth is off."""
        if self._verifier is None:
            if self.announce is not None:
                self._announce_if_elsewhere(user_id, await self._member_for_revocation(user_id))
            return None
        if token is None:
            raise AuthError(CloseCode.UNAUTHENTICATED, "missing token")
        identity = await self._verifier.verify(token)
        member = await self._member_for_revocation(user_id)
        authorize(identity, user_id, member)
        self._announce_if_elsewhere(user_id, member)
        return identity

    def _announce_if_elsewhere(self, user_id: str, member: Mapping[str, Any] | None) -> None:
        if self.announce is not None and other_instances(member, self._me):
            self.announce(user_id)

    def check_socket_limits(self, user_id: str) -> None:
        """Raise AuthError(4429) when the user already holds the most sockets allowed here."""
        limit = self._max_sockets_per_user
        if limit and self._registry.count_of(user_id) >= limit:
            raise AuthError(CloseCode.RATE_LIMITED, "too many sockets for this user")

    async def refresh_token(self, conn: Connection, token: str) -> Identity:
        """A fresh token for an open socket (``{"type": "auth"}``); raise AuthError if bad."""
        if self._verifier is None:
            raise AuthError(CloseCode.UNAUTHENTICATED, "authentication is off")
        identity = await self._verifier.verify(token)
        # A token issued before the user's last sign-out is revoked here as at connect: else
        # an old token, with the wider room grants it may carry, comes back through a socket
        # opened with a new one.
        authorize(identity, conn.user_id, await self._member_for_revocation(conn.user_id))
        conn.room_grants = identity.rooms
        conn.publish_grants = identity.publish
        return identity

    async def _member_for_revocation(self, user_id: str) -> Mapping[str, Any] | None:
        """The member record whose ``last_sign_out_at`` a token must postdate: every token
        the gateway accepts, at connect or in an ``auth`` frame, is checked against it."""
        try:
            async with asyncio.timeout(ADMISSION_READ_WAIT):
                return await self.member_reads.get(user_id)
        except Exception as exc:
            # Fail open on the revocation check only: the token itself was verified.
            self.member_reads_failed += 1
            logger.warning("member read failed, accepting the token alone: %r", exc)
            return None
