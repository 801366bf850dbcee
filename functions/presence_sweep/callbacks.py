"""One sweep run's callbacks to the gateway instances (step 4 of ``presence_sweep.core``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from presence_sweep.decision import InstanceEntry, SessionRef, group_by_instance
from presence_sweep.exceptions import CallbackError
from presence_sweep.ports import InstanceDirectory, Notifier, SweepReport

logger = logging.getLogger("presence_sweep")


class Callbacks:
    """One run's callbacks to the gateway instances, shared by the page threads: each page's
    instances are called at once, so one slow or dead instance does not hold up the others."""

    def __init__(
        self,
        notifier: Notifier,
        directory: InstanceDirectory | None,
        pool: ThreadPoolExecutor,
        stale_before: datetime,
        gateway_url: str = "",
    ) -> None:
        self._notifier = notifier
        self._gateway_url = gateway_url
        self._directory = directory
        self._pool = pool
        self._stale_before = stale_before
        self._lock = threading.Lock()
        #: instance id -> its registry entry (None: it has none), learnt once per run.
        self._entries: dict[str, InstanceEntry | None] = {}
        #: internal URLs that failed in this run.
        self._failed: set[str] = set()

    def _lookup(self, instance_ids: set[str]) -> tuple[dict[str, InstanceEntry | None], bool]:
        """These instances' registry entries, those not seen yet in this run read in one
        batch, and whether that read failed."""
        with self._lock:
            unknown = sorted(i for i in instance_ids if i not in self._entries)
        unreadable = False
        if unknown and self._directory is not None:
            try:
                found = self._directory.entries(unknown)
            except Exception as exc:
                # Not remembered: the next page reads the registry again.
                logger.warning("instance registry unreadable: %r", exc)
                unreadable = True
            else:
                with self._lock:
                    for instance_id in unknown:
                        self._entries[instance_id] = found.get(instance_id)
        with self._lock:
            return {i: self._entries.get(i) for i in instance_ids}, unreadable

    def send(self, sessions: Sequence[SessionRef], now: datetime, report: SweepReport) -> None:
        entries, unreadable = self._lookup({ref.instance_id for ref in sessions})
        # No registry entry (or none read): the instance counts as alive, since skipping a live
        # one would leave its sockets open until its own poll.
        stale = {
            instance_id
            for instance_id, entry in entries.items()
            if entry is not None
            and (entry.heartbeat is None or entry.heartbeat < self._stale_before)
        }
        for instance_id in sorted(stale):
            report.callbacks_skipped["stale instance"] += 1
            logger.info("skipping sessions of stale instance %s", instance_id)
        live = [ref for ref in sessions if ref.instance_id not in stale]
        urls = {i: e.internal_url for i, e in entries.items() if e is not None and e.internal_url}
        grouped, unaddressed = group_by_instance(live, urls, self._gateway_url)
        for instance_id in sorted(unaddressed):
            if unreadable:
                # Its address is in the registry that could not be read: the callback failed.
                report.callback_failures += 1
            else:
                report.callbacks_skipped["no internal url"] += 1
            logger.warning("no internal URL known for instance %s: not called", instance_id)
        pending: list[tuple[str, int, Future[int]]] = []
        for url, refs in grouped.items():
            with self._lock:
                failed_before = url in self._failed
            if failed_before:
                report.callbacks_skipped["failed earlier in this run"] += 1
                continue
            pending.append(
                (url, len(refs), self._pool.submit(self._notifier.notify, url, refs, now))
            )
        for url, count, future in pending:
            report.callbacks += 1
            try:
                report.sockets_closed += future.result()
            except CallbackError as exc:
                report.callback_failures += 1
                with self._lock:
                    self._failed.add(url)
                logger.warning("callback to %s failed (%d sessions): %s", url, count, exc)
