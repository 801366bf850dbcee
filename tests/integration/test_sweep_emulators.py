"""The sweep against the real Firestore and Auth emulators: sign-out, races and faults."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.storage.store import connect_writes, instance_write
from presence_sweep.adapters import FirebaseAuth, FirestoreInstances, FirestoreMembers
from presence_sweep.core import SweepReport, sweep
from presence_sweep.decision import ClaimDecision, SessionRef
from presence_sweep.exceptions import AuthRevokeError
from presence_sweep.schema import (
    ACTIVE_SESSIONS,
    CONNECTED_AT,
    HEARTBEAT_AT,
    INSTANCE_ID,
    INSTANCES,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    LAST_SIGN_OUT_AT,
    MEMBERS,
    SESSIONS,
    SHARD,
    SIGN_OUT_CLAIM,
    SIGN_OUT_CLAIMED_AT,
    SIGNED_OUT_AT,
    STOPPED_AT,
    UPDATED_AT,
    USER_ID,
    member_shard,
)
from tests.support import id_token_for

pytestmark = pytest.mark.integration

TIMEOUT = 3 * 3600.0
#: The instance every seeded session lives on, and where its registry entry says it listens.
INSTANCE, INSTANCE_URL = "inst", "http://gateway.invalid"


def tag() -> str:
    return uuid.uuid4().hex[:10]


class RecordingNotifier:
    def __init__(self) -> None:
        self.sessions: list[str] = []
        #: session id -> the URL its callback went to.
        self.urls: dict[str, str] = {}
        self.lock = threading.Lock()

    def notify(self, internal_url: str, sessions: Sequence[SessionRef], now: datetime) -> int:
        with self.lock:
            self.sessions.extend(s.session_id for s in sessions)
            self.urls.update((s.session_id, internal_url) for s in sessions)
        return len(sessions)


def seed(db: Any, users: list[str], last_pong: datetime, sessions_per_user: int = 1) -> None:
    """Expired members, each with its sessions on ``INSTANCE``, as the gateway records them,
    and that instance's registry entry, beating now."""
    db.collection(INSTANCES).document(INSTANCE).set(
        {INTERNAL_URL: INSTANCE_URL, HEARTBEAT_AT: datetime.now(UTC)}
    )
    batch, count = db.batch(), 0
    where = {INSTANCE_ID: INSTANCE}
    for user in users:
        batch.set(
            db.collection(MEMBERS).document(user),
            {
                IS_SIGNED_IN: True,
                LAST_PONG_AT: last_pong,
                UPDATED_AT: last_pong,
                SHARD: member_shard(user),
                ACTIVE_SESSIONS: {f"{user}-s{n}": where for n in range(sessions_per_user)},
            },
        )
        for n in range(sessions_per_user):
            batch.set(
                db.collection(SESSIONS).document(f"{user}-s{n}"),
                {
                    USER_ID: user,
                    IS_ACTIVE: True,
                    CONNECTED_AT: last_pong,
                    INSTANCE_ID: INSTANCE,
                },
            )
        count += 1 + sessions_per_user
        if count >= 400:
            batch.commit()
            batch, count = db.batch(), 0
    batch.commit()


def run(db: Any, auth: Any, notifier: Any, now: datetime, page_size: int = 300) -> SweepReport:
    return sweep(
        FirestoreMembers(db),
        auth,
        notifier,
        now,
        pong_timeout=TIMEOUT,
        page_size=page_size,
        instances=FirestoreInstances(db),
    )


