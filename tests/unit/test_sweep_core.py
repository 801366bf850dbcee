"""The sweep's decisions and ordering, with in-memory fakes (the emulator tests prove the rest)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from presence_sweep.core import sweep
from presence_sweep.decision import (
    ClaimDecision,
    InstanceEntry,
    SessionRef,
    decide_claim,
    group_by_instance,
    lag_allowances,
)
from presence_sweep.exceptions import AuthRevokeError, CallbackError
from presence_sweep.schema import (
    HEARTBEAT_AT,
    INTERNAL_URL,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    PONG_BACKLOG_SECONDS,
    SHARD,
    SIGN_OUT_CLAIM,
    STOPPED_AT,
    member_shard,
)
from tests.sweep_fakes import MemoryInstances, MemoryMembers

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
CUTOFF = NOW - timedelta(hours=3)


def member(**fields: Any) -> dict[str, Any]:
    return {IS_SIGNED_IN: True, LAST_PONG_AT: CUTOFF - timedelta(seconds=1), **fields}


def registry(**urls: str) -> MemoryInstances:
    """The instance registry with each named instance beating now at its internal URL."""
    return MemoryInstances({i: {HEARTBEAT_AT: NOW, INTERNAL_URL: url} for i, url in urls.items()})


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (member(), ClaimDecision(True, "expired")),
        (None, ClaimDecision(False, "member_deleted")),
        (member(is_signed_in=False), ClaimDecision(False, "already_signed_out")),
        (member(last_pong_at=CUTOFF), ClaimDecision(False, "pong_arrived")),
        (member(last_pong_at="yesterday"), ClaimDecision(False, "no_last_pong")),
        (
            member(sign_out_claim="other", sign_out_claimed_at=NOW - timedelta(seconds=10)),
            ClaimDecision(False, "claimed_by_other_sweep"),
        ),
        (
            member(sign_out_claim="dead", sign_out_claimed_at=NOW - timedelta(seconds=600)),
            ClaimDecision(True, "expired"),
        ),
    ],
)
def test_claim_decision(record: dict[str, Any] | None, expected: ClaimDecision) -> None:
    """Only a signed-in member whose last pong is still before the cutoff, unclaimed or with a
    stale claim, may be claimed."""
    assert decide_claim(record, CUTOFF, NOW, claim_ttl=300) == expected


def test_sessions_are_grouped_per_gateway_instance() -> None:
    """One callback per instance, at the registry's URL, else at the one an older gateway
    recorded with the session; instances with neither are named as unaddressed."""
    refs = [
        SessionRef("a", "1", "i1"),
        SessionRef("b", "2", "i2", legacy_url="http://old2"),
        SessionRef("a", "3", "i1", legacy_url="http://old1"),
        SessionRef("c", "4", "i3"),
    ]
    assert group_by_instance(refs, {"i1": "http://g1"}) == (
        {"http://g1": [refs[0], refs[2]], "http://old2": [refs[1]]},
        {"i3"},
    )


def test_a_gateway_url_takes_every_session() -> None:
    """With the service URL set, one callback carries every session, addressed or not."""
    refs = [SessionRef("a", "1", "i1"), SessionRef("c", "4", "i3", legacy_url="http://old")]
    assert group_by_instance(refs, {"i1": "http://g1"}, "https://svc") == (
        {"https://svc": refs},
        set(),
    )


class FakeStore(MemoryMembers):
    """The in-memory member store held to FirestoreMembers by
    tests/integration/test_sweep_store_contract.py, with ``sessions`` recorded on their members
    as the gateway records them, and the released user ids kept."""

    def __init__(self, members: dict[str, dict[str, Any]], sessions: list[SessionRef]) -> None:
        for user_id, doc in members.items():
            # As the gateway's connect write records it: the sweep queries shard by shard.
            doc.setdefault(SHARD, member_shard(user_id))
        super().__init__(members)
        self.released: list[str] = []
        for ref in sessions:
            self.connect(ref)

    def release(self, user_ids: Sequence[str], sweep_id: str) -> None:
        self.released.extend(user_ids)
        super().release(user_ids, sweep_id)


class FakeAuth:
    def __init__(self, failing: set[str] = frozenset(), missing: set[str] = frozenset()) -> None:
        self.failing, self.missing = failing, missing
        self.revoked: list[str] = []

    def revoke(self, user_id: str) -> bool:
        if user_id in self.failing:
            raise AuthRevokeError("down")
        if user_id in self.missing:
            return False
        self.revoked.append(user_id)
        return True


class FakeNotifier:
    def __init__(self, down: set[str] = frozenset()) -> None:
        self.down = down
        self.calls: list[tuple[str, list[str]]] = []

    def notify(self, internal_url: str, sessions: Sequence[SessionRef], now: datetime) -> int:
        if internal_url in self.down:
            raise CallbackError("unreachable")
        self.calls.append((internal_url, [s.session_id for s in sessions]))
        return len(sessions)


def test_sweep_signs_out_expired_users_and_notifies_each_instance_once() -> None:
    """Expired users are revoked, signed out and called back per instance; others untouched."""
    store = FakeStore(
        {
            "old1": member(),
            "old2": member(),
            "fresh": member(last_pong_at=NOW),
            "gone": member(is_signed_in=False),
        },
        [SessionRef("old1", "s1", "i1"), SessionRef("old2", "s2", "i1")],
    )
    auth, notifier = FakeAuth(), FakeNotifier()
    report = sweep(
        store,
        auth,
        notifier,
        NOW,
        pong_timeout=3 * 3600,
        page_size=1,
        instances=registry(i1="http://g1"),
    )
    assert sorted(auth.revoked) == ["old1", "old2"]
    assert report.signed_out == 2 and report.examined == 2
    assert store.members["fresh"][IS_SIGNED_IN] and not store.members["old1"][IS_SIGNED_IN]
    assert sorted(notifier.calls) == [("http://g1", ["s1"]), ("http://g1", ["s2"])]
    assert report.ok and report.sockets_closed == 2


def test_auth_failure_leaves_the_user_signed_in_and_releases_the_claim() -> None:
    """A failed revoke never marks the user signed out; the report asks for a retry."""
    store = FakeStore({"u": member()}, [])
    report = sweep(store, FakeAuth(failing={"u"}), FakeNotifier(), NOW, pong_timeout=10800)
    assert store.members["u"][IS_SIGNED_IN] is True
    assert SIGN_OUT_CLAIM not in store.members["u"]
    assert store.released == ["u"]
    assert report.auth_failures == 1 and not report.ok


def test_user_unknown_to_auth_is_still_signed_out() -> None:
    """A member with no Auth account has no tokens to revoke; the sign-out goes ahead."""
    store = FakeStore({"u": member()}, [])
    report = sweep(store, FakeAuth(missing={"u"}), FakeNotifier(), NOW, pong_timeout=10800)
    assert report.signed_out == 1 and report.auth_user_missing == 1 and report.ok


def test_callback_failure_keeps_the_sign_out_and_fails_the_run() -> None:
    """An unreachable gateway does not undo the sign-out; the run reports failure."""
    store = FakeStore({"u": member()}, [SessionRef("u", "s", "i")])
    report = sweep(
        store,
        FakeAuth(),
        FakeNotifier(down={"http://down"}),
        NOW,
        pong_timeout=10800,
        instances=registry(i="http://down"),
    )
    assert store.members["u"][IS_SIGNED_IN] is False
    assert report.callback_failures == 1 and not report.ok


def test_nothing_expired_changes_nothing() -> None:
    """A sweep with no expired member makes no call at all."""
    store = FakeStore({"u": member(last_pong_at=NOW)}, [])
    auth, notifier = FakeAuth(), FakeNotifier()
    report = sweep(store, auth, notifier, NOW, pong_timeout=10800)
    assert (report.examined, report.signed_out, auth.revoked, notifier.calls) == (0, 0, [], [])
    assert store.members["u"] == {**member(last_pong_at=NOW), SHARD: member_shard("u")}


def test_naive_now_is_refused() -> None:
    """Time is always timezone-aware UTC."""
    with pytest.raises(ValueError, match="timezone-aware"):
        sweep(
            FakeStore({}, []),
            FakeAuth(),
            FakeNotifier(),
            datetime(2026, 1, 1),  # noqa: DTZ001
            pong_timeout=1,
        )


def test_stale_and_stopped_instances_are_skipped_and_unknown_ones_still_called() -> None:
    """A registry entry without a recent heartbeat (or stopped) is not called back; an instance
    with no registry entry is, at the URL an older gateway recorded on the member, since
    skipping a live one would leave its sockets open."""
    sessions = [
        SessionRef("a", "s1", "live"),
        SessionRef("b", "s2", "dead"),
        SessionRef("c", "s3", "stopped"),
        SessionRef("d", "s4", "unregistered", legacy_url="http://unregistered"),
    ]
    store = FakeStore({u: member() for u in "abcd"}, sessions)
    beat = NOW - timedelta(seconds=30)
    directory = MemoryInstances(
        {
            "live": {HEARTBEAT_AT: beat, INTERNAL_URL: "http://live"},
            "dead": {HEARTBEAT_AT: NOW - timedelta(minutes=10), INTERNAL_URL: "http://dead"},
            "stopped": {HEARTBEAT_AT: beat, STOPPED_AT: beat, INTERNAL_URL: "http://stopped"},
        }
    )
    notifier = FakeNotifier()
    report = sweep(
        store,
        FakeAuth(),
        notifier,
        NOW,
        pong_timeout=10800,
        instances=directory,
        instance_stale_after=180,
    )
    assert sorted(url for url, _ in notifier.calls) == ["http://live", "http://unregistered"]
    assert report.callbacks_skipped == {"stale instance": 2}
    assert report.signed_out == 4 and report.ok
    assert report.summary()["callbacks_skipped"] == {"stale instance": 2}


def test_an_instance_that_fails_is_not_called_again_in_the_run() -> None:
    """One page's failed callback marks the instance; later pages skip it, others go on."""
    sessions = [SessionRef(u, f"s{u}", "down") for u in "abc"] + [
        SessionRef(u, f"t{u}", "up") for u in "abc"
    ]
    store = FakeStore({u: member() for u in "abc"}, sessions)
    notifier = FakeNotifier(down={"http://down"})
    report = sweep(
        store,
        FakeAuth(),
        notifier,
        NOW,
        pong_timeout=10800,
        page_size=1,
        pages_in_flight=1,
        instances=registry(down="http://down", up="http://up"),
    )
    assert report.signed_out == 3
    assert [url for url, _ in notifier.calls] == ["http://up"] * 3
    assert report.callback_failures == 1 and not report.ok
    assert report.callbacks_skipped == {"failed earlier in this run": 2}


