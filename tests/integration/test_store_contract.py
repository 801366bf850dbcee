"""One contract for :class:`gateway.storage.store.Store`, run against both backends:
``MemoryStore`` (what the unit tests use) and ``FirestoreStore`` against the Firestore emulator
(what runs).

Every method of the protocol is covered: ``commit`` (merge semantics, nested maps, deletes,
values, atomicity) and the reads ``get_member``, ``get_members``, ``get_instances``,
``recent_instances``, ``signed_out_sessions``, and ``close``. Each Firestore test runs in a
project of its own, so the collection queries see only what the test wrote.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.exceptions import WriteRejected
from gateway.storage.firestore_store import FirestoreStore
from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    CONNECTED_AT,
    DISCONNECTED_AT,
    HEARTBEAT_AT,
    INSTANCE_ID,
    INSTANCES,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_CONNECTED_AT,
    LAST_PONG_AT,
    LAST_SIGN_OUT_AT,
    MEMBERS,
    PONG_BACKLOG_SECONDS,
    SESSIONS,
    SHARD,
    SIGNED_OUT_AT,
    STARTED_AT,
    STOPPED_AT,
    UPDATED_AT,
    USER_ID,
    member_shard,
)
from gateway.storage.store import (
    DELETE_FIELD,
    READ_TIMEOUT,
    MemoryStore,
    SignedOutSession,
    Store,
    Write,
    connect_writes,
    disconnect_writes,
    instance_write,
    pong_write,
    sign_out_writes,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BACKENDS = ["memory", "firestore"]


@dataclass
class Backend:
    store: Store
    #: The stored document as the backend holds it (None when absent), read around the store.
    read: Callable[[str, str], dict[str, Any] | None]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        memory = MemoryStore()

        def read_memory(collection: str, doc_id: str) -> dict[str, Any] | None:
            return memory.docs.get((collection, doc_id))

        yield Backend(memory, read_memory)
        await memory.close()
        return
    host = request.getfixturevalue("firestore_host")
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    from google.cloud import firestore

    project = f"demo-store-{uuid.uuid4().hex[:10]}"
    store = FirestoreStore(project)
    client = firestore.Client(project=project)

    def read_firestore(collection: str, doc_id: str) -> dict[str, Any] | None:
        snapshot = client.collection(collection).document(doc_id).get()
        return snapshot.to_dict() if snapshot.exists else None

    yield Backend(store, read_firestore)
    await store.close()
    client.close()


# --- commit -------------------------------------------------------------------------------------


async def test_connect_pong_and_disconnect_merge_into_members_and_sessions(
    backend: Backend,
) -> None:
    """Writes merge into existing documents: later values win, untouched fields stay, a second
    session joins the member's active_sessions and a disconnect removes only its own entry."""
    store = backend.store
    await store.commit(connect_writes("u", "s1", "inst-1", T0))
    await store.commit(connect_writes("u", "s2", "inst-2", T0 + timedelta(1)))
    await store.commit([pong_write("u", T0 + timedelta(days=2))])
    await store.commit(disconnect_writes("u", "s1", 1000, T0 + timedelta(days=3)))

    assert backend.read(MEMBERS, "u") == {
        IS_SIGNED_IN: True,
        LAST_PONG_AT: T0 + timedelta(days=2),
        LAST_CONNECTED_AT: T0 + timedelta(1),
        UPDATED_AT: T0 + timedelta(days=2),
        INSTANCE_ID: "inst-2",
        ACTIVE_SESSIONS: {"s2": {INSTANCE_ID: "inst-2"}},
        SHARD: member_shard("u"),
    }
    assert backend.read(SESSIONS, "s1") == {
        USER_ID: "u",
        IS_ACTIVE: False,
        CONNECTED_AT: T0,
        INSTANCE_ID: "inst-1",
        DISCONNECTED_AT: T0 + timedelta(days=3),
        CLOSE_CODE: 1000,
    }


async def test_writes_to_one_document_in_one_batch_apply_in_order(backend: Backend) -> None:
    """Two writes to the same document in one commit: both land, the later value wins."""
    await backend.store.commit(
        [
            Write(MEMBERS, "u", {LAST_PONG_AT: T0, IS_SIGNED_IN: True}),
            Write(MEMBERS, "u", {LAST_PONG_AT: T0 + timedelta(seconds=1)}),
        ]
    )
    assert backend.read(MEMBERS, "u") == {
        LAST_PONG_AT: T0 + timedelta(seconds=1),
        IS_SIGNED_IN: True,
    }


