"""The write-behind buffer's pending documents, and the order they are committed in. No I/O:
``gateway.storage.writer`` decides when to commit and what a failed commit means.

One entry per document, merged as Firestore's ``set(merge=True)`` would. Entries are kept in
the order of each document's first pending write, so taking from the front takes the records
that have waited longest (for pongs: the users whose stored ``last_pong_at`` is oldest). An
entry holding an *urgent* write (anything but a pong or an acknowledgement: a heartbeat, a
connect or close record) is taken before every other one.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.storage.store import Write, merge_fields

Key = tuple[str, str]


@dataclass(slots=True)
class Pending:
    fields: dict[str, Any]
    pongs: int
    first_pong: float  # monotonic receive time of the oldest pong not yet committed
    since: float  # monotonic time of the oldest write not yet committed
    urgent: bool  # holds a write that must not wait behind pongs


#: Documents taken for one commit, with what is pending for each.
Chunk = list[tuple[Key, Pending]]


class PendingWrites:
    """Pending documents; those taken for a commit stay *busy* until released, so a document
    is never in two commits at once (its fields never move backwards)."""

    def __init__(self) -> None:
        self._entries: dict[Key, Pending] = {}
        #: The keys of ``_entries`` holding an urgent write, in order (an ordered set).
        self._urgent: dict[Key, None] = {}
        self._busy: set[Key] = set()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def has_urgent(self) -> bool:
        return bool(self._urgent)

    def put(self, write: Write, pong: bool, urgent: bool, max_docs: int) -> bool:
        """Merge ``write`` in; False (nothing changed) when it would be a new document beyond
        ``max_docs``."""
        key = (write.collection, write.doc_id)
        pending = self._entries.get(key)
        if pending is None:
            if len(self._entries) >= max_docs:
                return False
            fields: dict[str, Any] = {}
            merge_fields(fields, write.fields)
            now = time.monotonic()
            self._entries[key] = Pending(fields, int(pong), now if pong else math.inf, now, urgent)
        else:
            merge_fields(pending.fields, write.fields)
            if urgent:
                pending.urgent = True
            if pong:
                if not pending.pongs:
                    pending.first_pong = time.monotonic()
                pending.pongs += 1
        if urgent:
            self._urgent[key] = None
        return True

    def merge_pong(self, write: Write) -> bool:
        """Merge a pong into its document's pending entry; False when there is none (the
        document is not pending, or its entry is in a commit in flight)."""
        pending = self._entries.get((write.collection, write.doc_id))
        if pending is None:
            return False
        merge_fields(pending.fields, write.fields)
        if not pending.pongs:
            pending.first_pong = time.monotonic()
        pending.pongs += 1
        return True

    def eligible(self, urgent_only: bool = False) -> Iterator[Key]:
        """Documents not busy: urgent ones first, then the rest, each oldest first."""
        busy, urgent = self._busy, self._urgent
        yield from (key for key in urgent if key not in busy)
        if not urgent_only:
            yield from (key for key in self._entries if key not in busy and key not in urgent)

    def oldest_since(self, urgent_only: bool = False) -> float | None:
        """When the longest-waiting eligible write was made (None: nothing eligible)."""
        busy, urgent = self._busy, self._urgent
        firsts = [next((k for k in urgent if k not in busy), None)]
        if not urgent_only:
            firsts.append(
                next((k for k in self._entries if k not in busy and k not in urgent), None)
            )
        times = [self._entries[key].since for key in firsts if key is not None]
        return min(times) if times else None

    def take(self, now: float, limit: int, flush_after: float, urgent_only: bool = False) -> Chunk:
        """Up to ``limit`` eligible documents, marked busy, if they make a batch that is due:
        ``limit`` of them, or the oldest has waited ``flush_after`` seconds. Else none."""
        oldest = self.oldest_since(urgent_only)
        if oldest is None:
            return []
        keys = list(itertools.islice(self.eligible(urgent_only), limit))
        if now - oldest < flush_after and len(keys) < limit:
            return []
        self._busy.update(keys)
        return [(key, self._pop(key)) for key in keys]

    def release(self, chunk: Chunk) -> None:
        """The commit of ``chunk`` has ended: its documents may be taken again."""
        self._busy.difference_update(key for key, _ in chunk)

    def requeue(self, chunk: Chunk) -> None:
        """Put a failed commit's entries back; newer pending fields still win. They may push
        the buffer past ``max_docs`` by one commit's worth: they were inside the bound when
        they arrived and are never dropped."""
        for key, failed in chunk:
            newer = self._entries.get(key)
            if failed.urgent:
                self._urgent[key] = None
            if newer is None:
                self._entries[key] = failed
                continue
            newer.urgent = newer.urgent or failed.urgent
            merge_fields(failed.fields, newer.fields)
            newer.fields = failed.fields
            newer.since = min(newer.since, failed.since)
            if failed.pongs:
                newer.first_pong = min(newer.first_pong, failed.first_pong)
                newer.pongs += failed.pongs

    def oldest_pong(self, also: Iterable[Pending] = ()) -> float | None:
        """The receive time of the oldest pong pending here or in ``also`` (commits in
        flight); None when there is none. Walks every entry: for metrics and heartbeats."""
        oldest = min(
            (p.first_pong for p in itertools.chain(self._entries.values(), also)),
            default=math.inf,
        )
        return None if oldest == math.inf else oldest

    def _pop(self, key: Key) -> Pending:
        self._urgent.pop(key, None)
        return self._entries.pop(key)
