"""Who may open a socket: Firebase ID tokens, checked against the member record.

A socket presents an ID token in the ``token`` query parameter (browsers cannot set headers on
a WebSocket) or as ``Authorization: Bearer``. The token is verified with firebase-admin (the
Auth emulator's unsigned tokens when ``FIREBASE_AUTH_EMULATOR_HOST`` is set); its uid must be
the ``{user_id}`` of the path.

Revocation is checked against ``members/{uid}.last_sign_out_at``, which the sweep writes in
the same transaction that signs the user out: a token whose ``auth_time`` (the sign-in it
descends from) is older than the last sign-out is refused. That is one Firestore read per
connect instead of one Firebase Auth ``get_user`` call (``check_revoked=True``): the same
latency on the emulators (docs/protocol.md), but made with the async client the gateway already
holds, and drawing on no Auth Admin API quota when many clients reconnect at once (a Cloud Run
rollout). Connects waiting at once share one batched read (``Admission.member_reads``) and
one trip to the verification thread (``FirebaseVerifier``). If Firestore cannot answer within
``READ_TIMEOUT`` (2 s) the connect is allowed on the token alone (logged): the gateway keeps
serving while Firestore is down, as it does for pongs.

Close codes: 4401 missing, malformed, forged, expired, foreign-project or revoked token;
4403 a valid token for another user.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.exceptions import AuthError
from gateway.protocol.closes import CloseCode
from gateway.protocol.presence import NAME_CLAIM, PUBLISH_CLAIM
from gateway.protocol.rooms import grants_from_claims, refused_grants
from gateway.storage.batching import BatchReader
from gateway.storage.schema import LAST_SIGN_OUT_AT

logger = logging.getLogger("gateway.instance.auth")

MAX_TOKEN_LENGTH = 8192
CLOCK_SKEW = 5
#: Tokens verified per trip to a worker thread, and trips out at once (gateway.storage.batching):
#: in a reconnect storm one thread hop per connect, each contending for the GIL with the event loop,
#: was the admission path's largest cost (docs/benchmarks.md). Two trips at once keep a slow
#: certificate fetch in one from holding up every connect.
VERIFY_BATCH = 100
VERIFIES_IN_FLIGHT = 2
#: Distinct refused room grants logged (then no more): a backend's mistake is usually in every
#: user's claim, so it is worth one line, not one per connect, and claims cannot grow the set.
MAX_REPORTED_GRANTS = 100
_reported_grants: set[str] = set()


@dataclass(frozen=True, slots=True)
class Identity:
    uid: str
    auth_time: datetime
    expires_at: float  # epoch seconds
    #: The ``rooms`` custom claim: rooms (or ``prefix:*``) this token may join.
    rooms: tuple[str, ...] = ()
    #: The ``rooms_publish`` custom claim: rooms this token may ``publish`` to.
    publish: tuple[str, ...] = ()
    #: The ``name`` claim (the account's display name), "" without one.
    name: str = ""


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Identity:
        """Verify an ID token; raise AuthError(4401) when it is not acceptable."""

    async def revoke(self, uid: str) -> bool:
        """Revoke the user's refresh tokens; False when Firebase Auth has no such user."""


def token_from(query_string: bytes, headers: Mapping[bytes, bytes]) -> str | None:
    """The token of a handshake: ``?token=`` first, else ``Authorization: Bearer``."""
    from urllib.parse import parse_qs

    values = parse_qs(query_string.decode("latin-1")).get("token")
    if values:
        return values[0]
    header = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def identity_from(claims: Mapping[str, Any]) -> Identity:
    """The identity in a verified token's claims; AuthError(4401) when they lack a part."""
    try:
        expires_at = float(claims["exp"])
        # Both times must be dates the socket's session can compute with: an exp of 2^64 in
        # an emulator token (whose claims nothing signs) once failed the socket with 1011.
        datetime.fromtimestamp(expires_at, UTC)
        identity = Identity(
            uid=str(claims["uid"]),
            auth_time=datetime.fromtimestamp(int(claims["auth_time"]), UTC),
            expires_at=expires_at,
            rooms=grants_from_claims(claims),
            publish=grants_from_claims(claims, PUBLISH_CLAIM),
            name=name if isinstance(name := claims.get(NAME_CLAIM), str) else "",
        )
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        raise AuthError(CloseCode.UNAUTHENTICATED, "invalid token") from None
    _report_refused_grants(identity.rooms)
    return identity


def _report_refused_grants(grants: tuple[str, ...]) -> None:
    """Log, once per distinct grant, the ``*`` grants that grant nothing
    (gateway.protocol.rooms)."""
    for grant in refused_grants(grants):
        if grant in _reported_grants or len(_reported_grants) >= MAX_REPORTED_GRANTS:
            continue
        _reported_grants.add(grant)
        logger.warning(
            "rooms claim grant %.140r grants nothing: a prefix grant ends with ':*' "
            "(doc:7f:* covers doc:7f and doc:7f:...), and a bare '*' is refused "
            "(logged once per distinct grant)",
            grant,
        )