async def test_delete_field_removes_top_level_and_nested_fields(backend: Backend) -> None:
    """DELETE_FIELD removes a field (instance_write clears stopped_at) or a map entry; deleting
    what is absent changes nothing."""
    store = backend.store
    await store.commit(
        [Write(INSTANCES, "i", {STOPPED_AT: T0}), instance_write("i", "http://gw", T0)]
    )
    assert backend.read(INSTANCES, "i") == {
        INTERNAL_URL: "http://gw",
        STARTED_AT: T0,
        HEARTBEAT_AT: T0,
        PONG_BACKLOG_SECONDS: 0.0,
    }
    await store.commit(connect_writes("u", "s1", "i", T0))
    await store.commit(
        [Write(MEMBERS, "u", {ACTIVE_SESSIONS: {"s1": DELETE_FIELD, "absent": DELETE_FIELD}})]
    )
    member = backend.read(MEMBERS, "u")
    assert member is not None and member[ACTIVE_SESSIONS] == {}
    await store.commit([Write(INSTANCES, "i", {STOPPED_AT: DELETE_FIELD})])
    assert backend.read(INSTANCES, "i") == {
        INTERNAL_URL: "http://gw",
        STARTED_AT: T0,
        HEARTBEAT_AT: T0,
        PONG_BACKLOG_SECONDS: 0.0,
    }


async def test_a_delete_only_write_creates_an_empty_document(backend: Backend) -> None:
    """A disconnect for a member never written (its connect lost) leaves an empty member
    document, not a map with nothing in it."""
    await backend.store.commit([Write(MEMBERS, "ghost", {ACTIVE_SESSIONS: {"s": DELETE_FIELD}})])
    assert backend.read(MEMBERS, "ghost") == {}


async def test_an_empty_map_replaces_the_field(backend: Backend) -> None:
    """An empty map is a value, not a merge of nothing: it replaces what was there (as
    Firestore's set(merge=True) does)."""
    store = backend.store
    await store.commit(connect_writes("u", "s1", "i", T0))
    await store.commit([Write(MEMBERS, "u", {ACTIVE_SESSIONS: {}})])
    member = backend.read(MEMBERS, "u")
    assert member is not None and member[ACTIVE_SESSIONS] == {}


async def test_map_keys_that_are_not_simple_names_round_trip(backend: Backend) -> None:
    """Session ids with dots, dashes, spaces or backquotes are one map key each, not a path."""
    keys = ["a.b", "with-dash", "sp ace", "back`quote", "9starts-with-digit"]
    await backend.store.commit(
        [Write(MEMBERS, "u", {ACTIVE_SESSIONS: {k: {INSTANCE_ID: "i"} for k in keys}})]
    )
    await backend.store.commit([Write(MEMBERS, "u", {ACTIVE_SESSIONS: {"a.b": DELETE_FIELD}})])
    member = backend.read(MEMBERS, "u")
    assert member == {ACTIVE_SESSIONS: {k: {INSTANCE_ID: "i"} for k in keys[1:]}}


async def test_values_of_every_supported_type_round_trip(backend: Backend) -> None:
    """None, bools, ints, floats, strings, aware timestamps (to the microsecond) and nested
    maps are read back equal."""
    fields = {
        "none": None,
        "yes": True,
        "no": False,
        "int": 4410,
        "float": 0.25,
        "text": "é ✓",
        "at": T0 + timedelta(microseconds=123_456),
        "map": {"inner": {"deep": 1}},
    }
    await backend.store.commit([Write(SESSIONS, "s", fields)])
    assert backend.read(SESSIONS, "s") == fields


@pytest.mark.parametrize(
    ("fields"),
    [
        {UPDATED_AT: datetime(2026, 1, 1)},  # noqa: DTZ001
        {UPDATED_AT: object()},
        {UPDATED_AT: [1, 2]},
        {"offset": 2**63},
        {"offset": -(2**63) - 1},
        {"nested": {"offset": 2**64}},
    ],
    ids=["naive-datetime", "object", "list", "int-2^63", "int-below-int64", "nested-2^64"],
)
async def test_a_batch_with_a_value_firestore_cannot_store_is_rejected_whole(
    backend: Backend, fields: dict[str, Any]
) -> None:
    """A naive timestamp, an unsupported type or an integer outside Firestore's signed 64 bits
    raises WriteRejected (no retry can store it), and nothing of the batch is stored."""
    with pytest.raises(WriteRejected):
        await backend.store.commit([pong_write("before", T0), Write(MEMBERS, "bad", fields)])
    assert backend.read(MEMBERS, "before") is None
    assert backend.read(MEMBERS, "bad") is None


