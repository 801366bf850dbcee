"""The instance's watch on its own write lag: it must notice a lag that lets the sweep count
the instance lost, even while Firestore is stalled (found by the soak, make soak)."""

from __future__ import annotations

import asyncio
from datetime import datetime

from gateway.instance.service import PresenceService
from gateway.storage.store import MemoryStore, SignedOutSession
from tests.support import eventually, unit_settings

INTERVAL = 0.05


class StalledStore(MemoryStore):
    """A store whose reconcile query hangs until released, as against a stopped Firestore."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.queries = 0

    async def signed_out_sessions(
        self, instance_id: str, since: datetime
    ) -> list[SignedOutSession]:
        self.queries += 1
        await self.release.wait()
        return []


async def watch(store: MemoryStore, lag: float) -> tuple[PresenceService, list[bool], list[float]]:
    service = PresenceService(unit_settings(sweep_interval=INTERVAL, ping_interval=60), store)
    recovered: list[bool] = []
    age = [lag]
    service.endings.on_recovered = lambda: recovered.append(True)
    service.writer.backlog_age = lambda: age[0]  # type: ignore[method-assign]
    await service.start()
    return service, recovered, age


async def test_the_lag_watch_runs_while_a_reconcile_pass_waits_on_a_stalled_firestore() -> None:
    """With the reconcile query hanging (Firestore stopped) and the buffer lagging, the lag is
    still noticed and, once the buffer caught up, the records are re-asserted: the heartbeat
    and the watch do not wait for the pass."""
    store = StalledStore()
    service, recovered, age = await watch(store, lag=10 * INTERVAL)
    try:

        async def stalled() -> bool:
            return store.queries >= 1

        await eventually(stalled, timeout=5)
        await asyncio.sleep(4 * INTERVAL)
        age[0] = 0.0

        async def reasserted() -> bool:
            return bool(recovered)

        await eventually(reasserted, timeout=5)
        assert store.queries == 1, "a second pass started while the first one hung"
    finally:
        store.release.set()
        await service.stop()


async def test_a_lag_of_two_sweep_intervals_counts_as_possibly_lost() -> None:
    """A buffer 2.5 intervals behind is enough for the sweep to count the instance lost (its
    last stored heartbeat may have been an interval old already when the lag began), so it
    re-asserts once caught up, and notes when it lagged (the fan-out's liveness reads it)."""
    service, recovered, age = await watch(MemoryStore(), lag=2.5 * INTERVAL)
    try:
        await asyncio.sleep(4 * INTERVAL)
        assert service.endings.lagged_at is not None
        age[0] = 0.0

        async def reasserted() -> bool:
            return bool(recovered)

        await eventually(reasserted, timeout=5)
    finally:
        await service.stop()


async def test_a_lag_under_two_sweep_intervals_is_not_noted() -> None:
    """A buffer 1.5 intervals behind leaves the stored heartbeat fresh: nothing is noted."""
    service, recovered, _ = await watch(MemoryStore(), lag=1.5 * INTERVAL)
    try:
        await asyncio.sleep(4 * INTERVAL)
        assert (service.endings.lagged_at, recovered) == (None, [])
    finally:
        await service.stop()