def test_expired_user_is_signed_out_everywhere(
    firestore_client: Any, firebase_app: Any, auth_host: str
) -> None:
    """Auth tokens revoked, member and session fields as the guide says, gateway notified."""
    from firebase_admin import auth

    user = f"sweep-{tag()}"
    auth.create_user(uid=user, app=firebase_app)
    id_token = id_token_for(auth_host, auth.create_custom_token(user, app=firebase_app))
    before = auth.get_user(user, app=firebase_app).tokens_valid_after_timestamp
    now = datetime.now(UTC)
    seed(firestore_client, [user], now - timedelta(hours=4), sessions_per_user=2)
    time.sleep(1.1)  # revocation is stored in whole seconds

    notifier = RecordingNotifier()
    report = run(firestore_client, FirebaseAuth(firebase_app), notifier, datetime.now(UTC))

    assert user in report.signed_out_users and report.ok
    member = firestore_client.collection(MEMBERS).document(user).get().to_dict()
    assert member[IS_SIGNED_IN] is False
    assert member[LAST_SIGN_OUT_AT] == member[UPDATED_AT] >= now
    assert SIGN_OUT_CLAIM not in member
    for n in range(2):
        session = firestore_client.collection(SESSIONS).document(f"{user}-s{n}").get()
        assert session.get(IS_ACTIVE) is False
        assert session.get(SIGNED_OUT_AT) == member[LAST_SIGN_OUT_AT]
    # Other tests' expired members share the project; look at this user's sessions only.
    assert sorted(s for s in notifier.sessions if s.startswith(user)) == [
        f"{user}-s0",
        f"{user}-s1",
    ]
    assert {notifier.urls[f"{user}-s{n}"] for n in range(2)} == {INSTANCE_URL}
    assert auth.get_user(user, app=firebase_app).tokens_valid_after_timestamp > before
    with pytest.raises(auth.RevokedIdTokenError):
        auth.verify_id_token(id_token, app=firebase_app, check_revoked=True)


def test_users_with_recent_pongs_are_untouched(firestore_client: Any, firebase_app: Any) -> None:
    """Running the sweep when nothing is expired changes no document."""
    users = [f"fresh-{tag()}" for _ in range(5)]
    now = datetime.now(UTC)
    seed(firestore_client, users, now - timedelta(minutes=5))
    refs = [firestore_client.collection(MEMBERS).document(u) for u in users]
    before = {s.id: (s.to_dict(), s.update_time) for s in firestore_client.get_all(refs)}
    report = run(firestore_client, FirebaseAuth(firebase_app), RecordingNotifier(), now)
    after = {s.id: (s.to_dict(), s.update_time) for s in firestore_client.get_all(refs)}
    assert before == after
    assert not set(users) & set(report.signed_out_users)


class PongBeforeClaim(FirestoreMembers):
    """Commits a fresh pong for one user between the query and the claim transaction."""

    def __init__(self, client: Any, user: str) -> None:
        super().__init__(client)
        self._client, self._user = client, user

    def claim(
        self,
        user_ids: Sequence[str],
        sweep_id: str,
        cutoff: datetime,
        now: datetime,
        claim_ttl: float,
        allowances: Mapping[str, float] | None = None,
    ) -> dict[str, ClaimDecision]:
        if self._user in user_ids:
            self._client.collection(MEMBERS).document(self._user).update(
                {LAST_PONG_AT: datetime.now(UTC)}
            )
        return super().claim(user_ids, sweep_id, cutoff, now, claim_ttl, allowances)


def test_a_pong_committed_before_the_claim_keeps_the_user_signed_in(
    firestore_client: Any, firebase_app: Any
) -> None:
    """The claim re-reads the member in a transaction: a late pong wins, tokens stay valid."""
    from firebase_admin import auth

    user = f"race-{tag()}"
    auth.create_user(uid=user, app=firebase_app)
    before = auth.get_user(user, app=firebase_app).tokens_valid_after_timestamp
    seed(firestore_client, [user], datetime.now(UTC) - timedelta(hours=4))
    notifier = RecordingNotifier()
    report = sweep(
        PongBeforeClaim(firestore_client, user),
        FirebaseAuth(firebase_app),
        notifier,
        datetime.now(UTC),
        pong_timeout=TIMEOUT,
    )
    assert user not in report.signed_out_users
    assert report.skipped["pong_arrived"] >= 1
    assert firestore_client.collection(MEMBERS).document(user).get().get(IS_SIGNED_IN)
    assert auth.get_user(user, app=firebase_app).tokens_valid_after_timestamp == before
    assert f"{user}-s0" not in notifier.sessions