async def test_the_int64_bounds_themselves_are_stored(backend: Backend) -> None:
    """The largest and smallest signed 64-bit integers are accepted and read back."""
    fields = {"high": 2**63 - 1, "low": -(2**63)}
    await backend.store.commit([Write(SESSIONS, "edge", fields)])
    assert backend.read(SESSIONS, "edge") == fields


async def test_an_empty_batch_commits_nothing(backend: Backend) -> None:
    """Committing no writes succeeds and stores nothing."""
    await backend.store.commit([])
    assert await backend.store.get_member("u", timeout=READ_TIMEOUT) is None


# --- reads --------------------------------------------------------------------------------------


async def test_get_member_returns_the_document_or_none(backend: Backend) -> None:
    """The member's fields as stored; None for a member never written."""
    store = backend.store
    assert await store.get_member("u", timeout=READ_TIMEOUT) is None
    await store.commit(connect_writes("u", "s1", "i", T0))
    await store.commit(sign_out_writes("u", ["s1"], T0 + timedelta(hours=1)))
    assert await store.get_member("u", timeout=READ_TIMEOUT) == {
        IS_SIGNED_IN: False,
        LAST_PONG_AT: T0,
        LAST_CONNECTED_AT: T0,
        LAST_SIGN_OUT_AT: T0 + timedelta(hours=1),
        UPDATED_AT: T0 + timedelta(hours=1),
        INSTANCE_ID: "i",
        ACTIVE_SESSIONS: {"s1": {INSTANCE_ID: "i"}},
        SHARD: member_shard("u"),
    }


async def test_get_members_reads_many_in_one_call(backend: Backend) -> None:
    """Admission's batched read (one get_all on Firestore): the members that exist, by user id,
    with their fields as stored; ids without a document are absent; no ids, no answer."""
    store = backend.store
    assert await store.get_members([], timeout=READ_TIMEOUT) == {}
    await store.commit(connect_writes("m1", "s1", "i", T0))
    await store.commit(connect_writes("m2", "s2", "i", T0))
    await store.commit(sign_out_writes("m2", ["s2"], T0 + timedelta(hours=1)))
    ids = [f"absent-{k}" for k in range(150)] + ["m2", "m1"]
    found = await store.get_members(ids, timeout=READ_TIMEOUT)
    assert sorted(found) == ["m1", "m2"]
    assert found["m1"] == await store.get_member("m1", timeout=READ_TIMEOUT)
    assert found["m2"][LAST_SIGN_OUT_AT] == T0 + timedelta(hours=1)
    assert found["m2"][IS_SIGNED_IN] is False


async def test_a_read_document_is_a_copy(backend: Backend) -> None:
    """Changing what a read returned, nested maps included, changes nothing stored."""
    store = backend.store
    await store.commit(connect_writes("u", "s1", "i", T0))
    await store.commit([instance_write("i", "http://gw", T0)])
    member = await store.get_member("u", timeout=READ_TIMEOUT)
    assert member is not None
    member[ACTIVE_SESSIONS]["s1"][INSTANCE_ID] = "changed"
    member[IS_SIGNED_IN] = False
    (await store.get_instances(["i"], timeout=READ_TIMEOUT))["i"][INTERNAL_URL] = "changed"
    (await store.recent_instances(T0, timeout=READ_TIMEOUT))["i"][INTERNAL_URL] = "changed"

    again = await store.get_member("u", timeout=READ_TIMEOUT)
    assert again is not None and again[IS_SIGNED_IN] is True
    assert again[ACTIVE_SESSIONS]["s1"][INSTANCE_ID] == "i"
    instances = await store.get_instances(["i"], timeout=READ_TIMEOUT)
    assert instances["i"][INTERNAL_URL] == "http://gw"