def test_a_slow_instance_does_not_hold_up_the_others() -> None:
    """Callbacks of one page go to every instance at once: the fast one is answered while the
    slow one still hangs."""
    fast_done = threading.Event()

    class SlowNotifier(FakeNotifier):
        def notify(self, internal_url: str, sessions: Sequence[SessionRef], now: datetime) -> int:
            if internal_url == "http://slow":
                # Hangs until the fast instance has been called (or fails the test by timing out).
                if not fast_done.wait(10):
                    raise CallbackError("the fast instance was never called")
                return super().notify(internal_url, sessions, now)
            count = super().notify(internal_url, sessions, now)
            fast_done.set()
            return count

    sessions = [SessionRef("a", "s1", "slow"), SessionRef("b", "s2", "fast")]
    store = FakeStore({"a": member(), "b": member()}, sessions)
    report = sweep(
        store,
        FakeAuth(),
        SlowNotifier(),
        NOW,
        pong_timeout=10800,
        instances=registry(slow="http://slow", fast="http://fast"),
    )
    assert report.ok and report.sockets_closed == 2


def test_one_query_serves_several_claim_pages() -> None:
    """Expired ids are fetched query_size at a time and claimed page_size at a time."""

    class CountingStore(FakeStore):
        limits: list[int] = []
        claimed_pages: list[int] = []

        def expired_page(
            self, cutoff: datetime, limit: int, after: Any | None
        ) -> tuple[list[str], Any | None]:
            self.limits.append(limit)
            return super().expired_page(cutoff, limit, after)

        def claim(self, user_ids: Sequence[str], *args: Any) -> dict[str, ClaimDecision]:
            self.claimed_pages.append(len(user_ids))
            return super().claim(user_ids, *args)

    store = CountingStore({f"u{i}": member() for i in range(7)}, [])
    report = sweep(
        store, FakeAuth(), FakeNotifier(), NOW, pong_timeout=10800, page_size=2, query_size=5
    )
    assert report.signed_out == 7
    assert store.limits == [5, 5]
    assert sorted(store.claimed_pages) == [1, 2, 2, 2]