def test_two_sweeps_at_once_sign_each_user_out_exactly_once(
    firestore_client: Any, firebase_app: Any
) -> None:
    """Concurrent sweeps split the users between them; every session is notified once."""
    users = [f"twin-{tag()}" for _ in range(120)]
    seed(firestore_client, users, datetime.now(UTC) - timedelta(hours=4))
    notifier = RecordingNotifier()
    reports: list[SweepReport] = []
    start = threading.Barrier(2)

    class CountingAuth(FirebaseAuth):
        def revoke(self, user_id: str) -> bool:
            return True  # Auth behaviour is covered above; this test is about Firestore

    def one() -> None:
        start.wait()
        reports.append(
            run(firestore_client, CountingAuth(firebase_app), notifier, datetime.now(UTC), 40)
        )

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    signed = [u for r in reports for u in r.signed_out_users if u in users]
    assert sorted(signed) == sorted(users), "each user signed out by exactly one sweep"
    notified = [s for s in notifier.sessions if s.startswith("twin-") and s[:-3] in users]
    assert sorted(notified) == sorted(f"{u}-s0" for u in users)


class FlakyAuth(FirebaseAuth):
    def __init__(self, app: Any, failing: set[str]) -> None:
        super().__init__(app)
        self.failing = failing

    def revoke(self, user_id: str) -> bool:
        if user_id in self.failing:
            raise AuthRevokeError("injected: Auth unavailable")
        return super().revoke(user_id)


def test_auth_failure_leaves_the_user_signed_in_until_the_next_sweep(
    firestore_client: Any, firebase_app: Any
) -> None:
    """A failed revoke leaves member, sessions and tokens untouched; the next sweep finishes."""
    from firebase_admin import auth

    user = f"flaky-{tag()}"
    auth.create_user(uid=user, app=firebase_app)
    before = auth.get_user(user, app=firebase_app).tokens_valid_after_timestamp
    seed(firestore_client, [user], datetime.now(UTC) - timedelta(hours=4))
    time.sleep(1.1)

    first = run(
        firestore_client, FlakyAuth(firebase_app, {user}), RecordingNotifier(), datetime.now(UTC)
    )
    assert not first.ok and first.auth_failures == 1
    member = firestore_client.collection(MEMBERS).document(user).get().to_dict()
    assert member[IS_SIGNED_IN] is True and SIGN_OUT_CLAIM not in member
    session = firestore_client.collection(SESSIONS).document(f"{user}-s0").get().to_dict()
    assert session[IS_ACTIVE] is True and SIGNED_OUT_AT not in session
    assert auth.get_user(user, app=firebase_app).tokens_valid_after_timestamp == before

    second = run(
        firestore_client, FirebaseAuth(firebase_app), RecordingNotifier(), datetime.now(UTC)
    )
    assert user in second.signed_out_users and second.ok
    assert firestore_client.collection(MEMBERS).document(user).get().get(IS_SIGNED_IN) is (False)
    assert auth.get_user(user, app=firebase_app).tokens_valid_after_timestamp > before


def test_a_stale_claim_from_a_dead_sweep_is_taken_over(
    firestore_client: Any, firebase_app: Any
) -> None:
    """A sweep that died after claiming does not block the user forever."""
    user = f"stale-{tag()}"
    seed(firestore_client, [user], datetime.now(UTC) - timedelta(hours=4))
    firestore_client.collection(MEMBERS).document(user).update(
        {SIGN_OUT_CLAIM: "dead", SIGN_OUT_CLAIMED_AT: datetime.now(UTC) - timedelta(hours=1)}
    )
    report = run(
        firestore_client, FirebaseAuth(firebase_app), RecordingNotifier(), datetime.now(UTC)
    )
    assert user in report.signed_out_users


