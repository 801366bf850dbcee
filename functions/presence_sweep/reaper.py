"""The reaper: what the sweep does, once a run, for gateway instances that were lost (crashed,
killed, their VM gone) and so wrote nothing more about their sockets.

An instance is lost when its registry entry (``gateway_instances``) has had no heartbeat for
``instance_stale_after`` and does not say it stopped (a drained instance wrote its sockets'
ends itself); only entries with a heartbeat within
``lookback`` are read (the registry's ``recent`` query), so an instance is looked at for about
an hour and then forgotten. For each, page by page of its sessions still marked active:

1. **Settle presence** (one Firestore transaction per ``users_per_transaction`` users, or one
   per user when the batch's fails, so that one contended user holds back no one else): each
   user's holders record loses the instance (``presence.decide`` with count 0, reason
   ``instance_lost``, at the instance's last heartbeat), and the public ``presence/{uid}`` is
   merged when it changes: a user with no socket elsewhere turns offline.
2. **Publish** the transitions to ``PRESENCE_EVENTS_TOPIC``, after the transaction committed.
   A failed publish is logged and counted, never retried: the transition is in Firestore
   already, and a later run finds nothing left to decide for the user.
3. **End the sessions**: ``is_active: false``, ``disconnected_at``, and each one's entry out of
   its member's ``active_sessions``.

Presence before sessions: the sessions still marked active are how a run finds the users to
settle, so a run that dies between the two steps leaves them for the next run, which settles
again (nothing changes: the instance is no longer named) and then ends them. The other order
would leave the users of a run that died in between online forever.

When every instance in the registry is stale at once, the registry is taken to be behind (a
Firestore stall) rather than every instance lost, and nothing is reaped until the freshest
heartbeat is ``ALL_STALE_PATIENCE`` x ``stale_after`` old (``registry_behind``).

Nothing here raises: a registry that cannot be read, or an instance that cannot be reaped, is
logged and counted (``reap_failures``), and the next run tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from presence_sweep.decision import InstanceEntry, SessionRef
from presence_sweep.ports import EventPublisher, InstanceDirectory, LostInstanceStore, SweepReport
from presence_sweep.presence import PresenceEvent
from presence_sweep.schema import OFFLINE

logger = logging.getLogger("presence_sweep")

#: Users settled at once, each in its own transaction, after their batch's transaction failed.
SETTLE_ALONE_CONCURRENCY = 8
#: When every instance in the registry is stale at once, the registry is more likely behind
#: (a Firestore stall held back every heartbeat) than every instance lost, and reaping waits
#: until the freshest heartbeat is this many ``stale_after`` old. Only a deployment with no
#: live instance at all waits: one instance lost among live ones is reaped as before.
ALL_STALE_PATIENCE = 2.0


def lost_instances(
    entries: Mapping[str, InstanceEntry], stale_before: datetime
) -> dict[str, datetime | None]:
    """Each lost instance's last heartbeat: those that beat last before ``stale_before``. One
    that beats again (a restart under the same id) is alive and left alone, and so is one that
    stopped (its entry keeps no heartbeat): a drain ends its sockets' sessions and presence
    itself, and looking at every stopped instance on every run cost a query each (Cloud Run
    starts and stops instances all day), delaying the sign-outs that follow."""
    return {
        instance_id: entry.heartbeat
        for instance_id, entry in entries.items()
        if entry.heartbeat is not None and entry.heartbeat < stale_before
    }


def registry_behind(
    entries: Mapping[str, InstanceEntry], now: datetime, stale_after: float
) -> bool:
    """Whether every beating instance is stale at once, and the freshest by less than
    ``ALL_STALE_PATIENCE`` x ``stale_after``: a stall, to be waited out, more likely than a
    deployment that lost every instance together."""
    beats = [entry.heartbeat for entry in entries.values() if entry.heartbeat is not None]
    if not beats or max(beats) >= now - timedelta(seconds=stale_after):
        return False
    return max(beats) >= now - timedelta(seconds=ALL_STALE_PATIENCE * stale_after)


def reap(
    instances: InstanceDirectory,
    store: LostInstanceStore,
    publisher: EventPublisher | None,
    now: datetime,
    report: SweepReport,
    *,
    stale_after: float,
    lookback: float,
    page_size: int = 500,
    users_per_transaction: int = 200,
) -> None:
    """End the sockets of every lost instance seen within ``lookback`` seconds, adding what
    was done to ``report``."""
    try:
        entries = instances.recent(now - timedelta(seconds=lookback))
    except Exception as exc:
        logger.warning("instance registry unreadable, no instance reaped: %r", exc)
        report.reap_failures += 1
        return
    lost = lost_instances(entries, now - timedelta(seconds=stale_after))
    if lost and registry_behind(entries, now, stale_after):
        logger.warning(
            "every instance's heartbeat is stale (the freshest %s): the registry is taken to be "
            "behind, not %d instances lost; reaping waits",
            max(h for h in lost.values() if h is not None).isoformat(),
            len(lost),
        )
        report.reaps_deferred += len(lost)
        return
    for instance_id, heartbeat in sorted(lost.items()):
        # Sessions end, and users go offline, as of the instance's last sign of life.
        at = heartbeat or now
        try:
            ended = _reap_instance(
                instances,
                store,
                publisher,
                instance_id,
                at,
                report,
                page_size,
                users_per_transaction,
            )
        except Exception as exc:
            logger.warning(
                "reaping lost instance %s failed, the next run retries: %r", instance_id, exc
            )
            report.reap_failures += 1
            continue
        if ended:
            report.instances_reaped += 1
            logger.info("lost instance %s: %d sessions ended", instance_id, ended)


def _reap_instance(
    instances: InstanceDirectory,
    store: LostInstanceStore,
    publisher: EventPublisher | None,
    instance_id: str,
    at: datetime,
    report: SweepReport,
    page_size: int,
    users_per_transaction: int,
) -> int:
    ended = 0
    cursor = None
    while True:
        sessions, cursor = store.active_sessions_on(instance_id, page_size, cursor)
        if not sessions or _came_back(instances, instance_id, at):
            break
        users = sorted({s.user_id for s in sessions if s.user_id})
        settled: set[str] = set()
        for start in range(0, len(users), users_per_transaction):
            chunk = users[start : start + users_per_transaction]
            settled.update(_settle(store, publisher, chunk, instance_id, at, report))
        # Presence before sessions: the sessions of a user not settled stay active, which is
        # how the next run finds the user again.
        ending = [s for s in sessions if not s.user_id or s.user_id in settled]
        if ending and _came_back(instances, instance_id, at):
            break
        if ending:
            store.end_sessions(ending, at)
        ended += len(ending)
        report.sessions_reaped += len(ending)
        if cursor is None:
            break
    return ended


def _came_back(instances: InstanceDirectory, instance_id: str, heartbeat: datetime) -> bool:
    """Whether the instance beat (or stopped) since it was judged lost at ``heartbeat``.

    A run reads the registry once, at its start, and a page of sessions may be reaped many
    seconds later (the emulator's queries, a slow Firestore). An instance whose writes had
    only lagged (a Firestore stall) re-asserts its sockets' records when it catches up: reaping
    them after that left a live instance's sockets without records for good (the soak, seed 7).
    So the entry is read again before each page's presence and sessions are written."""
    entry = instances.entries([instance_id]).get(instance_id)
    if entry is None or entry.heartbeat == heartbeat:
        return False  # unchanged, or its entry deleted: it is not coming back
    logger.warning(
        "instance %s judged lost at heartbeat %s has beaten or stopped since: not reaped",
        instance_id,
        heartbeat.isoformat(),
    )
    return True


def _settle(
    store: LostInstanceStore,
    publisher: EventPublisher | None,
    users: list[str],
    instance_id: str,
    at: datetime,
    report: SweepReport,
) -> list[str]:
    """Settle ``users`` in one transaction; if it fails, each of them in one of its own.
    Returns the users settled.

    Why alone on failure: a transaction over many users' holders records contends with the
    live instances' presence writes for any of them, and waits on a record locked by a
    transaction that will not commit (a gateway killed in the middle of one). The soak saw a
    lost instance left unreaped run after run that way, each run's failure costing 12-16 s
    before the sign-out pass. Alone, such a user waits for the next run and nobody else does;
    the users are tried eight at once, so a locked user costs the run one wave's attempts, not
    one user's after another's."""
    try:
        events = store.settle(users, instance_id, at)
    except Exception as exc:
        if len(users) == 1:
            _failed(users[0], instance_id, exc, report)
            return []
        logger.warning(
            "settling %d users of lost instance %s in one transaction failed, settling each "
            "alone: %r",
            len(users),
            instance_id,
            exc,
        )
        events, settled = [], []
        with ThreadPoolExecutor(SETTLE_ALONE_CONCURRENCY, "settle") as pool:
            for start in range(0, len(users), SETTLE_ALONE_CONCURRENCY):
                wave = users[start : start + SETTLE_ALONE_CONCURRENCY]
                outcomes = list(pool.map(lambda one: _attempt(store, one, instance_id, at), wave))
                for user, outcome in zip(wave, outcomes, strict=True):
                    if isinstance(outcome, Exception):
                        _failed(user, instance_id, outcome, report)
                    else:
                        events.extend(outcome)
                        settled.append(user)
                if len(wave) > 1 and not any(isinstance(o, list) for o in outcomes):
                    # A whole wave failed: Firestore is in trouble, not one user's record.
                    # The rest wait for the next run rather than cost a deadline per wave.
                    rest = users[start + len(wave) :]
                    if rest:
                        logger.warning(
                            "every user of a wave failed: %d more users of lost instance %s "
                            "left for the next run",
                            len(rest),
                            instance_id,
                        )
                        report.reap_failures += len(rest)
                    break
    else:
        settled = users
    report.users_offline += sum(e.state == OFFLINE for e in events)
    _publish(publisher, events, report)
    return settled


def _attempt(
    store: LostInstanceStore, user: str, instance_id: str, at: datetime
) -> list[PresenceEvent] | Exception:
    try:
        return store.settle([user], instance_id, at)
    except Exception as exc:
        return exc


def _failed(user: str, instance_id: str, exc: Exception, report: SweepReport) -> None:
    logger.warning(
        "settling user %s of lost instance %s failed, the next run retries: %r",
        user,
        instance_id,
        exc,
    )
    report.reap_failures += 1


def _publish(
    publisher: EventPublisher | None, events: Sequence[PresenceEvent], report: SweepReport
) -> None:
    if publisher is None or not events:
        return
    try:
        publisher.publish(events)
    except Exception as exc:
        # Not retried: a later run has no transition left to publish for these users.
        logger.error(
            "%d presence events not published (users %s): %r",
            len(events),
            ", ".join(e.user_id for e in events[:10]),
            exc,
        )
        report.presence_event_failures += len(events)
        return
    report.presence_events_published += len(events)


def sessions_by_user(sessions: Sequence[SessionRef]) -> dict[str, list[str]]:
    """Session ids by user, in the order given: one member write per user."""
    grouped: dict[str, list[str]] = {}
    for ref in sessions:
        grouped.setdefault(ref.user_id, []).append(ref.session_id)
    return grouped
