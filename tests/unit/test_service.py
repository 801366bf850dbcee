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
    service.endings.reconcile_grace = 0.0  # the sign-out below counts as settled at once
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
        assert await service.endings.reconcile_once() == 0
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


class FrameEdge:
    """A socket edge that takes pre-encoded frames (as gateway.wsproto_lean does)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


async def test_a_socket_is_pinged_at_admission_without_waiting_for_the_round() -> None:
    """first_ping sends a ping at once (PING_INTERVAL an hour away), through the edge's frame
    path when there is one and as an ASGI send otherwise; both are counted as pings sent."""
    service = PresenceService(settings(ping_interval=3600), MemoryStore())
    wire = Recorder()
    plain = Connection("u1", "s1", utc_now(), wire)
    service.connected(plain)
    assert await service.heartbeat.first_ping(plain)
    assert [m["type"] for m in wire.sent] == ["websocket.send"]
    assert '"type":"ping"' in wire.sent[0]["text"]
    edged = Connection("u2", "s2", utc_now(), Recorder())
    edged.edge = edge = FrameEdge()
    service.connected(edged)
    assert await service.heartbeat.first_ping(edged)
    assert len(edge.frames) == 1 and b'"type":"ping"' in edge.frames[0]
    assert service.heartbeat.pings_sent == 2


async def test_admissions_share_a_recent_ping_and_a_round_makes_a_new_one() -> None:
    """Sockets admitted within ADMISSION_PING_REUSE get the same encoded frame (a storm encodes
    one a second); a round always encodes its own, which later admissions then reuse."""
    service = PresenceService(settings(ping_interval=3600), MemoryStore())
    edges = []
    for i in range(3):
        conn = Connection(f"u{i}", f"s{i}", utc_now(), Recorder())
        conn.edge = edge = FrameEdge()
        edges.append(edge)
        service.connected(conn)
        await service.heartbeat.first_ping(conn)
    assert edges[0].frames[0] is edges[1].frames[0] is edges[2].frames[0]
    await service.heartbeat.ping_round()
    round_frame = edges[0].frames[1]
    assert round_frame is not edges[0].frames[0]
    late = Connection("late", "s9", utc_now(), Recorder())
    late.edge = late_edge = FrameEdge()
    service.connected(late)
    await service.heartbeat.first_ping(late)
    assert late_edge.frames[0] is round_frame


async def test_a_stale_ping_is_not_reused_for_an_admission(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ADMISSION_PING_REUSE the admission ping is encoded afresh (its timestamp is now)."""
    from gateway import heartbeat as heartbeat_module

    service = PresenceService(settings(ping_interval=3600), MemoryStore())
    first = Connection("u1", "s1", utc_now(), Recorder())
    first.edge = first_edge = FrameEdge()
    await service.heartbeat.first_ping(first)
    monkeypatch.setattr(heartbeat_module, "ADMISSION_PING_REUSE", 0.0)
    await asyncio.sleep(0.01)
    second = Connection("u2", "s2", utc_now(), Recorder())
    second.edge = second_edge = FrameEdge()
    await service.heartbeat.first_ping(second)
    assert second_edge.frames[0] is not first_edge.frames[0]


class StubVerifier:
    """Accepts any token as ``uid:auth_time`` (epoch seconds)."""

    async def verify(self, token: str) -> Any:
        from datetime import UTC, datetime

        from gateway.auth import Identity

        uid, _, auth_time = token.partition(":")
        return Identity(uid, datetime.fromtimestamp(int(auth_time), UTC), 4e9)

    async def revoke(self, uid: str) -> bool:
        return True


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.member_batches: list[list[str]] = []

    async def get_members(self, user_ids: Any, timeout: float) -> dict[str, dict[str, Any]]:
        self.member_batches.append(list(user_ids))
        return await super().get_members(user_ids, timeout)


async def test_connects_waiting_at_once_share_one_member_read_and_revocation_holds() -> None:
    """A storm's admissions read their member records in one batch; a user signed out after
    the token's sign-in is still refused (4401), the others admitted."""
    from datetime import UTC, datetime

    from gateway.exceptions import AuthError
    from gateway.store import sign_out_writes

    store = CountingStore()
    await store.commit(sign_out_writes("u7", [], datetime.fromtimestamp(2_000, UTC)))
    service = PresenceService(settings(), store, verifier=StubVerifier())
    outcomes = await asyncio.gather(
        *(service.admit(f"u{i}", f"u{i}:1000") for i in range(50)), return_exceptions=True
    )
    refused = [i for i, o in enumerate(outcomes) if isinstance(o, AuthError)]
    assert refused == [7]
    assert isinstance(outcomes[7], AuthError) and outcomes[7].close_code == 4401
    assert store.member_batches == [[f"u{i}" for i in range(50)]]
