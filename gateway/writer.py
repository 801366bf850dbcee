"""Write-behind buffer: every pong (and connect/disconnect record) reaches Firestore in batches.

One RPC per pong does not scale (about 200 awaited writes/s against the emulator here, against
about 4,000/s in 500-write batches), so writes are buffered per document and committed in
batches of at most ``batch_size``, up to ``concurrency`` batches at once.

Guarantees:

* Pending writes to the same document merge as Firestore's ``set(merge=True)`` would (nested
  maps merge, later fields win), so a user who pongs twice before
  a flush costs one write and ``last_pong_at`` still ends at the newest pong.
* A batch is committed as soon as it is full, or when its oldest write has waited
  ``flush_interval``, whichever comes first, and a commit slot is free.
* A document is never in two commits at once (later writes wait in the buffer until the
  earlier commit ends), so a document's fields never move backwards.
* A failed batch goes back into the buffer (newer pending fields still win) and the writer backs
  off exponentially, up to ``MAX_BACKOFF``; sockets are unaffected.
* A batch that Firestore refuses as invalid (:class:`WriteRejected`, as opposed to unavailable)
  is split in halves, committed again at once, and so on down to the write at fault, which is
  dropped, counted (``rejected_writes``) and logged once. One bad document therefore costs
  about ``2 * log2(batch_size)`` extra commits, and never stalls the writes batched beside it:
  a buffer that retried it forever would stop every write of the instance, heartbeats
  included, and the sweep would then sign out everyone the instance holds.
* Memory is bounded by ``max_docs`` pending documents: the buffer holds one entry per
  document, and a write to a new document beyond the bound is dropped, counted and logged.
* :meth:`close` flushes what is left, within a deadline.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.exceptions import WriteRejected
from gateway.store import Store, Write, merge_fields

logger = logging.getLogger("gateway.writer")

MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0
LAG_SAMPLES = 100_000
#: Upper bounds (seconds) of the commit-duration histogram (one Commit RPC, successful ones).
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
#: Upper bounds (seconds) of the cumulative pong-lag histogram, Prometheus style: a reader
#: takes two snapshots and computes percentiles over exactly the pongs in between.
LAG_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    1.25,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    math.inf,
)


@dataclass(slots=True)
class _Pending:
    fields: dict[str, Any]
    pongs: int
    first_pong: float  # monotonic receive time of the oldest pong not yet committed
    since: float  # monotonic time of the oldest write not yet committed


class WriteBehind:
    def __init__(
        self,
        store: Store,
        *,
        flush_interval: float = 0.2,
        batch_size: int = 500,
        concurrency: int = 4,
        max_docs: int = 200_000,
    ) -> None:
        self._store = store
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.max_docs = max_docs
        self._buffer: dict[tuple[str, str], _Pending] = {}
        self._wakeup = asyncio.Event()
        self._inflight_keys: set[tuple[str, str]] = set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self.lag_counts = [0] * len(LAG_BUCKETS)
        self.lag_sum = 0.0
        self.commit_counts = [0] * len(COMMIT_BUCKETS)
        self.commit_sum = 0.0
        self.pongs_received = 0
        self.pongs_persisted = 0
        self.writes_committed = 0
        self.commits = 0
        self.failed_commits = 0
        self.dropped_writes = 0
        self.rejected_writes = 0

    # --- producers (called from socket handlers; never block) ------------------------------

    def put(self, write: Write, *, pong: bool = False) -> bool:
        """Queue a merge-write; False when the buffer is full and the write was dropped."""
        key = (write.collection, write.doc_id)
        pending = self._buffer.get(key)
        if pong:
            self.pongs_received += 1
        if pending is None:
            if len(self._buffer) >= self.max_docs:
                self.dropped_writes += 1
                if self.dropped_writes == 1 or self.dropped_writes % 1000 == 0:
                    logger.error(
                        "write buffer full (%d documents): dropped %d writes so far; "
                        "Firestore is not keeping up or is down",
                        self.max_docs,
                        self.dropped_writes,
                    )
                return False
            fields: dict[str, Any] = {}
            merge_fields(fields, write.fields)
            now = time.monotonic()
            self._buffer[key] = _Pending(fields, int(pong), now if pong else math.inf, now)
            if len(self._buffer) == 1 or len(self._buffer) % self.batch_size == 0:
                # The buffer became non-empty (start the flush timer) or filled another batch.
                self._wakeup.set()
        else:
            merge_fields(pending.fields, write.fields)
            if pong:
                if not pending.pongs:
                    pending.first_pong = time.monotonic()
                pending.pongs += 1
        return True

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def lag_percentiles(self, *quantiles: float) -> list[float | None]:
        """Pong-received-to-commit lag in seconds at each quantile, over recent pongs."""
        if not self._lags:
            return [None for _ in quantiles]
        ordered = sorted(self._lags)
        return [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in quantiles]

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="write-behind")

    async def close(self, deadline: float = 10.0) -> None:
        """Flush what is pending, giving up after ``deadline`` seconds (and saying so)."""
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), deadline)
        except TimeoutError:
            self._task.cancel()
            logger.error(
                "shutdown: %d documents still unwritten after %.1fs", len(self._buffer), deadline
            )

    async def run(self) -> None:
        """Keep up to ``concurrency`` commits in flight, each started as soon as a slot frees
        and a batch is due (full, or its oldest write has waited ``flush_interval``)."""
        inflight: dict[asyncio.Task[Exception | None], list[tuple[tuple[str, str], _Pending]]] = {}
        backoff = 0.0
        retry_at = 0.0
        wake: asyncio.Task[bool] | None = None
        try:
            while True:
                now = time.monotonic()
                while len(inflight) < self.concurrency and now >= retry_at:
                    chunk = self._take_due(now)
                    if not chunk:
                        break
                    inflight[asyncio.create_task(self._commit_isolating(chunk))] = chunk
                if not inflight and not self._buffer and self._closing:
                    return
                if wake is None or wake.done():
                    self._wakeup.clear()
                    wake = asyncio.create_task(self._wakeup.wait())
                # With every slot busy only a commit's end (or close) can start another, so
                # wait for that instead of spinning on a batch that is already due.
                full = len(inflight) >= self.concurrency
                done, _ = await asyncio.wait(
                    [*inflight, wake],
                    timeout=None if full else self._until_due(now, retry_at),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    chunk = inflight.pop(task, None)  # type: ignore[arg-type]
                    if chunk is None:
                        continue
                    self._inflight_keys.difference_update(key for key, _ in chunk)
                    error = task.result()
                    if error is None:
                        backoff = 0.0
                        continue
                    self.failed_commits += 1
                    backoff = min(max(backoff * 2, MIN_BACKOFF), MAX_BACKOFF)
                    retry_at = time.monotonic() + backoff
                    logger.warning(
                        "commit of %d writes failed (%d now pending, retry in %.1fs): %r",
                        len(chunk),
                        len(self._buffer),
                        backoff,
                        error,
                    )
        finally:
            for task in [*inflight, *([wake] if wake else [])]:
                task.cancel()

    def _eligible(self) -> Iterator[tuple[str, str]]:
        """Pending documents not already in a commit in flight, oldest first."""
        return (key for key in self._buffer if key not in self._inflight_keys)

    def _take_due(self, now: float) -> list[tuple[tuple[str, str], _Pending]]:
        first = next(self._eligible(), None)
        if first is None:
            return []
        due = self._closing or now - self._buffer[first].since >= self.flush_interval
        keys = list(itertools.islice(self._eligible(), self.batch_size))
        if not due and len(keys) < self.batch_size:
            return []
        self._inflight_keys.update(keys)
        return [(key, self._buffer.pop(key)) for key in keys]

    def _until_due(self, now: float, retry_at: float) -> float | None:
        """Seconds until the oldest eligible write is due (None: wait for an event)."""
        first = next(self._eligible(), None)
        if first is None:
            return None
        due_at = max(self._buffer[first].since + self.flush_interval, retry_at)
        return max(0.0, due_at - now)

    async def flush_once(self) -> bool:
        """Commit up to ``concurrency`` batches of pending writes at once; True when all
        succeeded. For a writer that is not running (tests, tools): :meth:`run` does its own
        scheduling and must not be combined with this."""
        if not self._buffer:
            return True
        taken = list(itertools.islice(self._buffer, self.batch_size * self.concurrency))
        chunks = [
            [(key, self._buffer.pop(key)) for key in taken[i : i + self.batch_size]]
            for i in range(0, len(taken), self.batch_size)
        ]
        results = await asyncio.gather(*(self._commit_isolating(chunk) for chunk in chunks))
        ok = True
        for chunk, result in zip(chunks, results, strict=True):
            if result is not None:
                ok = False
                self.failed_commits += 1
                logger.warning(
                    "commit of %d writes failed (%d now pending): %r",
                    len(chunk),
                    len(self._buffer),
                    result,
                )
        return ok

    async def _commit_isolating(
        self, chunk: list[tuple[tuple[str, str], _Pending]]
    ) -> Exception | None:
        """Commit ``chunk``, isolating and dropping any write Firestore refuses as invalid;
        what failed for another reason goes back into the buffer. Returns that other error
        (None: everything landed or was dropped)."""
        try:
            await self._commit(chunk)
        except WriteRejected as exc:
            if len(chunk) == 1:
                self._drop_rejected(chunk[0], exc)
                return None
            middle = len(chunk) // 2
            first = await self._commit_isolating(chunk[:middle])
            second = await self._commit_isolating(chunk[middle:])
            return first or second
        except Exception as exc:
            self._requeue(chunk)
            return exc
        return None

    def _drop_rejected(self, entry: tuple[tuple[str, str], _Pending], error: Exception) -> None:
        (collection, doc_id), pending = entry
        self.rejected_writes += 1
        # Once per write dropped: a client cannot make this line repeat, since the write is
        # gone (and the protocol already refuses the values that could cause it).
        logger.error(
            "dropped a write Firestore refused as invalid: %s/%.80s fields=%s: %s",
            collection,
            doc_id,
            sorted(pending.fields),
            error,
        )

    async def _commit(self, chunk: list[tuple[tuple[str, str], _Pending]]) -> None:
        started = time.monotonic()
        await self._store.commit([Write(c, d, p.fields) for (c, d), p in chunk])
        done = time.monotonic()
        self.commit_counts[bisect.bisect_left(COMMIT_BUCKETS, done - started)] += 1
        self.commit_sum += done - started
        self.commits += 1
        self.writes_committed += len(chunk)
        for _, pending in chunk:
            if pending.pongs:
                self.pongs_persisted += pending.pongs
                # The oldest pong of a merged entry waited longest: count every pong at that lag.
                lag = done - pending.first_pong
                self._lags.extend(itertools.repeat(lag, min(pending.pongs, 16)))
                self.lag_counts[bisect.bisect_left(LAG_BUCKETS, lag)] += pending.pongs
                self.lag_sum += lag * pending.pongs

    def _requeue(self, chunk: list[tuple[tuple[str, str], _Pending]]) -> None:
        # Requeued entries may push the buffer past max_docs by at most one flush's worth;
        # they were inside the bound when they arrived and are never dropped.
        for key, failed in chunk:
            newer = self._buffer.get(key)
            if newer is None:
                self._buffer[key] = failed
                continue
            merge_fields(failed.fields, newer.fields)
            newer.fields = failed.fields
            newer.since = min(newer.since, failed.since)
            if failed.pongs:
                newer.first_pong = min(newer.first_pong, failed.first_pong)
                newer.pongs += failed.pongs
        if self._buffer:
            self._wakeup.set()
