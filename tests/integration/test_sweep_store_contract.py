"""One contract for the sweep's store adapters, run against both backends: the in-memory fakes
the unit tests use (``tests/sweep_fakes.py``) and ``FirestoreMembers`` / ``FirestoreInstances``
against the Firestore emulator.

Covers every method of ``MemberStore`` (``expired_page``, ``claim``, ``release``, ``finalize``)
and of ``InstanceDirectory`` (``entries``). Each Firestore test runs in a project of its own,
so the member query sees only what the test wrote.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from presence_sweep.adapters import FirestoreInstances, FirestoreMembers
from presence_sweep.core import InstanceDirectory, MemberStore
from presence_sweep.decision import ClaimDecision, InstanceEntry, SessionRef
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
    MEMBER_SHARDS,
    MEMBERS,
    PONG_BACKLOG_SECONDS,
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
from tests.sweep_fakes import MemoryInstances, MemoryMembers

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
CUTOFF = NOW - timedelta(hours=3)
CLAIM_TTL = 300.0
SWEEP = "sweep-a"


@dataclass
class Backend:
    members: MemberStore
    instances: InstanceDirectory
    #: Store a whole document, as the gateway (or a test's setup) would have written it.
    put: Callable[[str, str, dict[str, Any]], None]
    #: The stored document, None when absent.
    read: Callable[[str, str], dict[str, Any] | None]


@pytest.fixture(params=["memory", "firestore"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        docs: dict[str, dict[str, dict[str, Any]]] = {MEMBERS: {}, SESSIONS: {}, INSTANCES: {}}

        def put_memory(collection: str, doc_id: str, doc: dict[str, Any]) -> None:
            docs[collection][doc_id] = dict(doc)

        yield Backend(
            MemoryMembers(docs[MEMBERS], docs[SESSIONS]),
            MemoryInstances(docs[INSTANCES]),
            put_memory,
            lambda collection, doc_id: docs[collection].get(doc_id),
        )
        return
    request.getfixturevalue("firestore_client")  # sets FIRESTORE_EMULATOR_HOST
    from google.cloud import firestore

    client = firestore.Client(project=f"demo-sweep-{uuid.uuid4().hex[:10]}")

    def put_firestore(collection: str, doc_id: str, doc: dict[str, Any]) -> None:
        client.collection(collection).document(doc_id).set(doc)

    def read_firestore(collection: str, doc_id: str) -> dict[str, Any] | None:
        snapshot = client.collection(collection).document(doc_id).get()
        return snapshot.to_dict() if snapshot.exists else None

    yield Backend(
        FirestoreMembers(client), FirestoreInstances(client), put_firestore, read_firestore
    )
    client.close()


def member(last_pong: Any = CUTOFF - timedelta(seconds=1), **fields: Any) -> dict[str, Any]:
    return {IS_SIGNED_IN: True, LAST_PONG_AT: last_pong, UPDATED_AT: CUTOFF, **fields}


def where(instance: str) -> dict[str, str]:
    return {INSTANCE_ID: instance}


# --- expired_page -------------------------------------------------------------------------------


def in_shard(doc: dict[str, Any], shard: int = 0) -> dict[str, Any]:
    """``doc`` with a shard, as the gateway's connect write records one."""
    return {**doc, SHARD: shard}


def test_expired_page_lists_signed_in_members_past_the_cutoff_oldest_first(
    backend: Backend,
) -> None:
    """Only signed-in members with a timestamp last_pong_at strictly before the cutoff, in
    last_pong_at order (ties by user id); the cursor is None on a page shorter than the limit."""
    hour = timedelta(hours=1)
    for user_id, doc in {
        "b": member(CUTOFF - 2 * hour),
        "a": member(CUTOFF - 3 * hour),
        "d": member(CUTOFF - hour),
        "c": member(CUTOFF - hour),
        "claimed": member(CUTOFF - hour / 2, **{SIGN_OUT_CLAIM: "x", SIGN_OUT_CLAIMED_AT: NOW}),
        "at-cutoff": member(CUTOFF),
        "fresh": member(NOW),
        "signed-out": member(CUTOFF - 3 * hour, **{IS_SIGNED_IN: False}),
        "text-pong": member("2020-01-01T00:00:00Z"),
    }.items():
        backend.put(MEMBERS, user_id, in_shard(doc))
    backend.put(MEMBERS, "no-pong", in_shard({IS_SIGNED_IN: True}))

    ids, cursor = backend.members.expired_page(CUTOFF, 10, None)
    assert ids == ["a", "b", "c", "d", "claimed"]
    assert cursor is None


