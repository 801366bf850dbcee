"""Reads coalesced: callers asking for documents at the same moment share one batched read.

Every connect reads its member record (the revocation check in ``gateway.instance.auth``). In a
reconnect storm thousands of connects wait at once, and one Firestore call per record costs the
gateway far more than one ``get_all`` for many records (a gRPC call's set-up, its task and its
wake-ups dominated the admission path's profile; see docs/benchmarks.md). ``BatchReader``
starts a read as soon as a slot is free, with every key asked for in the same loop iteration,
so a lone connect waits no longer than before; while ``max_in_flight`` reads are out, later keys
queue, and the next read takes all of them (up to ``max_batch``).

The I/O is the ``fetch`` callable it is given (``Store.get_members``); the decisions (what goes
in which batch, who gets which answer) are here and are tested without Firestore.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, TypeVar

V = TypeVar("V")

#: fetch(keys) -> the values found, by key; a key it does not return has no document.
Fetch = Callable[[list[str]], Awaitable[Mapping[str, V]]]


class BatchReader(Generic[V]):
    """Coalesces concurrent ``get(key)`` calls into batched ``fetch`` calls."""

    def __init__(self, fetch: Fetch[V], *, max_batch: int, max_in_flight: int) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._fetch = fetch
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        #: Keys not yet in a batch, oldest first, with every caller waiting for each.
        self._waiting: dict[str, list[asyncio.Future[V | None]]] = {}
        self._in_flight = 0
        self._scheduled = False
        #: Strong references to the running batches (the loop keeps only weak ones).
        self._tasks: set[asyncio.Task[None]] = set()
        #: Batches fetched and keys read, for the profile's arithmetic and the tests.
        self.batches = 0
        self.keys_read = 0

    async def get(self, key: str) -> V | None:
        """The value for ``key`` (None when there is none); raises what the fetch raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        if not self._scheduled and self._in_flight < self.max_in_flight:
            # Not at once: every connect handled in this loop iteration joins the batch.
            self._scheduled = True
            loop.call_soon(self._start)
        return await future

    @property
    def waiting(self) -> int:
        """Keys queued for a batch."""
        return len(self._waiting)

    def _start(self) -> None:
        self._scheduled = False
        while self._waiting and self._in_flight < self.max_in_flight:
            keys = list(self._waiting)[: self.max_batch]
            batch = {key: self._waiting.pop(key) for key in keys}
            self._in_flight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[str, list[asyncio.Future[V | None]]]) -> None:
        try:
            found = await self._fetch(list(batch))
        except Exception as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():  # a caller that gave up (its timeout) is skipped
                        future.set_exception(exc)
        else:
            self.batches += 1
            self.keys_read += len(batch)
            for key, futures in batch.items():
                value = found.get(key)
                for future in futures:
                    if not future.done():
                        future.set_result(value)
        finally:
            for futures in batch.values():
                for future in futures:
                    future.cancel()  # only if still pending: this batch itself was cancelled
            self._in_flight -= 1
            if self._waiting and not self._scheduled:
                self._start()
