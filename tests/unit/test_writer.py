"""The write-behind buffer batches, merges, retries and bounds writes (in-memory store)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from gateway.schema import (
    ACTIVE_SESSIONS,
    INSTANCE_ID,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    MEMBERS,
    SESSIONS,
    UPDATED_AT,
)
from gateway.store import MemoryStore, Write, pong_write
from gateway.writer import WriteBehind
from tests.support import eventually

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def test_pending_writes_to_one_document_merge_into_one_write() -> None:
    """Two pongs of one user before a flush cost one write holding the newest time."""
    store = MemoryStore()
    writer = WriteBehind(store, flush_interval=0.05)
    writer.put(pong_write("u1", at(1)), pong=True)
    writer.put(pong_write("u1", at(2)), pong=True)
    assert writer.buffered == 1
    assert await writer.flush_once()
    assert store.docs[(MEMBERS, "u1")][LAST_PONG_AT] == at(2)
    assert sum(len(c) for c in store.commits) == 1
    assert writer.pongs_persisted == writer.pongs_received == 2


async def test_batches_hold_at_most_batch_size_writes() -> None:
    """1,200 users flush as commits of at most 500 writes, all committed."""
    store = MemoryStore()
    writer = WriteBehind(store, batch_size=500, concurrency=4)
    for i in range(1200):
        writer.put(pong_write(f"u{i}", at(i)), pong=True)
    assert await writer.flush_once()
    assert sorted(len(c) for c in store.commits) == [200, 500, 500]
    assert len(store.docs) == 1200
    assert writer.buffered == 0


async def test_flush_happens_within_the_interval_without_being_asked() -> None:
    """A running writer commits a lone pong within its flush interval."""
    store = MemoryStore()
    writer = WriteBehind(store, flush_interval=0.05)
    writer.start()
    writer.put(pong_write("u1", at(1)), pong=True)

    async def persisted() -> bool:
        return (MEMBERS, "u1") in store.docs

    await eventually(persisted, timeout=2)
    await writer.close()
    p50, p99 = writer.lag_percentiles(0.5, 0.99)
    assert p50 is not None and p99 is not None and p50 <= p99 < 2


async def test_failed_commits_are_retried_and_newer_fields_win() -> None:
    """A failed batch returns to the buffer; a pong that arrived meanwhile is not overwritten."""
    store = MemoryStore()
    writer = WriteBehind(store)
    writer.put(pong_write("u1", at(1)), pong=True)
    store.fail_next = 1
    assert not await writer.flush_once()
    assert writer.failed_commits == 1
    writer.put(pong_write("u1", at(5)), pong=True)
    assert writer.buffered == 1
    assert await writer.flush_once()
    assert store.docs[(MEMBERS, "u1")][LAST_PONG_AT] == at(5)
    assert writer.pongs_persisted == 2


async def test_fields_of_a_failed_write_survive_the_retry() -> None:
    """Fields only the failed write had (a connect record) are kept when merged with newer."""
    store = MemoryStore()
    writer = WriteBehind(store)
    writer.put(Write(MEMBERS, "u1", {IS_SIGNED_IN: True, LAST_PONG_AT: at(0)}))
    store.fail_next = 1
    assert not await writer.flush_once()
    writer.put(pong_write("u1", at(3)), pong=True)
    assert await writer.flush_once()
    assert store.docs[(MEMBERS, "u1")] == {
        IS_SIGNED_IN: True,
        LAST_PONG_AT: at(3),
        UPDATED_AT: at(3),
    }


async def test_running_writer_backs_off_and_recovers_after_an_outage() -> None:
    """With the store failing several times, the writer keeps retrying and loses nothing."""
    store = MemoryStore()
    store.fail_next = 3
    writer = WriteBehind(store, flush_interval=0.01)
    writer.start()
    for i in range(50):
        writer.put(pong_write(f"u{i}", at(i)), pong=True)

    async def all_written() -> bool:
        return len(store.docs) == 50

    await eventually(all_written, timeout=10)
    assert writer.failed_commits >= 3
    assert writer.pongs_persisted == 50
    await writer.close()


async def test_buffer_is_bounded_and_counts_drops() -> None:
    """New documents beyond max_docs are dropped and counted; known ones still update."""
    store = MemoryStore()
    writer = WriteBehind(store, max_docs=2)
    assert writer.put(pong_write("a", at(1)), pong=True)
    assert writer.put(pong_write("b", at(1)), pong=True)
    assert not writer.put(pong_write("c", at(1)), pong=True)
    assert writer.put(pong_write("a", at(2)), pong=True)
    assert writer.dropped_writes == 1
    assert await writer.flush_once()
    assert set(store.docs) == {(MEMBERS, "a"), (MEMBERS, "b")}


async def test_close_flushes_what_is_pending() -> None:
    """Shutdown commits buffered writes before returning."""
    store = MemoryStore()
    writer = WriteBehind(store, flush_interval=1.0)
    writer.start()
    await asyncio.sleep(0)
    writer.put(pong_write("u1", at(1)), pong=True)
    await writer.close(deadline=5)
    assert (MEMBERS, "u1") in store.docs


async def test_close_gives_up_at_its_deadline_when_the_store_is_down() -> None:
    """A store that never recovers does not hang shutdown."""
    store = MemoryStore()
    store.fail_next = 10_000
    writer = WriteBehind(store, flush_interval=0.01)
    writer.start()
    writer.put(pong_write("u1", at(1)), pong=True)
    await writer.close(deadline=0.5)
    assert writer.buffered == 1


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_documents_in_flight_are_never_split_across_batches(concurrency: int) -> None:
    """Within one flush every document appears in exactly one batch."""
    store = MemoryStore()
    writer = WriteBehind(store, batch_size=10, concurrency=concurrency)
    for i in range(100):
        writer.put(pong_write(f"u{i % 40}", at(i)), pong=True)
    while writer.buffered:
        assert await writer.flush_once()
    ids = [w.doc_id for commit in store.commits for w in commit]
    assert len(ids) == len(set(ids)) == 40


async def test_nested_maps_merge_and_deletes_survive_merging() -> None:
    """Two connects and a disconnect before one flush leave exactly the open session listed."""
    from gateway.store import connect_writes, disconnect_writes

    store = MemoryStore()
    writer = WriteBehind(store)
    for write in connect_writes("u", "s1", "i", "http://g", at(0)):
        writer.put(write)
    for write in connect_writes("u", "s2", "i", "http://g", at(1)):
        writer.put(write)
    for write in disconnect_writes("u", "s1", 1000, at(2)):
        writer.put(write)
    assert await writer.flush_once()
    assert store.docs[(MEMBERS, "u")][ACTIVE_SESSIONS] == {
        "s2": {INSTANCE_ID: "i", INTERNAL_URL: "http://g"}
    }
    assert store.docs[(SESSIONS, "s1")][IS_ACTIVE] is False


async def test_running_writer_never_has_one_document_in_two_commits_at_once() -> None:
    """With slow commits overlapping, a document waits for its earlier commit; the newest
    value lands last."""
    from collections.abc import Sequence

    class SlowStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.active: set[str] = set()
            self.overlaps = 0

        async def commit(self, writes: Sequence[Write]) -> None:
            ids = {w.doc_id for w in writes}
            self.overlaps += bool(ids & self.active)
            self.active |= ids
            await asyncio.sleep(0.03)
            self.active -= ids
            await super().commit(writes)

    store = SlowStore()
    writer = WriteBehind(store, flush_interval=0.01, batch_size=5, concurrency=4)
    writer.start()
    for i in range(200):
        writer.put(pong_write(f"u{i % 7}", at(i)), pong=True)
        if i % 10 == 0:
            await asyncio.sleep(0.005)

    async def drained() -> bool:
        return writer.pongs_persisted == 200

    await eventually(drained, timeout=10)
    await writer.close()
    assert store.overlaps == 0
    assert len(store.commits) > 1
    newest = {f"u{i % 7}": at(i) for i in range(200)}
    assert {d: f[LAST_PONG_AT] for (_, d), f in store.docs.items()} == newest