class CountingInstances(MemoryInstances):
    """The registry, with each batched read's ids kept."""

    def __init__(self, instances: dict[str, dict[str, Any]]) -> None:
        super().__init__(instances)
        self.reads: list[list[str]] = []

    def entries(self, instance_ids: Sequence[str]) -> dict[str, InstanceEntry]:
        self.reads.append(list(instance_ids))
        return super().entries(instance_ids)


def test_instances_are_called_at_their_registry_url_read_once_per_run() -> None:
    """Members name only the instance: its URL comes from the registry, in one batched read
    per page for the instances not seen yet, and wins over a URL an older gateway recorded."""
    sessions = [
        SessionRef("a", "s1", "i1"),
        SessionRef("b", "s2", "i2"),
        SessionRef("c", "s3", "i1", legacy_url="http://moved"),
        SessionRef("c", "s4", "i2"),
    ]
    store = FakeStore({u: member() for u in "abc"}, sessions)
    directory = CountingInstances(
        {
            "i1": {HEARTBEAT_AT: NOW, INTERNAL_URL: "http://g1"},
            "i2": {HEARTBEAT_AT: NOW, INTERNAL_URL: "http://g2"},
        }
    )
    notifier = FakeNotifier()
    report = sweep(
        store,
        FakeAuth(),
        notifier,
        NOW,
        pong_timeout=10800,
        page_size=1,
        pages_in_flight=1,
        instances=directory,
    )
    assert sorted(notifier.calls) == [
        ("http://g1", ["s1"]),
        ("http://g1", ["s3"]),
        ("http://g2", ["s2"]),
        ("http://g2", ["s4"]),
    ]
    assert directory.reads == [["i1"], ["i2"]]
    assert report.ok and report.sockets_closed == 4


