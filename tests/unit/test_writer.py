"""The write-behind buffer batches, merges, retries and bounds writes (in-memory store)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from gateway.storage.schema import (
    ACKED_EPOCH,
    ACKED_OFFSET,
    ACTIVE_SESSIONS,
    HEARTBEAT_AT,
    INSTANCE_ID,
    INSTANCES,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    MEMBERS,
    SESSIONS,
    STREAM_ACKS,
    UPDATED_AT,
)
from gateway.storage.store import MemoryStore, Write, pong_write
from gateway.storage.writer import WriteBehind
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
    from gateway.storage.store import connect_writes, disconnect_writes

    store = MemoryStore()
    writer = WriteBehind(store)
    for write in connect_writes("u", "s1", "i", at(0)):
        writer.put(write)
    for write in connect_writes("u", "s2", "i", at(1)):
        writer.put(write)
    for write in disconnect_writes("u", "s1", 1000, at(2)):
        writer.put(write)
    assert await writer.flush_once()
    assert store.docs[(MEMBERS, "u")][ACTIVE_SESSIONS] == {"s2": {INSTANCE_ID: "i"}}
    assert store.docs[(SESSIONS, "s1")][IS_ACTIVE] is False


async def test_running_writer_never_has_one_document_in_two_commits_at_once() -> None:
    """With slow commits overlapping, a document waits for its earlier commit; the newest
    value lands last."""

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


def poison(user_id: str) -> Write:
    """A write Firestore refuses whatever the batch: an integer beyond its signed 64 bits."""
    return Write(STREAM_ACKS, user_id, {ACKED_EPOCH: "x", ACKED_OFFSET: 2**63})


async def test_a_write_firestore_refuses_is_dropped_and_the_rest_of_its_batch_lands() -> None:
    """One refused write among 40: the 40 others are committed in the same flush, the bad one
    is dropped and counted, and nothing is left to retry (no commit counts as failed)."""
    store = MemoryStore()
    writer = WriteBehind(store, batch_size=500)
    for i in range(20):
        writer.put(pong_write(f"u{i}", at(i)), pong=True)
    writer.put(poison("bad"))
    for i in range(20, 40):
        writer.put(pong_write(f"u{i}", at(i)), pong=True)
    assert await writer.flush_once()
    assert writer.buffered == 0
    assert (writer.rejected_writes, writer.failed_commits) == (1, 0)
    assert writer.pongs_persisted == 40
    assert all((MEMBERS, f"u{i}") in store.docs for i in range(40))
    assert (STREAM_ACKS, "bad") not in store.docs


async def test_a_refused_write_never_stalls_the_running_writer() -> None:
    """The running writer keeps committing after a refused write: later pongs land within a
    flush interval, as if nothing had happened."""
    store = MemoryStore()
    writer = WriteBehind(store, flush_interval=0.01, batch_size=8)
    writer.start()
    try:
        writer.put(poison("bad"))
        for i in range(30):
            writer.put(pong_write(f"u{i}", at(i)), pong=True)

        async def all_landed() -> bool:
            return writer.pongs_persisted == 30 and writer.buffered == 0

        await eventually(all_landed, timeout=5)
        writer.put(pong_write("late", at(99)), pong=True)

        async def late_landed() -> bool:
            return (MEMBERS, "late") in store.docs

        await eventually(late_landed, timeout=5)
        assert (writer.rejected_writes, writer.failed_commits) == (1, 0)
    finally:
        await writer.close(deadline=1)


async def test_a_newer_valid_value_replaces_a_refused_one_before_the_flush() -> None:
    """Pending writes merge: a valid acknowledgement after the bad one is what is written."""
    store = MemoryStore()
    writer = WriteBehind(store)
    writer.put(poison("u"))
    writer.put(Write(STREAM_ACKS, "u", {ACKED_EPOCH: "x", ACKED_OFFSET: 7}))
    assert await writer.flush_once()
    assert store.docs[(STREAM_ACKS, "u")][ACKED_OFFSET] == 7
    assert writer.rejected_writes == 0


class OutageAfterRejection(MemoryStore):
    """Refuses invalid writes like Firestore, and is unavailable for every commit that holds
    the document ``down`` until ``recover`` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def commit(self, writes: Sequence[Write]) -> None:
        if self.down and any(w.doc_id == "down" for w in writes) and len(writes) < 8:
            raise ConnectionError("unavailable")
        await super().commit(writes)


async def test_an_outage_while_isolating_keeps_the_unwritten_half_for_a_retry() -> None:
    """While a refused write is being isolated, a part that fails for another reason (the
    store unavailable) goes back into the buffer and is retried later: nothing valid is lost,
    and what did land is not held back."""
    store = OutageAfterRejection()
    writer = WriteBehind(store)
    for doc_id in ("a", "b", "down", "c", "d", "e", "f"):
        writer.put(pong_write(doc_id, at(1)), pong=True)
    writer.put(poison("bad"), urgent=False)  # an acknowledgement: behind the urgent writes
    assert not await writer.flush_once()
    assert writer.rejected_writes == 1
    assert writer.buffered >= 1 and (MEMBERS, "down") not in store.docs
    store.down = False
    while writer.buffered:
        assert await writer.flush_once()
    assert all((MEMBERS, d) in store.docs for d in ("a", "b", "down", "c", "d", "e", "f"))
    assert writer.pongs_persisted == 7


