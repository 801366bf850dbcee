"""The console's answers from the instances' receipts (docs/console.md): pure functions, no
clock and no I/O, so that tests/unit/test_console_merge.py holds them to their cases.

* ``merge_series``: each instance samples on its own clock; a sample counts in the
  ``SAMPLE_INTERVAL`` bucket its time falls in. Within one instance's span a bucket it missed
  (its sample landed a little early or late) repeats its previous values, so a deployment's
  sum does not dip for a sampling jitter.
* ``instance_rows``: the instances that answered are ``live``; the others the heartbeat
  registry knows are ``stopped`` (they said so), ``unreachable`` (awaited as live, not
  answering) or ``lost`` (heartbeat older than the staleness bound).
* ``LostSockets``: the sweep function, not the gateway, signs out a lost instance's sessions;
  the answering instance remembers the sockets each instance last reported to it and counts
  them when that instance turns lost, for the ``instance_lost`` series.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from gateway.cluster.stats import count_users
from gateway.protocol.console import (
    BUSIEST_ROOMS,
    SAMPLES,
    ConsoleEvent,
    InstanceFigures,
    InstanceRow,
    InstanceState,
    LatencySeries,
    RoomRow,
    Samples,
    Series,
    SignoutSeries,
    Totals,
)
from gateway.storage.schema import HEARTBEAT_AT, STARTED_AT, STOPPED_AT

#: The per-sample columns summed across instances.
_SUMMED = (
    "connections",
    "pongs_received_per_s",
    "pongs_persisted_per_s",
    "timeouts_per_min",
    "signouts_per_min",
    "durable_sends_per_s",
)


def _buckets(samples: Samples, interval: float) -> dict[int, dict[str, Any]]:
    """One instance's samples by bucket; a bucket holding two samples keeps the later gauge
    and the mean of the rates, a bucket missed within the span repeats the one before."""
    found: dict[int, list[int]] = {}
    for index, t in enumerate(samples.t):
        found.setdefault(math.floor(t / interval), []).append(index)
    buckets: dict[int, dict[str, Any]] = {}
    previous: dict[str, Any] | None = None
    for bucket in range(min(found, default=0), max(found, default=-1) + 1):
        indexes = found.get(bucket)
        if indexes is None:
            if previous is not None:
                buckets[bucket] = previous
            continue
        row: dict[str, Any] = {"connections": samples.connections[indexes[-1]]}
        for name in _SUMMED[1:]:
            column = getattr(samples, name)
            row[name] = sum(column[i] for i in indexes) / len(indexes)
        counts = [samples.fanout_count[i] for i in indexes]
        p50s = [(samples.fanout_p50_ms[i], samples.fanout_count[i]) for i in indexes]
        row["count"] = sum(counts)
        row["p50_weighted"] = sum((p or 0.0) * n for p, n in p50s if p is not None)
        row["p99"] = max(
            (p for i in indexes if (p := samples.fanout_p99_ms[i]) is not None), default=None
        )
        buckets[bucket] = previous = row
    return buckets


def merge_series(parts: Iterable[Samples], interval: float, size: int = SAMPLES) -> Series:
    """The deployment's series: the instances' samples summed bucket by bucket, the last
    ``size`` buckets. Fan-out latency: p50 is the instances' p50s weighted by their requests,
    p99 the highest instance's (percentiles do not add up; this bounds the deployment's)."""
    per_instance = [_buckets(p, interval) for p in parts]
    keys = sorted({k for buckets in per_instance for k in buckets})[-size:]
    series = Series(
        t=[],
        connections=[],
        pongs_received_per_s=[],
        pongs_persisted_per_s=[],
        signouts_per_min=SignoutSeries([], [], []),
        fanout_latency_ms=LatencySeries([], []),
        durable_sends_per_s=[],
    )
    for key in keys:
        rows = [b[key] for b in per_instance if key in b]
        total = {name: sum(r[name] for r in rows) for name in _SUMMED}
        count = sum(r["count"] for r in rows)
        p99s = [r["p99"] for r in rows if r["p99"] is not None]
        series.t.append(round(key * interval, 3))
        series.connections.append(int(total["connections"]))
        series.pongs_received_per_s.append(round(total["pongs_received_per_s"], 3))
        series.pongs_persisted_per_s.append(round(total["pongs_persisted_per_s"], 3))
        series.signouts_per_min.timeout.append(round(total["timeouts_per_min"], 3))
        series.signouts_per_min.signout.append(round(total["signouts_per_min"], 3))
        # Filled in by LostSockets on the answering instance (not a per-instance sample).
        series.signouts_per_min.instance_lost.append(0.0)
        weighted = sum(r["p50_weighted"] for r in rows)
        series.fanout_latency_ms.p50.append(round(weighted / count, 2) if count else None)
        series.fanout_latency_ms.p99.append(max(p99s) if p99s else None)
        series.durable_sends_per_s.append(round(total["durable_sends_per_s"], 3))
    return series


def totals(figures: Mapping[str, InstanceFigures]) -> Totals:
    """Sockets summed; users counted once across instances (exact unless an instance listed
    only some of its users: ``gateway.cluster.stats.count_users``)."""
    _union, users, exact = count_users((f.listed_users, f.users) for f in figures.values())
    return Totals(sum(f.sockets for f in figures.values()), users, exact)


def busiest_rooms(figures: Iterable[InstanceFigures], size: int = BUSIEST_ROOMS) -> list[RoomRow]:
    """The rooms with the most sockets, from each instance's busiest: a room that is not
    among one instance's busiest counts without that instance's sockets."""
    summed: dict[str, int] = {}
    for f in figures:
        for room, connections in f.rooms:
            summed[room] = summed.get(room, 0) + connections
    top = heapq.nlargest(size, summed.items(), key=lambda item: (item[1], item[0]))
    return [RoomRow(room, connections) for room, connections in top]


def _epoch(value: Any) -> float | None:
    return round(value.timestamp(), 3) if isinstance(value, datetime) else None


def instance_rows(
    figures: Mapping[str, InstanceFigures],
    docs: Mapping[str, Mapping[str, Any]],
    missing: Iterable[str],
    now: float,
    stale_after: float,
) -> list[InstanceRow]:
    """Every instance the console shows: those that answered (``live``), then those the
    registry (``docs``) or the request's audience (``missing``) knows that did not."""
    rows: list[InstanceRow] = []
    for instance_id, f in sorted(figures.items()):
        doc = docs.get(instance_id, {})
        rows.append(
            InstanceRow(
                instance_id=instance_id,
                state="live",
                version=f.version,
                started_at=f.started_at,
                last_heartbeat_at=_epoch(doc.get(HEARTBEAT_AT)),
                sockets=f.sockets,
                users=f.users,
                pong_backlog=f.pong_backlog,
                oldest_pong_age_seconds=f.oldest_pong_age_seconds,
                pubsub=f.pubsub,
            )
        )
    expected = set(missing)
    for instance_id in sorted((set(docs) | expected) - set(figures)):
        doc = docs.get(instance_id, {})
        beat = _epoch(doc.get(HEARTBEAT_AT))
        state: InstanceState
        if STOPPED_AT in doc:
            state = "stopped"
        elif instance_id in expected:
            # Awaited as live (the registry said so a moment ago, or is behind after a
            # Firestore stall: gateway.cluster.liveness) and silent.
            state = "unreachable"
        elif beat is None or now - beat > stale_after:
            state = "lost"
        else:
            state = "unreachable"
        rows.append(
            InstanceRow(
                instance_id=instance_id,
                state=state,
                started_at=_epoch(doc.get(STARTED_AT)),
                last_heartbeat_at=beat,
            )
        )
    return rows