def test_expired_page_cursor_walks_every_page_once(backend: Backend) -> None:
    """Pages of two follow each other without gap or repeat; a full last page still returns a
    cursor, and the page after it is empty."""
    for n in range(6):
        backend.put(MEMBERS, f"u{n}", in_shard(member(CUTOFF - timedelta(minutes=10 - n))))
    assert walk(backend, 2) == [["u0", "u1"], ["u2", "u3"], ["u4", "u5"], []]


def walk(backend: Backend, limit: int) -> list[list[str]]:
    """Every page of expired members, from the first to the one the cursor ends on."""
    pages: list[list[str]] = []
    cursor: Any | None = None
    while True:
        ids, cursor = backend.members.expired_page(CUTOFF, limit, cursor)
        pages.append(ids)
        if cursor is None:
            return pages


def test_expired_page_fills_pages_from_one_shard_after_the_other(backend: Backend) -> None:
    """Shards in ascending order, each oldest first: a page takes up where the last one
    stopped, within a shard or across empty ones, down to the last shard."""
    minute = timedelta(minutes=1)
    for user_id, shard, last_pong in [
        ("late-in-0", 0, CUTOFF - minute),
        ("early-in-0", 0, CUTOFF - 9 * minute),
        ("in-1", 1, CUTOFF - 20 * minute),
        ("early-in-57", 57, CUTOFF - 8 * minute),
        ("late-in-57", 57, CUTOFF - 2 * minute),
        ("fresh-in-57", 57, NOW),
        ("last", MEMBER_SHARDS - 1, CUTOFF - 30 * minute),
    ]:
        backend.put(MEMBERS, user_id, in_shard(member(last_pong), shard))

    assert walk(backend, 3) == [
        ["early-in-0", "late-in-0", "in-1"],
        ["early-in-57", "late-in-57", "last"],
        [],
    ]
    assert walk(backend, 100) == [
        ["early-in-0", "late-in-0", "in-1", "early-in-57", "late-in-57", "last"]
    ]


def test_expired_page_misses_members_without_a_valid_shard(backend: Backend) -> None:
    """A member written before the shard field (or with a shard no query names) is in no page:
    presence_sweep.backfill gives it one."""
    backend.put(MEMBERS, "sharded", in_shard(member(), member_shard("sharded")))
    backend.put(MEMBERS, "before-shards", member())
    backend.put(MEMBERS, "past-the-last", in_shard(member(), MEMBER_SHARDS))
    backend.put(MEMBERS, "negative", in_shard(member(), -1))
    backend.put(MEMBERS, "text", {**member(), SHARD: "0"})

    assert backend.members.expired_page(CUTOFF, 10, None) == (["sharded"], None)


# --- claim --------------------------------------------------------------------------------------


def test_claim_decides_on_a_fresh_read_and_marks_only_the_claimed(backend: Backend) -> None:
    """Expired members and stale claims are claimed (this sweep's id and time written); fresh,
    signed-out, missing and freshly-claimed-elsewhere members are not, and stay as they were."""
    held = {SIGN_OUT_CLAIM: "sweep-b", SIGN_OUT_CLAIMED_AT: NOW - timedelta(seconds=10)}
    stale = {SIGN_OUT_CLAIM: "dead", SIGN_OUT_CLAIMED_AT: NOW - timedelta(seconds=600)}
    seeded = {
        "expired": member(),
        "fresh": member(CUTOFF),
        "signed-out": member(**{IS_SIGNED_IN: False}),
        "held": member(**held),
        "stale": member(**stale),
    }
    for user_id, doc in seeded.items():
        backend.put(MEMBERS, user_id, doc)

    decisions = backend.members.claim([*seeded, "missing"], SWEEP, CUTOFF, NOW, CLAIM_TTL)

    assert decisions == {
        "expired": ClaimDecision(True, "expired"),
        "fresh": ClaimDecision(False, "pong_arrived"),
        "signed-out": ClaimDecision(False, "already_signed_out"),
        "held": ClaimDecision(False, "claimed_by_other_sweep"),
        "stale": ClaimDecision(True, "expired"),
        "missing": ClaimDecision(False, "member_deleted"),
    }
    mine = {SIGN_OUT_CLAIM: SWEEP, SIGN_OUT_CLAIMED_AT: NOW}
    assert backend.read(MEMBERS, "expired") == {**seeded["expired"], **mine}
    assert backend.read(MEMBERS, "stale") == {**seeded["stale"], **mine}
    for unchanged in ("fresh", "signed-out", "held"):
        assert backend.read(MEMBERS, unchanged) == seeded[unchanged]
    assert backend.read(MEMBERS, "missing") is None


