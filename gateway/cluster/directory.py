"""Where instances and users are, from Firestore: the instance registry's heartbeats and the
members' ``active_sessions``. No broker involved; ``gateway.cluster.deployment`` uses it to know
whose receipts to wait for, and ``/ws/status`` answers from it.

Member reads are coalesced: the sends and connects waiting at one moment share one ``get_all``
(admission's ``gateway.storage.batching`` reader). A send to a user this instance holds may
reuse what Firestore said about the user's other instances for ``WHEREABOUTS_SECONDS``, as long
as the user's sockets here are the same ones, none of them new; see ``user_instances``; and
while the live set (read at most a second ago) holds no other instance, it reads nothing. An
instance that accepts a socket of a user its member record shows elsewhere announces it
(``note_arrival``), so the others stop relying on what they last read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.cluster.liveness import Liveness
from gateway.instance.registry import Connection
from gateway.protocol.messages import utc_now
from gateway.settings import Settings
from gateway.storage.batching import BatchReader
from gateway.storage.store import READ_TIMEOUT, Store, other_instances

logger = logging.getLogger("gateway.cluster.directory")

CACHE_SECONDS = 1.0
#: How long a send to a user held here trusts the user's other instances as last read, and how
#: long an announced arrival counts. Only a lost announcement, or two sockets of a user opened
#: on two instances while each one's record was still unwritten, leaves sends answered here
#: missing the other instance's socket, for at most this long.
WHEREABOUTS_SECONDS = 10.0
#: Sockets younger than this make a send read afresh: another socket of the user opened at
#: the same moment elsewhere is recorded within a flush (PONG_FLUSH_INTERVAL, the urgent lane).
SETTLED_SECONDS = 2.0
_SETTLED = timedelta(seconds=SETTLED_SECONDS)
#: The share of CACHE_SECONDS after which a send decided without an await has the live set
#: read again in the background (long enough for the read to land before the set expires).
REFRESH_AT = 0.75
#: Entries kept before the stale ones are swept out.
WHEREABOUTS_MAX = 50_000


class Directory:
    """Live instances and a user's instances, read from Firestore and cached for a second."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        members: BatchReader[dict[str, Any]],
        lagged_at: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.me = settings.instance_id
        self._instances_cache: tuple[float, set[str]] | None = None
        #: The registry read in flight, shared by every caller meanwhile.
        self._live_read: asyncio.Future[set[str] | None] | None = None
        #: The judgement of who is live, and the last live set (gateway.cluster.liveness).
        self.liveness = Liveness(self.me, settings.fanout.sweep_interval)
        #: When this instance's own writes last lagged (``Endings.lagged_at``).
        self._lagged_at = lagged_at
        self._instance_docs: dict[str, tuple[float, dict[str, Any]]] = {}
        #: The instance's one coalesced reader of member records (admission's): a send and a
        #: connect asking for members at the same moment share a read.
        self._members = members
        #: user -> (read at, this instance's sessions of the user then, other instances).
        self._whereabouts: dict[str, tuple[float, frozenset[str], dict[str, int]]] = {}
        #: user -> instance -> monotonic time it announced a socket of the user.
        self._arrivals: dict[str, dict[str, float]] = {}
        #: Sends answered from ``_whereabouts`` without a read.
        self.whereabouts_hits = 0
        #: Sends to a user held here answered without a member read because no other instance
        #: was live.
        self.alone_hits = 0

    async def live_instances(self, fresh: bool = False) -> set[str] | None:
        """Live instances other than this one (heartbeat within 3 x SWEEP_INTERVAL, not
        stopped; after a Firestore stall, the ones live before it until they catch up: see
        ``gateway.cluster.liveness``), cached for a second unless ``fresh`` (a read in flight
        is still shared). When Firestore cannot answer, the last live set; None if it never
        answered."""
        now = time.monotonic()
        cache = self._instances_cache
        if not fresh and cache and now - cache[0] < CACHE_SECONDS:
            return cache[1]
        # One read for all the callers of the moment (32 sends in flight asked 32 times).
        return await asyncio.shield(self._read_live_once())

    async def stop(self) -> None:
        """Cancel the registry read in flight: a background refresh nobody awaits would
        outlive the instance's Firestore client."""
        read = self._live_read
        if read is not None:
            read.cancel()
            await asyncio.gather(read, return_exceptions=True)

    def _read_live_once(self) -> asyncio.Future[set[str] | None]:
        """The registry read in flight, or a new one."""
        if self._live_read is None:
            self._live_read = asyncio.ensure_future(self._read_live())
            self._live_read.add_done_callback(self._live_read_done)
        return self._live_read

    def _live_read_done(self, _: object) -> None:
        self._live_read = None

    async def _read_live(self) -> set[str] | None:
        now = time.monotonic()
        wall = datetime.now(UTC)
        self.liveness.note_lag(self._lagged_at())
        try:
            docs = await self.store.recent_instances(
                self.liveness.cutoff(wall), timeout=READ_TIMEOUT
            )
        except Exception as exc:
            logger.warning("instance registry unreadable, using the last live set: %r", exc)
            return self.liveness.unreadable(now)
        live = self.liveness.registry(docs, wall, now)
        self._instances_cache = (now, live)
        return live

    async def _docs(self, ids: list[str]) -> tuple[dict[str, dict[str, Any]], float]:
        """Registry entries by id, cached for a second: a send then costs one Firestore read
        (the member), not two. Also how old the oldest of them is (seconds): they are judged as
        of then, or this instance's own entry, a second old in the cache, would look a second
        staler than it is, and under short intervals the registry would seem behind."""
        now = time.monotonic()
        stale = [i for i in ids if now - self._instance_docs.get(i, (-1e9, {}))[0] > CACHE_SECONDS]
        if stale:
            found = await self.store.get_instances(stale, timeout=READ_TIMEOUT)
            # Instances come and go with every rollout: forget entries too old to be used.
            self._instance_docs = {
                i: entry
                for i, entry in self._instance_docs.items()
                if now - entry[0] <= CACHE_SECONDS
            }
            for instance_id in stale:
                self._instance_docs[instance_id] = (now, found.get(instance_id, {}))
        oldest = min((self._instance_docs[i][0] for i in ids), default=now)
        return {i: self._instance_docs[i][1] for i in ids}, now - oldest

    async def user_instances(
        self, user_id: str, *, held_here: frozenset[str] = frozenset()
    ) -> dict[str, int]:
        """The user's sockets on live instances other than this one, by instance, from the
        member's ``active_sessions`` and the arrivals announced since. Raises when Firestore
        cannot answer.

        ``held_here``: the sessions of the user this instance holds, all settled (see
        ``settled``), given by a send. While they are the same, an answer up to
        WHEREABOUTS_SECONDS old is reused. A user who left this instance, or opened another
        socket here, is read afresh: a user who moved between sends is looked for where they
        went."""
        now = time.monotonic()
        remembered = self._remembered(user_id, held_here, now)
        if remembered is not None:
            self.whereabouts_hits += 1
            counts = dict(remembered)
        elif held_here and await self.live_instances() == set() and self.alone(time.monotonic()):
            # No other instance is live, as just read (not the last set kept while Firestore
            # cannot answer): none can hold the user (see ``alone``).
            self.alone_hits += 1
            counts = {}
        else:
            counts = await self._read(user_id)
            if held_here:
                self._remember(user_id, now, held_here, counts)
        for instance in self._arrived(user_id, now):
            counts.setdefault(instance, 1)
        return counts

    def held_here_only(self, user_id: str, held_here: frozenset[str]) -> bool:
        """Whether ``user_instances(user_id, held_here=held_here)`` would say, without reading
        anything, that no other instance holds the user: what a send decided without an await
        (``gateway.cluster.local_send``) asks. False means "ask ``user_instances``"."""
        now = time.monotonic()
        if not held_here or self._arrived(user_id, now):
            return False
        remembered = self._remembered(user_id, held_here, now)
        if remembered is not None:
            if remembered:
                return False
            self.whereabouts_hits += 1
            return True
        if self.alone(now):
            self.alone_hits += 1
            self._refresh_alone(now)
            return True
        return False

    def _remembered(
        self, user_id: str, held_here: frozenset[str], now: float
    ) -> dict[str, int] | None:
        """The user's other instances as last read, while that read is under
        WHEREABOUTS_SECONDS old and the user's sockets here are the same (``held_here``, not
        empty); else None."""
        cached = self._whereabouts.get(user_id) if held_here else None
        if cached and cached[1] == held_here and now - cached[0] < WHEREABOUTS_SECONDS:
            return cached[2]
        return None

    def _arrived(self, user_id: str, now: float) -> list[str]:
        """Instances that announced a socket of the user within WHEREABOUTS_SECONDS."""
        arrivals = self._arrivals.get(user_id, {})
        return [i for i, at in arrivals.items() if now - at < WHEREABOUTS_SECONDS]

    def alone(self, now: float) -> bool:
        """Whether the live set read less than CACHE_SECONDS ago holds no other instance.

        Then no member record can name another live instance either: an instance registers
        before it serves, its urgent writes (the registry entry, then its sessions) are
        committed in the order they were put (``gateway.storage.write_buffer``), and a member
        read keeps only the instances live in the registry. What this can miss is what a member
        read made at the same moment misses, plus, for at most CACHE_SECONDS, an instance whose
        first entry landed since and whose announcement of the user's arrival was lost."""
        cached = self._instances_cache
        return cached is not None and now - cached[0] < CACHE_SECONDS and not cached[1]

    def _refresh_alone(self, now: float) -> None:
        """Read the live set again in the background once it is past three quarters of its
        life, so that sends decided without an await keep finding it fresh (a registry read
        every 0.75 s at most, whatever the send rate)."""
        cached = self._instances_cache
        if cached is None or now - cached[0] < CACHE_SECONDS * REFRESH_AT:
            return
        self._read_live_once()

    def note_arrival(self, user_id: str, instance: str) -> None:
        """Another instance accepted a socket of the user (it announced it): sends answered
        here wait for that instance too, whatever was last read."""
        now = time.monotonic()
        if len(self._arrivals) >= WHEREABOUTS_MAX:
            self._arrivals = {
                u: fresh
                for u, seen in self._arrivals.items()
                if (fresh := {i: at for i, at in seen.items() if now - at < WHEREABOUTS_SECONDS})
            }
        self._arrivals.setdefault(user_id, {})[instance] = now

    async def _read(self, user_id: str) -> dict[str, int]:
        counts = other_instances(await self._members.get(user_id), self.me)
        if counts:
            # Our own entry too: stale in the registry, it says the registry is behind.
            docs, age = await self._docs([*counts, self.me])
            self.liveness.note_lag(self._lagged_at())
            read_at = datetime.now(UTC) - timedelta(seconds=age)
            live = self.liveness.alive(docs, read_at, time.monotonic())
            counts = {i: n for i, n in counts.items() if i in live}
        return counts

    def _remember(
        self, user_id: str, now: float, held_here: frozenset[str], counts: dict[str, int]
    ) -> None:
        if len(self._whereabouts) >= WHEREABOUTS_MAX:
            self._whereabouts = {
                u: entry
                for u, entry in self._whereabouts.items()
                if now - entry[0] < WHEREABOUTS_SECONDS
            }
        if len(self._whereabouts) < WHEREABOUTS_MAX:
            self._whereabouts[user_id] = (now, held_here, dict(counts))


def settled(sockets: Iterable[Connection]) -> frozenset[str]:
    """The sessions of these sockets when every one is older than SETTLED_SECONDS (then what
    was read about the user's other instances may be reused), else none."""
    # One subtraction for all the sockets, not a timedelta per socket: every send to a user
    # held here asks this (gateway.cluster.local_send).
    young_after = utc_now() - _SETTLED
    sessions = []
    for conn in sockets:
        if conn.connected_at > young_after:
            return frozenset()
        sessions.append(conn.session_id)
    return frozenset(sessions)
