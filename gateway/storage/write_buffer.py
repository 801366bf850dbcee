"""The write-behind buffer's pending documents, and the order they are committed in. No I/O:
``gateway.storage.writer`` decides when to commit and what a failed commit means.

One entry per document, merged as Firestore's ``set(merge=True)`` would. Entries are kept in
the order of each document's first pending write, so taking from the front takes the records
that have waited longest (for pongs: the users whose stored ``last_pong_at`` is oldest). An
entry holding an *urgent* write (anything but a pong or an acknowledgement: a heartbeat, a
connect or close record) is taken before every other one.

Documents written *together* (a socket's member entry and its session record) are linked until
committed: they are taken into one commit or not at all, and wait while any of them is in a
commit in flight. Otherwise one could reach Firestore ahead of the other, and an instance that
died in between would leave them disagreeing for good: the sweep ends the sessions a lost
instance left marked active and removes those from their members, so a member entry whose
session had already ended stayed listed (found by the soak, ``make soak``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator, Sequence
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
    #: The documents that must be committed with this one, itself included (``put_together``),
    #: one set shared by all of them; None: none.
    group: set[Key] | None = None


#: Documents taken for one commit, with what is pending for each.
Chunk = list[tuple[Key, Pending]]

#: Documents one group may link at most (a member and its user's socket records written while
#: the member waited): a commit holds at most 500 writes. Beyond it, a write is not linked and
#: may be committed apart from the rest.
MAX_GROUP = 100


class PendingWrites:
    """Pending documents; those taken for a commit stay *busy* until released, so a document
    is never in two commits at once (its fields never move backwards)."""

    def __init__(self) -> None:
        self._entries: dict[Key, Pending] = {}
        #: The keys of ``_entries`` holding an urgent write, in order (an ordered set).
        self._urgent: dict[Key, None] = {}
        self._busy: set[Key] = set()
        #: Urgent keys set aside (out of ``_urgent``) while their group waits for a busy
        #: document, by that document: walks skip them until it is released.
        self._parked: dict[Key, set[Key]] = {}
        #: Groups the last walk found waiting, to park once it is done.
        self._blocked: list[set[Key]] = []

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

    def put_together(self, writes: Sequence[Write], max_docs: int) -> int:
        """Merge urgent ``writes`` in, linked: they are committed in one commit (with every
        document linked to any of them). Returns how many were dropped (``max_docs``)."""
        keys = {(w.collection, w.doc_id) for w in writes}
        dropped = sum(not self.put(write, False, True, max_docs) for write in writes)
        keys &= self._entries.keys()
        if len(keys) > 1:
            self._link(keys)
        return dropped

    def _link(self, keys: set[Key]) -> None:
        """Join the pending ``keys`` and their groups into one (unless past ``MAX_GROUP``)."""
        entries = self._entries
        group = keys.union(*(g for k in keys if (g := entries[k].group) is not None))
        if len(group) > MAX_GROUP:
            return
        for key in group:
            if (pending := entries.get(key)) is not None:
                pending.group = group

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

    def _collect(
        self,
        items: Iterable[tuple[Key, Pending]],
        rest: bool,
        limit: int,
        out: list[Key],
        seen: set[Key],
    ) -> bool:
        """Append to ``out`` the documents of ``items`` (only those holding no urgent write when
        ``rest``; an urgent one is in ``_urgent``, or parked) that may be taken now,
        up to ``limit``: none busy, nor linked to a busy one, and a group whole or not at all
        (whole beyond ``limit`` when it comes first). ``seen`` collects the groups walked.
        True once ``out`` is full."""
        busy, entries = self._busy, self._entries
        for key, pending in items:
            if (rest and pending.urgent) or key in busy or key in seen:
                continue
            group = pending.group
            if group is None:
                out.append(key)  # the common case (every pong)
            else:
                seen.update(group)
                if not busy.isdisjoint(group):
                    self._blocked.append(group)
                    continue
                taken = [k for k in group if k in entries]
                if out and len(out) + len(taken) > limit:
                    return True
                out += taken
            if len(out) >= limit:
                return True
        return False

    def _urgent_items(self) -> Iterator[tuple[Key, Pending]]:
        entries = self._entries
        return ((key, entries[key]) for key in self._urgent)

    def eligible(self, limit: int, urgent_only: bool = False) -> list[Key]:
        """Up to ``limit`` documents that may be taken now: urgent ones first, then the rest,
        each oldest first; a group of linked documents whole, and only while none is busy."""
        out: list[Key] = []
        seen: set[Key] = set()
        if not self._collect(self._urgent_items(), False, limit, out, seen) and not urgent_only:
            self._collect(self._entries.items(), True, limit, out, seen)
        self._park()
        return out

    def _park(self) -> None:
        """Set aside the urgent keys of the groups the walk found waiting for a busy document,
        until :meth:`release` frees it: walking over them at every take cost as much as the
        commits (a re-assertion of thousands of sockets while their members' pongs were in
        flight)."""
        urgent, busy = self._urgent, self._busy
        for group in self._blocked:
            holder = next((k for k in group if k in busy), None)
            if holder is None:
                continue
            waiting = self._parked.setdefault(holder, set())
            for key in group:
                if key in urgent:
                    del urgent[key]
                    waiting.add(key)
        self._blocked.clear()

    def oldest_since(self, urgent_only: bool = False) -> float | None:
        """When the longest-waiting write that may be taken now was made (None: none)."""
        urgent: list[Key] = []
        self._collect(self._urgent_items(), False, 1, urgent, set())
        rest: list[Key] = []
        if not urgent_only:
            self._collect(self._entries.items(), True, 1, rest, set())
        self._park()
        return min((self._entries[keys[0]].since for keys in (urgent, rest) if keys), default=None)

    def take(self, now: float, limit: int, flush_after: float, urgent_only: bool = False) -> Chunk:
        """Up to ``limit`` eligible documents, marked busy, if they make a batch that is due:
        ``limit`` of them, or the oldest has waited ``flush_after`` seconds. Else none."""
        oldest = self.oldest_since(urgent_only)
        if oldest is None:
            return []
        keys = self.eligible(limit, urgent_only)
        if now - oldest < flush_after and len(keys) < limit:
            return []
        self._busy.update(keys)
        return [(key, self._pop(key)) for key in keys]

    def release(self, chunk: Chunk) -> None:
        """The commit of ``chunk`` has ended: its documents may be taken again."""
        self._busy.difference_update(key for key, _ in chunk)
        if self._parked:
            for key, _ in chunk:
                for waiting in self._parked.pop(key, ()):
                    pending = self._entries.get(waiting)
                    if pending is not None and pending.urgent:
                        self._urgent[waiting] = None

    def requeue(self, chunk: Chunk) -> None:
        """Put a failed commit's entries back; newer pending fields still win. They may push
        the buffer past ``max_docs`` by one commit's worth: they were inside the bound when
        they arrived and are never dropped. Documents linked stay linked, with those linked
        to them meanwhile."""
        groups = {id(p.group): p.group for _, p in chunk if p.group is not None}
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
        for group in groups.values():
            self._link(group & self._entries.keys())

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
