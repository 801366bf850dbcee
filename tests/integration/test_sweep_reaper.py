"""The reaper against the Firestore emulator (and the Pub/Sub emulator for its events): a lost
instance's sessions end, its users' presence is settled, and a second run changes nothing.
Each test runs in a Firestore project of its own, so no other test's instances are reaped."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from presence_sweep.adapters import FirestoreInstances, sweep_firestore
from presence_sweep.decision import SessionRef
from presence_sweep.ports import EventPublisher, SweepReport
from presence_sweep.reaper import reap
from presence_sweep.reaper_adapters import FirestoreLostInstances, PubSubPublisher
from presence_sweep.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    CONNECTED_AT,
    DEVICES,
    DISCONNECTED_AT,
    HEARTBEAT_AT,
    HOLDERS,
    INSTANCE_ID,
    INSTANCES,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    LAST_SEEN_AT,
    MEMBERS,
    OFFLINE,
    ONLINE,
    PRESENCE,
    PRESENCE_HOLDERS,
    SEQ,
    SESSIONS,
    SHARD,
    STATE,
    UPDATED_AT,
    USER_ID,
    member_shard,
)
from presence_sweep.settings import SweepSettings
from tests.conftest import PubSubEmulator
from tests.support import pubsub_rest as rest
from tests.support import pull_all

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
#: The lost instance's last heartbeat: past the stale cutoff (3 minutes), within the lookback.
BEAT = NOW - timedelta(minutes=10)
DEAD, LIVE = "gw-dead", "gw-live"


class NoNotifier:
    def notify(self, internal_url: str, sessions: Sequence[SessionRef], now: datetime) -> int:
        return len(sessions)


@pytest.fixture
def db(firestore_client: Any) -> Iterator[Any]:
    """A Firestore client on a project of this test's own (firestore_client sets the host)."""
    from google.cloud import firestore

    client = firestore.Client(project=f"demo-reap-{uuid.uuid4().hex[:10]}")
    yield client
    client.close()


def seed(db: Any) -> None:
    """``gw-dead`` stale since BEAT, ``gw-live`` beating now; ana has two sockets on gw-dead,
    ben one there and one on gw-live, each recorded as the gateway records them."""
    db.collection(INSTANCES).document(DEAD).set(
        {INTERNAL_URL: "http://dead.invalid", HEARTBEAT_AT: BEAT}
    )
    db.collection(INSTANCES).document(LIVE).set(
        {INTERNAL_URL: "http://live.invalid", HEARTBEAT_AT: NOW}
    )
    sockets = {"ana": {"ana-s0": DEAD, "ana-s1": DEAD}, "ben": {"ben-s0": DEAD, "ben-s1": LIVE}}
    for user, where in sockets.items():
        db.collection(MEMBERS).document(user).set(
            {
                IS_SIGNED_IN: True,
                LAST_PONG_AT: NOW,
                UPDATED_AT: NOW,
                SHARD: member_shard(user),
                ACTIVE_SESSIONS: {s: {INSTANCE_ID: i} for s, i in where.items()},
            }
        )
        for session_id, instance in where.items():
            db.collection(SESSIONS).document(session_id).set(
                {USER_ID: user, IS_ACTIVE: True, CONNECTED_AT: BEAT, INSTANCE_ID: instance}
            )
        held: dict[str, int] = {}
        for instance in where.values():
            held[instance] = held.get(instance, 0) + 1
        since = NOW - timedelta(hours=1)
        db.collection(PRESENCE_HOLDERS).document(user).set(
            {HOLDERS: held, STATE: ONLINE, SEQ: 1, LAST_SEEN_AT: since, UPDATED_AT: since}
        )
        db.collection(PRESENCE).document(user).set(
            {STATE: ONLINE, DEVICES: len(where), LAST_SEEN_AT: since}
        )


def run(db: Any, publisher: EventPublisher | None = None, now: datetime = NOW) -> SweepReport:
    settings = SweepSettings(project_id=db.project, instance_stale_after=180.0)
    # No member is expired in this project: Firebase Auth is never called.
    return sweep_firestore(settings, db, None, NoNotifier(), now, publisher)


def reap_alone(db: Any, **sizes: int) -> SweepReport:
    """The reaper by itself (no sign-out pass), with the function's staleness and lookback."""
    report = SweepReport("r", NOW, NOW)
    reap(
        FirestoreInstances(db),
        FirestoreLostInstances(db),
        None,
        NOW,
        report,
        stale_after=180.0,
        lookback=3600.0,
        **sizes,
    )
    return report