async def test_get_instances_returns_the_existing_ones_by_id(backend: Backend) -> None:
    """Only registered instances are in the answer; an empty request answers nothing."""
    store = backend.store
    await store.commit([instance_write("a", "http://a", T0), instance_write("b", "http://b", T0)])
    await store.commit([Write(INSTANCES, "b", {STOPPED_AT: T0 + timedelta(minutes=1)})])
    assert await store.get_instances(["a", "b", "missing"], timeout=READ_TIMEOUT) == {
        "a": {
            INTERNAL_URL: "http://a",
            STARTED_AT: T0,
            HEARTBEAT_AT: T0,
            PONG_BACKLOG_SECONDS: 0.0,
        },
        "b": {
            INTERNAL_URL: "http://b",
            STARTED_AT: T0,
            HEARTBEAT_AT: T0,
            PONG_BACKLOG_SECONDS: 0.0,
            STOPPED_AT: T0 + timedelta(minutes=1),
        },
    }
    assert await store.get_instances([], timeout=READ_TIMEOUT) == {}


async def test_recent_instances_are_those_with_a_heartbeat_at_or_after_since(
    backend: Backend,
) -> None:
    """The boundary is inclusive; older heartbeats, missing ones and non-timestamps are left out;
    a stopped instance with a recent heartbeat is in (liveness is the caller's is_live)."""
    store = backend.store
    since = T0 + timedelta(minutes=10)
    await store.commit(
        [
            instance_write("old", "http://old", T0),
            instance_write("edge", "http://edge", since),
            instance_write("new", "http://new", since + timedelta(seconds=1)),
            Write(INSTANCES, "stopped", {HEARTBEAT_AT: since, STOPPED_AT: since}),
            Write(INSTANCES, "no-beat", {INTERNAL_URL: "http://no-beat"}),
            Write(INSTANCES, "text-beat", {HEARTBEAT_AT: "2026-01-02T00:00:00Z"}),
        ]
    )
    recent = await store.recent_instances(since, timeout=READ_TIMEOUT)
    assert sorted(recent) == ["edge", "new", "stopped"]
    assert recent["stopped"] == {HEARTBEAT_AT: since, STOPPED_AT: since}
    assert recent["new"][HEARTBEAT_AT] == since + timedelta(seconds=1)
    assert await store.recent_instances(since + timedelta(hours=1), timeout=READ_TIMEOUT) == {}


async def test_signed_out_sessions_are_this_instances_since_the_given_time(
    backend: Backend,
) -> None:
    """Sessions of this instance signed out at or after ``since``: not other instances', not
    earlier ones, not sessions merely disconnected."""
    store = backend.store
    since = T0 + timedelta(minutes=5)
    for user, session, instance in [
        ("u1", "s1", "me"),
        ("u1", "s2", "me"),
        ("u2", "s3", "me"),
        ("u3", "s4", "other"),
        ("u4", "s5", "me"),
    ]:
        await store.commit(connect_writes(user, session, instance, T0))
    await store.commit(sign_out_writes("u1", ["s1", "s2"], since))
    await store.commit(sign_out_writes("u2", ["s3"], since - timedelta(seconds=1)))
    await store.commit(sign_out_writes("u3", ["s4"], since + timedelta(minutes=1)))
    await store.commit(disconnect_writes("u4", "s5", 1000, since + timedelta(minutes=1)))

    found = await store.signed_out_sessions("me", since)
    assert sorted(found, key=lambda s: s.session_id) == [
        SignedOutSession("u1", "s1", since),
        SignedOutSession("u1", "s2", since),
    ]
    assert await store.signed_out_sessions("nobody", T0) == []


async def test_a_signed_out_session_without_a_user_reads_with_an_empty_user_id(
    backend: Backend,
) -> None:
    """A session document holding only the sign-out (its connect never landed) still counts;
    its user id reads as the empty string."""
    store = backend.store
    await store.commit([Write(SESSIONS, "orphan", {INSTANCE_ID: "me", SIGNED_OUT_AT: T0})])
    assert await store.signed_out_sessions("me", T0) == [SignedOutSession("", "orphan", T0)]


async def test_close_leaves_what_was_committed_in_place(backend: Backend) -> None:
    """close() returns once the backend is released; committed documents stay stored."""
    await backend.store.commit([pong_write("u", T0)])
    assert await backend.store.close() is None
    assert backend.read(MEMBERS, "u") == {LAST_PONG_AT: T0, UPDATED_AT: T0}
