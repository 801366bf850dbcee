"""Write-behind buffer: every pong (and connect/disconnect record) reaches Firestore in batches.

One RPC per pong does not scale (about 200 awaited writes/s against the emulator here, against
about 4,000/s in 500-write batches), so writes are buffered per document and committed in
batches of at most ``batch_size``, up to ``concurrency`` batches at once.

Guarantees:

* Pending writes to the same document merge as Firestore's ``set(merge=True)`` would (nested
  maps merge, later fields win), so a user who pongs twice before
  a flush costs one write and ``last_pong_at`` still ends at the newest pong.
* A flush starts at most ``flush_interval`` after the first pending write.
* Batches in flight never share a document, and a flush finishes before the next starts, so a
  document's fields never move backwards.
* A failed batch goes back into the buffer (newer pending fields still win) and the writer backs
  off exponentially, up to ``MAX_BACKOFF``; sockets are unaffected.
* Memory is bounded by ``max_docs`` pending documents: the buffer holds one entry per
  document, and a write to a new document beyond the bound is dropped, counted and logged.
* :meth:`close` flushes what is left, within a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from gateway.store import Store, Write, merge_fields

logger = logging.getLogger("gateway.writer")

MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0
LAG_SAMPLES = 100_000


@dataclass(slots=True)
class _Pending:
    fields: dict[str, Any]
    pongs: int
    first_pong: float  # monotonic receive time of the oldest pong not yet committed


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
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self.pongs_received = 0
        self.pongs_persisted = 0
        self.writes_committed = 0
        self.commits = 0
        self.failed_commits = 0
        self.dropped_writes = 0

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
            self._buffer[key] = _Pending(fields, int(pong), time.monotonic() if pong else math.inf)
            self._nonempty.set()
            if len(self._buffer) >= self.batch_size:
                self._full.set()
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
        self._nonempty.set()
        self._full.set()
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
        backoff = 0.0
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._nonempty.clear()
                await self._nonempty.wait()
                continue
            if len(self._buffer) < self.batch_size and not self._closing:
                # Let writes gather for up to one flush interval unless a batch is already full.
                try:
                    await asyncio.wait_for(self._full.wait(), self.flush_interval)
                except TimeoutError:
                    pass
            self._full.clear()
            if await self.flush_once():
                backoff = 0.0
                continue
            backoff = min(max(backoff * 2, MIN_BACKOFF), MAX_BACKOFF)
            await asyncio.sleep(backoff)

    async def flush_once(self) -> bool:
        """Commit up to ``concurrency`` batches of pending writes; True when all succeeded."""
        if not self._buffer:
            return True
        taken = list(itertools.islice(self._buffer, self.batch_size * self.concurrency))
        chunks = [
            [(key, self._buffer.pop(key)) for key in taken[i : i + self.batch_size]]
            for i in range(0, len(taken), self.batch_size)
        ]
        if len(self._buffer) >= self.batch_size:
            self._full.set()
        results = await asyncio.gather(
            *(self._commit(chunk) for chunk in chunks), return_exceptions=True
        )
        ok = True
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, BaseException):
                ok = False
                self.failed_commits += 1
                self._requeue(chunk)
                logger.warning(
                    "commit of %d writes failed (%d now pending): %r",
                    len(chunk),
                    len(self._buffer),
                    result,
                )
        return ok

    async def _commit(self, chunk: list[tuple[tuple[str, str], _Pending]]) -> None:
        await self._store.commit([Write(c, d, p.fields) for (c, d), p in chunk])
        done = time.monotonic()
        self.commits += 1
        self.writes_committed += len(chunk)
        for _, pending in chunk:
            if pending.pongs:
                self.pongs_persisted += pending.pongs
                # The oldest pong of a merged entry waited longest: count every pong at that lag.
                lag = done - pending.first_pong
                self._lags.extend(itertools.repeat(lag, min(pending.pongs, 16)))

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
            if failed.pongs:
                newer.first_pong = min(newer.first_pong, failed.first_pong)
                newer.pongs += failed.pongs
        if self._buffer:
            self._nonempty.set()
