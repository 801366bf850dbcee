"""The service's own loops and decisions with the in-memory store (no sockets, no Firestore)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.protocol.closes import CloseCode
from gateway.protocol.messages import utc_now
from gateway.settings import Settings
from gateway.storage.schema import (
    ACKED_OFFSET,
    HEARTBEAT_AT,
    INSTANCES,
    INTERNAL_URL,
    LAST_PONG_AT,
    MEMBERS,
    SESSIONS,
    SIGNED_OUT_AT,
    STOPPED_AT,
    STREAM_ACKS,
)
from gateway.storage.store import MemoryStore
from tests.edge_fakes import FrameEdge
from tests.support import eventually, unit_settings


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def texts(self) -> list[str]:
        return [m["text"] for m in self.sent if m["type"] == "websocket.send"]


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


async def test_a_heartbeat_restores_a_lost_registration() -> None:
    """Each heartbeat writes the instance's internal URL again: the sweep finds an instance's
    address in the registry only, so a start-up registration that was lost heals at once."""
    store = MemoryStore()
    service = PresenceService(settings(sweep_interval=0.05, ping_interval=60), store)
    await service.start()
    try:
        await service.writer.flush_once()
        key = (INSTANCES, service.settings.instance_id)
        del store.docs[key]

        async def registered() -> bool:
            return store.docs.get(key, {}).get(INTERNAL_URL) == service.settings.internal_url

        await eventually(registered, timeout=5)
    finally:
        await service.stop()


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
    """Without PONG_WRITE_INTERVAL the pong answering each ping is written."""
    service = PresenceService(settings(), MemoryStore())
    conn = Connection("u", "s1", utc_now(), Recorder())
    for _ in range(3):
        service.heartbeat.generation += 1  # a new ping
        service.pong(conn, utc_now())
    assert (service.writer.pongs_received, service.pongs_unwritten) == (3, 0)


async def test_pongs_nobody_asked_for_cost_no_write() -> None:
    """A socket that sends many pongs for one ping costs one write: while that write is
    pending the others only move its time (free), once it is committed they are counted as
    unrequested and dropped; another socket's pong in the same round is written."""
    store = MemoryStore()
    service = PresenceService(settings(), store)
    flooder = Connection("u", "s1", utc_now(), Recorder())
    other = Connection("v", "s2", utc_now(), Recorder())
    service.heartbeat.generation += 1
    for _ in range(10):
        service.pong(flooder, utc_now())
    service.pong(other, utc_now())
    assert (service.writer.buffered, service.pongs_unrequested) == (2, 0)
    last = utc_now()
    service.pong(flooder, last)
    assert await service.writer.flush_once()
    assert store.docs[(MEMBERS, "u")][LAST_PONG_AT] == last
    for _ in range(9):
        service.pong(flooder, utc_now())
    assert (service.writer.buffered, service.pongs_unrequested) == (0, 9)
    assert len([w for c in store.commits for w in c if w.doc_id == "u"]) == 1
    service.heartbeat.generation += 1
    service.pong(flooder, utc_now())
    assert service.writer.buffered == 1


async def test_pong_write_interval_writes_a_user_at_most_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With PONG_WRITE_INTERVAL=60 a user's pongs within 60 s cost one write; the next one
    after 60 s is written; a user's state is dropped with the last socket."""
    clock = [1000.0]
    monkeypatch.setattr("gateway.instance.service.time.monotonic", lambda: clock[0])
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
    service.heartbeat.generation += 1  # the next ping round
    service.pong(a1, utc_now())
    assert (service.writer.pongs_received, service.pongs_unwritten) == (2, 2)
    clock[0] += 31
    service.heartbeat.generation += 1
    service.pong(a2, utc_now())
    assert service.writer.pongs_received == 3
    service.disconnected(a1, 1000)
    service.disconnected(a2, 1000)
    assert "a" not in service._pong_written and "b" in service._pong_written


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
    from gateway.instance import heartbeat as heartbeat_module

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

        from gateway.instance.auth import Identity

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
    from gateway.storage.store import sign_out_writes

    store = CountingStore()
    await store.commit(sign_out_writes("u7", [], datetime.fromtimestamp(2_000, UTC)))
    service = PresenceService(settings(), store, verifier=StubVerifier())
    outcomes = await asyncio.gather(
        *(service.admission.admit(f"u{i}", f"u{i}:1000") for i in range(50)), return_exceptions=True
    )
    refused = [i for i, o in enumerate(outcomes) if isinstance(o, AuthError)]
    assert refused == [7]
    assert isinstance(outcomes[7], AuthError) and outcomes[7].close_code == 4401
    assert store.member_batches == [[f"u{i}" for i in range(50)]]


