"""``/ws/stats`` bodies: one instance's view, and the merge of several instances' views."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.messages import PongWriterStats, StatsResponse
from gateway.writer import LAG_BUCKETS

if TYPE_CHECKING:
    from gateway.service import PresenceService


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


def instance_stats(service: PresenceService) -> StatsResponse:
    """This instance's connections and pong writer, with ``scope: "instance"``."""
    me = service.settings.instance_id
    return StatsResponse(
        total_connections=service.registry.total_connections,
        connected_users=service.registry.users(),
        ping_interval_seconds=service.settings.sockets.ping_interval,
        pong_timeout_seconds=service.settings.sockets.pong_timeout,
        total_users=service.registry.total_users,
        instance_id=me,
        scope="instance",
        instances=[me],
        unreachable_instances=[],
        pong_writers={me: pong_writer_stats(service)},
    )


def merge_stats(
    local: StatsResponse, theirs: Iterable[StatsResponse], unreachable: list[str]
) -> StatsResponse:
    """The deployment's stats: connections summed, users counted once, every instance's
    pong writer; ``instance_id`` stays the answering instance's."""
    users = set(local.connected_users)
    total = local.total_connections
    writers = dict(local.pong_writers)
    for other in theirs:
        users.update(other.connected_users)
        total += other.total_connections
        writers.update(other.pong_writers)
    return StatsResponse(
        total_connections=total,
        connected_users=sorted(users),
        ping_interval_seconds=local.ping_interval_seconds,
        pong_timeout_seconds=local.pong_timeout_seconds,
        total_users=len(users),
        instance_id=local.instance_id,
        scope="deployment",
        instances=sorted(writers),
        unreachable_instances=sorted(unreachable),
        pong_writers=writers,
    )
