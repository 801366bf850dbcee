"""The console's three data routes as cross-instance operations (docs/console.md), declared
like the others (``gateway.cluster.operations``): each instance's part (``here``) is a small
receipt (``gateway.protocol.console`` bounds it), merged on the answering instance
(``gateway.cluster.console_merge``). What only the answering instance adds, from Firestore:
the heartbeat registry's instances (to show those that did not answer), the user's presence
and stream position.
"""

from __future__ import annotations

import heapq
import logging
import time
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import metadata
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway.cluster.console_merge import (
    LostSockets,
    busiest_rooms,
    instance_rows,
    merge_events,
    merge_series,
    totals,
)
from gateway.cluster.fanout import Reply, Request
from gateway.cluster.operation import Context, Gathered, Operation, Scope
from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.protocol.console import (
    BUSIEST_ROOMS,
    LISTED_USERS,
    MAX_EVENTS,
    SAMPLE_INTERVAL,
    ConsoleEvent,
    ConsoleReceipt,
    EventsResponse,
    InstanceFigures,
    OverviewResponse,
    SocketInfo,
    UserPresence,
    UserResponse,
)
from gateway.storage.schema import DEVICES, LAST_SEEN_AT, STATE
from gateway.storage.store import READ_TIMEOUT

if TYPE_CHECKING:
    from gateway.cluster.deployment import Deployment

logger = logging.getLogger("gateway.cluster.console")

#: Instances that stopped beating stay listed for this many SWEEP_INTERVALs, within
#: LISTED_FOR_BOUNDS seconds: long enough to be seen gone, not forever.
LISTED_FOR_INTERVALS = 10
LISTED_FOR_BOUNDS = (120.0, 600.0)


class ConsoleOverview(Request, tag="console_overview"):
    pass


class ConsoleUser(Request, tag="console_user"):
    user_id: str = ""


class ConsoleEvents(Request, tag="console_events"):
    limit: int = MAX_EVENTS
    #: The kind to list ("kind" is the wire's tag field).
    event_kind: str | None = None
    user_id: str | None = None


class Parts(NamedTuple):
    """What an operation's merge hands back: the receipts' contents by instance, and who
    did not answer."""

    scope: Scope
    receipts: dict[str, ConsoleReceipt]
    unreachable: list[str]


def _parts(gathered: Gathered) -> Parts:
    receipts = {gathered.me: gathered.local.console or ConsoleReceipt()}
    if gathered.scope == "deployment":
        for instance_id, reply in gathered.replies.items():
            if reply.console is not None:
                receipts[instance_id] = reply.console
    # Like stats: a broker that cannot be reached makes it this instance's view alone.
    unreachable = [] if gathered.failure is not None else sorted(gathered.missing)
    return Parts(gathered.scope, receipts, unreachable)


