"""The reaper's I/O: Firestore (sessions, members, presence) and the presence events' topic.

Events go through Pub/Sub's REST API with google-auth's ``AuthorizedSession`` (google-auth
comes with firebase-admin; the function needs no Pub/Sub client library for one publish call a
batch), or, with ``PUBSUB_EMULATOR_HOST``, plain HTTP without credentials to the emulator.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from presence_sweep.decision import SessionRef
from presence_sweep.exceptions import PublishError
from presence_sweep.presence import INSTANCE_LOST, PresenceEvent, decide
from presence_sweep.reaper import sessions_by_user
from presence_sweep.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    DISCONNECTED_AT,
    INSTANCE_ID,
    IS_ACTIVE,
    MEMBERS,
    PRESENCE,
    PRESENCE_HOLDERS,
    SESSIONS,
    USER_ID,
)

#: Sessions per batch when ending them: one session write and at most one member write each,
#: within Firestore's 500 writes a commit.
END_BATCH = 250
#: Attempts of a settling transaction before the reaper gives up on it this run. A commit that
#: must wait on another transaction's locks is aborted (on the emulator after about 2.4 s), and
#: a transaction that never commits (its gateway was killed in the middle of one) holds them
#: until Firestore expires it: five attempts kept a run 12 s from its sign-outs. A batch that
#: fails is settled user by user (``presence_sweep.reaper``); a user who fails waits for the
#: next run.
SETTLE_ATTEMPTS = 2
#: Pub/Sub takes at most 1,000 messages a publish call.
PUBLISH_BATCH = 1000
PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"


class FirestoreLostInstances:
    """``LostInstanceStore`` over Firestore."""

    def __init__(self, client: Any) -> None:
        self._db = client

    def active_sessions_on(
        self, instance_id: str, limit: int, after: Any | None
    ) -> tuple[list[SessionRef], Any | None]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        # Served by the composite index sessions (instance_id, is_active). Equalities alone are
        # answered in document id order, which the snapshot cursor resumes from.
        query = (
            self._db.collection(SESSIONS)
            .where(filter=FieldFilter(INSTANCE_ID, "==", instance_id))
            .where(filter=FieldFilter(IS_ACTIVE, "==", True))
            .limit(limit)
        )
        if after is not None:
            query = query.start_after(after)
        snapshots = list(query.stream())
        sessions = [
            SessionRef(str((s.to_dict() or {}).get(USER_ID) or ""), s.id, instance_id)
            for s in snapshots
        ]
        return sessions, (snapshots[-1] if len(snapshots) == limit else None)

    def settle(
        self, user_ids: Sequence[str], instance_id: str, at: datetime
    ) -> list[PresenceEvent]:
        from google.cloud import firestore

        holders = self._db.collection(PRESENCE_HOLDERS)
        presence = self._db.collection(PRESENCE)

        @firestore.transactional
        def run(transaction: Any) -> list[PresenceEvent]:
            read = {
                s.id: (s.to_dict() if s.exists else None)
                for s in transaction.get_all([holders.document(u) for u in user_ids])
            }
            events: list[PresenceEvent] = []
            for user_id in user_ids:
                outcome = decide(user_id, read.get(user_id), instance_id, 0, at, INSTANCE_LOST)
                # The whole record: a merge would keep the lost instance in the map.
                transaction.set(holders.document(user_id), outcome.holders)
                if outcome.presence is not None:
                    # A merge: fields the app's backend added (an org) stay.
                    transaction.set(presence.document(user_id), outcome.presence, merge=True)
                if outcome.event is not None:
                    events.append(outcome.event)
            return events

        # A retried transaction decides again on a fresh read: only the committed run's events.
        events: list[PresenceEvent] = run(self._db.transaction(max_attempts=SETTLE_ATTEMPTS))
        return events

    def end_sessions(self, sessions: Sequence[SessionRef], at: datetime) -> None:
        from google.cloud import firestore

        for start in range(0, len(sessions), END_BATCH):
            chunk = sessions[start : start + END_BATCH]
            batch = self._db.batch()
            for ref in chunk:
                batch.set(
                    self._db.collection(SESSIONS).document(ref.session_id),
                    {IS_ACTIVE: False, DISCONNECTED_AT: at, CLOSE_CODE: None},
                    merge=True,
                )
            for user_id, session_ids in sessions_by_user(chunk).items():
                if not user_id:
                    continue
                # As the gateway's own disconnect writes it (a nested delete in a merge): a
                # member deleted meanwhile cannot fail the batch, as an update would.
                batch.set(
                    self._db.collection(MEMBERS).document(user_id),
                    {ACTIVE_SESSIONS: {s: firestore.DELETE_FIELD for s in session_ids}},
                    merge=True,
                )
            batch.commit()


def publish_body(events: Sequence[PresenceEvent]) -> dict[str, Any]:
    """A Pub/Sub publish request: each event's JSON as data, ``user_id`` and ``state`` as
    attributes (for subscription filters)."""
    return {
        "messages": [
            {
                "data": base64.b64encode(json.dumps(e.body()).encode()).decode("ascii"),
                "attributes": {"user_id": e.user_id, "state": e.state},
            }
            for e in events
        ]
    }


class PubSubPublisher:
    """``EventPublisher`` over Pub/Sub's REST API. The authorized session is built on the first
    publish and kept (its token refreshes itself)."""

    def __init__(
        self, project: str, topic: str, emulator_host: str = "", timeout: float = 10.0
    ) -> None:
        base = f"http://{emulator_host}" if emulator_host else "https://pubsub.googleapis.com"
        self.url = f"{base}/v1/projects/{project}/topics/{topic}:publish"
        self._emulated = bool(emulator_host)
        self._timeout = timeout
        self._session: Any = None

    def publish(self, events: Sequence[PresenceEvent]) -> None:
        for start in range(0, len(events), PUBLISH_BATCH):
            body = publish_body(events[start : start + PUBLISH_BATCH])
            if self._emulated:
                self._post_plain(body)
            else:
                self._post_authorized(body)

    def _post_plain(self, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise PublishError(f"{self.url} answered {exc.code}") from exc
        except OSError as exc:
            raise PublishError(f"{self.url} unreachable: {exc}") from exc

    def _post_authorized(self, body: dict[str, Any]) -> None:
        try:
            if self._session is None:
                import google.auth
                from google.auth.transport.requests import AuthorizedSession

                credentials, _ = google.auth.default(scopes=[PUBSUB_SCOPE])
                self._session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
            response = self._session.post(self.url, json=body, timeout=self._timeout)
        except Exception as exc:  # google-auth and requests raise several error types
            raise PublishError(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise PublishError(f"{self.url} answered {response.status_code}: {response.text[:200]}")
