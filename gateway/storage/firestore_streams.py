"""The Firestore backend of :class:`gateway.storage.streams.StreamStore`.

Cost per durable message: the append is one transaction, 1 read (the head) and 2 writes (the
head's new top, the entry). Acknowledgements add at most one write per user per flush of the
write-behind buffer (``PONG_FLUSH_INTERVAL``), to ``stream_acks/{user_id}``: not the head, whose
transactions' locks the buffer's batches would otherwise wait on. A recovery reads the head and
the missed entries (1 + n reads; one more, the acknowledgement, when no position is presented).
The entries expire through a TTL policy on ``stream_entries.expires_at`` (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from gateway.storage.firestore_reads import read_document
from gateway.storage.schema import (
    CREATED_AT,
    ENTRY_OFFSET,
    EXPIRES_AT,
    PAYLOAD,
    STREAM_ACKS,
    STREAM_ENTRIES,
    STREAM_EPOCH,
    STREAMS,
    TOP_OFFSET,
    UPDATED_AT,
)
from gateway.storage.streams import Entry, Head, entry_id, head_from, new_epoch

#: Attempts of one append's transaction when other instances append to the same stream.
APPEND_ATTEMPTS = 10


class FirestoreStreamStore:
    def __init__(self, client: Any, ttl: float) -> None:
        #: The gateway's AsyncClient (shared with FirestoreStore: one channel).
        self._client = client
        self.ttl = ttl
        #: One append at a time per user on this instance: concurrent transactions on one head
        #: would only abort each other (the emulator gives up after a few rounds of 8).
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def append(self, user_id: str, payload: str, now: datetime) -> tuple[str, int]:
        lock, users = self._locks.get(user_id) or (asyncio.Lock(), 0)
        self._locks[user_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._append(user_id, payload, now)
        finally:
            lock, users = self._locks[user_id]
            if users == 1:
                del self._locks[user_id]
            else:
                self._locks[user_id] = (lock, users - 1)

    async def _append(self, user_id: str, payload: str, now: datetime) -> tuple[str, int]:
        from google.cloud.firestore import async_transactional

        head_ref = self._client.collection(STREAMS).document(user_id)
        expires = now + timedelta(seconds=self.ttl)

        @async_transactional
        async def allocate(transaction: Any) -> tuple[str, int]:
            snapshot = await read_document(self._client, head_ref, transaction=transaction)
            head = head_from(snapshot.to_dict() if snapshot.exists else None)
            epoch = head.epoch if head is not None else new_epoch()
            offset = head.top + 1 if head is not None else 1
            transaction.set(
                head_ref, {STREAM_EPOCH: epoch, TOP_OFFSET: offset, UPDATED_AT: now}, merge=True
            )
            # set, not create: a stream lost and started again reuses the old offsets' ids.
            transaction.set(
                head_ref.collection(STREAM_ENTRIES).document(entry_id(offset)),
                {
                    ENTRY_OFFSET: offset,
                    STREAM_EPOCH: epoch,
                    PAYLOAD: payload,
                    CREATED_AT: now,
                    EXPIRES_AT: expires,
                },
            )
            return epoch, offset

        # Another instance appending to the same stream aborts one of the two; it is retried.
        transaction = self._client.transaction(max_attempts=APPEND_ATTEMPTS)
        result: tuple[str, int] = await allocate(transaction)
        return result

    async def head(self, user_id: str, timeout: float, *, with_ack: bool = False) -> Head | None:
        refs = [self._client.collection(STREAMS).document(user_id)]
        if with_ack:
            refs.append(self._client.collection(STREAM_ACKS).document(user_id))
        found: dict[str, dict[str, Any]] = {}
        async for snapshot in self._client.get_all(refs, retry=None, timeout=timeout):
            if snapshot.exists:
                found[snapshot.reference.parent.id] = snapshot.to_dict() or {}
        return head_from(found.get(STREAMS), found.get(STREAM_ACKS))

    async def entries(self, user_id: str, after: int, top: int, timeout: float) -> list[Entry]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        # Single-field ranges on one field: served by Firestore's automatic index.
        query = (
            self._client.collection(STREAMS)
            .document(user_id)
            .collection(STREAM_ENTRIES)
            .where(filter=FieldFilter(ENTRY_OFFSET, ">", after))
            .where(filter=FieldFilter(ENTRY_OFFSET, "<=", top))
            .order_by(ENTRY_OFFSET)
        )
        found = []
        async for snapshot in query.stream(retry=None, timeout=timeout):
            data = snapshot.to_dict() or {}
            found.append(Entry(int(data[ENTRY_OFFSET]), str(data[PAYLOAD]), data[CREATED_AT]))
        return found

    async def close(self) -> None:
        return None  # the client belongs to FirestoreStore
