"""Prometheus metrics, read from the service's counters at scrape time.

A collector instead of module-level metric objects: nothing is registered at import, and the
hot paths (a pong, a ping) only bump plain integers. HTTP request metrics come from Litestar's
Prometheus middleware; ``GET /metrics`` serves both.
"""

from __future__ import annotations

import asyncio
import gc
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway.writer import COMMIT_BUCKETS, LAG_BUCKETS

if TYPE_CHECKING:
    from gateway.deployment import Deployment
    from gateway.service import PresenceService


def runtime_labels() -> dict[str, str]:
    """The event loop (``asyncio`` from ``python -m gateway``) and the collector's thresholds
    (see gateway.__main__): what a CPU profile of an instance depends on."""
    try:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    except RuntimeError:
        loop = "none"
    return {
        "event_loop": loop,
        "gc_thresholds": ",".join(map(str, gc.get_threshold())),
        "python": platform.python_version(),
    }


class GatewayCollector:
    def __init__(self, service: PresenceService, deployment: Deployment) -> None:
        self.service = service
        self.deployment = deployment

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        service, writer = self.service, self.service.writer
        yield InfoMetricFamily("gateway_runtime", "What this process runs on", runtime_labels())
        yield GaugeMetricFamily(
            "gateway_connections",
            "Open sockets on this instance",
            service.registry.total_connections,
        )
        yield GaugeMetricFamily(
            "gateway_users", "Users with an open socket here", service.registry.total_users
        )
        yield CounterMetricFamily(
            "gateway_pings_sent", "Server pings sent", service.heartbeat.pings_sent
        )
        yield CounterMetricFamily(
            "gateway_member_reads_failed",
            "Connects admitted on the token alone: the member read failed or took over 2 s",
            service.member_reads_failed,
        )
        yield CounterMetricFamily(
            "gateway_pongs_received", "Client pongs received", writer.pongs_received
        )
        yield CounterMetricFamily(
            "gateway_pongs_unwritten",
            "Pongs not written because of PONG_WRITE_INTERVAL",
            service.pongs_unwritten,
        )
        yield CounterMetricFamily(
            "gateway_pongs_persisted", "Pongs committed to Firestore", writer.pongs_persisted
        )
        yield CounterMetricFamily(
            "gateway_firestore_commits", "Write-behind commits that succeeded", writer.commits
        )
        yield CounterMetricFamily(
            "gateway_firestore_commit_failures",
            "Write-behind commits that failed (retried)",
            writer.failed_commits,
        )
        yield CounterMetricFamily(
            "gateway_firestore_writes", "Documents written by the buffer", writer.writes_committed
        )
        yield CounterMetricFamily(
            "gateway_writes_dropped",
            "Writes dropped because the buffer was full",
            writer.dropped_writes,
        )
        yield CounterMetricFamily(
            "gateway_stream_appends",
            "Durable messages stored in users' streams (each: 1 read, 2 writes)",
            service.streams.appends,
        )
        yield CounterMetricFamily(
            "gateway_stream_acks", "stream_ack frames received", service.streams.acks
        )
        yield CounterMetricFamily(
            "gateway_stream_replayed",
            "Durable messages replayed to reconnecting clients",
            service.streams.replayed,
        )
        recoveries = CounterMetricFamily(
            "gateway_stream_recoveries",
            "Recoveries, by result: recovered or the reason they were not",
            labels=["result"],
        )
        for result, count in sorted(service.streams.recoveries.items()):
            recoveries.add_metric([result], count)
        yield recoveries
        yield GaugeMetricFamily(
            "gateway_buffer_documents",
            "Documents waiting in the write-behind buffer",
            writer.buffered,
        )
        yield HistogramMetricFamily(
            "gateway_pong_persist_lag_seconds",
            "Time from a pong's arrival to its commit",
            buckets=_cumulative(LAG_BUCKETS, writer.lag_counts),
            sum_value=writer.lag_sum,
        )
        yield HistogramMetricFamily(
            "gateway_firestore_commit_seconds",
            "Duration of the write-behind buffer's successful Commit calls (one batch each)",
            buckets=_cumulative(COMMIT_BUCKETS, writer.commit_counts),
            sum_value=writer.commit_sum,
        )
        yield CounterMetricFamily(
            "gateway_timeouts_sent",
            "Timeout messages sent (sockets closed 4408)",
            service.endings.timeouts_sent,
        )
        yield CounterMetricFamily(
            "gateway_callbacks_received",
            "Timeout callbacks from the sweep",
            service.callbacks_received,
        )
        refusals = CounterMetricFamily(
            "gateway_refusals", "Sockets refused or closed by policy", labels=["reason"]
        )
        for reason, count in sorted(service.refusals.items()):
            refusals.add_metric([reason], count)
        yield refusals
        yield GaugeMetricFamily(
            "gateway_rooms", "Rooms with a member socket here", service.rooms.total_rooms
        )
        yield GaugeMetricFamily(
            "gateway_room_memberships",
            "Room memberships of the sockets here (a socket in 3 rooms counts 3)",
            service.rooms.total_memberships,
        )
        room_refusals = CounterMetricFamily(
            "gateway_room_refusals", "Room joins refused, by error code", labels=["code"]
        )
        for code, count in sorted(service.room_refusals.items()):
            room_refusals.add_metric([code], count)
        yield room_refusals
        events = CounterMetricFamily(
            "gateway_connection_events",
            "Connection events: connect, disconnect, timeout, signout, token_expired, "
            "room_join, room_leave",
            labels=["event"],
        )
        for kind, count in sorted(service.events.counts.items()):
            events.add_metric([kind], count)
        yield events
        disconnects = CounterMetricFamily(
            "gateway_disconnects", "Sockets closed, by close code", labels=["code"]
        )
        for code, count in sorted(service.events.close_codes.items()):
            disconnects.add_metric([code], count)
        yield disconnects
        deployment = self.deployment
        published = CounterMetricFamily(
            "gateway_fanout_published",
            "Requests published on the fan-out topic (send, broadcast, timeout, stats, signout, "
            "room, room_members)",
            labels=["kind", "outcome"],
        )
        fanout = deployment.fanout
        for (kind, outcome), count in sorted((fanout.published if fanout else {}).items()):
            published.add_metric([kind, outcome], count)
        yield published
        received = CounterMetricFamily(
            "gateway_fanout_received",
            "Fan-out messages pulled, by kind and what became of them",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), count in sorted((fanout.received if fanout else {}).items()):
            received.add_metric([kind, outcome], count)
        yield received
        yield CounterMetricFamily(
            "gateway_fanout_missing_receipts",
            "Instances that had not answered a request by FANOUT_TIMEOUT",
            fanout.missing_receipts if fanout else 0,
        )
        broker = deployment.broker
        yield GaugeMetricFamily(
            "gateway_fanout_connected",
            "1 while the Pub/Sub pull stream is open (absent without a broker)",
            float(broker.connected) if broker is not None else float("nan"),
        )


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus' cumulative (upper bound, count) pairs."""
    total, buckets = 0, []
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", float(total)))
    return buckets
