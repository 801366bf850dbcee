"""Which instances count as live, judged from the instance registry's heartbeats
(``gateway_instances``), with what the registry cannot say filled in from what it said before.

An instance beats every SWEEP_INTERVAL and counts as live while its heartbeat is under three
intervals old and it has not stopped. That judgement trusts the registry to be current, and
after a Firestore stall it is not: every heartbeat is late at once, and the ones queued during
the stall commit one by one, behind each instance's write backlog. Counting those instances
dead made a room send wait for nobody and answer complete while an instance that had not
recreated its subscription missed it (docs/soak.md). So:

- **The registry cannot be read**: the last live set it gave stands (there is nothing newer to
  judge by; an instance that died since is named unreachable, which is true enough).
- **This instance's own heartbeat is stale in it, or its own writes lag** (the write buffer's
  oldest write older than two SWEEP_INTERVALs, ``Endings.lagged_at``): this instance knows it is
  alive, so the registry is behind, not the instances dead. The last live set stands, plus any
  instance that is live by the clock. Right after start, before this instance's own entry has
  ever been read fresh, its absence is its registration still in the write buffer: the last
  live set is held only until the entry is read, not for the grace below (unless its writes
  lagged meanwhile, which is a stall).
- **For ``STALL_GRACE_INTERVALS`` (at least ``MIN_STALL_GRACE``) after the registry was last
  seen behind**, an instance that was live before stays live until its heartbeat catches up
  (or it says it stopped): each instance's writes resume on their own retry.

Otherwise the clock decides, as before: a crash is noticed three intervals after its last
heartbeat, and a drain at once (``stopped_at``). Counting a dead instance live costs a send's
answer FANOUT_TIMEOUT and names it in ``unreachable_instances``; counting a live one dead can
answer a send as complete that one of its sockets missed. The first is the one to risk.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from gateway.storage.schema import STOPPED_AT
from gateway.storage.store import is_live

#: After the registry was seen behind, instances live before are given this many
#: SWEEP_INTERVALs to beat again: an instance's first heartbeat after a stall waits for its
#: write buffer's retry (up to 5 s) and its backlog.
STALL_GRACE_INTERVALS = 3
#: ... and at least this many seconds: the write buffer's retry backoff reaches 5 s.
MIN_STALL_GRACE = 10.0
#: An instance beats every SWEEP_INTERVAL; this many missed beats and the clock counts it dead.
LIVE_INTERVALS = 3


class Liveness:
    """One instance's judgement of the others' liveness, and its memory of the last one.

    Pure: the caller reads the registry and passes the wall clock (for heartbeats) and a
    monotonic clock (for the grace)."""

    def __init__(self, me: str, sweep_interval: float) -> None:
        self.me = me
        self.sweep_interval = sweep_interval
        #: The last live set (others only); None before the registry was first read.
        self.known: set[str] | None = None
        #: Monotonic time the registry was last seen behind (unreadable, or our beat stale).
        self.behind_at: float | None = None
        #: Whether this instance's own entry has been read fresh yet. Before that its absence
        #: is its registration still in the write buffer, more likely than a stall.
        self._registered = False
        #: Whether the registry was seen behind only for that absence (nothing else since).
        self._behind_for_start_only = False

    def cutoff(self, wall: datetime) -> datetime:
        """Heartbeats before this are stale by the clock."""
        return wall - timedelta(seconds=LIVE_INTERVALS * self.sweep_interval)

    def note_lag(self, lagged_at: float | None) -> None:
        """This instance's own writes lagged at ``lagged_at`` (monotonic): its heartbeat did
        not reach the registry in time, and probably nobody's did."""
        if lagged_at is not None and (self.behind_at is None or lagged_at > self.behind_at):
            self.behind_at = lagged_at
            self._behind_for_start_only = False

    def _own_entry(self, doc: Mapping[str, Any] | None, cutoff: datetime, mono: float) -> None:
        """Judge the registry by this instance's own entry as read. Absent or stale, the
        registry is behind. Absent before it was ever seen, that is most likely a start (the
        registration not yet committed): the last live set is held as for a stall, but only
        until the entry is first read fresh, not for the whole grace."""
        if doc is not None and is_live(doc, cutoff):
            if not self._registered and self._behind_for_start_only:
                self.behind_at = None
            self._registered = True
            self._behind_for_start_only = False
            return
        self._behind_for_start_only = not self._registered and (
            self.behind_at is None or self._behind_for_start_only
        )
        self.behind_at = mono

    def behind(self, mono: float) -> bool:
        """Whether the registry was seen behind within the grace (it is catching up)."""
        grace = max(STALL_GRACE_INTERVALS * self.sweep_interval, MIN_STALL_GRACE)
        return self.behind_at is not None and mono - self.behind_at < grace

    def registry(
        self, docs: Mapping[str, Mapping[str, Any]], wall: datetime, mono: float
    ) -> set[str]:
        """The live instances other than this one, from the registry's entries with a
        heartbeat since ``cutoff(wall)`` (``Store.recent_instances``)."""
        cutoff = self.cutoff(wall)
        fresh = {i for i, doc in docs.items() if is_live(doc, cutoff)}
        stopped = {i for i, doc in docs.items() if STOPPED_AT in doc}
        self._own_entry(docs.get(self.me), cutoff, mono)
        live = fresh | (self.known or set()) if self.behind(mono) else fresh
        self.known = live - stopped - {self.me}
        return set(self.known)

    def unreadable(self, mono: float) -> set[str] | None:
        """The registry could not be read: the last live set (None if there never was one)."""
        self.behind_at = mono
        self._behind_for_start_only = False
        return None if self.known is None else set(self.known)

    def alive(self, docs: Mapping[str, Mapping[str, Any]], wall: datetime, mono: float) -> set[str]:
        """Which of these entries (read by id, with this instance's own among them) are live
        others. While the registry is behind, any entry that has not stopped is: a member
        record names these instances, and the registry cannot yet say they died."""
        cutoff = self.cutoff(wall)
        self._own_entry(docs.get(self.me) or None, cutoff, mono)
        behind = self.behind(mono)
        return {
            i
            for i, doc in docs.items()
            if i != self.me and (is_live(doc, cutoff) or (behind and doc and STOPPED_AT not in doc))
        }
