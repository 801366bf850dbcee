"""Sign a user out now, everywhere: ``POST /ws/signout/{user_id}``.

What the sweep does for an expired user, on demand: revoke the Firebase refresh tokens, record
the sign-out in Firestore (the same fields the sweep writes, so the gateway refuses tokens
issued before it), then close every socket of the user on every instance with the
``signed_out`` message and 4410. The order matters: the record is written before the sockets
close, so a client that reconnects at once is refused (4401) instead of slipping back in.
Calling it again revokes and records again, and finds no session or socket left to sign
out (``sessions_signed_out`` and ``connections_closed`` 0): it is idempotent.
"""

from __future__ import annotations

import logging

from gateway.cluster.deployment import Deployment
from gateway.exceptions import DeploymentUnavailable
from gateway.instance.auth import TokenVerifier
from gateway.protocol.messages import SignOutResponse, utc_now
from gateway.storage.schema import ACTIVE_SESSIONS, IS_SIGNED_IN
from gateway.storage.store import READ_TIMEOUT, Store, sign_out_writes

logger = logging.getLogger("gateway.cluster.signout")


async def sign_out(
    deployment: Deployment, store: Store, verifier: TokenVerifier | None, user_id: str
) -> SignOutResponse:
    """Revoke, record, close; raise DeploymentUnavailable (503) when Firebase Auth or
    Firestore cannot be reached (then no socket was closed)."""
    try:
        revoked = await verifier.revoke(user_id) if verifier is not None else False
    except Exception as exc:
        raise DeploymentUnavailable(
            f"Firebase Auth could not revoke {user_id!r}'s tokens: {exc!r}; nothing was signed out"
        ) from exc
    now = utc_now()
    try:
        member = await store.get_member(user_id, timeout=READ_TIMEOUT) or {}
        recorded = member.get(ACTIVE_SESSIONS)
        # A member already signed out (and not connected since: a connect sets is_signed_in)
        # has no session left to sign out; the ones still listed are closing or signed out.
        signed_in = member.get(IS_SIGNED_IN) is not False
        sessions = sorted(recorded) if isinstance(recorded, dict) and signed_in else []
        await store.commit(sign_out_writes(user_id, sessions, now))
    except Exception as exc:
        raise DeploymentUnavailable(
            f"Firestore could not record {user_id!r}'s sign-out: {exc!r}; "
            f"tokens revoked: {revoked}, no socket closed"
        ) from exc
    closed = await deployment.close_user(user_id)
    logger.info(
        "signed out user=%s revoked=%s sessions=%d sockets=%d",
        user_id,
        revoked,
        len(sessions),
        closed.connections,
    )
    return SignOutResponse(
        "success",
        "User signed out",
        user_id,
        revoked,
        len(sessions),
        closed.connections,
        closed.scope,
        closed.instances,
        closed.unreachable,
    )
