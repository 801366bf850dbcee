"""The reaper (lost gateway instances) with in-memory fakes: which instances it reaps, what it
writes for their sessions and users, what it publishes, and that nothing it fails at fails the
sign-out pass. The emulator tests (tests/integration/test_sweep_reaper.py) prove the Firestore
and Pub/Sub side."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from presence_sweep.core import sweep
from presence_sweep.decision import InstanceEntry, SessionRef
from presence_sweep.exceptions import SweepConfigError
from presence_sweep.ports import SweepReport
from presence_sweep.reaper import (
    ALL_STALE_PATIENCE,
    SETTLE_ALONE_CONCURRENCY,
    lost_instances,
    reap,
    registry_behind,
)
from presence_sweep.reaper_adapters import PubSubPublisher, publish_body
from presence_sweep.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    DEVICES,
    DISCONNECTED_AT,
    HEARTBEAT_AT,
    HOLDERS,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    LAST_SEEN_AT,
    OFFLINE,
    ONLINE,
    SEQ,
    SHARD,
    STATE,
    STOPPED_AT,
    member_shard,
)
from presence_sweep.settings import SweepSettings
from tests.sweep_fakes import MemoryInstances, MemoryLostInstances, MemoryMembers, MemoryPublisher

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
STALE_AFTER = 180.0
#: The lost instance's last heartbeat: past the stale cutoff, within the lookback.
BEAT = NOW - timedelta(minutes=10)


class NoAuth:
    def revoke(self, user_id: str) -> bool:
        return True


class NoNotifier:
    def notify(self, internal_url: str, sessions: Sequence[SessionRef], now: datetime) -> int:
        return len(sessions)


class World:
    """Members, sessions and presence of users on gateway instances, as the gateway records
    them, with the stores the sweep reads them through."""

    def __init__(self, instances: dict[str, dict[str, Any]]) -> None:
        self.members = MemoryMembers()
        self.instances = MemoryInstances(instances)
        self.lost = MemoryLostInstances(self.members.members, self.members.sessions)
        self.publisher = MemoryPublisher()

    def user(self, user_id: str, held: dict[str, int], last_pong: datetime = NOW) -> None:
        """``user_id`` online with ``held`` sockets on each instance, sessions and all."""
        self.members.members[user_id] = {
            IS_SIGNED_IN: True,
            LAST_PONG_AT: last_pong,
            SHARD: member_shard(user_id),
        }
        for instance, count in held.items():
            for n in range(count):
                self.members.connect(SessionRef(user_id, f"{user_id}-{instance}-{n}", instance))
        self.lost.holders[user_id] = {
            HOLDERS: dict(held),
            STATE: ONLINE,
            SEQ: 1,
            LAST_SEEN_AT: NOW - timedelta(hours=1),
        }
        self.lost.presence[user_id] = {STATE: ONLINE, DEVICES: sum(held.values())}

    def run(self, now: datetime = NOW) -> SweepReport:
        return sweep(
            self.members,
            NoAuth(),
            NoNotifier(),
            now,
            pong_timeout=3 * 3600,
            instances=self.instances,
            instance_stale_after=STALE_AFTER,
            lost=self.lost,
            publisher=self.publisher,
        )


def world() -> World:
    """Instance ``dead`` lost at BEAT; ``live`` beating now."""
    return World({"dead": {HEARTBEAT_AT: BEAT}, "live": {HEARTBEAT_AT: NOW}})


def test_lost_instances_are_the_stale_but_not_the_stopped() -> None:
    """An instance whose heartbeat is older than the cutoff is lost; one beating since the
    cutoff (alive, or restarted under its id) is not, nor one that stopped (its drain ended
    its sessions itself)."""
    cutoff = NOW - timedelta(seconds=STALE_AFTER)
    entries = {
        "stale": InstanceEntry(BEAT),
        "stopped": InstanceEntry(None),
        "alive": InstanceEntry(NOW),
        "just": InstanceEntry(cutoff),
    }
    assert lost_instances(entries, cutoff) == {"stale": BEAT}


def test_every_instance_stale_at_once_is_a_registry_behind_until_the_patience_runs_out() -> None:
    """All heartbeats stale together and recent (a Firestore stall): behind, not lost. One live
    instance, no instance beating, or a freshest beat past the patience: not behind."""
    recent = NOW - timedelta(seconds=STALE_AFTER * 1.5)
    old = NOW - timedelta(seconds=STALE_AFTER * (ALL_STALE_PATIENCE + 0.5))
    assert registry_behind({"a": InstanceEntry(recent), "b": InstanceEntry(old)}, NOW, STALE_AFTER)
    assert not registry_behind(
        {"a": InstanceEntry(recent), "b": InstanceEntry(NOW)}, NOW, STALE_AFTER
    )
    assert not registry_behind({"a": InstanceEntry(None)}, NOW, STALE_AFTER)
    assert not registry_behind({"a": InstanceEntry(old)}, NOW, STALE_AFTER)


def test_after_a_stall_that_left_every_heartbeat_stale_nothing_is_reaped_yet() -> None:
    """Both instances stale since a stall: the run reaps neither and counts them deferred; once
    the freshest heartbeat is past the patience, the lost instances are reaped."""
    stalled = NOW - timedelta(seconds=STALE_AFTER * 1.5)
    w = World({"a": {HEARTBEAT_AT: stalled}, "b": {HEARTBEAT_AT: stalled}})
    w.user("ana", {"a": 1})
    w.user("ben", {"b": 1})
    report = w.run()
    assert report.reaps_deferred == 2 and report.sessions_reaped == 0
    assert all(s[IS_ACTIVE] for s in w.members.sessions.values())
    later = w.run(NOW + timedelta(seconds=STALE_AFTER * ALL_STALE_PATIENCE))
    assert later.reaps_deferred == 0 and later.sessions_reaped == 2


def test_a_lost_instance_is_reaped_and_its_users_settled() -> None:
    """Its sessions end at its last heartbeat and leave their members; a user it held alone goes
    offline (one event, reason instance_lost), a user with sockets elsewhere stays online with
    fewer devices; sessions of live instances are untouched."""
    w = world()
    w.user("ana", {"dead": 2})
    w.user("ben", {"dead": 1, "live": 1})
    report = w.run()

    assert w.lost.presence["ana"] == {STATE: OFFLINE, DEVICES: 0, LAST_SEEN_AT: BEAT}
    assert w.lost.holders["ana"][HOLDERS] == {} and w.lost.holders["ana"][SEQ] == 2
    assert w.lost.presence["ben"] == {STATE: ONLINE, DEVICES: 1}
    assert w.lost.holders["ben"][HOLDERS] == {"live": 1}
    for session_id in ("ana-dead-0", "ana-dead-1", "ben-dead-0"):
        session = w.members.sessions[session_id]
        assert (session[IS_ACTIVE], session[DISCONNECTED_AT], session[CLOSE_CODE]) == (
            False,
            BEAT,
            None,
        )
    assert w.members.sessions["ben-live-0"][IS_ACTIVE] is True
    assert w.members.members["ana"][ACTIVE_SESSIONS] == {}
    assert list(w.members.members["ben"][ACTIVE_SESSIONS]) == ["ben-live-0"]
    assert [e.body() for e in w.publisher.events] == [
        {
            "user_id": "ana",
            "state": OFFLINE,
            "reason": "instance_lost",
            "at": BEAT.isoformat(timespec="microseconds"),
            "devices": 0,
            "seq": 2,
        }
    ]
    assert (report.instances_reaped, report.sessions_reaped, report.users_offline) == (1, 3, 1)
    assert (report.presence_events_published, report.presence_event_failures) == (1, 0)
    assert report.ok and report.summary()["users_offline"] == 1


def test_a_second_run_changes_nothing() -> None:
    """Reaping is idempotent: a later run finds no active session left, writes nothing and
    publishes nothing."""
    w = world()
    w.user("ana", {"dead": 1})
    w.run()
    before = (repr(w.lost.holders), repr(w.lost.presence), repr(w.members.sessions))
    report = w.run(NOW + timedelta(minutes=1))
    assert (repr(w.lost.holders), repr(w.lost.presence), repr(w.members.sessions)) == before
    assert len(w.publisher.events) == 1
    assert (report.instances_reaped, report.sessions_reaped, report.users_offline) == (0, 0, 0)


def test_live_restarted_and_forgotten_instances_are_left_alone() -> None:
    """An instance beating now (also one restarted under a lost one's id) and one whose last
    heartbeat is older than the lookback keep their sessions."""
    w = World({"live": {HEARTBEAT_AT: NOW}, "old": {HEARTBEAT_AT: NOW - timedelta(hours=2)}})
    w.user("ana", {"live": 1})
    w.user("ben", {"old": 1})
    report = w.run()
    assert w.members.sessions["ana-live-0"][IS_ACTIVE] is True
    assert w.members.sessions["ben-old-0"][IS_ACTIVE] is True
    assert report.sessions_reaped == 0 and not w.publisher.events


def test_a_stopped_instance_is_left_to_its_own_drain() -> None:
    """A stopped instance's entry keeps no heartbeat: the reaper does not look at it (no
    query per stopped instance per run), whatever its sessions say."""
    w = World({"gone": {HEARTBEAT_AT: NOW - timedelta(seconds=30), STOPPED_AT: NOW}})
    w.user("ana", {"gone": 1})
    report = w.run()
    assert report.instances_reaped == 0 and report.sessions_reaped == 0
    assert w.members.sessions["ana-gone-0"][IS_ACTIVE] is True


def test_a_user_whose_record_does_not_name_the_instance_only_loses_sessions() -> None:
    """Sessions still marked active on a lost instance end even when the user's holders record
    no longer names it; the presence decision then changes nothing."""
    w = world()
    w.user("ana", {"live": 1})
    w.members.connect(SessionRef("ana", "ana-dead-0", "dead"))
    w.run()
    assert w.members.sessions["ana-dead-0"][IS_ACTIVE] is False
    assert w.lost.presence["ana"] == {STATE: ONLINE, DEVICES: 1}
    assert not w.publisher.events


def test_a_failed_publish_is_counted_not_retried_and_does_not_fail_the_run() -> None:
    """Pub/Sub down: the transition is still written, the event is counted as failed, the run
    stays ok, and the next run does not publish it again."""
    w = world()
    w.user("ana", {"dead": 1})
    w.publisher.failing = True
    report = w.run()
    assert w.lost.presence["ana"][STATE] == OFFLINE
    assert (report.presence_events_published, report.presence_event_failures) == (0, 1)
    assert report.ok
    w.publisher.failing = False
    w.run(NOW + timedelta(minutes=1))
    assert w.publisher.events == []


def test_a_failed_instance_is_left_for_the_next_run_and_the_sign_out_pass_goes_on() -> None:
    """A settling transaction that fails leaves that instance's sessions active (the next run
    retries), is counted, and neither stops other instances nor the sign-out pass."""
    w = World({"bad": {HEARTBEAT_AT: BEAT}, "dead": {HEARTBEAT_AT: BEAT}})
    w.user("ana", {"bad": 1})
    w.user("ben", {"dead": 1})
    w.user("cy", {}, last_pong=NOW - timedelta(hours=4))
    w.lost.fail_settle = {"ana"}
    report = w.run()
    assert w.members.sessions["ana-bad-0"][IS_ACTIVE] is True
    assert w.members.sessions["ben-dead-0"][IS_ACTIVE] is False
    assert report.reap_failures == 1 and report.instances_reaped == 1
    assert report.signed_out_users == ["cy"] and report.ok
    w.lost.fail_settle = set()
    w.run(NOW + timedelta(minutes=1))
    assert w.members.sessions["ana-bad-0"][IS_ACTIVE] is False


def test_a_user_whose_settling_fails_holds_back_only_their_own_sessions() -> None:
    """When a batch's transaction fails (one churning user's record contends), each user is
    settled alone: the others' sessions end this run, the failing user's wait for the next."""
    w = world()
    w.user("ana", {"dead": 1})
    w.user("ben", {"dead": 2})
    w.user("cy", {"dead": 1, "live": 1})
    w.lost.fail_settle = {"ana"}
    report = w.run()
    assert w.lost.settled[0] == ["ana", "ben", "cy"]
    assert sorted(w.lost.settled[1:]) == [["ana"], ["ben"], ["cy"]]
    assert w.members.sessions["ana-dead-0"][IS_ACTIVE] is True
    assert [w.members.sessions[f"ben-dead-{n}"][IS_ACTIVE] for n in (0, 1)] == [False, False]
    assert w.lost.presence["ben"][STATE] == OFFLINE and w.lost.presence["cy"][STATE] == ONLINE
    assert report.reap_failures == 1 and report.sessions_reaped == 3
    assert report.instances_reaped == 1 and report.users_offline == 1
    w.lost.fail_settle = set()
    w.run(NOW + timedelta(minutes=1))
    assert w.members.sessions["ana-dead-0"][IS_ACTIVE] is False


def test_when_a_whole_wave_of_users_fails_alone_the_rest_wait_for_the_next_run() -> None:
    """Firestore failing every transaction costs one wave of single-user attempts, not one
    per user: the users after the failed wave are left, counted, for the next run."""
    w = world()
    users = [f"u{n:02}" for n in range(20)]
    for user in users:
        w.user(user, {"dead": 1})
    w.lost.fail_settle = set(users)
    report = w.run()
    assert len(w.lost.settled) == 1 + SETTLE_ALONE_CONCURRENCY
    assert report.reap_failures == 20 and report.sessions_reaped == 0
    w.lost.fail_settle = set()
    assert w.run(NOW + timedelta(minutes=1)).sessions_reaped == 20


def test_an_instance_that_beats_again_during_the_run_is_not_reaped() -> None:
    """The run read the registry with ``dead`` stale; by the time its page is reaped it has
    caught up and beaten again (its writes had only lagged): its sessions and presence stay."""

    class Caught(MemoryInstances):
        def entries(self, instance_ids: Sequence[str]) -> dict[str, InstanceEntry]:
            return {i: InstanceEntry(NOW) for i in instance_ids}

    w = world()
    w.instances = Caught(w.instances.instances)
    w.user("ana", {"dead": 1})
    report = w.run()
    assert w.members.sessions["ana-dead-0"][IS_ACTIVE] is True
    assert w.lost.settled == [] and w.lost.presence["ana"][STATE] == ONLINE
    assert report.sessions_reaped == 0 and report.reap_failures == 0


def test_an_unreadable_registry_skips_the_reaper_only() -> None:
    """A registry read that fails is counted; the sign-out pass still runs."""

    class Down(MemoryInstances):
        def recent(self, since: datetime) -> dict[str, InstanceEntry]:
            raise RuntimeError("injected: Firestore unavailable")

    w = world()
    w.instances = Down(w.instances.instances)
    w.user("cy", {}, last_pong=NOW - timedelta(hours=4))
    report = w.run()
    assert report.reap_failures == 1
    assert report.signed_out_users == ["cy"]


def test_the_reaper_runs_before_the_sign_out_pass() -> None:
    """A user of a lost instance whose pong deadline passed too is settled offline by the
    reaper (reason instance_lost) before the sign-out pass ends their sessions unseen."""
    w = world()
    w.user("ana", {"dead": 1}, last_pong=NOW - timedelta(hours=4))
    report = w.run()
    assert report.signed_out_users == ["ana"]
    assert w.lost.presence["ana"][STATE] == OFFLINE
    assert [e.reason for e in w.publisher.events] == ["instance_lost"]


def test_pages_and_transactions_cover_every_session_and_user() -> None:
    """Small pages and transactions: every session ends, each user is settled in a transaction
    of at most the given size."""
    w = world()
    for n in range(7):
        w.user(f"u{n}", {"dead": 2})
    report = SweepReport("r", NOW, NOW)
    reap(
        w.instances,
        w.lost,
        w.publisher,
        NOW,
        report,
        stale_after=STALE_AFTER,
        lookback=3600,
        page_size=3,
        users_per_transaction=2,
    )
    assert report.sessions_reaped == 14 and report.users_offline == 7
    assert max(len(users) for users in w.lost.settled) <= 2
    assert all(not s[IS_ACTIVE] for s in w.members.sessions.values())
    assert sorted(e.user_id for e in w.publisher.events) == [f"u{n}" for n in range(7)]


def test_the_publish_request_carries_json_and_filter_attributes() -> None:
    """Each event is one message: its JSON body as base64 data, user_id and state as
    attributes; the emulator is addressed over plain HTTP."""
    w = world()
    w.user("ana", {"dead": 1})
    w.run()
    (message,) = publish_body(w.publisher.events)["messages"]
    assert json.loads(base64.b64decode(message["data"])) == w.publisher.events[0].body()
    assert message["attributes"] == {"user_id": "ana", "state": OFFLINE}
    publisher = PubSubPublisher("demo-p", "presence-events", "127.0.0.1:8085")
    assert (
        publisher.url == "http://127.0.0.1:8085/v1/projects/demo-p/topics/presence-events:publish"
    )
    assert PubSubPublisher("p", "t").url.startswith("https://pubsub.googleapis.com/v1/")


PRODUCTION = {"GOOGLE_CLOUD_PROJECT": "prod-proj"}


def test_reaper_settings_default_and_are_read() -> None:
    """REAP_LOOKBACK defaults to an hour; PRESENCE_EVENTS_TOPIC is published to in
    PUBSUB_PROJECT when set, else in the project."""
    default = SweepSettings.from_env(PRODUCTION)
    assert (default.reap_lookback, default.presence_events_topic) == (3600.0, "")
    settings = SweepSettings.from_env(
        {**PRODUCTION, "REAP_LOOKBACK": "7200", "PRESENCE_EVENTS_TOPIC": "presence-events"}
    )
    assert (settings.reap_lookback, settings.pubsub_project) == (7200.0, "prod-proj")
    other = SweepSettings.from_env(
        {**PRODUCTION, "PRESENCE_EVENTS_TOPIC": "evt", "PUBSUB_PROJECT": "events-proj"}
    )
    assert other.pubsub_project == "events-proj"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"PRESENCE_EVENTS_TOPIC": "9bad"}, "PRESENCE_EVENTS_TOPIC"),
        ({"REAP_LOOKBACK": "180"}, "REAP_LOOKBACK"),
        ({"REAP_LOOKBACK": "600", "SWEEP_INTERVAL": "300"}, "REAP_LOOKBACK"),
        (
            {"PRESENCE_EVENTS_TOPIC": "evt", "PUBSUB_EMULATOR_HOST": "10.0.0.1:8085"},
            "PUBSUB_EMULATOR_HOST",
        ),
    ],
)
def test_bad_reaper_settings_are_refused(env: dict[str, str], name: str) -> None:
    """A topic that is no topic id, a lookback no longer than the stale bound, and the Pub/Sub
    emulator for a production project's events are refused, naming the variable."""
    with pytest.raises(SweepConfigError) as caught:
        SweepSettings.from_env({**PRODUCTION, **env})
    assert caught.value.name == name


def test_the_pubsub_emulator_is_ignored_without_a_topic() -> None:
    """Without PRESENCE_EVENTS_TOPIC the sweep publishes nothing, so PUBSUB_EMULATOR_HOST is
    neither followed nor refused."""
    settings = SweepSettings.from_env({**PRODUCTION, "PUBSUB_EMULATOR_HOST": "10.0.0.1:8085"})
    assert (settings.pubsub_emulator_host, settings.emulators_allowed) == ("", ())
