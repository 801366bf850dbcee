"""What the code sends to the Firestore emulator, held to firestore.indexes.json: every query is
served by a declared index, and no timestamp the sweep or a durable send writes caps its
collection at 500 writes a second (the rules of ``tests/index_layout.py``; the emulator
enforces neither).

One scenario in a project of its own, recorded at google-cloud-firestore's query and write
builders: a sweep run as the deployed function runs it, over expired members in many shards
(queries of every shard, the registry, claims, sign-outs), two durable sends, the gateway's
reconcile and live-instance queries, a stream recovery's reads and the shard backfill. The
gateway's own hot writes are checked from its builders in tests/contract/test_index_layout.py.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.storage.firestore_store import FirestoreStore
from gateway.storage.firestore_streams import FirestoreStreamStore
from gateway.storage.schema import (
    CREATED_AT,
    EXPIRES_AT,
    HEARTBEAT_AT,
    INSTANCES,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    LAST_SIGN_OUT_AT,
    MEMBERS,
    SESSIONS,
    SHARD,
    SIGN_OUT_CLAIMED_AT,
    SIGNED_OUT_AT,
    STREAM_ENTRIES,
    STREAMS,
    UPDATED_AT,
    member_shard,
)
from gateway.storage.store import (
    DELETE_FIELD,
    Write,
    connect_writes,
    instance_write,
    sign_out_writes,
)
from presence_sweep.adapters import sweep_firestore
from presence_sweep.backfill import backfill_shards
from presence_sweep.decision import SessionRef
from presence_sweep.settings import SweepSettings
from tests.index_layout import (
    Query,
    Recording,
    layout_violations,
    load,
    old_layout,
    recording,
    unserved,
    without_override,
)

pytestmark = pytest.mark.integration

INSTANCE = "gw-layout"
EXPIRED = [f"expired-{n}" for n in range(40)]


class Callbacks:
    """The sweep's notifier with the HTTP call left out: this test is about Firestore."""

    def notify(self, internal_url: str, sessions: Sequence[SessionRef], now: datetime) -> int:
        return len(sessions)


def stored(writes: list[Write]) -> list[Write]:
    """The writes as first writes: a delete of a field that was never set has nothing to do."""
    return [
        Write(w.collection, w.doc_id, {k: v for k, v in w.fields.items() if v is not DELETE_FIELD})
        for w in writes
    ]


@pytest.fixture(scope="module")
async def recorded(firestore_host: str, firebase_app: Any) -> AsyncIterator[Recording]:
    """What the scenario sent, recorded once for the module's tests."""
    from google.cloud import firestore

    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    project = f"demo-layout-{uuid.uuid4().hex[:8]}"
    store, db = FirestoreStore(project), firestore.Client(project=project)
    streams = FirestoreStreamStore(store.client, ttl=300)
    now = datetime.now(UTC)
    gone = now - timedelta(hours=4)
    # Outside the recording: members as the gateway records them (its connect writes, so each
    # with its shard), expired; a live instance; a sign-out on demand for the reconcile query.
    setup = [instance_write(INSTANCE, "http://gateway.invalid", now)]
    for user in EXPIRED:
        setup += connect_writes(user, f"{user}-s", INSTANCE, gone)
    setup += sign_out_writes("asked", ["asked-s"], now)
    await store.commit(stored(setup))
    assert len({member_shard(user) for user in EXPIRED}) > 20
    # Queries of 7 and pages of 5: cursors inside shards and across them.
    settings = SweepSettings(project, pong_timeout=3 * 3600, page_size=5, query_size=7)
    try:
        with recording() as seen:
            report = await asyncio.to_thread(
                sweep_firestore, settings, db, firebase_app, Callbacks(), now
            )
            assert sorted(report.signed_out_users) == sorted(EXPIRED)
            for payload in ('"one"', '"two"'):
                await streams.append("reader", payload, now)
            head = await streams.head("reader", timeout=5, with_ack=True)
            assert head is not None
            assert len(await streams.entries("reader", 0, head.top, timeout=5)) == 2
            assert await store.signed_out_sessions(INSTANCE, gone)
            assert INSTANCE in await store.recent_instances(gone, timeout=5)
            await asyncio.to_thread(backfill_shards, db, dry_run=True)
        yield seen
    finally:
        db.close()
        await store.close()


#: The sweep's query of one shard.
SHARD_QUERY = Query(
    MEMBERS,
    equalities=frozenset({SHARD, IS_SIGNED_IN}),
    ranges=frozenset({LAST_PONG_AT}),
    orders=((LAST_PONG_AT, "ASCENDING"),),
)


def test_the_recording_holds_every_query_and_hot_write(recorded: Recording) -> None:
    """The scenario reached every querying path and every hot timestamp it is meant to check
    (without this the next tests could pass on nothing)."""
    assert SHARD_QUERY in recorded.queries
    assert {q.collection for q in recorded.queries} >= {
        MEMBERS,
        SESSIONS,
        INSTANCES,
        STREAM_ENTRIES,
    }
    assert recorded.timestamps >= {
        (MEMBERS, SIGN_OUT_CLAIMED_AT),
        (MEMBERS, LAST_SIGN_OUT_AT),
        (MEMBERS, UPDATED_AT),
        (SESSIONS, SIGNED_OUT_AT),
        (STREAMS, UPDATED_AT),
        (STREAM_ENTRIES, CREATED_AT),
        (STREAM_ENTRIES, EXPIRES_AT),
    }


def test_every_query_the_code_sends_is_served(recorded: Recording) -> None:
    """Each recorded query has its index in firestore.indexes.json."""
    assert [unserved(load(), q) for q in recorded.queries if unserved(load(), q)] == []


def test_no_timestamp_the_sweep_or_a_durable_send_writes_caps_its_collection(
    recorded: Recording,
) -> None:
    """Each recorded timestamp is exempt from single-field indexing and only in indexes that
    lead with its collection's partition field."""
    assert layout_violations(load(), recorded.timestamps) == []


def test_the_checks_bite_on_what_was_recorded(recorded: Recording) -> None:
    """Against the old unsharded layout the sweep's recorded query is unserved and its writes
    are caught; with heartbeat_at exempted, the live-instance query is unserved."""
    old = old_layout()
    assert unserved(old, SHARD_QUERY) is not None
    caught = layout_violations(old, recorded.timestamps)
    assert f"{MEMBERS}.{SIGN_OUT_CLAIMED_AT} is indexed alone (no override with no indexes)" in (
        caught
    )
    exempted = without_override(load(), INSTANCES, HEARTBEAT_AT)
    exempted["fieldOverrides"].append(
        {"collectionGroup": INSTANCES, "fieldPath": HEARTBEAT_AT, "indexes": []}
    )
    failing = {q.collection for q in recorded.queries if unserved(exempted, q)}
    assert failing == {INSTANCES}
