"""The console's sampler: every ``SAMPLE_INTERVAL`` seconds, this instance's counters into
its sample ring (``gateway.instance.recorder``). It runs only while the console is enabled,
reads counters the instance keeps anyway (``gateway.web.metrics`` reads the same ones), and
takes the fan-out requests' durations the fan-out noted since the last sample."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.cluster.deployment import Deployment
from gateway.instance.recorder import Counters, Sample
from gateway.protocol.console import SAMPLE_INTERVAL

logger = logging.getLogger("gateway.cluster.console_sampler")


def counters_of(deployment: Deployment) -> Counters:
    service = deployment.service
    writer, kinds = service.writer, service.events.counts
    return Counters(
        connections=service.registry.total_connections,
        pongs_received=writer.pongs_received,
        pongs_persisted=writer.pongs_persisted,
        timeouts=kinds["timeout"],
        signouts=kinds["signout"],
        durable_sends=service.streams.appends,
    )


def pubsub_state(deployment: Deployment) -> str:
    broker = deployment.broker
    if broker is None:
        return "off"
    return "ok" if broker.connected else "down"


def sample(deployment: Deployment, now: float) -> Sample:
    """Take one sample now."""
    durations: list[float] = []
    if deployment.fanout is not None:
        durations, deployment.fanout.durations = deployment.fanout.durations, []
    ring = deployment.service.samples
    ring.pubsub = pubsub_state(deployment)
    return ring.record(now, counters_of(deployment), durations)


async def run(deployment: Deployment, interval: float = SAMPLE_INTERVAL) -> None:
    """Sample now, then every ``interval`` seconds until cancelled."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        # Behind schedule (a stalled loop): the next sample waits a whole interval, no burst.
        next_at = max(next_at + interval, loop.time())
        try:
            sample(deployment, time.time())
        except Exception:
            logger.exception("console sample failed")
