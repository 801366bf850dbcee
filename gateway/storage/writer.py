"""Write-behind buffer: every pong (and connect/disconnect record) reaches Firestore in batches.

One awaited RPC per pong carries a small fraction of what batched commits do (measured:
docs/benchmarks.md#commit-paths), so writes are buffered per document and committed in batches
of at most ``batch_size``, up to ``concurrency`` batches at once.

Guarantees:

* Pending writes to the same document merge as Firestore's ``set(merge=True)`` would (nested
  maps merge, later fields win), so a user who pongs twice before a flush costs one write and
  ``last_pong_at`` still ends at the newest pong.
* A batch is committed as soon as it is full, or when its oldest write has waited
  ``flush_interval``, whichever comes first, and a commit slot is free.
* Documents written together (``put_together``: a socket's member entry and session record)
  are committed in one commit (``gateway.storage.write_buffer``).
* Urgent writes go first: every write that is not a pong or an acknowledgement (an instance's
  heartbeat, a socket's connect and close records) is taken before any pong, and may start a
  commit of its own when every slot is busy with pongs. The sweep reads the heartbeat to tell
  a live instance from a dead one, so it must never starve behind a pong backlog.
* What is in flight adapts to Firestore (``gateway.storage.congestion.CommitWindow``): fewer,
  smaller commits when commits slow down or fail, back to the full ceiling when they are
  quick. Pongs are taken oldest first (the buffer is ordered by each document's first pending
  write), so a Firestore that cannot keep every record fresh keeps them evenly stale rather
  than some fresh and some expiring; :meth:`backlog_age` says how far behind the oldest one is.
* A document is never in two commits at once (later writes wait in the buffer until the
  earlier commit ends), so a document's fields never move backwards.
* A failed batch goes back into the buffer (newer pending fields still win) and the writer backs
  off exponentially, up to ``MAX_BACKOFF``; sockets are unaffected.
* A batch that Firestore refuses as invalid is narrowed down to the write at fault, which is
  dropped, counted (``rejected_writes``) and logged once (``gateway.storage.isolation``).
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
from collections.abc import Sequence

from gateway.storage.congestion import CommitWindow
from gateway.storage.isolation import commit_isolating
from gateway.storage.store import Store, Write
from gateway.storage.write_buffer import Chunk, PendingWrites

logger = logging.getLogger("gateway.storage.writer")

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
        self._pending = PendingWrites()
        self.window = CommitWindow(batch_size * concurrency, start=batch_size)
        #: Commits in flight (run's), with what each carries and when it started.
        self._inflight: dict[asyncio.Task[Exception | None], tuple[Chunk, float]] = {}
        self._inflight_writes = 0
        self._urgent_inflight = 0
        self._wakeup = asyncio.Event()
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

    def put(self, write: Write, *, pong: bool = False, urgent: bool | None = None) -> bool:
        """Queue a merge-write; False when the buffer is full and the write was dropped.
        ``urgent`` (default: any write but a pong) puts the document ahead of the pongs."""
        if pong:
            self.pongs_received += 1
        if urgent is None:
            urgent = not pong
        pending = self._pending
        before = len(pending)
        if not pending.put(write, pong, urgent, self.max_docs):
            self._dropped(1)
            return False
        size = len(pending)
        if urgent or (size != before and (size == 1 or size % self.batch_size == 0)):
            # The buffer became non-empty (start the flush timer), filled another batch, or
            # holds an urgent write (which may start a commit of its own).
            self._wakeup.set()
        return True

    def put_together(self, writes: Sequence[Write]) -> bool:
        """Queue urgent merge-writes that must reach Firestore in one commit (a socket's member
        entry and session record); False when the buffer is full and some were dropped."""
        self._wakeup.set()
        if dropped := self._pending.put_together(writes, self.max_docs):
            self._dropped(dropped)
        return not dropped

    def _dropped(self, writes: int) -> None:
        total = self.dropped_writes = self.dropped_writes + writes
        if total == writes or total % 1000 < writes:  # the first, then every 1,000th
            full = "write buffer full (%d documents): dropped %d writes so far; Firestore is behind"
            logger.error(full, self.max_docs, total)

    def refresh(self, write: Write) -> bool:
        """Merge a pong into a write already pending for its document, at no extra cost;
        False (nothing done) when none is pending."""
        if not self._pending.merge_pong(write):
            return False
        self.pongs_received += 1
        return True

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def backlog_age(self) -> float:
        """Seconds the oldest pong not yet committed has waited (0 when none): how far the
        stored records of this instance's users lag behind their pongs, beyond one ping."""
        in_flight = (p for chunk, _ in self._inflight.values() for _, p in chunk)
        oldest = self._pending.oldest_pong(in_flight)
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)

    def lag_percentiles(self, *quantiles: float) -> list[float | None]:
        """Pong-received-to-commit lag in seconds at each quantile, over recent pongs."""
        if not self._lags:
            return [None for _ in quantiles]
        ordered = sorted(self._lags)
        return [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in quantiles]

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="write-behind")

    async def close(self, deadline: float = 10.0) -> bool:
        """Flush what is pending within ``deadline`` seconds (else say so); True if all was."""
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            return not self._pending
        try:
            await asyncio.wait_for(asyncio.shield(self._task), deadline)
        except TimeoutError:
            self._task.cancel()
            logger.error(
                "shutdown: %d documents still unwritten after %.1fs", len(self._pending), deadline
            )
            return False
        return not self._pending

    async def run(self) -> None:
        """Keep commits in flight within ``concurrency`` and the window, each started as soon
        as there is room and a batch is due (full, or its oldest write has waited
        ``flush_interval``); urgent writes may start one commit beyond both."""
        inflight = self._inflight
        backoff = 0.0
        retry_at = 0.0
        wake: asyncio.Task[bool] | None = None
        try:
            while True:
                now = time.monotonic()
                while now >= retry_at and (chunk := self._next_chunk(now)):
                    task = asyncio.create_task(self._commit_isolating(chunk))
                    inflight[task] = (chunk, now)
                    self._inflight_writes += len(chunk)
                    self._urgent_inflight += sum(p.urgent for _, p in chunk)
                if not inflight and not self._pending and self._closing:
                    return
                if wake is None or wake.done():
                    self._wakeup.clear()
                    wake = asyncio.create_task(self._wakeup.wait())
                # With no room only a commit's end (or a new write) can start another, so
                # wait for that instead of spinning on a batch that is already due.
                done, _ = await asyncio.wait(
                    [*inflight, wake],
                    timeout=self._until_due(now, retry_at) if self._room() else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for finished in done:
                    entry = inflight.pop(finished, None)  # type: ignore[arg-type]
                    if entry is None:
                        continue
                    chunk, started = entry
                    self._pending.release(chunk)
                    self._inflight_writes -= len(chunk)
                    self._urgent_inflight -= sum(p.urgent for _, p in chunk)
                    error = finished.result()
                    if not isinstance(error, Exception):
                        self.window.succeeded(len(chunk), time.monotonic() - started)
                        backoff = 0.0
                        continue
                    self.window.failed()
                    backoff = min(max(backoff * 2, MIN_BACKOFF), MAX_BACKOFF)
                    retry_at = time.monotonic() + backoff
                    self._failed(chunk, error, f", retry in {backoff:.1f}s")
        finally:
            for leftover in [*inflight, *([wake] if wake else [])]:
                leftover.cancel()

    def _open_room(self) -> int:
        """Writes a new commit of any kind may carry now: none while every slot is busy, the
        window is used up, or a commit has been in flight past the target latency (the link
        is queueing: more bytes behind it would only delay the heartbeat and reach their
        deadline; its end, or its failure, adjusts the window)."""
        if len(self._inflight) >= self.concurrency:
            return 0
        oldest = min((started for _, started in self._inflight.values()), default=None)
        if oldest is not None and time.monotonic() - oldest > self.window.target_latency:
            return 0
        return min(self.batch_size, self.window.room(self._inflight_writes))

    def _room(self) -> int:
        """Writes a new commit may carry now (0: none may start)."""
        # Full: an urgent write still gets a commit of its own, one at a time.
        return self._open_room() or (
            self.batch_size if self._pending.has_urgent and not self._urgent_inflight else 0
        )

    def _next_chunk(self, now: float) -> Chunk:
        room = self._open_room()
        urgent_only = not room
        if urgent_only:
            room = self._room()
            if not room:
                return []
        flush_after = 0.0 if self._closing else self.flush_interval
        return self._pending.take(now, room, flush_after, urgent_only=urgent_only)

    def _until_due(self, now: float, retry_at: float) -> float | None:
        """Seconds until the oldest eligible write is due (None: wait for an event)."""
        oldest = self._pending.oldest_since()
        if oldest is None:
            return None
        return max(0.0, max(oldest + self.flush_interval, retry_at) - now)

    async def flush_once(self) -> bool:
        """Commit up to ``concurrency`` batches of pending writes at once (a take each, which
        keeps documents written together in one); True when all succeeded. For a writer that
        is not running (tests, tools): :meth:`run` schedules its own, not to be combined."""
        if not self._pending:
            return True
        chunks: list[Chunk] = []
        for _ in range(self.concurrency):
            if not (chunk := self._pending.take(math.inf, self.batch_size, 0.0)):
                break
            chunks.append(chunk)
        results = await asyncio.gather(*(self._commit_isolating(chunk) for chunk in chunks))
        for chunk in chunks:
            self._pending.release(chunk)
        for chunk, result in zip(chunks, results, strict=True):
            if result is not None:
                self._failed(chunk, result)
        return all(result is None for result in results)

    def _failed(self, chunk: Chunk, error: Exception, retry: str = "") -> None:
        self.failed_commits += 1
        logger.warning(
            "commit of %d writes failed (%d now pending, window %d%s): %r",
            len(chunk),
            len(self._pending),
            self.window.size,
            retry,
            error,
        )

    async def _commit_isolating(self, chunk: Chunk) -> Exception | None:
        return await commit_isolating(
            self._commit, chunk, dropped=self._count_rejected, failed=self._retry_later
        )

    def _count_rejected(self) -> None:
        self.rejected_writes += 1

    def _retry_later(self, chunk: Chunk) -> None:
        self._pending.requeue(chunk)
        self._wakeup.set()

    async def _commit(self, chunk: Chunk) -> None:
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
