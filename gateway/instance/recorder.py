"""The console's series for one instance (docs/console.md): every ``SAMPLE_INTERVAL`` seconds
the sampler (``gateway.cluster.console_sampler``) reads counters the instance keeps anyway
(sockets, pongs received and persisted, timeouts and sign-outs, durable sends) and the fan-out
requests' durations since the last sample; this ring turns them into rates and keeps the last
``SAMPLES`` of them. Pure: no clock, no I/O; nothing here runs on a socket's path."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from gateway.protocol.console import SAMPLES, Samples


class Counters(NamedTuple):
    """What a sample reads: the sockets now, and counters that only grow."""

    connections: int = 0
    pongs_received: int = 0
    pongs_persisted: int = 0
    timeouts: int = 0
    signouts: int = 0
    durable_sends: int = 0


class Sample(NamedTuple):
    t: float
    connections: int
    pongs_received_per_s: float
    pongs_persisted_per_s: float
    timeouts_per_min: float
    signouts_per_min: float
    fanout_p50_ms: float | None
    fanout_p99_ms: float | None
    fanout_count: int
    durable_sends_per_s: float


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 1) of sorted values; None for none."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class SampleRing:
    """The last ``size`` samples, and the counters of the last one (to take differences)."""

    def __init__(self, started_at: float, size: int = SAMPLES) -> None:
        self.started_at = started_at
        self.samples: deque[Sample] = deque(maxlen=size)
        #: Counters start at zero with the process: the first sample's rates are since then.
        self._last = (started_at, Counters())
        #: The fan-out's state at the last sample: "ok", "down", or "off" without a broker.
        self.pubsub = "off"

    def record(self, at: float, counters: Counters, latencies: Sequence[float]) -> Sample:
        """Add the sample taken at ``at`` (epoch seconds), with the durations (seconds) of the
        fan-out requests that ended since the previous one."""
        since, last = self._last
        elapsed = max(at - since, 1e-3)
        ordered = sorted(latencies)
        p50, p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)

        def rate(now: int, before: int, per: float = 1.0) -> float:
            # A counter never goes down; max() keeps a reset (none today) from showing < 0.
            return round(max(0, now - before) * per / elapsed, 3)

        sample = Sample(
            round(at, 3),
            counters.connections,
            rate(counters.pongs_received, last.pongs_received),
            rate(counters.pongs_persisted, last.pongs_persisted),
            rate(counters.timeouts, last.timeouts, 60.0),
            rate(counters.signouts, last.signouts, 60.0),
            None if p50 is None else round(p50 * 1000, 2),
            None if p99 is None else round(p99 * 1000, 2),
            len(ordered),
            rate(counters.durable_sends, last.durable_sends),
        )
        self.samples.append(sample)
        self._last = (at, counters)
        return sample

    def wire(self) -> Samples:
        """The samples as a receipt carries them, oldest first."""
        columns = list(zip(*self.samples, strict=True)) if self.samples else [()] * 10
        return Samples(
            t=list(columns[0]),
            connections=list(columns[1]),
            pongs_received_per_s=list(columns[2]),
            pongs_persisted_per_s=list(columns[3]),
            timeouts_per_min=list(columns[4]),
            signouts_per_min=list(columns[5]),
            fanout_p50_ms=list(columns[6]),
            fanout_p99_ms=list(columns[7]),
            fanout_count=list(columns[8]),
            durable_sends_per_s=list(columns[9]),
        )