# --- release ------------------------------------------------------------------------------------


def test_release_drops_only_this_sweeps_claims(backend: Backend) -> None:
    """Released members lose this sweep's claim fields and nothing else; another sweep's claim
    and a missing member are left alone."""
    theirs = member(**{SIGN_OUT_CLAIM: "sweep-b", SIGN_OUT_CLAIMED_AT: NOW})
    backend.put(MEMBERS, "mine", member())
    backend.put(MEMBERS, "theirs", theirs)
    assert backend.members.claim(["mine"], SWEEP, CUTOFF, NOW, CLAIM_TTL)["mine"].claim

    backend.members.release(["mine", "theirs", "missing"], SWEEP)

    assert backend.read(MEMBERS, "mine") == member()
    assert backend.read(MEMBERS, "theirs") == theirs
    assert backend.read(MEMBERS, "missing") is None


# --- finalize -----------------------------------------------------------------------------------


def test_finalize_signs_out_this_sweeps_members_and_their_sessions(backend: Backend) -> None:
    """A member claimed by this sweep is signed out (is_signed_in false, last_sign_out_at and
    updated_at now; active_sessions and the claim removed) and each of its sessions marked
    inactive and signed out, a session document missing until now included; members claimed by
    another sweep or by none are not touched or returned. Each session comes back with its
    instance, and with the URL an older gateway recorded beside it where there is one."""
    legacy = {**where("i1"), INTERNAL_URL: "http://old-i1"}
    sessions = {"s1": where("i1"), "s2": where("i2"), "s3": legacy}
    backend.put(MEMBERS, "mine", member(**{ACTIVE_SESSIONS: sessions}))
    for session_id in ("s1", "s2"):
        backend.put(
            SESSIONS,
            session_id,
            {USER_ID: "mine", IS_ACTIVE: True, CONNECTED_AT: CUTOFF, **sessions[session_id]},
        )
    others = {
        "theirs": member(
            **{SIGN_OUT_CLAIM: "sweep-b", SIGN_OUT_CLAIMED_AT: NOW, ACTIVE_SESSIONS: {}}
        ),
        "unclaimed": member(**{ACTIVE_SESSIONS: {"t1": where("i1")}}),
    }
    for user_id, doc in others.items():
        backend.put(MEMBERS, user_id, doc)
    assert backend.members.claim(["mine"], SWEEP, CUTOFF, NOW, CLAIM_TTL)["mine"].claim
    later = NOW + timedelta(seconds=5)

    done, refs = backend.members.finalize(["mine", "theirs", "unclaimed", "missing"], SWEEP, later)

    assert done == ["mine"]
    assert sorted(refs, key=lambda r: r.session_id) == [
        SessionRef("mine", "s1", "i1"),
        SessionRef("mine", "s2", "i2"),
        SessionRef("mine", "s3", "i1", legacy_url="http://old-i1"),
    ]
    assert backend.read(MEMBERS, "mine") == {
        IS_SIGNED_IN: False,
        LAST_PONG_AT: CUTOFF - timedelta(seconds=1),
        LAST_SIGN_OUT_AT: later,
        UPDATED_AT: later,
    }
    for session_id in ("s1", "s2"):
        assert backend.read(SESSIONS, session_id) == {
            USER_ID: "mine",
            CONNECTED_AT: CUTOFF,
            **sessions[session_id],
            IS_ACTIVE: False,
            SIGNED_OUT_AT: later,
        }
    assert backend.read(SESSIONS, "s3") == {IS_ACTIVE: False, SIGNED_OUT_AT: later}
    for user_id, doc in others.items():
        assert backend.read(MEMBERS, user_id) == doc
    assert backend.read(SESSIONS, "t1") is None
    assert backend.read(MEMBERS, "missing") is None