def merge_events(parts: Iterable[Iterable[ConsoleEvent]], limit: int) -> list[ConsoleEvent]:
    """The newest ``limit`` events over every instance's newest, newest first."""
    merged = [e for part in parts for e in part]
    merged.sort(key=lambda e: e.at, reverse=True)
    return merged[:limit]


#: How long the answering instance remembers an instance's sockets, and a loss it counted.
REMEMBER_SECONDS = 600.0


class LostSockets:
    """The sockets each instance last reported to this (answering) instance, and the losses
    seen since: an instance that turns ``lost`` counts its last reported sockets as sign-outs
    at the moment it turned lost (its heartbeat plus the staleness bound), the sweep's
    ``instance_lost`` sign-outs as near as the gateway can see them. Each answering instance
    counts from what it saw, so two of them may differ by the sockets of the last seconds."""

    def __init__(self) -> None:
        self._sockets: dict[str, tuple[float, int]] = {}
        self._lost: dict[str, tuple[float, int]] = {}

    def update(self, rows: Iterable[InstanceRow], now: float, stale_after: float) -> None:
        for row in rows:
            if row.state == "live" and row.sockets is not None:
                self._sockets[row.instance_id] = (now, row.sockets)
            elif row.state == "lost" and row.instance_id not in self._lost:
                seen = self._sockets.pop(row.instance_id, None)
                if seen is not None and seen[1]:
                    beat = row.last_heartbeat_at
                    at = min(now, beat + stale_after) if beat is not None else now
                    self._lost[row.instance_id] = (at, seen[1])
            elif row.state == "stopped":
                # A drained instance closed its sockets itself (1012): no sign-outs.
                self._sockets.pop(row.instance_id, None)
        cutoff = now - REMEMBER_SECONDS
        self._sockets = {i: v for i, v in self._sockets.items() if v[0] >= cutoff}
        self._lost = {i: v for i, v in self._lost.items() if v[0] >= cutoff}

    def per_minute(self, t: list[float], interval: float) -> list[float]:
        """The losses as sign-outs per minute over the series' steps (a step starting at each
        ``t``), as the other reasons are."""
        counts = [0.0] * len(t)
        index = {round(start, 3): n for n, start in enumerate(t)}
        for at, sockets in self._lost.values():
            n = index.get(round(math.floor(at / interval) * interval, 3))
            if n is not None:
                counts[n] += sockets * 60.0 / interval
        return counts