@cache
def gateway_version() -> str:
    try:
        return metadata.version("presence-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def figures_of(service: PresenceService, now: float) -> InstanceFigures:
    """This instance's live figures: one pass over its sockets for the oldest pong, one over
    its users for the first LISTED_USERS (10 ms at 10,000 sockets, per overview request)."""
    registry = service.registry
    # Rounds are numbered in time order: the oldest pong is the lowest round answered.
    oldest_round = min((c.pong_round for c in registry if c.pong_round >= 0), default=None)
    oldest = None if oldest_round is None else service.heartbeat.answered_at(oldest_round)
    rooms = heapq.nlargest(BUSIEST_ROOMS, service.rooms.rooms().items(), key=lambda i: i[1])
    return InstanceFigures(
        version=gateway_version(),
        started_at=round(service.samples.started_at, 3),
        sockets=registry.total_connections,
        users=registry.total_users,
        listed_users=heapq.nsmallest(LISTED_USERS, registry.users()),
        pong_backlog=service.writer.buffered,
        oldest_pong_age_seconds=None if oldest is None else round(max(0.0, now - oldest), 3),
        pubsub=service.samples.pubsub,  # type: ignore[arg-type]
        rooms=rooms,
        samples=service.samples.wire(),
    )


def socket_info(service: PresenceService, conn: Connection) -> SocketInfo:
    answered = service.heartbeat.answered_at(conn.pong_round) if conn.pong_round >= 0 else None
    return SocketInfo(
        instance_id=service.settings.instance_id,
        session_id=conn.session_id,
        connected_at=round(conn.connected_at.timestamp(), 3),
        last_pong_at=None if answered is None else round(answered, 3),
        rooms=service.rooms.rooms_of(conn),
    )


class OverviewOp(Operation[ConsoleOverview, Parts]):
    request = ConsoleOverview

    async def here(self, ctx: Context, request: ConsoleOverview) -> Reply:
        return Reply(console=ConsoleReceipt(figures=figures_of(ctx.service, time.time())))

    def merge(self, request: ConsoleOverview, gathered: Gathered) -> Parts:
        return _parts(gathered)


class UserOp(Operation[ConsoleUser, Parts]):
    request = ConsoleUser

    async def here(self, ctx: Context, request: ConsoleUser) -> Reply:
        sockets = ctx.service.registry.sockets_of(request.user_id)
        return Reply(console=ConsoleReceipt(sockets=[socket_info(ctx.service, c) for c in sockets]))

    def merge(self, request: ConsoleUser, gathered: Gathered) -> Parts:
        return _parts(gathered)


class EventsOp(Operation[ConsoleEvents, Parts]):
    request = ConsoleEvents

    async def here(self, ctx: Context, request: ConsoleEvents) -> Reply:
        me = ctx.me
        limit = max(0, min(request.limit, MAX_EVENTS))
        events = [
            ConsoleEvent(
                at=round(e.at, 3),
                instance_id=me,
                kind=e.kind,
                user_id=e.user_id,
                session_id=e.session_id,
                code=e.code,
                reason=e.reason,
            )
            for e in ctx.service.events.recent.newest(limit, request.event_kind, request.user_id)
        ]
        return Reply(console=ConsoleReceipt(events=events))

    def merge(self, request: ConsoleEvents, gathered: Gathered) -> Parts:
        return _parts(gathered)


OVERVIEW = OverviewOp()
USER = UserOp()
EVENTS = EventsOp()
OPERATIONS = (OVERVIEW, USER, EVENTS)


def _listed_for(deployment: Deployment) -> float:
    low, high = LISTED_FOR_BOUNDS
    return min(high, max(low, LISTED_FOR_INTERVALS * deployment.settings.fanout.sweep_interval))


async def overview(deployment: Deployment, lost: LostSockets | None = None) -> OverviewResponse:
    """``GET /ws/console/overview``; ``lost``: this instance's memory of the sockets of
    instances that turned lost (else the ``instance_lost`` series stays 0)."""
    parts = await deployment.run(OVERVIEW, ConsoleOverview())
    now = time.time()
    docs: dict[str, dict[str, Any]] = {}
    if parts.scope == "deployment":
        since = datetime.now(UTC) - timedelta(seconds=_listed_for(deployment))
        try:
            docs = await deployment.directory.store.recent_instances(since, timeout=READ_TIMEOUT)
        except Exception as exc:
            logger.warning("console: instance registry unreadable: %r", exc)
    else:
        # Alone (no broker, or none reachable): this instance's row only.
        docs = {}
    figures = {i: r.figures for i, r in parts.receipts.items() if r.figures is not None}
    stale_after = 3 * deployment.settings.fanout.sweep_interval
    rows = instance_rows(figures, docs, parts.unreachable, now, stale_after)
    series = merge_series((f.samples for f in figures.values()), SAMPLE_INTERVAL)
    if lost is not None:
        lost.update(rows, now, stale_after)
        series.signouts_per_min.instance_lost = lost.per_minute(series.t, SAMPLE_INTERVAL)
    return OverviewResponse(
        generated_at=round(now, 3),
        scope=parts.scope,
        interval_seconds=SAMPLE_INTERVAL,
        instances=rows,
        totals=totals(figures),
        series=series,
        rooms=busiest_rooms(figures.values()),
    )


async def user(deployment: Deployment, user_id: str) -> UserResponse:
    """``GET /ws/console/users/{user_id}``: the user's sockets everywhere, with the stream
    position and presence from Firestore (left out, logged, when it cannot answer)."""
    parts = await deployment.run(USER, ConsoleUser(user_id=user_id))
    sockets = sorted(
        (s for r in parts.receipts.values() for s in r.sockets),
        key=lambda s: (s.instance_id, s.connected_at),
    )
    service = deployment.service
    try:
        head = await service.streams.store.head(user_id, READ_TIMEOUT, with_ack=True)
    except Exception as exc:
        logger.warning("console: stream of %r unreadable: %r", user_id, exc)
        head = None
    if head is not None and head.acked_offset is not None:
        for socket in sockets:
            socket.stream_offset = head.acked_offset
    return UserResponse(
        user_id, parts.scope, parts.unreachable, sockets, await _presence(service, user_id)
    )


async def _presence(service: PresenceService, user_id: str) -> UserPresence | None:
    """The user's presence document, or None (USER_PRESENCE=off, none yet, or unreadable)."""
    if service.presence_writer is None:
        return None
    try:
        doc = await service.presence_writer.records.read(user_id)
    except Exception as exc:
        logger.warning("console: presence of %r unreadable: %r", user_id, exc)
        return None
    if not doc or doc.get(STATE) not in ("online", "offline"):
        return None
    seen = doc.get(LAST_SEEN_AT)
    return UserPresence(
        state=doc[STATE],
        devices=int(doc.get(DEVICES) or 0),
        last_seen_at=round(seen.timestamp(), 3) if isinstance(seen, datetime) else None,
    )


async def events(
    deployment: Deployment, limit: int, kind: str | None, user_id: str | None
) -> EventsResponse:
    """``GET /ws/console/events``: the newest events over every instance's last ones."""
    request = ConsoleEvents(limit=limit, event_kind=kind, user_id=user_id)
    parts = await deployment.run(EVENTS, request)
    merged = merge_events((r.events for r in parts.receipts.values()), limit)
    return EventsResponse(parts.scope, parts.unreachable, merged)
