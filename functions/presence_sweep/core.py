"""The sweep as a plain function of (store, auth, notifier, now): no I/O of its own.

Order of actions for each page of expired members, and why:

1. **Claim** (one Firestore transaction per page): re-read each member; claim it only if it is
   still signed in, its ``last_pong_at`` is still older than the cutoff and no other sweep holds
   a fresh claim. A pong that committed before this transaction keeps the user signed in, and of
   two sweeps running at once only one claims a given user.
2. **Revoke** refresh tokens in Firebase Auth. On failure the claim is released and the member
   is left exactly as it was (signed in, tokens live) so the next sweep retries: a user is never
   marked signed out while their tokens still work.
3. **Finalize** (transaction): members claimed by this sweep get ``is_signed_in: false``,
   ``last_sign_out_at``, ``updated_at``; their active sessions get ``is_active: false`` and
   ``signed_out_at``.
4. **Notify** the gateway. With ``gateway_url`` (the service URL, as on Cloud Run, where
   instances cannot be addressed) one callback per page carries every live session: whichever
   instance answers hands them to the others through the message broker. Without it, each
   instance holding sessions is called at the internal URL of its registry entry
   (``gateway_instances``, one batched read per page for the instances not seen yet in the run;
   members name only the instance, since users may read their own), all at once. Either way,
   sessions of an instance whose registry entry is stale (no heartbeat for
   ``instance_stale_after``, or stopped) is skipped: its sockets died with it. One that fails is
   not called again in this run, so a dead instance costs one timeout, not one per page. A failed
   callback does not undo the sign-out: gateways also poll for signed-out sessions every
   ``SWEEP_INTERVAL``.

A sweep that dies between steps leaves a claim; after ``SWEEP_CLAIM_TTL`` any sweep may take the
user over and finish the job.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from presence_sweep.decision import ClaimDecision, InstanceEntry, SessionRef, group_by_instance
from presence_sweep.exceptions import AuthRevokeError, CallbackError

logger = logging.getLogger("presence_sweep")


class MemberStore(Protocol):
    def expired_page(
        self, cutoff: datetime, limit: int, after: Any | None
    ) -> tuple[list[str], Any | None]:
        """User ids of signed-in members with last_pong_at < cutoff, oldest first, and a
        cursor for the next page (None when this was the last)."""

    def claim(
        self,
        user_ids: Sequence[str],
        sweep_id: str,
        cutoff: datetime,
        now: datetime,
        claim_ttl: float,
    ) -> dict[str, ClaimDecision]: ...

    def release(self, user_ids: Sequence[str], sweep_id: str) -> None: ...

    def finalize(
        self, user_ids: Sequence[str], sweep_id: str, now: datetime
    ) -> tuple[list[str], list[SessionRef]]:
        """Sign out the members this sweep claimed; return them and their active sessions."""


class AuthBackend(Protocol):
    def revoke(self, user_id: str) -> bool:
        """Revoke the user's refresh tokens; False when Auth has no such user.
        Raises AuthRevokeError on failure."""


class InstanceDirectory(Protocol):
    def entries(self, instance_ids: Sequence[str]) -> dict[str, InstanceEntry]:
        """Each registered instance's entry (last heartbeat, None for one that has stopped;
        internal URL), in one read; ids with no registry entry are absent."""


class Notifier(Protocol):
    def notify(self, internal_url: str, sessions: Sequence[SessionRef], now: datetime) -> int:
        """Ask one gateway instance to send the timeout and close; return sockets closed.
        Raises CallbackError on failure."""


@dataclass
class SweepReport:
    sweep_id: str
    started_at: datetime
    cutoff: datetime
    examined: int = 0
    signed_out: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    auth_user_missing: int = 0
    auth_failures: int = 0
    callbacks: int = 0
    callback_failures: int = 0
    #: Callbacks not attempted, by reason (stale registry entry, failed earlier in the run).
    callbacks_skipped: Counter[str] = field(default_factory=Counter)
    sockets_closed: int = 0
    sessions_signed_out: int = 0
    duration_seconds: float = 0.0
    signed_out_users: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """False when something must be retried (Cloud Scheduler should see a failure)."""
        return self.auth_failures == 0 and self.callback_failures == 0

    def add(self, page: SweepReport) -> None:
        """Fold one page's counts into this run's report."""
        self.signed_out += page.signed_out
        self.skipped.update(page.skipped)
        self.auth_user_missing += page.auth_user_missing
        self.auth_failures += page.auth_failures
        self.callbacks += page.callbacks
        self.callback_failures += page.callback_failures
        self.callbacks_skipped.update(page.callbacks_skipped)
        self.sockets_closed += page.sockets_closed
        self.sessions_signed_out += page.sessions_signed_out
        self.signed_out_users.extend(page.signed_out_users)

    def summary(self) -> dict[str, Any]:
        return {
            "sweep_id": self.sweep_id,
            "cutoff": self.cutoff.isoformat(),
            "examined": self.examined,
            "signed_out": self.signed_out,
            "skipped": dict(self.skipped),
            "auth_user_missing": self.auth_user_missing,
            "auth_failures": self.auth_failures,
            "sessions_signed_out": self.sessions_signed_out,
            "callbacks": self.callbacks,
            "callback_failures": self.callback_failures,
            "callbacks_skipped": dict(self.callbacks_skipped),
            "sockets_closed": self.sockets_closed,
            "duration_seconds": round(self.duration_seconds, 3),
            "ok": self.ok,
        }


def sweep(
    store: MemberStore,
    auth: AuthBackend,
    notifier: Notifier,
    now: datetime,
    *,
    pong_timeout: float,
    page_size: int = 300,
    query_size: int = 3000,
    auth_concurrency: int = 8,
    pages_in_flight: int = 3,
    claim_ttl: float = 300.0,
    instances: InstanceDirectory | None = None,
    instance_stale_after: float = 180.0,
    callback_concurrency: int = 8,
    gateway_url: str = "",
    clock: Callable[[], float] = time.monotonic,
) -> SweepReport:
    """Sign out every member whose last pong is older than ``pong_timeout`` at ``now``.

    Expired ids are queried ``query_size`` at a time by this thread, cut into pages of
    ``page_size`` (one claim transaction each) and processed up to ``pages_in_flight`` at once,
    so one page's Firestore transactions overlap another's Auth calls; a page's users are
    disjoint from every other page's, so pages never contend with each other. With
    ``instances``, callbacks to instances without a heartbeat in ``instance_stale_after``
    seconds are skipped, and the others called at their registry entry's internal URL. With
    ``gateway_url``, each page's sessions go in one callback to that URL instead of one per
    instance.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    started = clock()
    cutoff = now - timedelta(seconds=pong_timeout)
    report = SweepReport(uuid.uuid4().hex, now, cutoff)
    cursor: Any | None = None
    in_flight: set[Future[SweepReport]] = set()
    with (
        ThreadPoolExecutor(auth_concurrency, thread_name_prefix="revoke") as revoke_pool,
        ThreadPoolExecutor(pages_in_flight, thread_name_prefix="page") as page_pool,
        ThreadPoolExecutor(callback_concurrency, thread_name_prefix="callback") as callback_pool,
    ):
        callbacks = _Callbacks(
            notifier,
            instances,
            callback_pool,
            now - timedelta(seconds=instance_stale_after),
            gateway_url,
        )
        while True:
            # One query fetches several pages' ids: each query round trip (and, on the
            # emulator, which has no indexes, each scan of the collection) serves
            # query_size users instead of page_size.
            fetched, cursor = store.expired_page(cutoff, max(query_size, page_size), cursor)
            if not fetched:
                break
            report.examined += len(fetched)
            for start in range(0, len(fetched), page_size):
                in_flight.add(
                    page_pool.submit(
                        _sweep_page,
                        store,
                        auth,
                        callbacks,
                        revoke_pool,
                        fetched[start : start + page_size],
                        now,
                        cutoff,
                        claim_ttl,
                        SweepReport(report.sweep_id, now, cutoff),
                    )
                )
                if len(in_flight) >= pages_in_flight:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        report.add(future.result())
            if cursor is None:
                break
        for future in in_flight:
            report.add(future.result())
    report.duration_seconds = clock() - started
    return report