async def test_acks_are_written_at_most_once_a_second_per_user_and_the_last_one_lands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood of stream_acks costs one position write per user per ACK_WRITE_INTERVAL: the
    first at once, the latest of the window when it ends; the stored position is the last."""
    monkeypatch.setattr("gateway.instance.stream_delivery.ACK_WRITE_INTERVAL", 0.2)
    store = MemoryStore()
    service = PresenceService(settings(), store)
    conn = Connection("u", "s1", utc_now(), Recorder())
    for offset in range(1, 20):
        service.streams.ack(conn, "e", offset)
    await service.writer.flush_once()
    assert store.docs[(STREAM_ACKS, "u")][ACKED_OFFSET] == 1
    assert service.streams.acks_coalesced == 18

    async def latest_written() -> bool:
        await service.writer.flush_once()
        return bool(store.docs[(STREAM_ACKS, "u")][ACKED_OFFSET] == 19)

    await eventually(latest_written, timeout=5)
    ack_writes = [w for commit in store.commits for w in commit if w.collection == STREAM_ACKS]
    assert len(ack_writes) == 2
    await asyncio.sleep(0.5)  # the window after the trailing write ends quietly
    assert service.streams._acks_held == {}


async def test_held_acks_are_written_when_the_instance_stops() -> None:
    """An ack held in its window is not lost at shutdown."""
    store = MemoryStore()
    service = PresenceService(settings(), store)
    conn = Connection("u", "s1", utc_now(), Recorder())
    service.streams.ack(conn, "e", 1)
    service.streams.ack(conn, "e", 2)
    service.streams.flush_acks()
    await service.writer.flush_once()
    assert store.docs[(STREAM_ACKS, "u")][ACKED_OFFSET] == 2


async def test_a_held_ack_is_written_when_a_socket_of_the_user_closes() -> None:
    """A device that acks twice and closes at once leaves its last position stored, so another
    device connecting without a position resumes after it, not a second earlier."""
    store = MemoryStore()
    service = PresenceService(settings(), store)
    conn = Connection("u", "s1", utc_now(), Recorder())
    service.connected(conn)
    service.streams.ack(conn, "e", 1)
    service.streams.ack(conn, "e", 2)
    service.disconnected(conn, 1000)
    await service.writer.flush_once()
    assert store.docs[(STREAM_ACKS, "u")][ACKED_OFFSET] == 2


class PausedEdge(FrameEdge):
    """An edge whose client is not reading: it takes no frame (the lean edge skips it)."""

    def ready(self) -> bool:
        return False

    def write_frame(self, frame: bytes) -> bool:
        return False


async def test_a_message_is_encoded_once_and_written_to_every_edge_that_takes_it() -> None:
    """A broadcast writes one pre-encoded frame to each socket whose edge takes frames (the
    same bytes object for all), and sends the text the ordinary way to the others: a socket
    without such an edge, and one whose client is not reading."""
    service = PresenceService(settings(), MemoryStore())
    edges = []
    for i in range(3):
        conn = Connection(f"u{i}", f"s{i}", utc_now(), Recorder())
        conn.edge = edge = FrameEdge()
        edges.append(edge)
        service.connected(conn)
    plain_wire, paused_wire = Recorder(), Recorder()
    service.connected(Connection("plain", "sp", utc_now(), plain_wire))
    paused = Connection("paused", "sq", utc_now(), paused_wire)
    paused.edge = PausedEdge()
    service.connected(paused)
    users, delivered = await service.broadcast_text('{"type":"news"}', None)
    assert delivered == 5 and len(users) == 5
    frames = [edge.frames[0] for edge in edges]
    assert frames[0] is frames[1] is frames[2] and frames[0].endswith(b'{"type":"news"}')
    assert plain_wire.texts() == paused_wire.texts() == ['{"type":"news"}']


async def test_a_message_does_not_overtake_an_earlier_send_still_waiting() -> None:
    """While a send to the socket waits for its client, the next message is queued behind it
    (the ordinary way), never written straight to the edge ahead of it."""
    service = PresenceService(settings(), MemoryStore())
    wire = Recorder()
    conn = Connection("u", "s", utc_now(), wire)
    conn.edge = edge = FrameEdge()
    service.connected(conn)
    conn.waiting = 1  # an earlier send_text is waiting for the client
    assert await service.send_text("u", '{"n":2}') == 1
    assert edge.frames == [] and wire.texts() == ['{"n":2}']
    conn.waiting = 0
    assert await service.send_text("u", '{"n":3}') == 1
    assert edge.frames[-1].endswith(b'{"n":3}')