def read(db: Any, collection: str, doc_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = db.collection(collection).document(doc_id).get().to_dict()
    return doc


def everything(db: Any) -> dict[str, Any]:
    return {
        (collection, s.id): (s.to_dict(), s.update_time)
        for collection in (MEMBERS, SESSIONS, PRESENCE, PRESENCE_HOLDERS)
        for s in db.collection(collection).stream()
    }


def test_a_lost_instance_is_reaped_once(db: Any) -> None:
    """ana (only on the lost instance) goes offline as of its last heartbeat; ben stays online
    with one device; the lost sessions end and leave their members; a second run writes
    nothing."""
    seed(db)
    report = run(db)
    assert (report.instances_reaped, report.sessions_reaped, report.users_offline) == (1, 3, 1)

    ana = read(db, PRESENCE, "ana")
    assert (ana[STATE], ana[DEVICES], ana[LAST_SEEN_AT]) == (OFFLINE, 0, BEAT)
    assert read(db, PRESENCE_HOLDERS, "ana")[HOLDERS] == {}
    ben = read(db, PRESENCE, "ben")
    assert (ben[STATE], ben[DEVICES]) == (ONLINE, 1)
    assert read(db, PRESENCE_HOLDERS, "ben")[HOLDERS] == {LIVE: 1}
    for session_id in ("ana-s0", "ana-s1", "ben-s0"):
        session = read(db, SESSIONS, session_id)
        assert session[IS_ACTIVE] is False
        assert session[DISCONNECTED_AT] == BEAT
        assert CLOSE_CODE in session and session[CLOSE_CODE] is None
    assert read(db, SESSIONS, "ben-s1")[IS_ACTIVE] is True
    assert read(db, MEMBERS, "ana")[ACTIVE_SESSIONS] == {}
    assert read(db, MEMBERS, "ben")[ACTIVE_SESSIONS] == {"ben-s1": {INSTANCE_ID: LIVE}}

    before = everything(db)
    again = run(db, now=NOW + timedelta(minutes=1))
    assert everything(db) == before
    assert (again.instances_reaped, again.sessions_reaped, again.users_offline) == (0, 0, 0)


def test_the_offline_transition_is_published_once(db: Any, pubsub: PubSubEmulator) -> None:
    """With PRESENCE_EVENTS_TOPIC, ana's offline transition (reason instance_lost) is the one
    event on the topic, with user_id and state as attributes; a second run publishes none."""
    topic = f"presence-events-{uuid.uuid4().hex[:8]}"
    topic_path = f"projects/{db.project}/topics/{topic}"
    subscription = f"projects/{db.project}/subscriptions/{topic}-test"
    rest(pubsub.host, "PUT", topic_path)
    rest(pubsub.host, "PUT", subscription, {"topic": topic_path})
    seed(db)
    publisher = PubSubPublisher(db.project, topic, pubsub.host)

    report = run(db, publisher)
    assert (report.presence_events_published, report.presence_event_failures) == (1, 0)
    (message,) = pull_all(pubsub.host, subscription)
    event = json.loads(base64.b64decode(message["data"]))
    assert message["attributes"] == {"user_id": "ana", "state": OFFLINE}
    assert (event["user_id"], event["state"], event["reason"]) == ("ana", OFFLINE, "instance_lost")
    assert (event["devices"], event["seq"]) == (0, 2)
    assert datetime.fromisoformat(event["at"]) == BEAT

    run(db, publisher, NOW + timedelta(minutes=1))
    assert pull_all(pubsub.host, subscription) == []


def test_small_pages_and_transactions_reap_every_session(db: Any) -> None:
    """Pages of 2 sessions and transactions of 1 user: the query's cursor resumes after each
    page and every session of the lost instance ends."""
    seed(db)
    for n in range(5):
        db.collection(SESSIONS).document(f"ana-x{n}").set(
            {USER_ID: "ana", IS_ACTIVE: True, CONNECTED_AT: BEAT, INSTANCE_ID: DEAD}
        )
    report = reap_alone(db, page_size=2, users_per_transaction=1)
    assert report.sessions_reaped == 8 and report.users_offline == 1
    sessions = {s.id: s.get(IS_ACTIVE) for s in db.collection(SESSIONS).stream()}
    assert [s for s, active in sessions.items() if active] == ["ben-s1"]


def test_a_user_locked_by_a_transaction_that_never_commits_holds_back_only_themselves(
    db: Any,
) -> None:
    """ana's holders record is locked by another transaction (a gateway killed in the middle of
    one): ben is settled and his lost session ends in the same run, ana is left for a later
    run, which reaps her once the lock is gone."""
    import threading

    from google.cloud import firestore

    seed(db)
    locked, reaped = threading.Event(), threading.Event()

    class RolledBack(Exception):
        pass

    @firestore.transactional
    def hold(transaction: Any) -> None:
        list(transaction.get_all([db.collection(PRESENCE_HOLDERS).document("ana")]))
        locked.set()
        reaped.wait(120)
        raise RolledBack  # the transaction never commits; rolling back releases the lock

    def holder() -> None:
        with contextlib.suppress(RolledBack):
            hold(db.transaction())

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert locked.wait(30)
        report = reap_alone(db)
    finally:
        reaped.set()
        thread.join()
    active = {s.id for s in db.collection(SESSIONS).stream() if s.get(IS_ACTIVE)}
    assert active == {"ana-s0", "ana-s1", "ben-s1"}
    assert read(db, PRESENCE_HOLDERS, "ben")[HOLDERS] == {LIVE: 1}
    assert report.reap_failures == 1 and report.sessions_reaped == 1
    assert run(db).sessions_reaped == 2
    assert read(db, PRESENCE, "ana")[STATE] == OFFLINE
