"""The socket edge's consumer, ``sockets.SocketSink``: the ping frame encoded once
(``framing.text_frame``), the pong taken synchronously (everything else declined to the usual
handler), and every other event handled in order by a task that exists only while events wait,
with reading paused beyond a backlog."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.edge.framing import text_frame
from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.protocol.messages import utc_now
from gateway.protocol.session import Session
from gateway.storage.store import MemoryStore
from gateway.web.sockets import MAX_BACKLOG, SocketSink
from tests.edge_fakes import FrameEdge
from tests.support import unit_settings


async def _no_send(message: dict[str, Any]) -> None:
    raise AssertionError(f"nothing is sent on the fast path: {message}")


def sink(**overrides: Any) -> tuple[PresenceService, SocketSink]:
    settings = unit_settings(**overrides)
    service = PresenceService(settings, MemoryStore())
    conn = Connection("u1", "s1", utc_now(), _no_send, Session(service.session_limits))
    return service, SocketSink(service, conn)


@pytest.mark.parametrize(
    ("size", "header"),
    [(0, b"\x81\x00"), (125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"), (70_000, b"\x81\x7f")],
)
def test_text_frame_is_a_final_unmasked_text_frame_with_the_right_length(
    size: int, header: bytes
) -> None:
    frame = text_frame("x" * size)
    assert frame.startswith(header)
    assert frame.endswith(b"x" * size)
    if size >= 1 << 16:
        assert frame[2:10] == size.to_bytes(8, "big")


async def test_the_clients_pong_is_taken_and_queued_for_firestore() -> None:
    service, heartbeat = sink()
    assert heartbeat.take_text('{"type":"pong"}') is True
    assert service.writer.pongs_received == 1
    assert service.writer.buffered == 1


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"ping"}',
        '{"type":"message","data":1}',
        "not json",
        "[]",
        '{"type":"join"}',
        # another spelling of a pong: decoded once, by the usual handler, which takes it
        '{"type": "pong", "timestamp": "x"}',
    ],
)
async def test_anything_else_is_declined_for_the_usual_handler(text: str) -> None:
    service, heartbeat = sink()
    assert heartbeat.take_text(text) is False
    assert service.writer.pongs_received == 0


async def test_pongs_over_the_rate_limit_are_declined_so_the_socket_is_closed_as_a_flood() -> None:
    """The bucket allows a burst of twice the rate; beyond it the sink declines, and the
    usual handler (which counts the frame again) closes the socket with 4429."""
    service, heartbeat = sink(max_messages_per_second=5.0)
    taken = [heartbeat.take_text('{"type":"pong"}') for _ in range(20)]
    assert taken[:10] == [True] * 10
    assert taken[10:] == [False] * 10
    assert service.writer.pongs_received == 10


async def test_a_closed_socket_is_never_taken() -> None:
    service, heartbeat = sink()
    heartbeat.conn.closed = True
    assert heartbeat.take_text('{"type":"pong"}') is False


class Recorder:
    """An ASGI send that records frames, optionally slowly."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sent: list[dict[str, Any]] = []
        self.delay = delay

    async def __call__(self, message: dict[str, Any]) -> None:
        await asyncio.sleep(self.delay)
        self.sent.append(message)


def detached(send: Recorder, **overrides: Any) -> tuple[PresenceService, SocketSink, FrameEdge]:
    settings = unit_settings(**overrides)
    service = PresenceService(settings, MemoryStore())
    conn = Connection("u1", "s1", utc_now(), send, Session(service.session_limits))
    edge = FrameEdge()
    conn.edge = edge
    service.connected(conn)
    return service, SocketSink(service, conn), edge


def receive(text: str) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": text}


async def _settled(sink: SocketSink) -> None:
    for _ in range(500):
        if sink.worker is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the sink's worker did not finish within 5 s")


async def test_events_are_answered_in_order_and_no_task_is_left_once_handled() -> None:
    send = Recorder()
    _, sink, _ = detached(send)
    for i in range(3):
        assert sink.put_event(receive(f'{{"type":"ping","timestamp":"{i}"}}')) is True
    sink.put_event(receive('{"type":"message","data":1,"id":"m1"}'))
    await _settled(sink)
    kinds = [m["text"].split('"')[3] for m in send.sent]
    assert kinds == ["pong", "pong", "pong", "ack"]
    assert sink.worker is None and sink.backlog is None


async def test_a_disconnect_with_nothing_in_flight_is_handled_at_once() -> None:
    service, sink, _ = detached(Recorder())
    assert service.registry.total_connections == 1
    sink.put_event({"type": "websocket.disconnect", "code": 1001})
    # synchronously: no task was needed
    assert sink.finished and sink.worker is None
    assert service.registry.total_connections == 0
    # a later event (the transport's loss after the close frame) is ignored
    sink.put_event({"type": "websocket.disconnect", "code": 1005})
    assert service.registry.total_connections == 0


async def test_a_disconnect_behind_queued_events_waits_its_turn() -> None:
    send = Recorder(delay=0.01)
    service, sink, _ = detached(send)
    sink.put_event(receive('{"type":"ping"}'))
    sink.put_event({"type": "websocket.disconnect", "code": 1000})
    assert not sink.finished
    await _settled(sink)
    assert len(send.sent) == 1 and sink.finished
    assert service.registry.total_connections == 0


async def test_a_backlog_asks_the_edge_to_pause_and_resumes_it_once_drained() -> None:
    send = Recorder(delay=0.001)
    _, sink, edge = detached(send)
    answers = [sink.put_event(receive('{"type":"ping"}')) for _ in range(MAX_BACKLOG + 5)]
    assert answers[: MAX_BACKLOG - 1] == [True] * (MAX_BACKLOG - 1)
    assert answers[MAX_BACKLOG - 1 :] == [False] * 6
    await _settled(sink)
    assert len(send.sent) == MAX_BACKLOG + 5
    assert edge.resumed == 1


async def test_a_flood_is_closed_with_4429_and_the_socket_finished() -> None:
    send = Recorder()
    service, sink, _ = detached(send, max_messages_per_second=2.0)
    for _ in range(10):
        sink.put_event(receive('{"type":"ping"}'))
    await _settled(sink)
    assert send.sent[-1] == {"type": "websocket.close", "code": 4429, "reason": "too many messages"}
    assert sink.finished and service.registry.total_connections == 0


async def test_a_failing_handler_closes_the_socket_with_1011(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send = Recorder()
    service, sink, _ = detached(send)

    def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    # A bug in the gateway, not the client's fault, must not leave the socket half-handled.
    monkeypatch.setattr("gateway.protocol.session.decode_frame", broken)
    sink.put_event(receive('{"type":"ping"}'))
    await _settled(sink)
    assert send.sent[-1]["code"] == 1011
    assert sink.finished and service.registry.total_connections == 0
