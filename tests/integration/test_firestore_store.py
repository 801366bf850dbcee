"""The Firestore backend and the write-behind buffer against the real Firestore emulator."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emulator import procs
from gateway.firestore_store import FirestoreStore
from gateway.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    CONNECTED_AT,
    DISCONNECTED_AT,
    INSTANCE_ID,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_CONNECTED_AT,
    LAST_PONG_AT,
    MEMBERS,
    SESSIONS,
    UPDATED_AT,
    USER_ID,
)
from gateway.store import (
    connect_writes,
    disconnect_writes,
    pong_write,
)
from gateway.writer import WriteBehind
from tests.support import LOG_DIR, UNIT, eventually

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def uid() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(firestore_host: str, project_id: str) -> AsyncIterator[FirestoreStore]:
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    backend = FirestoreStore(project_id)
    yield backend
    await backend.close()


async def test_commit_merges_fields_into_existing_documents(
    store: FirestoreStore, firestore_client: Any
) -> None:
    """Connect, pong and disconnect writes merge into members and sessions as documented."""
    user, session = uid(), uid()
    await store.commit(connect_writes(user, session, "inst-1", "http://gw:1", T0))
    other = uid()
    await store.commit(connect_writes(user, other, "inst-2", "http://gw:2", T0))
    await store.commit([pong_write(user, T0 + timedelta(seconds=30))])
    await store.commit(disconnect_writes(user, session, 1000, T0 + timedelta(seconds=40)))

    member = firestore_client.collection(MEMBERS).document(user).get().to_dict()
    assert member == {
        IS_SIGNED_IN: True,
        LAST_PONG_AT: T0 + timedelta(seconds=30),
        LAST_CONNECTED_AT: T0,
        UPDATED_AT: T0 + timedelta(seconds=30),
        INSTANCE_ID: "inst-2",
        ACTIVE_SESSIONS: {other: {INSTANCE_ID: "inst-2", INTERNAL_URL: "http://gw:2"}},
    }
    record = firestore_client.collection(SESSIONS).document(session).get().to_dict()
    assert record == {
        USER_ID: user,
        IS_ACTIVE: False,
        CONNECTED_AT: T0,
        INSTANCE_ID: "inst-1",
        INTERNAL_URL: "http://gw:1",
        DISCONNECTED_AT: T0 + timedelta(seconds=40),
        CLOSE_CODE: 1000,
    }


async def test_a_full_batch_of_500_writes_commits_atomically(
    store: FirestoreStore, firestore_client: Any
) -> None:
    """Firestore's 500-write limit is the batch size; all 500 land."""
    prefix = uid()
    await store.commit([pong_write(f"{prefix}-{i}", T0) for i in range(500)])
    refs = [firestore_client.collection(MEMBERS).document(f"{prefix}-{i}") for i in range(500)]
    snapshots = list(firestore_client.get_all(refs))
    assert len(snapshots) == 500 and all(s.exists for s in snapshots)


async def test_writer_persists_every_pong_to_firestore(
    store: FirestoreStore, firestore_client: Any
) -> None:
    """1,500 users' pongs flushed by a running writer all reach Firestore with their time."""
    writer = WriteBehind(store, flush_interval=0.1)
    writer.start()
    prefix = uid()
    users = [f"{prefix}-{i}" for i in range(1500)]
    for i, user in enumerate(users):
        writer.put(pong_write(user, T0 + timedelta(milliseconds=i)), pong=True)

    async def drained() -> bool:
        return writer.pongs_persisted == 1500

    await eventually(drained, timeout=30)
    await writer.close()
    refs = [firestore_client.collection(MEMBERS).document(u) for u in users]
    stored = {s.id: s.get(LAST_PONG_AT) for s in firestore_client.get_all(refs)}
    assert stored == {u: T0 + timedelta(milliseconds=i) for i, u in enumerate(users)}


async def test_writer_survives_a_firestore_outage_and_loses_nothing(project_id: str) -> None:
    """With the emulator stopped, pongs wait in the buffer; after a restart they all land."""
    port = procs.free_port()
    host = f"127.0.0.1:{port}"

    def emulator() -> procs.Process:
        process = procs.firestore_process("127.0.0.1", port, LOG_DIR)
        process.log_path = LOG_DIR / f"firestore-outage-{port}.log"
        return process

    first = emulator()
    first.start()
    first.wait_ready(60 * UNIT)
    shared_host = os.environ.get("FIRESTORE_EMULATOR_HOST", "")
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    store = FirestoreStore(project_id)
    writer = WriteBehind(store, flush_interval=0.05)
    writer.start()
    second: procs.Process | None = None
    try:
        writer.put(pong_write("before", T0), pong=True)

        async def first_landed() -> bool:
            return writer.pongs_persisted == 1

        await eventually(first_landed, timeout=15)
        first.stop()

        users = [f"outage-{i}" for i in range(200)]
        for user in users:
            writer.put(pong_write(user, T0), pong=True)

        async def failing() -> bool:
            return writer.failed_commits >= 2

        await eventually(failing, timeout=30)
        assert writer.pongs_persisted == 1
        assert writer.buffered == 200

        second = emulator()
        second.start()
        second.wait_ready(60 * UNIT)

        async def recovered() -> bool:
            return writer.pongs_persisted == 201

        await eventually(recovered, timeout=30)
        # The restarted emulator is empty: every pong taken during the outage is in it.
        from google.cloud import firestore

        client = firestore.Client(project=project_id)
        refs = [client.collection(MEMBERS).document(u) for u in users]
        assert all(s.exists for s in client.get_all(refs))
        client.close()
    finally:
        os.environ["FIRESTORE_EMULATOR_HOST"] = shared_host
        await writer.close(deadline=2)
        await store.close()
        first.stop()
        if second is not None:
            second.stop()
