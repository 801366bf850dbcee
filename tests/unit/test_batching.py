"""Coalesced reads (``gateway.storage.batching.BatchReader``) against a fetch that records its
calls: which keys go in which batch, who gets which answer, failures and callers that give up."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from gateway.storage.batching import BatchReader


class Backend:
    """A fetch that records each batch and answers when released (``gate``) or at once."""

    def __init__(self, docs: Mapping[str, str], *, held: bool = False) -> None:
        self.docs = dict(docs)
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        if not held:
            self.gate.set()
        self.error: Exception | None = None

    async def fetch(self, keys: list[str]) -> dict[str, str]:
        self.calls.append(list(keys))
        await self.gate.wait()
        error, self.error = self.error, None  # one failed fetch, then answers again
        if error is not None:
            raise error
        return {k: self.docs[k] for k in keys if k in self.docs}


async def test_reads_asked_for_at_once_share_one_fetch() -> None:
    """Connects handled in one loop iteration: one fetch for all of them; a key with no
    document answers None; a key asked twice is fetched once and answers both."""
    backend = Backend({"a": "A", "b": "B"})
    reader: BatchReader[str] = BatchReader(backend.fetch, max_batch=100, max_in_flight=4)
    results = await asyncio.gather(*(reader.get(k) for k in ("a", "b", "none", "a")))
    assert results == ["A", "B", None, "A"]
    assert backend.calls == [["a", "b", "none"]]
    assert (reader.batches, reader.keys_read) == (1, 3)


async def test_a_lone_read_is_not_held_back() -> None:
    """One read at a time (no storm): each gets its own fetch at once, nothing waits."""
    backend = Backend({"a": "A", "b": "B"})
    reader: BatchReader[str] = BatchReader(backend.fetch, max_batch=100, max_in_flight=1)
    assert await reader.get("a") == "A"
    assert await reader.get("b") == "B"
    assert backend.calls == [["a"], ["b"]]


async def test_while_every_slot_is_busy_later_reads_queue_into_the_next_batch() -> None:
    """max_in_flight batches out: the keys asked for meanwhile wait, then go together (at most
    max_batch per fetch) as soon as a slot frees."""
    backend = Backend({f"k{i}": f"V{i}" for i in range(10)}, held=True)
    reader: BatchReader[str] = BatchReader(backend.fetch, max_batch=3, max_in_flight=1)
    first = asyncio.ensure_future(reader.get("k0"))
    await asyncio.sleep(0.01)
    assert backend.calls == [["k0"]]
    rest = [asyncio.ensure_future(reader.get(f"k{i}")) for i in range(1, 8)]
    await asyncio.sleep(0.01)
    assert backend.calls == [["k0"]] and reader.waiting == 7
    backend.gate.set()
    assert await first == "V0"
    assert await asyncio.gather(*rest) == [f"V{i}" for i in range(1, 8)]
    assert backend.calls == [["k0"], ["k1", "k2", "k3"], ["k4", "k5", "k6"], ["k7"]]


async def test_several_batches_run_at_once_up_to_the_limit() -> None:
    """More keys than one batch holds, with free slots: several fetches out at once."""
    backend = Backend({}, held=True)
    reader: BatchReader[str] = BatchReader(backend.fetch, max_batch=2, max_in_flight=2)
    waiting = [asyncio.ensure_future(reader.get(f"k{i}")) for i in range(5)]
    await asyncio.sleep(0.01)
    assert backend.calls == [["k0", "k1"], ["k2", "k3"]]
    backend.gate.set()
    assert await asyncio.gather(*waiting) == [None] * 5
    assert backend.calls[2:] == [["k4"]]


async def test_a_failed_fetch_fails_its_callers_and_the_next_batch_still_runs() -> None:
    """The fetch's error reaches every caller of that batch (the admission then fails open);
    keys queued behind it are fetched afterwards."""
    backend = Backend({"b": "B"}, held=True)
    reader: BatchReader[str] = BatchReader(backend.fetch, max_batch=10, max_in_flight=1)
    failing = [asyncio.ensure_future(reader.get(k)) for k in ("a", "a2")]
    await asyncio.sleep(0.01)
    later = asyncio.ensure_future(reader.get("b"))
    await asyncio.sleep(0.01)
    backend.error = ConnectionError("firestore down")
    backend.gate.set()
    for future in failing:
        with pytest.raises(ConnectionError):
            await future
    assert await later == "B"
    assert backend.calls == [["a", "a2"], ["b"]]


async def test_a_caller_that_gives_up_leaves_the_others_their_answer() -> None:
    """A caller's own timeout cancels only its wait; the batch goes on for the rest."""
    backend = Backend({"a": "A"}, held=True)
    reader: BatchReader[str] = BatchReader(backend.fetch, max_batch=10, max_in_flight=1)
    patient = asyncio.ensure_future(reader.get("a"))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await reader.get("a")
    backend.gate.set()
    assert await patient == "A"


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BatchReader(Backend({}).fetch, max_batch=0, max_in_flight=1)
