"""The sweep's query for expired members, one shard at a time.

Every pong sets ``members/{uid}.last_pong_at`` to now. An index holding a field that only grows
takes about 500 writes a second for the whole collection, unless it leads with a shard field
(Google's "sharded timestamps"); so the sweep's index is ``(shard, is_signed_in,
last_pong_at)`` in ``firestore.indexes.json`` and each query names one shard. A page is filled
from consecutive shards, each oldest first; the cursor says where the next page resumes.

Cost: a run queries every shard at least once (``MEMBER_SHARDS`` queries, each billed at least
one read even when it finds nothing), one after the other: in production an index range read
each, a second or two a run in all. The emulator has no indexes and reads the whole collection
for every query, so there a run costs ``MEMBER_SHARDS`` reads of the collection (measured:
docs/operations.md#indexes-and-the-member-shard).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from presence_sweep.schema import IS_SIGNED_IN, LAST_PONG_AT, MEMBER_SHARDS, MEMBERS, SHARD


@dataclass(frozen=True, slots=True)
class ShardCursor:
    """Where the next page starts: in ``shard``, after ``snapshot`` (the last member returned
    from it), or at the shard's start when ``snapshot`` is None."""

    shard: int
    snapshot: Any | None = None


def expired_page(
    db: Any, cutoff: datetime, limit: int, after: ShardCursor | None
) -> tuple[list[str], ShardCursor | None]:
    """Up to ``limit`` ids of signed-in members whose last pong is before ``cutoff``, shard by
    shard from ``after`` (oldest first within a shard), and the cursor of the next page: None
    once the last shard ran out before the page was full."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    shard, snapshot = (after.shard, after.snapshot) if after is not None else (0, None)
    ids: list[str] = []
    while shard < MEMBER_SHARDS:
        wanted = limit - len(ids)
        query = (
            db.collection(MEMBERS)
            .where(filter=FieldFilter(SHARD, "==", shard))
            .where(filter=FieldFilter(IS_SIGNED_IN, "==", True))
            .where(filter=FieldFilter(LAST_PONG_AT, "<", cutoff))
            .order_by(LAST_PONG_AT)
            .select([LAST_PONG_AT])
            .limit(wanted)
        )
        if snapshot is not None:
            query = query.start_after(snapshot)
        found = list(query.stream())
        ids.extend(s.id for s in found)
        if len(found) == wanted:
            # The page is full; this shard may hold more.
            return ids, ShardCursor(shard, found[-1])
        shard, snapshot = shard + 1, None
    return ids, None
