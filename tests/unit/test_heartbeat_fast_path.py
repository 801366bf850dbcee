"""The heartbeat's fast paths: the ping frame encoded once (``registry.text_frame``) and the
pong taken synchronously by ``sockets.HeartbeatSink``, which declines everything else so that
it reaches the socket's usual handler."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.messages import utc_now
from gateway.registry import Connection, text_frame
from gateway.service import PresenceService
from gateway.settings import Settings
from gateway.sockets import HeartbeatSink
from gateway.store import MemoryStore


async def _no_send(message: dict[str, Any]) -> None:
    raise AssertionError(f"nothing is sent on the fast path: {message}")


def sink(**overrides: Any) -> tuple[PresenceService, HeartbeatSink]:
    settings = Settings(admin_tokens=("a" * 20,), project_id="demo-unit", **overrides)
    service = PresenceService(settings, MemoryStore())
    conn = Connection("u1", "s1", utc_now(), _no_send)
    return service, HeartbeatSink(service, conn)


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


@pytest.mark.parametrize("pong", ['{"type":"pong"}', '{"type": "pong", "timestamp": "x"}'])
async def test_a_pong_is_taken_and_queued_for_firestore(pong: str) -> None:
    service, heartbeat = sink()
    assert heartbeat.take_text(pong) is True
    assert service.writer.pongs_received == 1
    assert service.writer.buffered == 1


@pytest.mark.parametrize(
    "text",
    ['{"type":"ping"}', '{"type":"message","data":1}', "not json", "[]", '{"type":"join"}'],
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
