"""Where instances and users are, from Firestore: the instance registry's heartbeats and the
members' ``active_sessions``. No broker involved; ``gateway.cluster.deployment`` uses it to know
whose receipts to wait for, and ``/ws/status`` answers from it."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.settings import Settings
from gateway.storage.schema import ACTIVE_SESSIONS, INSTANCE_ID
from gateway.storage.store import READ_TIMEOUT, Store, is_live

logger = logging.getLogger("gateway.cluster.directory")

CACHE_SECONDS = 1.0


class Directory:
    """Live instances and a user's instances, read from Firestore and cached for a second."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.me = settings.instance_id
        self._instances_cache: tuple[float, set[str]] | None = None
        self._instance_docs: dict[str, tuple[float, dict[str, Any]]] = {}

    async def live_instances(self) -> set[str] | None:
        """Live instances other than this one (heartbeat within 3 x SWEEP_INTERVAL, not
        stopped), cached for a second; None when Firestore cannot answer."""
        now = time.monotonic()
        if self._instances_cache and now - self._instances_cache[0] < CACHE_SECONDS:
            return self._instances_cache[1]
        cutoff = self._live_cutoff()
        try:
            docs = await self.store.recent_instances(cutoff, timeout=READ_TIMEOUT)
        except Exception as exc:
            logger.warning("instance registry unreadable: %r", exc)
            return None
        live = {i for i, doc in docs.items() if i != self.me and is_live(doc, cutoff)}
        self._instances_cache = (now, live)
        return live

    def _live_cutoff(self) -> datetime:
        """Instances beat every SWEEP_INTERVAL; three missed beats and an instance is dead."""
        return datetime.now(UTC) - timedelta(seconds=3 * self.settings.fanout.sweep_interval)

    async def _docs(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Registry entries by id, cached for a second: a send then costs one Firestore read
        (the member), not two. Liveness is judged over three SWEEP_INTERVALs, so a second's
        staleness changes nothing."""
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
        return {i: self._instance_docs[i][1] for i in ids}

    async def user_instances(self, user_id: str) -> dict[str, int]:
        """The user's sockets on live instances other than this one, by instance, from the
        member's ``active_sessions``. Raises when Firestore cannot answer."""
        member = await self.store.get_member(user_id, timeout=READ_TIMEOUT) or {}
        counts: dict[str, int] = {}
        recorded = member.get(ACTIVE_SESSIONS)
        for where in (recorded or {}).values() if isinstance(recorded, dict) else ():
            instance = where.get(INSTANCE_ID) if isinstance(where, dict) else None
            if isinstance(instance, str) and instance != self.me:
                counts[instance] = counts.get(instance, 0) + 1
        if counts:
            docs = await self._docs(list(counts))
            cutoff = self._live_cutoff()
            counts = {i: n for i, n in counts.items() if is_live(docs.get(i, {}), cutoff)}
        return counts
