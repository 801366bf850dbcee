"""The service's own loops and decisions with the in-memory store (no sockets, no Firestore)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.closes import CloseCode
from gateway.messages import utc_now
from gateway.registry import Connection
from gateway.schema import HEARTBEAT_AT, INSTANCES, SESSIONS, SIGNED_OUT_AT, STOPPED_AT
from gateway.service import PresenceService
from gateway.settings import Settings
from gateway.store import MemoryStore
from tests.support import eventually, unit_settings


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def settings(**overrides: Any) -> Settings:
    return unit_settings(**overrides)


async def test_heartbeat_and_reconcile_run_every_sweep_interval() -> None:
    """The instance document gets heartbeats, and a session signed out in Firestore whose
    callback never came is closed with the timeout message and 4408, once."""
    store = MemoryStore()
    service = PresenceService(settings(sweep_interval=0.05, ping_interval=60), store)
    service.reconcile_grace = 0.0  # the sign-out below counts as settled at once
    await service.start()
    try:
        wire = Recorder()
        conn = Connection("u1", "s1", utc_now(), wire)
        service.connected(conn)
        await service.writer.flush_once()
        first_beat = store.docs[(INSTANCES, service.settings.instance_id)]
        started = first_beat[HEARTBEAT_AT]
        store.docs[(SESSIONS, "s1")][SIGNED_OUT_AT] = utc_now()

        async def closed() -> bool:
            return any(m["type"] == "websocket.close" for m in wire.sent)

        await eventually(closed, timeout=5)
        kinds = [m["type"] for m in wire.sent]
        assert kinds == ["websocket.send", "websocket.close"]
        assert wire.sent[1]["code"] == CloseCode.SESSION_EXPIRED
        assert '"type":"timeout"' in wire.sent[0]["text"]
        await asyncio.sleep(0.2)  # more reconcile passes: no second timeout
        assert len(wire.sent) == 2

        async def beat_moved() -> bool:
            doc = store.docs[(INSTANCES, service.settings.instance_id)]
            return bool(doc[HEARTBEAT_AT] > started)

        await eventually(beat_moved, timeout=5)
    finally:
        await service.stop()
    assert STOPPED_AT in store.docs[(INSTANCES, service.settings.instance_id)]


async def test_reconcile_leaves_a_fresh_sign_out_to_its_callback() -> None:
    """A sign-out younger than the reconcile grace is left to its callback or fan-out (which
    sends the right message, e.g. signed_out for a sign-out on demand): the poll sends
    nothing for it yet."""
    store = MemoryStore()
    service = PresenceService(settings(sweep_interval=0.05, ping_interval=60), store)
    await service.start()
    try:
        wire = Recorder()
        conn = Connection("u1", "s1", utc_now(), wire)
        service.connected(conn)
        await service.writer.flush_once()
        store.docs[(SESSIONS, "s1")][SIGNED_OUT_AT] = utc_now()
        await asyncio.sleep(0.5)  # about ten reconcile passes
        assert wire.sent == []
        assert await service.reconcile_once() == 0
    finally:
        await service.stop()


async def test_every_pong_is_written_by_default() -> None:
    service = PresenceService(settings(), MemoryStore())
    conn = Connection("u", "s1", utc_now(), Recorder())
    for _ in range(3):
        service.pong(conn, utc_now())
    assert (service.writer.pongs_received, service.pongs_unwritten) == (3, 0)


async def test_pong_write_interval_writes_a_user_at_most_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With PONG_WRITE_INTERVAL=60 a user's pongs within 60 s cost one write; the next one
    after 60 s is written; a user's state is dropped with the last socket."""
    clock = [1000.0]
    monkeypatch.setattr("gateway.service.time.monotonic", lambda: clock[0])
    service = PresenceService(settings(pong_write_interval=60.0), MemoryStore())
    a1 = Connection("a", "s1", utc_now(), Recorder())
    a2 = Connection("a", "s2", utc_now(), Recorder())
    b = Connection("b", "s3", utc_now(), Recorder())
    for conn in (a1, a2, b):
        service.registry.add(conn)
    service.pong(a1, utc_now())
    service.pong(a2, utc_now())  # same user, within the interval
    service.pong(b, utc_now())
    clock[0] += 30
    service.pong(a1, utc_now())
    assert (service.writer.pongs_received, service.pongs_unwritten) == (2, 2)
    clock[0] += 31
    service.pong(a2, utc_now())
    assert service.writer.pongs_received == 3
    service.disconnected(a1, 1000)
    service.disconnected(a2, 1000)
    assert "a" not in service._pong_written and "b" in service._pong_written