def authorize(identity: Identity, user_id: str, member: Mapping[str, Any] | None) -> None:
    """The decision after a token verified: right user, and not signed out since."""
    if identity.uid != user_id:
        raise AuthError(CloseCode.FORBIDDEN, "token is for another user")
    signed_out = (member or {}).get(LAST_SIGN_OUT_AT)
    if isinstance(signed_out, datetime) and identity.auth_time < signed_out:
        raise AuthError(CloseCode.UNAUTHENTICATED, "token revoked: signed out since")


class FirebaseVerifier:
    """firebase-admin's verify_id_token, off the event loop (it may fetch Google's certs); the
    tokens of connects waiting at once go to the worker thread together."""

    def __init__(self, project_id: str) -> None:
        import firebase_admin

        name = f"gateway-{project_id}"
        try:
            self._app = firebase_admin.get_app(name)
        except ValueError:
            self._app = firebase_admin.initialize_app(options={"projectId": project_id}, name=name)
        self._batches: BatchReader[Identity | AuthError] = BatchReader(
            self._verify_batch, max_batch=VERIFY_BATCH, max_in_flight=VERIFIES_IN_FLIGHT
        )

    async def verify(self, token: str) -> Identity:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(CloseCode.UNAUTHENTICATED, "invalid token")
        identity = await self._batches.get(token)
        if identity is None:  # pragma: no cover - every token of a batch gets an outcome
            raise AuthError(CloseCode.UNAUTHENTICATED, "invalid token")
        if isinstance(identity, AuthError):
            # A fresh error per caller: the same token may have been presented twice.
            raise AuthError(identity.close_code, identity.reason)
        # firebase-admin skips the expiry check for the Auth emulator's unsigned tokens; check
        # it here for every token (a no-op in production, where the library already has).
        if identity.expires_at + CLOCK_SKEW < time.time():
            raise AuthError(CloseCode.UNAUTHENTICATED, "token expired")
        return identity

    async def revoke(self, uid: str) -> bool:
        """Revoke the user's refresh tokens in Firebase Auth; False when there is no such
        user. Other failures raise (the caller answers 503: nothing was signed out)."""
        from firebase_admin import auth

        try:
            await asyncio.to_thread(auth.revoke_refresh_tokens, uid, app=self._app)
        except auth.UserNotFoundError:
            return False
        return True

    async def admin_uid(self, token: str) -> str | None:
        """The uid of an ID token whose claims carry ``admin: true`` (the console's sign-in),
        verified with Firebase Auth's revocation check: a get_user call per token, which the
        console's few requests afford and a socket's connect would not. None for any other
        token, or when Firebase Auth cannot say."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        return await asyncio.to_thread(self._admin_uid, token)

    def _admin_uid(self, token: str) -> str | None:
        from firebase_admin import auth

        try:
            claims = auth.verify_id_token(
                token, app=self._app, check_revoked=True, clock_skew_seconds=CLOCK_SKEW
            )
        except (
            auth.InvalidIdTokenError,
            auth.UserDisabledError,
            auth.UserNotFoundError,
            ValueError,
        ):
            return None  # forged, expired, revoked, disabled or of no account
        except Exception as exc:
            logger.warning("admin token not checked: Firebase Auth did not answer: %r", exc)
            return None
        # The emulator's unsigned tokens skip the library's expiry check: checked here too.
        if claims.get("admin") is not True or float(claims["exp"]) + CLOCK_SKEW < time.time():
            return None
        return str(claims["uid"])

    async def _verify_batch(self, tokens: list[str]) -> dict[str, Identity | AuthError]:
        return await asyncio.to_thread(self._verify_many, tokens)

    def _verify_many(self, tokens: list[str]) -> dict[str, Identity | AuthError]:
        """Each token's identity, or the AuthError refusing it (in the worker thread)."""
        outcomes: dict[str, Identity | AuthError] = {}
        for token in tokens:
            try:
                outcomes[token] = identity_from(self._verify(token))
            except AuthError as exc:
                outcomes[token] = exc
            except Exception:
                # Contained to this token: the others in the batch are not refused for it.
                logger.exception("token verification failed unexpectedly")
                outcomes[token] = AuthError(CloseCode.UNAUTHENTICATED, "token check unavailable")
        return outcomes

    def _verify(self, token: str) -> dict[str, Any]:
        from firebase_admin import auth

        try:
            claims: dict[str, Any] = auth.verify_id_token(
                token, app=self._app, check_revoked=False, clock_skew_seconds=CLOCK_SKEW
            )
        except auth.ExpiredIdTokenError:
            raise AuthError(CloseCode.UNAUTHENTICATED, "token expired") from None
        except auth.CertificateFetchError as exc:
            logger.error("cannot fetch Firebase token certificates: %s", exc)
            raise AuthError(CloseCode.UNAUTHENTICATED, "token check unavailable") from None
        except (auth.InvalidIdTokenError, ValueError):
            raise AuthError(CloseCode.UNAUTHENTICATED, "invalid token") from None
        return claims
