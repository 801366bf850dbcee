"""The durable stream store against the Firestore emulator, held to the in-memory one.

The documents live in a project of their own: the corpus e2e test scans the shared project.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from gateway.protocol.messages import utc_now
from gateway.storage.firestore_store import FirestoreStore
from gateway.storage.firestore_streams import FirestoreStreamStore
from gateway.storage.schema import (
    ACKED_AT,
    ACKED_EPOCH,
    ACKED_OFFSET,
    CREATED_AT,
    ENTRY_OFFSET,
    EXPIRES_AT,
    PAYLOAD,
    STREAM_ACKS,
    STREAM_ENTRIES,
    STREAM_EPOCH,
    STREAMS,
    TOP_OFFSET,
)
from gateway.storage.store import MemoryStore, Write
from gateway.storage.streams import Head, MemoryStreamStore, StreamStore, entry_id

pytestmark = pytest.mark.integration

PROJECT = "demo-streams-test"
TTL = 300.0


class Backend:
    """A stream store plus what it needs around it: the store that commits acknowledgements,
    and a way to lose a stream (its head deleted)."""

    def __init__(self, streams: StreamStore, store: Any, drop: Any) -> None:
        self.streams = streams
        self.store = store
        self.drop = drop


@pytest.fixture(params=["memory", "firestore"])
async def backend(request: pytest.FixtureRequest, firestore_host: str) -> AsyncIterator[Backend]:
    if request.param == "memory":
        memory = MemoryStore()
        streams = MemoryStreamStore(memory.docs, TTL)

        async def drop_memory(user: str) -> None:
            memory.docs.pop((STREAMS, user), None)

        yield Backend(streams, memory, drop_memory)
        return
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    store = FirestoreStore(PROJECT)
    firestore_streams = FirestoreStreamStore(store.client, TTL)

    async def drop_firestore(user: str) -> None:
        await store.client.collection(STREAMS).document(user).delete()

    yield Backend(firestore_streams, store, drop_firestore)
    await store.close()


def uid() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


async def test_appends_allocate_increasing_offsets_in_one_epoch(backend: Backend) -> None:
    user = uid()
    now = utc_now()
    first = await backend.streams.append(user, '{"n":1}', now)
    second = await backend.streams.append(user, '{"n":2}', now)
    assert first[1] == 1 and second == (first[0], 2)
    assert await backend.streams.head(user, 5) == Head(first[0], 2)
    entries = await backend.streams.entries(user, 0, 2, 5)
    assert [(e.offset, e.payload) for e in entries] == [(1, '{"n":1}'), (2, '{"n":2}')]
    assert [e.offset for e in await backend.streams.entries(user, 1, 2, 5)] == [2]


async def test_concurrent_appends_get_distinct_contiguous_offsets(backend: Backend) -> None:
    """The head is allocated in a transaction: racing sends neither share nor skip an offset."""
    user = uid()
    results = await asyncio.gather(
        *(backend.streams.append(user, f'{{"n":{i}}}', utc_now()) for i in range(8))
    )
    assert len({epoch for epoch, _ in results}) == 1
    assert sorted(offset for _, offset in results) == list(range(1, 9))
    stored = await backend.streams.entries(user, 0, 8, 5)
    assert [e.offset for e in stored] == list(range(1, 9))


async def test_the_acknowledged_position_is_read_with_the_head_when_asked(
    backend: Backend,
) -> None:
    """The write-behind ack lives beside the head; ``with_ack`` reads both."""
    user = uid()
    epoch, _ = await backend.streams.append(user, "{}", utc_now())
    ack = {ACKED_EPOCH: epoch, ACKED_OFFSET: 1, ACKED_AT: utc_now()}
    await backend.store.commit([Write(STREAM_ACKS, user, ack)])
    await backend.streams.append(user, "{}", utc_now())
    assert await backend.streams.head(user, 5, with_ack=True) == Head(epoch, 2, epoch, 1)
    assert await backend.streams.head(user, 5) == Head(epoch, 2)


async def test_a_lost_stream_starts_again_with_a_new_epoch(backend: Backend) -> None:
    user = uid()
    epoch, _ = await backend.streams.append(user, "{}", utc_now())
    await backend.drop(user)
    assert await backend.streams.head(user, 5) is None
    again = await backend.streams.append(user, "{}", utc_now())
    assert again[1] == 1 and again[0] != epoch


async def test_appends_from_two_instances_share_one_sequence(firestore_host: str) -> None:
    """Two gateways' stores (two clients) appending to one stream at once: the transaction
    keeps offsets distinct and contiguous across them."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    stores = [FirestoreStore(PROJECT), FirestoreStore(PROJECT)]
    try:
        user = uid()
        both = [FirestoreStreamStore(s.client, TTL) for s in stores]
        results = await asyncio.gather(
            *(both[i % 2].append(user, f'{{"n":{i}}}', utc_now()) for i in range(8))
        )
        assert len({epoch for epoch, _ in results}) == 1
        assert sorted(offset for _, offset in results) == list(range(1, 9))
    finally:
        for store in stores:
            await store.close()


async def test_firestore_entries_carry_the_ttl_field(firestore_host: str) -> None:
    """Each entry document holds its offset, epoch, payload and an expiry TTL after it was
    stored: the field the TTL policy deletes by."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    store = FirestoreStore(PROJECT)
    try:
        streams = FirestoreStreamStore(store.client, TTL)
        user = uid()
        now = utc_now()
        epoch, offset = await streams.append(user, '{"a":1}', now)
        head_ref = store.client.collection(STREAMS).document(user)
        head = (await head_ref.get()).to_dict()
        assert (head[STREAM_EPOCH], head[TOP_OFFSET]) == (epoch, 1)
        doc = (await head_ref.collection(STREAM_ENTRIES).document(entry_id(offset)).get()).to_dict()
        assert doc[ENTRY_OFFSET] == 1 and doc[STREAM_EPOCH] == epoch and doc[PAYLOAD] == '{"a":1}'
        assert doc[EXPIRES_AT] - doc[CREATED_AT] == timedelta(seconds=TTL)
    finally:
        await store.close()