def test_finalize_of_a_member_without_sessions_returns_none(backend: Backend) -> None:
    """A claimed member with no active_sessions map is signed out with no session to call."""
    backend.put(MEMBERS, "alone", member())
    backend.members.claim(["alone"], SWEEP, CUTOFF, NOW, CLAIM_TTL)
    assert backend.members.finalize(["alone"], SWEEP, NOW) == (["alone"], [])
    stored = backend.read(MEMBERS, "alone")
    assert stored is not None and stored[IS_SIGNED_IN] is False


# --- entries -----------------------------------------------------------------------------------


def test_entries_report_beats_and_urls_and_omit_unknown_instances(backend: Backend) -> None:
    """A registered instance's last heartbeat (None for one that stopped or has no timestamp
    heartbeat) and internal URL ("" for none, or one that is no string); ids without a
    registry entry are absent."""
    beat = NOW - timedelta(seconds=30)
    backend.put(INSTANCES, "live", {INTERNAL_URL: "http://live", HEARTBEAT_AT: beat})
    backend.put(
        INSTANCES, "stopped", {INTERNAL_URL: "http://s", HEARTBEAT_AT: beat, STOPPED_AT: NOW}
    )
    backend.put(INSTANCES, "no-beat", {INTERNAL_URL: "http://no-beat"})
    backend.put(INSTANCES, "text-beat", {HEARTBEAT_AT: "recently", INTERNAL_URL: 8000})

    found = backend.instances.entries(["live", "stopped", "no-beat", "text-beat", "unknown"])

    assert found == {
        "live": InstanceEntry(beat, "http://live"),
        "stopped": InstanceEntry(None, "http://s"),
        "no-beat": InstanceEntry(None, "http://no-beat"),
        "text-beat": InstanceEntry(None, ""),
    }


def test_recent_lists_instances_beating_since_with_their_pong_backlog(backend: Backend) -> None:
    """recent(since): the instances whose heartbeat is at or after ``since``, with the pong
    backlog their heartbeat carried (0 when absent or not a number)."""
    backend.put(
        INSTANCES,
        "lagging",
        {HEARTBEAT_AT: NOW, INTERNAL_URL: "http://l", PONG_BACKLOG_SECONDS: 42.5},
    )
    backend.put(INSTANCES, "plain", {HEARTBEAT_AT: NOW - timedelta(seconds=10)})
    backend.put(INSTANCES, "odd", {HEARTBEAT_AT: NOW, PONG_BACKLOG_SECONDS: "lots"})
    backend.put(INSTANCES, "old", {HEARTBEAT_AT: NOW - timedelta(hours=1)})

    found = backend.instances.recent(NOW - timedelta(seconds=10))

    assert found == {
        "lagging": InstanceEntry(NOW, "http://l", 42.5),
        "plain": InstanceEntry(NOW - timedelta(seconds=10), ""),
        "odd": InstanceEntry(NOW, ""),
    }


def test_expired_page_resumes_in_a_dense_shard_reached_inside_a_round(backend: Backend) -> None:
    """Shards queried together in a round: a page that fills in the round's second shard
    resumes there, and nothing is skipped or repeated past it."""
    minute = timedelta(minutes=1)
    backend.put(MEMBERS, "alone-in-0", in_shard(member(CUTOFF - 50 * minute), 0))
    for n in range(5):
        backend.put(MEMBERS, f"dense-{n}", in_shard(member(CUTOFF - (20 - n) * minute), 2))
    backend.put(MEMBERS, "in-40", in_shard(member(CUTOFF - minute), 40))
    assert walk(backend, 3) == [
        ["alone-in-0", "dense-0", "dense-1"],
        ["dense-2", "dense-3", "dense-4"],
        ["in-40"],
    ]
