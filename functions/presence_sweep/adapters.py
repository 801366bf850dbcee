"""The sweep's I/O: Firestore (members, sessions), Firebase Auth, the gateway callback.

Clients are passed in or built on first use, never at import time.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from presence_sweep import shards
from presence_sweep.core import EventPublisher, Notifier, SweepReport, sweep
from presence_sweep.decision import ClaimDecision, InstanceEntry, SessionRef, decide_claim
from presence_sweep.exceptions import AuthRevokeError, CallbackError
from presence_sweep.reaper_adapters import FirestoreLostInstances
from presence_sweep.schema import (
    ACTIVE_SESSIONS,
    HEARTBEAT_AT,
    INSTANCE_ID,
    INSTANCES,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_SIGN_OUT_AT,
    MEMBERS,
    PONG_BACKLOG_SECONDS,
    SESSIONS,
    SIGN_OUT_CLAIM,
    SIGN_OUT_CLAIMED_AT,
    SIGNED_OUT_AT,
    STOPPED_AT,
    UPDATED_AT,
)
from presence_sweep.settings import SweepSettings

logger = logging.getLogger("presence_sweep")

CALLBACK_PATH = "/internal/timeout"
CALLBACK_CHUNK = 1000


class FirestoreMembers:
    """members/sessions access for the sweep, with the re-checks inside transactions."""

    def __init__(self, client: Any) -> None:
        self._db = client

    def expired_page(
        self, cutoff: datetime, limit: int, after: shards.ShardCursor | None
    ) -> tuple[list[str], shards.ShardCursor | None]:
        # One query per shard, over the index (shard, is_signed_in, last_pong_at).
        return shards.expired_page(self._db, cutoff, limit, after)

    def claim(
        self,
        user_ids: Sequence[str],
        sweep_id: str,
        cutoff: datetime,
        now: datetime,
        claim_ttl: float,
        allowances: Mapping[str, float] | None = None,
    ) -> dict[str, ClaimDecision]:
        from google.cloud import firestore

        refs = [self._db.collection(MEMBERS).document(u) for u in user_ids]

        @firestore.transactional
        def run(transaction: Any) -> dict[str, ClaimDecision]:
            decisions: dict[str, ClaimDecision] = {}
            for snapshot in transaction.get_all(refs):
                decision = decide_claim(
                    snapshot.to_dict() if snapshot.exists else None,
                    cutoff,
                    now,
                    claim_ttl,
                    allowances,
                )
                decisions[snapshot.id] = decision
                if decision.claim:
                    transaction.update(
                        snapshot.reference, {SIGN_OUT_CLAIM: sweep_id, SIGN_OUT_CLAIMED_AT: now}
                    )
            return decisions

        result: dict[str, ClaimDecision] = run(self._db.transaction())
        return result

    def release(self, user_ids: Sequence[str], sweep_id: str) -> None:
        from google.cloud import firestore

        refs = [self._db.collection(MEMBERS).document(u) for u in user_ids]

        @firestore.transactional
        def run(transaction: Any) -> None:
            for snapshot in transaction.get_all(refs):
                if snapshot.exists and snapshot.get(SIGN_OUT_CLAIM) == sweep_id:
                    transaction.update(
                        snapshot.reference,
                        {
                            SIGN_OUT_CLAIM: firestore.DELETE_FIELD,
                            SIGN_OUT_CLAIMED_AT: firestore.DELETE_FIELD,
                        },
                    )

        run(self._db.transaction())

    def finalize(
        self, user_ids: Sequence[str], sweep_id: str, now: datetime
    ) -> tuple[list[str], list[SessionRef]]:
        from google.cloud import firestore

        refs = [self._db.collection(MEMBERS).document(u) for u in user_ids]

        @firestore.transactional
        def run(transaction: Any) -> tuple[list[str], list[SessionRef]]:
            done: list[str] = []
            sessions: list[SessionRef] = []
            for snapshot in transaction.get_all(refs):
                member = snapshot.to_dict() if snapshot.exists else None
                # Only this sweep's claims: another sweep that took over a stale claim owns it.
                if member is None or member.get(SIGN_OUT_CLAIM) != sweep_id:
                    continue
                sessions.extend(active_sessions(snapshot.id, member))
                transaction.update(
                    snapshot.reference,
                    {
                        IS_SIGNED_IN: False,
                        LAST_SIGN_OUT_AT: now,
                        UPDATED_AT: now,
                        ACTIVE_SESSIONS: firestore.DELETE_FIELD,
                        SIGN_OUT_CLAIM: firestore.DELETE_FIELD,
                        SIGN_OUT_CLAIMED_AT: firestore.DELETE_FIELD,
                    },
                )
                done.append(snapshot.id)
            return done, sessions

        signed_out, sessions = run(self._db.transaction())
        # The member's active_sessions map names the sockets: no query needed here.
        for start in range(0, len(sessions), 500):
            batch = self._db.batch()
            for ref in sessions[start : start + 500]:
                batch.set(
                    self._db.collection(SESSIONS).document(ref.session_id),
                    {IS_ACTIVE: False, SIGNED_OUT_AT: now},
                    merge=True,
                )
            batch.commit()
        return signed_out, sessions


def active_sessions(user_id: str, member: dict[str, Any]) -> list[SessionRef]:
    """The sockets the gateway recorded on the member (``active_sessions`` map): the instance
    of each, and the URL an older gateway also recorded there (see ``presence_sweep.schema``)."""
    recorded = member.get(ACTIVE_SESSIONS)
    if not isinstance(recorded, dict):
        return []
    return [
        SessionRef(
            user_id=user_id,
            session_id=str(session_id),
            instance_id=str(where.get(INSTANCE_ID, "")) if isinstance(where, dict) else "",
            legacy_url=str(where.get(INTERNAL_URL, "")) if isinstance(where, dict) else "",
        )
        for session_id, where in recorded.items()
    ]


def instance_entry(data: dict[str, Any]) -> InstanceEntry:
    """A ``gateway_instances`` document as the sweep reads it: a stopped instance, or one
    whose heartbeat is no timestamp, has none; a URL that is no string is none."""
    beat, url = data.get(HEARTBEAT_AT), data.get(INTERNAL_URL)
    backlog = data.get(PONG_BACKLOG_SECONDS)
    return InstanceEntry(
        heartbeat=beat if isinstance(beat, datetime) and STOPPED_AT not in data else None,
        internal_url=url if isinstance(url, str) else "",
        pong_backlog=float(backlog)
        if isinstance(backlog, int | float) and not isinstance(backlog, bool)
        else 0.0,
    )


class FirestoreInstances:
    """The gateway's instance registry (``gateway_instances``), read to skip dead instances
    and to find where the live ones take callbacks."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def entries(self, instance_ids: Sequence[str]) -> dict[str, InstanceEntry]:
        refs = [self._client.collection(INSTANCES).document(i) for i in instance_ids]
        return {
            snapshot.id: instance_entry(snapshot.to_dict() or {})
            for snapshot in self._client.get_all(refs)
            if snapshot.exists
        }

    def recent(self, since: datetime) -> dict[str, InstanceEntry]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        # Served by heartbeat_at's single-field index (the gateway's own recent_instances).
        query = self._client.collection(INSTANCES).where(
            filter=FieldFilter(HEARTBEAT_AT, ">=", since)
        )
        return {s.id: instance_entry(s.to_dict() or {}) for s in query.stream()}


