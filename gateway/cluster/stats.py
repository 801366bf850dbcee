"""``/ws/stats`` and ``/ws/rooms/{room}`` bodies: one instance's view, and the merge of
several instances' views.

Their lists are capped at the request's ``limit`` (the first users, or members, by id), in the
answer and in every instance's receipt, which keeps both small at any number of sockets; the
counts stay exact. Each instance lists its own first ``limit``, which is enough to find the
deployment's first ``limit``: a user among those has fewer than ``limit`` users before it on
any instance. What the lists cannot always give is the number of distinct users, since a user
may be on several instances: see ``count_users``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal

from gateway.cluster.fanout import MAX_LIST_LIMIT, Reply
from gateway.protocol.messages import PongWriterStats, RoomMember, RoomResponse, StatsResponse
from gateway.storage.writer import LAG_BUCKETS

if TYPE_CHECKING:
    from gateway.instance.service import PresenceService


def clamp(limit: int) -> int:
    """A limit within 0..MAX_LIST_LIMIT (the REST API refuses others; a request from another
    instance is not trusted to keep its receipt small)."""
    return max(0, min(limit, MAX_LIST_LIMIT))


def count_users(parts: Iterable[tuple[list[str], int]]) -> tuple[set[str], int, bool]:
    """Distinct users over instances that each listed some of their users and counted them
    all, as (listed, count): the union of the lists, the number of distinct users, and whether
    that number is exact. It is when no instance left a user out (or the bounds meet);
    otherwise it is a lower bound, since a user left out by one instance may be listed by
    another, or be on nobody's list."""
    union: set[str] = set()
    largest = unlisted = 0
    for listed, count in parts:
        union.update(listed)
        largest = max(largest, count)
        unlisted += max(0, count - len(listed))
    low = max(len(union), largest)
    return union, low, low == len(union) + unlisted


def pong_writer_stats(service: PresenceService) -> PongWriterStats:
    writer = service.writer
    p50, p99 = writer.lag_percentiles(0.5, 0.99)
    return PongWriterStats(
        buffered_docs=writer.buffered,
        pongs_received=writer.pongs_received,
        pongs_persisted=writer.pongs_persisted,
        writes_committed=writer.writes_committed,
        commits=writer.commits,
        failed_commits=writer.failed_commits,
        dropped_writes=writer.dropped_writes,
        rejected_writes=writer.rejected_writes,
        lag_p50_ms=None if p50 is None else round(p50 * 1000, 2),
        lag_p99_ms=None if p99 is None else round(p99 * 1000, 2),
        lag_histogram_ms=dict(
            zip(
                (("+Inf" if b == float("inf") else f"{b * 1000:g}") for b in LAG_BUCKETS),
                itertools.accumulate(writer.lag_counts),
                strict=True,
            )
        ),
    )


def instance_stats(service: PresenceService, limit: int) -> StatsResponse:
    """This instance's connections (its first ``limit`` users) and pong writer, with
    ``scope: "instance"``."""
    me = service.settings.instance_id
    registry = service.registry
    users = sorted(registry.users())[: clamp(limit)]
    return StatsResponse(
        total_connections=registry.total_connections,
        connected_users=users,
        truncated=registry.total_users > len(users),
        ping_interval_seconds=service.settings.sockets.ping_interval,
        pong_timeout_seconds=service.settings.sockets.pong_timeout,
        total_users=registry.total_users,
        total_users_exact=True,
        instance_id=me,
        scope="instance",
        instances=[me],
        unreachable_instances=[],
        pong_writers={me: pong_writer_stats(service)},
    )


def merge_stats(
    local: StatsResponse, theirs: Iterable[StatsResponse], unreachable: list[str], limit: int
) -> StatsResponse:
    """The deployment's stats: connections summed, users counted once (``count_users``),
    every instance's pong writer; ``instance_id`` stays the answering instance's."""
    views = [local, *theirs]
    union, total_users, exact = count_users((v.connected_users, v.total_users) for v in views)
    users = sorted(union)[: clamp(limit)]
    writers: dict[str, PongWriterStats] = {}
    for view in views:
        writers.update(view.pong_writers)
    return StatsResponse(
        total_connections=sum(v.total_connections for v in views),
        connected_users=users,
        truncated=total_users > len(users),
        ping_interval_seconds=local.ping_interval_seconds,
        pong_timeout_seconds=local.pong_timeout_seconds,
        total_users=total_users,
        total_users_exact=exact,
        instance_id=local.instance_id,
        scope="deployment",
        instances=sorted(writers),
        unreachable_instances=sorted(unreachable),
        pong_writers=writers,
    )


def room_receipt(service: PresenceService, room: str, limit: int, into: Reply) -> Reply:
    """This instance's members of the room, as its receipt carries them: the first ``limit``
    (user, session) pairs and users, sorted, and the exact counts of both."""
    pairs = service.room_members(room)
    users = sorted({user_id for user_id, _ in pairs})
    limit = clamp(limit)
    into.connections, into.user_count = len(pairs), len(users)
    into.sessions, into.users = pairs[:limit], users[:limit]
    return into


def merge_room(
    room: str,
    limit: int,
    views: Mapping[str, Reply],
    scope: Literal["deployment", "instance"],
    unreachable: list[str],
) -> RoomResponse:
    """The room's members over the instances' receipts (``room_receipt``), by instance id."""
    limit = clamp(limit)
    found = sorted((u, s, i) for i, view in views.items() for u, s in view.sessions)[:limit]
    union, total_users, exact = count_users((v.users, v.user_count) for v in views.values())
    connections = sum(v.connections for v in views.values())
    return RoomResponse(
        room=room,
        connections=connections,
        users=sorted(union)[:limit],
        total_users=total_users,
        total_users_exact=exact,
        members=[RoomMember(u, s, i) for u, s, i in found],
        truncated=connections > len(found),
        scope=scope,
        instances=sorted(views),
        unreachable_instances=sorted(unreachable),
    )
