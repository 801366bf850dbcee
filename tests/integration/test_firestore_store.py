"""The Firestore backend and the write-behind buffer against the real Firestore emulator."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emulator import procs
from gateway.exceptions import WriteRejected
from gateway.storage.firestore_store import FirestoreStore
from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    CONNECTED_AT,
    DISCONNECTED_AT,
    INSTANCE_ID,
    INSTANCES,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_CONNECTED_AT,
    LAST_PONG_AT,
    MEMBERS,
    SESSIONS,
    SHARD,
    STOPPED_AT,
    UPDATED_AT,
    USER_ID,
    member_shard,
)
from gateway.storage.store import (
    DELETE_FIELD,
    Write,
    connect_writes,
    disconnect_writes,
    instance_write,
    pong_write,
    sign_out_writes,
)
from gateway.storage.writer import WriteBehind
from tests.support import LOG_DIR, UNIT, eventually

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def uid() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


async def test_commit_merges_fields_into_existing_documents(
    store: FirestoreStore, firestore_client: Any
) -> None:
    """Connect, pong and disconnect writes merge into members and sessions as documented."""
    user, session = uid(), uid()
    await store.commit(connect_writes(user, session, "inst-1", T0))
    other = uid()
    await store.commit(connect_writes(user, other, "inst-2", T0))
    await store.commit([pong_write(user, T0 + timedelta(seconds=30))])
    await store.commit(disconnect_writes(user, session, 1000, T0 + timedelta(seconds=40)))

    member = firestore_client.collection(MEMBERS).document(user).get().to_dict()
    assert member == {
        IS_SIGNED_IN: True,
        LAST_PONG_AT: T0 + timedelta(seconds=30),
        LAST_CONNECTED_AT: T0,
        UPDATED_AT: T0 + timedelta(seconds=30),
        INSTANCE_ID: "inst-2",
        ACTIVE_SESSIONS: {other: {INSTANCE_ID: "inst-2"}},
        SHARD: member_shard(user),
    }
    record = firestore_client.collection(SESSIONS).document(session).get().to_dict()
    assert record == {
        USER_ID: user,
        IS_ACTIVE: False,
        CONNECTED_AT: T0,
        INSTANCE_ID: "inst-1",
        DISCONNECTED_AT: T0 + timedelta(seconds=40),
        CLOSE_CODE: 1000,
    }


def every_kind_of_write(suffix: str) -> list[list[Write]]:
    """Batches exercising every encoding the raw path does: the gateway's own writes, deletes
    (top-level, nested, absent, delete-only), empty maps, odd map keys and each value type."""
    user, session, instance = f"u{suffix}", f"s{suffix}", f"i{suffix}"
    return [
        connect_writes(user, session, instance, T0),
        connect_writes(user, f"{session}-2", instance, T0 + timedelta(seconds=1)),
        [pong_write(user, T0 + timedelta(microseconds=123_456))],
        disconnect_writes(user, session, None, T0 + timedelta(seconds=2)),
        sign_out_writes(user, [f"{session}-2"], T0 + timedelta(seconds=3)),
        [Write(INSTANCES, instance, {STOPPED_AT: T0}), instance_write(instance, "http://gw", T0)],
        [Write(MEMBERS, f"ghost{suffix}", {ACTIVE_SESSIONS: {"x": DELETE_FIELD}})],
        [
            Write(
                SESSIONS,
                f"odd{suffix}",
                {
                    "keys": {"a.b": 1, "sp ace": 2, "back`quote": 3, "9x": 4, "é": 5},
                    "empty": {},
                    "values": {"t": True, "f": False, "i": -7, "d": 0.5, "s": "", "n": None},
                },
            )
        ],
        [Write(SESSIONS, f"odd{suffix}", {"keys": {"a.b": DELETE_FIELD}, "empty": {"k": 1}})],
        [Write(SESSIONS, f"odd{suffix}", {"values": {}, "gone": DELETE_FIELD})],
        # Flat writes (strings and timestamps: the wire encoder's own) with keys that need
        # backquoting, mixed in one request with writes it leaves to the library's types.
        [
            Write(SESSIONS, f"flat{suffix}", {"sp ace": "é ✓", "back`quote": T0, "a.b": ""}),
            Write(SESSIONS, f"odd{suffix}", {"values": {"later": 1}}),
            Write(SESSIONS, f"flat{suffix}", {"sp ace": T0 - timedelta(days=20_000)}),
        ],
    ]


async def test_the_raw_commit_stores_what_the_librarys_write_batch_stores(
    firestore_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """commit (wire bytes on the client's channel) and commit_with_batch (public WriteBatch with
    merge=True) leave identical documents for the same batches. In a project of its own: the
    odd documents it writes must not meet other tests' scans of the shared project."""
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)  # also when run alone
    project = f"demo-equivalence-{uuid.uuid4().hex[:10]}"
    store = FirestoreStore(project)
    firestore_client = firestore.Client(project=project)
    raw, public = uid(), uid()
    for batch in every_kind_of_write(raw):
        await store.commit(batch)
    for batch in every_kind_of_write(public):
        await store.commit_with_batch(batch)

    def unsuffixed(value: Any, suffix: str) -> Any:
        if isinstance(value, str):
            return value.replace(suffix, "")
        if isinstance(value, dict):
            return {unsuffixed(k, suffix): unsuffixed(v, suffix) for k, v in value.items()}
        return value

    def stored(suffix: str) -> dict[tuple[str, str], Any]:
        """Every document the batches touched, the run's suffix taken out of ids and values."""
        names = {(w.collection, w.doc_id) for b in every_kind_of_write(suffix) for w in b}
        docs = {}
        for collection, doc_id in names:
            data = firestore_client.collection(collection).document(doc_id).get().to_dict()
            if data and SHARD in data:
                # Derived from the whole id, suffix included: checked here, then left out.
                assert data.pop(SHARD) == member_shard(doc_id)
            docs[(collection, doc_id.replace(suffix, ""))] = unsuffixed(data, suffix)
        return docs

    from_raw, from_public = stored(raw), stored(public)
    assert from_raw == from_public
    assert from_raw[(SESSIONS, "odd")] == {
        "keys": {"sp ace": 2, "back`quote": 3, "9x": 4, "é": 5},
        "empty": {"k": 1},
        "values": {"later": 1},
    }
    assert from_raw[(MEMBERS, "ghost")] == {}
    assert from_raw[(SESSIONS, "flat")] == {
        "sp ace": T0 - timedelta(days=20_000),  # before 1970: negative seconds
        "back`quote": T0,
        "a.b": "",
    }
    await store.close()
    firestore_client.close()


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


