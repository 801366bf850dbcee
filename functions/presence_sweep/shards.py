"""The sweep's query for expired members, one shard at a time.

Every pong sets ``members/{uid}.last_pong_at`` to now. An index holding a field that only grows
takes about 500 writes a second for the whole collection, unless it leads with a shard field
(Google's "sharded timestamps"); so the sweep's index is ``(shard, is_signed_in,
last_pong_at)`` in ``firestore.indexes.json`` and each query names one shard. A page is filled
from consecutive shards, each oldest first; the cursor says where the next page resumes.

Cost: a run queries every shard at least once (``MEMBER_SHARDS`` queries, each billed at least
one read even when it finds nothing): in production an index range read each. The emulator has
no indexes and reads the whole collection for every query, so there a run costs
``MEMBER_SHARDS`` reads of the collection (measured:
docs/operations.md#indexes-and-the-member-shard).

The queries go in rounds of consecutive shards run together. A round starts at one shard and
doubles, up to ``MAX_WINDOW``, while its shards come back short of the page: a run with few
expired users (the usual case) crosses the 100 shards in 9 rounds instead of 100 round trips,
and a dense shard (a mass expiry) is read alone, so little is read for nothing. What a round
reads past a page that filled inside it is dropped and read again by the next page: at most
``MAX_WINDOW - 1`` shards' worth of one page, once per page that fills mid-round.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from presence_sweep.schema import IS_SIGNED_IN, LAST_PONG_AT, MEMBER_SHARDS, MEMBERS, SHARD

#: Shard queries in flight at once, at most (a round's size once it has doubled up to it).
MAX_WINDOW = 16


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
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    shard, snapshot = (after.shard, after.snapshot) if after is not None else (0, None)
    ids: list[str] = []
    window = 1
    with ThreadPoolExecutor(MAX_WINDOW, thread_name_prefix="shard-query") as pool:
        while shard < MEMBER_SHARDS:
            wanted = limit - len(ids)
            round_shards = range(shard, min(shard + window, MEMBER_SHARDS))
            queries = [
                _expired_query(db, s, cutoff, wanted, snapshot if s == shard else None)
                for s in round_shards
            ]
            for s, found in zip(round_shards, pool.map(_read, queries), strict=True):
                taken = found[: limit - len(ids)]
                ids.extend(snap.id for snap in taken)
                if len(ids) == limit:
                    # The page is full; this shard may hold more.
                    return ids, ShardCursor(s, taken[-1])
            shard, snapshot = round_shards[-1] + 1, None
            window = min(2 * window, MAX_WINDOW)
    return ids, None


def _expired_query(db: Any, shard: int, cutoff: datetime, limit: int, after: Any | None) -> Any:
    """One shard's signed-in members past ``cutoff``, oldest first, after ``after``."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = (
        db.collection(MEMBERS)
        .where(filter=FieldFilter(SHARD, "==", shard))
        .where(filter=FieldFilter(IS_SIGNED_IN, "==", True))
        .where(filter=FieldFilter(LAST_PONG_AT, "<", cutoff))
        .order_by(LAST_PONG_AT)
        .select([LAST_PONG_AT])
        .limit(limit)
    )
    return query.start_after(after) if after is not None else query


def _read(query: Any) -> list[Any]:
    return list(query.stream())