def test_an_instance_without_a_known_url_is_skipped_and_named() -> None:
    """A registered instance with no URL (nor one on the member) cannot be called: counted as
    skipped, while an instance whose entry lacks the URL but whose member has one is called."""
    sessions = [SessionRef("a", "s1", "bare"), SessionRef("b", "s2", "old", legacy_url="http://o")]
    store = FakeStore({"a": member(), "b": member()}, sessions)
    directory = MemoryInstances({"bare": {HEARTBEAT_AT: NOW}, "old": {HEARTBEAT_AT: NOW}})
    notifier = FakeNotifier()
    report = sweep(store, FakeAuth(), notifier, NOW, pong_timeout=10800, instances=directory)
    assert notifier.calls == [("http://o", ["s2"])]
    assert report.callbacks_skipped == {"no internal url": 1}
    assert report.ok and report.signed_out == 2


def test_an_unreadable_registry_fails_the_callbacks_it_would_have_addressed() -> None:
    """Without the registry an instance's URL is unknown: its callback counts as failed (the
    run asks for a retry), while a URL recorded by an older gateway is still called."""

    class DownInstances(MemoryInstances):
        def entries(self, instance_ids: Sequence[str]) -> dict[str, InstanceEntry]:
            raise ConnectionError("registry down")

    sessions = [SessionRef("a", "s1", "new"), SessionRef("b", "s2", "old", legacy_url="http://o")]
    store = FakeStore({"a": member(), "b": member()}, sessions)
    notifier = FakeNotifier()
    report = sweep(
        store, FakeAuth(), notifier, NOW, pong_timeout=10800, instances=DownInstances({})
    )
    assert notifier.calls == [("http://o", ["s2"])]
    assert report.callback_failures == 1 and not report.ok
    assert report.signed_out == 2