@pytest.mark.parametrize(
    "fields",
    [{"__reserved__": 1}, {"blob": "x" * (1024 * 1024 + 1)}],
    ids=["reserved-field-name", "document-over-1-MiB"],
)
async def test_a_commit_the_emulator_refuses_as_invalid_raises_write_rejected(
    store: FirestoreStore, fields: dict[str, Any]
) -> None:
    """Firestore's own INVALID_ARGUMENT (a reserved field name, a document over 1 MiB: values
    the encoder accepts) is reported as WriteRejected, not as an outage to retry."""
    with pytest.raises(WriteRejected):
        await store.commit([Write(SESSIONS, uid(), fields)])


async def test_the_writer_drops_a_refused_write_and_commits_its_batch_to_the_emulator(
    store: FirestoreStore, firestore_client: Any
) -> None:
    """A batch of 50 pongs holding one write the emulator refuses: the 50 pongs are stored,
    the refused write is dropped and counted, and no commit is left failing."""
    users = [uid() for _ in range(50)]
    writer = WriteBehind(store, batch_size=500)
    for user in users[:25]:
        writer.put(pong_write(user, T0), pong=True)
    writer.put(Write(SESSIONS, uid(), {"__reserved__": 1}))
    for user in users[25:]:
        writer.put(pong_write(user, T0), pong=True)
    assert await writer.flush_once()
    assert (writer.rejected_writes, writer.failed_commits, writer.buffered) == (1, 0, 0)
    refs = [firestore_client.collection(MEMBERS).document(u) for u in users]
    stored = [s for s in firestore_client.get_all(refs) if s.exists]
    assert len(stored) == 50
