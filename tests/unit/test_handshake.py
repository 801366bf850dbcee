"""The pending-handshake cap's exception: a connection whose request head is already buffered
is not one of the silent connections the cap is for (``gateway.handshake``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gateway.handshake import request_head_waiting

REQUEST = (
    b"GET /ws/connect/u1?token=abc HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    server.setblocking(False)
    yield server, client
    server.close()
    client.close()


def test_a_silent_connection_has_no_request_head(pair: tuple[socket.socket, socket.socket]) -> None:
    """Nothing sent yet: not waiting to be read, so the cap applies to it."""
    server, _ = pair
    assert not request_head_waiting(server)


def test_half_a_request_head_is_not_enough(pair: tuple[socket.socket, socket.socket]) -> None:
    """A head stopped half-way (a slow or stalled client) counts as waiting."""
    server, client = pair
    client.sendall(REQUEST[:40])
    assert not request_head_waiting(server)


def test_a_complete_head_is_seen_without_being_consumed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The whole head buffered: admitted past the cap, and every byte is still there for
    uvicorn to read; the socket stays open."""
    server, client = pair
    client.sendall(REQUEST)
    assert request_head_waiting(server)
    assert request_head_waiting(server)  # peeking twice sees the same bytes
    assert server.recv(65536) == REQUEST
    assert server.fileno() != -1


def test_no_socket_or_a_closed_one_is_not_waiting(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    assert not request_head_waiting(None)
    client.close()
    assert not request_head_waiting(server)