class FirebaseAuth:
    """Revokes refresh tokens through firebase-admin (the Auth emulator when
    FIREBASE_AUTH_EMULATOR_HOST is set)."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def revoke(self, user_id: str) -> bool:
        from firebase_admin import auth

        try:
            auth.revoke_refresh_tokens(user_id, app=self._app)
        except auth.UserNotFoundError:
            return False
        except Exception as exc:  # firebase-admin raises several transport error types
            raise AuthRevokeError(f"{type(exc).__name__}: {exc}") from exc
        return True


class HttpNotifier:
    """POSTs the timeout callback to a gateway instance (body pinned by tests/contract).

    ``token`` is the bearer credential: the shared GATEWAY_CALLBACK_TOKEN, or a callable that
    returns a fresh Google-signed ID token (see ``google_id_token``)."""

    def __init__(self, token: str | Callable[[], str], timeout: float) -> None:
        self._token = token
        self._timeout = timeout

    def notify(self, internal_url: str, sessions: Sequence[SessionRef], now: datetime) -> int:
        closed = 0
        for start in range(0, len(sessions), CALLBACK_CHUNK):
            chunk = sessions[start : start + CALLBACK_CHUNK]
            closed += self._post(internal_url, callback_body(chunk, now))
        return closed

    def _bearer(self) -> str:
        return self._token() if callable(self._token) else self._token

    def _post(self, internal_url: str, body: dict[str, Any]) -> int:
        request = urllib.request.Request(
            internal_url.rstrip("/") + CALLBACK_PATH,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._bearer()}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise CallbackError(f"{internal_url} answered {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise CallbackError(f"{internal_url} unreachable: {exc}") from exc
        return int(answer.get("closed", 0))


def google_id_token(audience: str) -> Callable[[], str]:
    """A provider of Google-signed ID tokens for ``audience`` from the runtime's service
    account (the metadata server on Cloud Functions / Cloud Run), reused for 50 minutes."""
    cached: list[tuple[float, str]] = []

    def provide() -> str:
        import google.auth.transport.requests
        from google.oauth2 import id_token

        if cached and time.monotonic() - cached[0][0] < 3000:
            return cached[0][1]
        request = google.auth.transport.requests.Request()
        token = str(id_token.fetch_id_token(request, audience))  # type: ignore[no-untyped-call]
        cached[:] = [(time.monotonic(), token)]
        return token

    return provide


def callback_body(sessions: Sequence[SessionRef], now: datetime) -> dict[str, Any]:
    """The callback's JSON body: which sessions were signed out, and when."""
    return {
        "reason": "inactivity",
        "signed_out_at": now.isoformat(),
        "sessions": [{"user_id": s.user_id, "session_id": s.session_id} for s in sessions],
    }


def sweep_firestore(
    settings: SweepSettings,
    db: Any,
    app: Any,
    notifier: Notifier,
    now: datetime,
    publisher: EventPublisher | None = None,
) -> SweepReport:
    """The sweep over Firestore and Firebase Auth with every setting applied, lost instances
    reaped first: what the deployed function runs (``main.run_sweep``) and what the benchmarks
    measure. ``publisher`` takes the presence events (None: none published)."""
    return sweep(
        FirestoreMembers(db),
        FirebaseAuth(app),
        notifier,
        now,
        pong_timeout=settings.pong_timeout,
        page_size=settings.page_size,
        query_size=settings.query_size,
        auth_concurrency=settings.auth_concurrency,
        pages_in_flight=settings.pages_in_flight,
        claim_ttl=settings.claim_ttl,
        instances=FirestoreInstances(db),
        instance_stale_after=settings.instance_stale_after,
        callback_concurrency=settings.callback_concurrency,
        gateway_url=settings.gateway_url,
        lost=FirestoreLostInstances(db),
        publisher=publisher,
        reap_lookback=settings.reap_lookback,
    )