def test_pages_cover_every_expired_user(firestore_client: Any, firebase_app: Any) -> None:
    """Pagination: 250 expired users with pages of 100 are all signed out in one run."""
    users = [f"page-{tag()}" for _ in range(250)]
    seed(firestore_client, users, datetime.now(UTC) - timedelta(hours=5))
    report = run(
        firestore_client,
        FirebaseAuth(firebase_app),
        RecordingNotifier(),
        datetime.now(UTC),
        page_size=100,
    )
    assert set(users) <= set(report.signed_out_users)


def test_small_queries_walk_every_shard_once(firestore_client: Any, firebase_app: Any) -> None:
    """Queries of 7 ids, pages of 5: the cursor resumes inside a shard and across shards, and
    every expired user, wherever its shard, is signed out exactly once."""
    users = [f"walk-{tag()}" for _ in range(60)]
    assert len({member_shard(u) for u in users}) > 30
    seed(firestore_client, users, datetime.now(UTC) - timedelta(hours=4))

    class AnyAuth(FirebaseAuth):
        def revoke(self, user_id: str) -> bool:
            return True  # Auth is covered above; this test is about the member query

    report = sweep(
        FirestoreMembers(firestore_client),
        AnyAuth(firebase_app),
        RecordingNotifier(),
        datetime.now(UTC),
        pong_timeout=TIMEOUT,
        page_size=5,
        query_size=7,
    )
    signed = [u for u in report.signed_out_users if u in users]
    assert sorted(signed) == sorted(users)


def test_each_instance_is_called_at_its_registry_url_and_old_members_at_theirs(
    firestore_client: Any, firebase_app: Any
) -> None:
    """A member the gateway writes now names only its instance, whose callback goes to the URL
    in gateway_instances; a member an older gateway wrote, with the URL beside its session, is
    still called there when the registry has no entry for its instance."""
    db, now = firestore_client, datetime.now(UTC)
    user, old_user, instance = f"reg-{tag()}", f"old-{tag()}", f"gw-{tag()}"
    expired = now - timedelta(hours=4)
    for write in [
        *connect_writes(user, f"{user}-s0", instance, expired),
        instance_write(instance, f"http://{instance}.invalid", now),
    ]:
        # instance_write's one delete (stopped_at) has nothing to delete here: drop it.
        fields = {k: v for k, v in write.fields.items() if k != STOPPED_AT}
        db.collection(write.collection).document(write.doc_id).set(fields, merge=True)
    legacy = {INSTANCE_ID: f"gone-{tag()}", INTERNAL_URL: "http://old.invalid"}
    db.collection(MEMBERS).document(old_user).set(
        {
            IS_SIGNED_IN: True,
            LAST_PONG_AT: expired,
            ACTIVE_SESSIONS: {f"{old_user}-s0": legacy},
            # What presence_sweep.backfill added to the members of gateways older than shards.
            SHARD: member_shard(old_user),
        }
    )
    # ... and its session, as that gateway recorded it (the project is shared with the e2e
    # corpus, which holds every session to having its user).
    db.collection(SESSIONS).document(f"{old_user}-s0").set(
        {
            USER_ID: old_user,
            IS_ACTIVE: True,
            CONNECTED_AT: expired,
            INSTANCE_ID: legacy[INSTANCE_ID],
        }
    )
    member = db.collection(MEMBERS).document(user).get().to_dict()
    assert INTERNAL_URL not in member[ACTIVE_SESSIONS][f"{user}-s0"]

    class AnyAuth(FirebaseAuth):
        def revoke(self, user_id: str) -> bool:
            return True  # Auth is covered above; this test is about where callbacks go

    notifier = RecordingNotifier()
    report = run(db, AnyAuth(firebase_app), notifier, now)

    assert {user, old_user} <= set(report.signed_out_users)
    assert notifier.urls[f"{user}-s0"] == f"http://{instance}.invalid"
    assert notifier.urls[f"{old_user}-s0"] == "http://old.invalid"