class SlowStore(MemoryStore):
    """Commits holding a pong take ``pong_delay`` seconds; the others are quick."""

    def __init__(self, pong_delay: float) -> None:
        super().__init__()
        self.pong_delay = pong_delay
        self.sizes: list[int] = []

    async def commit(self, writes: Sequence[Write]) -> None:
        self.sizes.append(len(writes))
        if any(w.collection == MEMBERS for w in writes):
            await asyncio.sleep(self.pong_delay)
        await super().commit(writes)


async def test_urgent_writes_are_committed_first_and_never_wait_behind_pongs() -> None:
    """Every commit slot busy with slow pong batches: a heartbeat written meanwhile lands in
    a commit of its own at once, and flush_once takes urgent documents before pongs."""
    store = SlowStore(pong_delay=2.0)
    writer = WriteBehind(store, flush_interval=0.01, batch_size=10, concurrency=2)
    for i in range(100):
        writer.put(pong_write(f"u{i}", at(i)), pong=True)
    writer.start()
    try:
        await asyncio.sleep(0.1)  # both slots now hold pong commits for 2 s
        writer.put(Write(INSTANCES, "me", {HEARTBEAT_AT: at(1)}))

        async def beat_landed() -> bool:
            return (INSTANCES, "me") in store.docs

        await eventually(beat_landed, timeout=1.5)
    finally:
        await writer.close(deadline=0.1)

    ordered = WriteBehind(MemoryStore(), batch_size=3, concurrency=1)
    for i in range(5):
        ordered.put(pong_write(f"u{i}", at(i)), pong=True)
    ordered.put(Write(INSTANCES, "me", {HEARTBEAT_AT: at(1)}))
    ordered.put(pong_write("u0", at(9)), pong=True)
    assert await ordered.flush_once()
    first = ordered._store.commits[0]  # type: ignore[attr-defined]
    assert [w.doc_id for w in first] == ["me", "u0", "u1"]


async def test_slow_commits_shrink_what_is_in_flight_and_quick_ones_restore_it() -> None:
    """Commits slower than the target latency shrink the window (fewer, smaller commits, so
    none reaches its deadline); once commits are quick again it grows back to the ceiling."""
    store = SlowStore(pong_delay=0.3)
    writer = WriteBehind(store, flush_interval=0.01, batch_size=50, concurrency=2)
    writer.window.target_latency = 0.1
    ceiling = writer.window.maximum
    for i in range(400):
        writer.put(pong_write(f"u{i}", at(i)), pong=True)
    writer.start()
    try:

        async def shrunk() -> bool:
            return writer.window.size <= ceiling // 4

        await eventually(shrunk, timeout=10)
        store.pong_delay = 0.0

        async def restored() -> bool:
            for i in range(20):
                writer.put(pong_write(f"v{i}", at(i)), pong=True)
            return writer.window.size == ceiling

        await eventually(restored, timeout=10)
    finally:
        await writer.close(deadline=5)
    assert min(store.sizes) < 50  # commits got smaller than a full batch meanwhile
    assert writer.failed_commits == 0


async def test_backlog_age_is_the_wait_of_the_oldest_unwritten_pong() -> None:
    """No pong pending: 0. Pongs pending for a while: about how long the oldest has waited."""
    writer = WriteBehind(MemoryStore())
    assert writer.backlog_age() == 0.0
    writer.put(pong_write("u1", at(1)), pong=True)
    await asyncio.sleep(0.2)
    writer.put(pong_write("u2", at(2)), pong=True)
    assert 0.15 <= writer.backlog_age() < 5
    assert await writer.flush_once()
    assert writer.backlog_age() == 0.0


def test_commit_window_grows_while_quick_and_backs_off_when_slow_or_failing() -> None:
    """+half a commit while quick; when slow, what the link carried in the target latency at
    that pace (and at least x0.7); back to the minimum on a failure; within its bounds."""
    from gateway.storage.congestion import CommitWindow

    window = CommitWindow(maximum=1000, minimum=10, target_latency=1.0)
    assert window.size == 1000
    assert CommitWindow(maximum=1000, start=250).size == 250  # slow start from one batch
    window.succeeded(500, latency=2.0)
    assert window.size == 250  # 500 writes in 2 s: 250 in the target second
    window.succeeded(100, latency=1.1)
    assert window.size == 90  # 100 writes in 1.1 s: 90 (below 70 % of 250)
    window.succeeded(100, latency=0.1)
    assert window.size == 140
    window.failed()
    assert window.size == 10 and window.room(in_flight=4) == 6
    for _ in range(100):
        window.succeeded(500, latency=0.1)
    assert window.size == 1000