def _sweep_page(
    store: MemberStore,
    auth: AuthBackend,
    callbacks: _Callbacks,
    pool: ThreadPoolExecutor,
    user_ids: list[str],
    now: datetime,
    cutoff: datetime,
    claim_ttl: float,
    report: SweepReport,
) -> SweepReport:
    decisions = store.claim(user_ids, report.sweep_id, cutoff, now, claim_ttl)
    claimed = [u for u in user_ids if decisions[u].claim]
    report.skipped.update(d.reason for d in decisions.values() if not d.claim)

    def revoke(user_id: str) -> tuple[str, bool | AuthRevokeError]:
        try:
            return user_id, auth.revoke(user_id)
        except AuthRevokeError as exc:
            return user_id, exc

    revoked: list[str] = []
    failed: list[str] = []
    for user_id, outcome in pool.map(revoke, claimed):
        if isinstance(outcome, AuthRevokeError):
            failed.append(user_id)
            logger.warning("revoke failed for user=%s: %s", user_id, outcome)
            continue
        if outcome is False:
            report.auth_user_missing += 1
        revoked.append(user_id)
    if failed:
        report.auth_failures += len(failed)
        store.release(failed, report.sweep_id)
    if not revoked:
        return report
    signed_out, sessions = store.finalize(revoked, report.sweep_id, now)
    report.signed_out += len(signed_out)
    report.signed_out_users.extend(signed_out)
    report.sessions_signed_out += len(sessions)
    callbacks.send(sessions, now, report)
    return report


class _Callbacks:
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
