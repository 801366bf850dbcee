"""Prometheus metrics, read from the service's counters at scrape time.

A collector instead of module-level metric objects: nothing is registered at import, and the
hot paths (a pong, a ping) only bump plain integers. HTTP request metrics come from Litestar's
Prometheus middleware; ``GET /metrics`` serves both.
"""

from __future__ import annotations

import asyncio
import gc
import platform
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from gateway.storage.writer import COMMIT_BUCKETS, LAG_BUCKETS

if TYPE_CHECKING:
    from gateway.cluster.deployment import Deployment
    from gateway.instance.service import PresenceService


def runtime_labels() -> dict[str, str]:
    """The event loop (``asyncio`` from ``python -m gateway``) and the collector's thresholds
    (see gateway.serving): what a CPU profile of an instance depends on."""
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

        writer = self.service.writer
        yield InfoMetricFamily("gateway_runtime", "What this process runs on", runtime_labels())
        for name, doc, value in self._gauges():
            yield GaugeMetricFamily(name, doc, value)
        for name, doc, value in self._counters():
            yield CounterMetricFamily(name, doc, value)
        for name, doc, labels, counts in self._labelled_counters():
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, count in sorted(counts.items()):
                family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
            yield family
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

    def _gauges(self) -> list[tuple[str, str, float]]:
        service, broker = self.service, self.deployment.broker
        return [
            (
                "gateway_connections",
                "Open sockets on this instance",
                service.registry.total_connections,
            ),
            ("gateway_users", "Users with an open socket here", service.registry.total_users),
            (
                "gateway_buffer_documents",
                "Documents waiting in the write-behind buffer",
                service.writer.buffered,
            ),
            (
                "gateway_pong_backlog_seconds",
                "Age of the oldest pong not yet written: a connected user's stored "
                "last_pong_at is at most this plus PING_INTERVAL old",
                service.writer.backlog_age(),
            ),
            (
                "gateway_write_window",
                "Writes the buffer may have in flight now (shrinks while Firestore is slow)",
                service.writer.window.size,
            ),
            ("gateway_rooms", "Rooms with a member socket here", service.rooms.total_rooms),
            (
                "gateway_room_memberships",
                "Room memberships of the sockets here (a socket in 3 rooms counts 3)",
                service.rooms.total_memberships,
            ),
            (
                "gateway_presence_backlog",
                "Users whose presence change waits to be written to Firestore",
                service.presence_writer.backlog if service.presence_writer else 0,
            ),
            (
                "gateway_presence_rooms",
                "Presence rooms with a member on any instance, in this instance's view",
                len(service.presence.view.rooms()),
            ),
            (
                "gateway_fanout_connected",
                "1 while the Pub/Sub pull stream is open (absent without a broker)",
                float(broker.connected) if broker is not None else float("nan"),
            ),
        ]

    def _counters(self) -> list[tuple[str, str, float]]:
        service, writer, fanout = self.service, self.service.writer, self.deployment.fanout
        broker = self.deployment.broker
        presence, written = self.deployment.presence, service.presence_writer
        return [
            ("gateway_pings_sent", "Server pings sent", service.heartbeat.pings_sent),
            (
                "gateway_presence_transitions",
                "Users turned online or offline by this instance's presence writes",
                written.transitions if written else 0,
            ),
            (
                "gateway_presence_write_failures",
                "Presence transactions that failed (their users are retried)",
                written.failures if written else 0,
            ),
            (
                "gateway_presence_diffs_sent",
                "presence_diff rounds sent to the members here, one per changed room",
                service.presence.diffs_sent,
            ),
            (
                "gateway_presence_instances_dropped",
                "Instances whose room presence entries were dropped when they stopped beating",
                presence.dropped_instances if presence else 0,
            ),
            (
                "gateway_member_reads_failed",
                "Connects admitted on the token alone: the member read failed or took over 2 s",
                service.admission.member_reads_failed,
            ),
            ("gateway_pongs_received", "Client pongs received", writer.pongs_received),
            (
                "gateway_pongs_unwritten",
                "Pongs not written because of PONG_WRITE_INTERVAL",
                service.pongs_unwritten,
            ),
            ("gateway_pongs_persisted", "Pongs committed to Firestore", writer.pongs_persisted),
            ("gateway_firestore_commits", "Write-behind commits that succeeded", writer.commits),
            (
                "gateway_firestore_commit_failures",
                "Write-behind commits that failed (retried)",
                writer.failed_commits,
            ),
            (
                "gateway_firestore_writes",
                "Documents written by the buffer",
                writer.writes_committed,
            ),
            (
                "gateway_writes_dropped",
                "Writes dropped because the buffer was full",
                writer.dropped_writes,
            ),
            (
                "gateway_writes_rejected",
                "Writes dropped because Firestore refused them as invalid (each logged once)",
                writer.rejected_writes,
            ),
            (
                "gateway_pongs_unrequested",
                "Pongs not written: the socket had already answered this ping round",
                service.pongs_unrequested,
            ),
            (
                "gateway_stream_appends",
                "Durable messages stored in users' streams (each: 1 read, 2 writes)",
                service.streams.appends,
            ),
            ("gateway_stream_acks", "stream_ack frames received", service.streams.acks),
            (
                "gateway_stream_acks_coalesced",
                "stream_acks folded into a later write of the user's position (1 write/s/user)",
                service.streams.acks_coalesced,
            ),
            (
                "gateway_stream_replayed",
                "Durable messages replayed to reconnecting clients",
                service.streams.replayed,
            ),
            (
                "gateway_timeouts_sent",
                "Timeout messages sent (sockets closed 4408)",
                service.endings.timeouts_sent,
            ),
            (
                "gateway_callbacks_received",
                "Timeout callbacks from the sweep",
                service.callbacks_received,
            ),
            (
                "gateway_broker_messages_published",
                "Messages this instance published on the fan-out topic (requests and receipts)",
                broker.published if broker is not None else 0,
            ),
            (
                "gateway_broker_publish_calls",
                "Publish calls that carried them (messages made at one moment share a call)",
                broker.publish_calls if broker is not None else 0,
            ),
            (
                "gateway_fanout_sends_coalesced",
                "Sends to users held elsewhere that travelled in one send_batch with others "
                "made at the same moment",
                self.deployment.sends.coalesced if self.deployment.sends else 0,
            ),
            (
                "gateway_member_read_batches",
                "Batched member reads (sends' and connects' reads made at one moment share one)",
                service.admission.member_reads.batches,
            ),
            (
                "gateway_member_reads",
                "Member records read by those batches",
                service.admission.member_reads.keys_read,
            ),
            (
                "gateway_fanout_missing_receipts",
                "Instances that had not answered a request by FANOUT_TIMEOUT",
                fanout.missing_receipts if fanout else 0,
            ),
        ]

    def _labelled_counters(self) -> list[tuple[str, str, list[str], Mapping[Any, int]]]:
        """Counters by label: (name, help, label names, counts by label value or tuple)."""
        service, fanout = self.service, self.deployment.fanout
        return [
            (
                "gateway_stream_recoveries",
                "Recoveries, by result: recovered or the reason they were not",
                ["result"],
                service.streams.recoveries,
            ),
            (
                "gateway_refusals",
                "Sockets refused or closed by policy",
                ["reason"],
                service.refusals,
            ),
            (
                "gateway_room_refusals",
                "Room joins refused, by error code",
                ["code"],
                service.room_refusals,
            ),
            (
                "gateway_connection_events",
                "Connection events: connect, disconnect, timeout, signout, token_expired, "
                "room_join, room_leave",
                ["event"],
                service.events.counts,
            ),
            (
                "gateway_disconnects",
                "Sockets closed, by close code",
                ["code"],
                service.events.close_codes,
            ),
            (
                "gateway_fanout_published",
                "Requests published on the fan-out topic (send, broadcast, timeout, stats, "
                "signout, room, room_members)",
                ["kind", "outcome"],
                fanout.published if fanout else {},
            ),
            (
                "gateway_fanout_received",
                "Fan-out messages pulled, by kind and what became of them",
                ["kind", "outcome"],
                fanout.received if fanout else {},
            ),
        ]


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus' cumulative (upper bound, count) pairs."""
    total, buckets = 0, []
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", float(total)))
    return buckets