def test_lag_allowances_go_to_live_instances_whose_backlog_is_large() -> None:
    """A live instance with a backlog over the threshold gets its backlog plus its
    heartbeat's age; a healthy one, a stale one and a stopped one get none."""
    stale_before = NOW - timedelta(seconds=180)
    entries = {
        "lagging": InstanceEntry(NOW - timedelta(seconds=5), pong_backlog=40.0),
        "healthy": InstanceEntry(NOW, pong_backlog=0.2),
        "dead": InstanceEntry(NOW - timedelta(seconds=600), pong_backlog=40.0),
        "stopped": InstanceEntry(None, pong_backlog=40.0),
    }
    assert lag_allowances(entries, NOW, stale_before) == {"lagging": 45.0}


def test_a_lagging_instance_s_users_are_not_signed_out_while_within_its_backlog() -> None:
    """Records 20 s past the cutoff: the user held by an instance 40 s behind on its pong
    writes is skipped (instance_lagging) and keeps their tokens; the same age on a healthy
    instance, on a dead lagging one, or 60 s past the cutoff on the lagging one, is signed
    out. The lagging instance's own sessions are matched through active_sessions too."""
    late = CUTOFF - timedelta(seconds=20)
    sessions = [
        SessionRef("held", "s1", "lagging"),
        SessionRef("healthy", "s2", "healthy"),
        SessionRef("orphan", "s3", "dead"),
        SessionRef("silent", "s4", "lagging"),
    ]
    store = FakeStore(
        {
            "held": member(last_pong_at=late),
            "healthy": member(last_pong_at=late),
            "orphan": member(last_pong_at=late),
            "silent": member(last_pong_at=CUTOFF - timedelta(seconds=60)),
        },
        sessions,
    )
    directory = MemoryInstances(
        {
            "lagging": {HEARTBEAT_AT: NOW, INTERNAL_URL: "http://l", PONG_BACKLOG_SECONDS: 40.0},
            "healthy": {HEARTBEAT_AT: NOW, INTERNAL_URL: "http://h", PONG_BACKLOG_SECONDS: 0.2},
            "dead": {
                HEARTBEAT_AT: NOW - timedelta(hours=1),
                INTERNAL_URL: "http://d",
                PONG_BACKLOG_SECONDS: 40.0,
            },
        }
    )
    auth = FakeAuth()
    report = sweep(store, auth, FakeNotifier(), NOW, pong_timeout=10800, instances=directory)
    assert sorted(auth.revoked) == ["healthy", "orphan", "silent"]
    assert report.skipped["instance_lagging"] == 1
    assert store.members["held"][IS_SIGNED_IN] is True


def test_the_report_says_where_the_run_s_time_went() -> None:
    """Each phase's seconds are summed into the report, so a slow run shows its slow phase."""

    class SlowAuth(FakeAuth):
        def revoke(self, user_id: str) -> bool:
            ticks.append(5.0)  # Auth took 5 s for this user
            return super().revoke(user_id)

    ticks: list[float] = []
    elapsed = 0.0

    def clock() -> float:
        nonlocal elapsed
        elapsed += sum(ticks)
        ticks.clear()
        return elapsed

    store = FakeStore({"old1": member(), "old2": member()}, [SessionRef("old1", "s1", "i1")])
    report = sweep(
        store,
        SlowAuth(),
        FakeNotifier(),
        NOW,
        pong_timeout=3 * 3600,
        instances=registry(i1="http://g1"),
        auth_concurrency=1,
        clock=clock,
    )
    phases = report.summary()["phase_seconds"]
    assert phases["revoke"] == 10.0
    assert set(phases) == {"registry", "query", "claim", "revoke", "finalize", "callbacks"}
    assert sum(phases.values()) == report.duration_seconds == 10.0
