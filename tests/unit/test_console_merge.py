"""The console's pure parts: the sample ring's rates, the series merged over instances, the
instance rows' states, the busiest rooms, the event ring and the merged events."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.cluster.console_merge import (
    LostSockets,
    busiest_rooms,
    instance_rows,
    merge_events,
    merge_series,
)
from gateway.instance.events import EventRing
from gateway.instance.recorder import Counters, SampleRing, percentile
from gateway.protocol.console import (
    ConsoleEvent,
    InstanceFigures,
    InstanceRow,
    InstanceState,
    Samples,
)
from gateway.storage.schema import HEARTBEAT_AT, STOPPED_AT


def test_sample_rates_are_differences_over_the_interval() -> None:
    """Each sample's rates are the counters' growth since the previous sample (per second,
    per minute for sign-outs); the first is since the start; latencies become p50/p99 in ms."""
    ring = SampleRing(started_at=100.0)
    first = ring.record(102.0, Counters(5, pongs_received=10, timeouts=1), [0.010, 0.030])
    assert (first.connections, first.pongs_received_per_s, first.timeouts_per_min) == (5, 5, 30)
    assert (first.fanout_p50_ms, first.fanout_p99_ms, first.fanout_count) == (10.0, 30.0, 2)
    second = ring.record(104.0, Counters(4, pongs_received=30, pongs_persisted=8, timeouts=1), [])
    assert (second.pongs_received_per_s, second.pongs_persisted_per_s) == (10, 4)
    assert (second.timeouts_per_min, second.fanout_p50_ms) == (0, None)
    wire = ring.wire()
    assert wire.t == [102.0, 104.0] and wire.connections == [5, 4]


def test_sample_ring_is_bounded() -> None:
    """The ring keeps its last ``size`` samples; an empty ring gives empty series."""
    assert SampleRing(0.0).wire().t == []
    ring = SampleRing(0.0, size=3)
    for n in range(1, 6):
        ring.record(float(n * 2), Counters(n), [])
    assert ring.wire().connections == [3, 4, 5]


def test_percentile_nearest_rank() -> None:
    """Nearest rank: of 1..100, p50 is 50 and p99 is 99; of nothing, None."""
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([], 0.5)) == (
        50.0,
        99.0,
        None,
    )


def samples(t: list[float], connections: list[int], p99: float | None = None) -> Samples:
    n = len(t)
    return Samples(
        t=t,
        connections=connections,
        pongs_received_per_s=[1.0] * n,
        pongs_persisted_per_s=[1.0] * n,
        timeouts_per_min=[0.0] * n,
        signouts_per_min=[0.0] * n,
        fanout_p50_ms=[10.0] * n,
        fanout_p99_ms=[p99] * n,
        fanout_count=[1] * n,
        durable_sends_per_s=[0.0] * n,
    )


def test_series_summed_by_bucket_and_gaps_filled() -> None:
    """Two instances sampling out of phase are summed per 2 s bucket; a bucket one of them
    missed repeats its previous sample, so the sum does not dip; every column has the same
    length."""
    a = samples([100.1, 102.2, 104.1], [1, 2, 3], p99=20.0)
    b = samples([101.9, 105.8], [10, 10], p99=50.0)  # skipped the 102-104 bucket
    series = merge_series([a, b], 2.0)
    assert series.t == [100.0, 102.0, 104.0]
    assert series.connections == [11, 12, 13]
    assert series.pongs_received_per_s == [2.0, 2.0, 2.0]
    assert series.fanout_latency_ms.p99 == [50.0, 50.0, 50.0]
    assert series.fanout_latency_ms.p50 == [10.0, 10.0, 10.0]
    assert len(series.signouts_per_min.instance_lost) == 3


def test_series_keeps_the_last_buckets() -> None:
    """At most ``size`` buckets, the newest."""
    a = samples([float(t) for t in range(0, 40, 2)], list(range(20)))
    assert merge_series([a], 2.0, size=5).connections == [15, 16, 17, 18, 19]


def figures(sockets: int, rooms: list[tuple[str, int]] | None = None) -> InstanceFigures:
    return InstanceFigures(
        version="1",
        started_at=1.0,
        sockets=sockets,
        users=sockets,
        pong_backlog=0,
        oldest_pong_age_seconds=None,
        pubsub="ok",
        rooms=rooms or [],
    )


def test_instance_states() -> None:
    """Answered: live; stopped field: stopped; awaited (even with a stale heartbeat, after a
    Firestore stall), or a fresh heartbeat: unreachable; otherwise past the bound: lost."""
    now = 1_000.0

    def beat(age: float) -> dict[str, object]:
        return {HEARTBEAT_AT: datetime.fromtimestamp(now - age, UTC)}

    docs = {
        "a": beat(1),
        "b": {**beat(1), STOPPED_AT: datetime.fromtimestamp(now, UTC)},
        "c": beat(500),
        "d": beat(2),
        "f": beat(500),
    }
    rows = instance_rows({"a": figures(3)}, docs, ["d", "e", "f"], now, stale_after=180)
    assert {r.instance_id: r.state for r in rows} == {
        "a": "live",
        "b": "stopped",
        "c": "lost",
        "d": "unreachable",
        "e": "unreachable",
        "f": "unreachable",
    }
    assert rows[0].sockets == 3 and rows[0].last_heartbeat_at == now - 1


def test_busiest_rooms_summed_and_capped() -> None:
    """Rooms are summed over instances and the busiest listed first, at most ``size``."""
    parts = [figures(1, [("x", 3), ("y", 1)]), figures(1, [("y", 5), ("z", 1)])]
    assert [(r.room, r.connections) for r in busiest_rooms(parts, size=2)] == [("y", 6), ("x", 3)]


def test_event_ring_bounded_newest_first_and_filtered() -> None:
    """The ring keeps its last ``size`` events and lists them newest first, by kind and user."""
    clock = iter(float(n) for n in range(100))
    ring = EventRing(size=3, clock=lambda: next(clock))
    ring.add("connect", "u", "s1")
    ring.add("disconnect", "u", "s1", 1000)
    ring.add("connect", "v", "s2")
    ring.add("refused", "w", None, 4401, "invalid token")
    assert len(ring) == 3
    assert [e.kind for e in ring.newest(10)] == ["refused", "connect", "disconnect"]
    assert [e.code for e in ring.newest(10, user_id="u")] == [1000]
    assert [e.user_id for e in ring.newest(10, kind="connect")] == ["v"]
    assert len(ring.newest(1)) == 1


def test_events_merged_newest_first() -> None:
    """Events of several instances are merged newest first and cut to the limit."""

    def event(at: float, instance: str) -> ConsoleEvent:
        return ConsoleEvent(at=at, instance_id=instance, kind="connect")

    merged = merge_events([[event(3, "a"), event(1, "a")], [event(2, "b")]], limit=2)
    assert [(e.at, e.instance_id) for e in merged] == [(3, "a"), (2, "b")]


def test_lost_instance_sockets_counted_once_when_it_turns_lost() -> None:
    """An instance's last reported sockets count as instance_lost sign-outs in the step it
    turned lost (heartbeat + bound), once; a drained (stopped) instance counts none."""
    lost = LostSockets()

    def row(instance: str, state: InstanceState, sockets: int | None, beat: float) -> InstanceRow:
        return InstanceRow(
            instance_id=instance, state=state, sockets=sockets, last_heartbeat_at=beat
        )

    lost.update([row("a", "live", 5, 100), row("b", "live", 2, 100)], now=100, stale_after=3)
    lost.update([row("a", "unreachable", None, 100), row("b", "stopped", None, 100)], 102, 3)
    lost.update(
        [row("a", "lost", None, 100), row("b", "stopped", None, 100)], now=106, stale_after=3
    )
    lost.update([row("a", "lost", None, 100)], now=108, stale_after=3)
    # Lost at 103: the step starting at 102, 5 sockets in 2 s = 150 a minute.
    assert lost.per_minute([100.0, 102.0, 104.0], 2.0) == [0.0, 150.0, 0.0]
