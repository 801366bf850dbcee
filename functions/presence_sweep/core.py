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

Before the sign-out pass, with ``lost`` (and ``instances``), the run reaps lost instances
(``presence_sweep.reaper``): their sessions end and their users' presence is settled. First,
because the sign-out pass ends the sessions of the users it signs out without touching their
presence: a user of a lost instance whose pong deadline passed too would otherwise lose the
sessions the reaper finds users by, and stay online. The reaper never raises; what it could not
do is logged, counted and left to the next run.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from typing import Any

from presence_sweep.callbacks import Callbacks
from presence_sweep.decision import lag_allowances
from presence_sweep.exceptions import AuthRevokeError
from presence_sweep.ports import (
    AuthBackend,
    EventPublisher,
    InstanceDirectory,
    LostInstanceStore,
    MemberStore,
    Notifier,
    SweepReport,
)
from presence_sweep.reaper import reap

__all__ = [
    "AuthBackend",
    "EventPublisher",
    "InstanceDirectory",
    "LostInstanceStore",
    "MemberStore",
    "Notifier",
    "SweepReport",
    "sweep",
]

logger = logging.getLogger("presence_sweep")


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
    lost: LostInstanceStore | None = None,
    publisher: EventPublisher | None = None,
    reap_lookback: float = 3600.0,
) -> SweepReport:
    """Sign out every member whose last pong is older than ``pong_timeout`` at ``now``.

    Expired ids are queried ``query_size`` at a time by this thread, cut into pages of
    ``page_size`` (one claim transaction each) and processed up to ``pages_in_flight`` at once,
    so one page's Firestore transactions overlap another's Auth calls; a page's users are
    disjoint from every other page's, so pages never contend with each other. With
    ``instances``, callbacks to instances without a heartbeat in ``instance_stale_after``
    seconds are skipped, and the others called at their registry entry's internal URL. With
    ``gateway_url``, each page's sessions go in one callback to that URL instead of one per
    instance. With ``lost`` too, instances lost within ``reap_lookback`` seconds are reaped
    first, their users' transitions published through ``publisher`` when given.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    started = clock()
    cutoff = now - timedelta(seconds=pong_timeout)
    report = SweepReport(uuid.uuid4().hex, now, cutoff)
    if lost is not None and instances is not None:
        reap(
            instances,
            lost,
            publisher,
            now,
            report,
            stale_after=instance_stale_after,
            lookback=reap_lookback,
        )
        report.timed("reap", clock() - started)
    cursor: Any | None = None
    in_flight: set[Future[SweepReport]] = set()
    with (
        ThreadPoolExecutor(auth_concurrency, thread_name_prefix="revoke") as revoke_pool,
        ThreadPoolExecutor(pages_in_flight, thread_name_prefix="page") as page_pool,
        ThreadPoolExecutor(callback_concurrency, thread_name_prefix="callback") as callback_pool,
    ):
        # Read once a run: a live instance whose pong writes lag gives its users more time.
        mark = clock()
        allowances = _allowances(instances, now, instance_stale_after)
        report.timed("registry", clock() - mark)
        callbacks = Callbacks(
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
            mark = clock()
            fetched, cursor = store.expired_page(cutoff, max(query_size, page_size), cursor)
            report.timed("query", clock() - mark)
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
                        allowances,
                        clock,
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
    callbacks: Callbacks,
    pool: ThreadPoolExecutor,
    user_ids: list[str],
    now: datetime,
    cutoff: datetime,
    claim_ttl: float,
    report: SweepReport,
    allowances: Mapping[str, float],
    clock: Callable[[], float],
) -> SweepReport:
    mark = clock()
    decisions = store.claim(user_ids, report.sweep_id, cutoff, now, claim_ttl, allowances)
    mark = _lap(report, "claim", mark, clock)
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
    mark = _lap(report, "revoke", mark, clock)
    if failed:
        report.auth_failures += len(failed)
        store.release(failed, report.sweep_id)
    if not revoked:
        return report
    signed_out, sessions = store.finalize(revoked, report.sweep_id, now)
    mark = _lap(report, "finalize", mark, clock)
    report.signed_out += len(signed_out)
    report.signed_out_users.extend(signed_out)
    report.sessions_signed_out += len(sessions)
    callbacks.send(sessions, now, report)
    _lap(report, "callbacks", mark, clock)
    return report


def _lap(report: SweepReport, phase: str, mark: float, clock: Callable[[], float]) -> float:
    """Add the time since ``mark`` to the phase; return now, the next phase's mark."""
    now = clock()
    report.timed(phase, now - mark)
    return now


def _allowances(
    instances: InstanceDirectory | None, now: datetime, stale_after: float
) -> dict[str, float]:
    """Each lagging live instance's grace (``decision.lag_allowances``); none when the
    registry cannot be read, which only means a lagging instance's users are judged on their
    stored records, as before."""
    if instances is None:
        return {}
    stale_before = now - timedelta(seconds=stale_after)
    try:
        entries = instances.recent(stale_before)
    except Exception as exc:
        logger.warning("instance registry unreadable, no lag allowances: %r", exc)
        return {}
    allowances = lag_allowances(entries, now, stale_before)
    for instance_id, grace in sorted(allowances.items()):
        logger.warning(
            "instance %s lags: its users get %.0fs more before sign-out", instance_id, grace
        )
    return allowances
