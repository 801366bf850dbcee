"""The handshake cap's bookkeeping (gateway.edge.handshake.HandshakeLimits), on a fake clock: it
counts only connections silent past the grace, closes the oldest of those, and spares one
whose request bytes wait unread; and the protocol's limit on the request head, on a transport
without a socket. Real sockets: tests/e2e/test_handshakes.py."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.edge.handshake import (
    MAX_HEAD_BYTES,
    BoundedHttpToolsProtocol,
    HandshakeLimits,
    bounded_http,
)


class Conn:
    """A waiting connection: whether its bytes wait unread, and whether the cap closed it."""

    def __init__(self, unread: bool = False) -> None:
        self.unread = unread
        self.closed = False

    def has_unread_request(self) -> bool:
        return self.unread

    def close_silent(self) -> None:
        self.closed = True


def arrive(limits: HandshakeLimits, count: int, now: float, unread: bool = False) -> list[Conn]:
    conns = [Conn(unread) for _ in range(count)]
    for conn in conns:
        limits.arrived(conn, now)
    return conns


def test_connections_within_the_grace_are_never_closed_however_many() -> None:
    """A burst ten times the cap, all arriving within the grace, closes none."""
    limits = HandshakeLimits(timeout=10, max_pending=5, grace=1.0)
    burst = arrive(limits, 50, now=0.0) + arrive(limits, 50, now=0.9)
    assert not any(c.closed for c in burst)
    assert limits.pending == 100


def test_beyond_the_cap_the_oldest_silent_connections_are_closed() -> None:
    """Once connections have been silent past the grace, a new arrival closes the oldest of
    them down to the cap; the newest stay, and so does the arrival."""
    limits = HandshakeLimits(timeout=10, max_pending=5, grace=1.0)
    old = arrive(limits, 8, now=0.0)
    (new,) = arrive(limits, 1, now=1.5)
    assert [c.closed for c in old] == [True] * 3 + [False] * 5
    assert not new.closed
    assert limits.evicted == 3
    assert limits.pending == 6


def test_a_connection_whose_request_waits_unread_is_spared() -> None:
    """A candidate whose bytes are in its receive buffer (the loop has not read them yet) is
    not closed but given another grace; a silent one behind it goes instead."""
    limits = HandshakeLimits(timeout=10, max_pending=1, grace=1.0)
    (unread,) = arrive(limits, 1, now=0.0, unread=True)
    silent = arrive(limits, 2, now=0.1)
    arrive(limits, 1, now=1.5)
    assert not unread.closed
    assert [c.closed for c in silent] == [True, False]
    assert unread in limits.recent


def test_finished_handshakes_leave_the_count() -> None:
    """A connection whose request arrived no longer counts, counted yet or not."""
    limits = HandshakeLimits(timeout=10, max_pending=2, grace=1.0)
    first, second = arrive(limits, 2, now=0.0)
    (third,) = arrive(limits, 1, now=1.5)
    limits.forget(first)
    limits.forget(third)
    assert limits.pending == 1
    arrive(limits, 1, now=3.0)
    assert not first.closed and not second.closed


def test_no_cap_closes_nothing() -> None:
    """WS_MAX_PENDING_HANDSHAKES=0: connections are tracked for the deadline only."""
    limits = HandshakeLimits(timeout=10, max_pending=0, grace=1.0)
    conns = arrive(limits, 10, now=0.0) + arrive(limits, 1, now=5.0)
    assert not any(c.closed for c in conns)


def test_unread_request_bytes_are_seen_in_the_receive_buffer() -> None:
    """A TCP connection's unread bytes are seen (FIONREAD) before anything reads them."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            transport = SimpleNamespace(get_extra_info=lambda name: accepted)
            conn = cast(Any, SimpleNamespace(transport=transport))
            assert not BoundedHttpToolsProtocol.has_unread_request(conn)
            client.sendall(b"GET / HTTP/1.1\r\n")
            deadline = time.monotonic() + 5
            while not BoundedHttpToolsProtocol.has_unread_request(conn):
                assert time.monotonic() < deadline, "the bytes never showed"
                time.sleep(0.01)


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed (no socket behind it)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def request(target_bytes: int) -> bytes:
    return (
        f"GET /x?pad={'p' * target_bytes} HTTP/1.1\r\nHost: a\r\nX-Extra: value\r\n\r\n"
    ).encode()


async def feed(data: bytes, piece: int, keep_alive: float = 5) -> tuple[Transport, list[str], Any]:
    """A bounded protocol fed ``data`` in pieces of ``piece`` bytes: its transport, the paths the
    application saw, and the protocol."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    protocol_class = bounded_http(timeout=10, max_pending=10)
    config = Config(
        app=app,
        http=protocol_class,
        lifespan="off",
        log_config=None,
        timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
    )
    protocol = protocol_class(config, ServerState(), {})
    transport = Transport()
    protocol.connection_made(transport)
    for start in range(0, len(data), piece):
        protocol.data_received(data[start : start + piece])
        if transport.closed:
            break
    await asyncio.sleep(0)  # the application's task
    return transport, seen, protocol


async def test_a_head_within_the_limit_reaches_the_application_however_it_is_read() -> None:
    """A 16,000-byte request target, in one read or in 100-byte reads, is answered by the app,
    and its arrival ends the handshake's deadline."""
    for piece in (1 << 20, 100):
        transport, seen, protocol = await feed(request(16_000), piece)
        assert seen == ["/x"]
        assert transport.written.startswith(b"HTTP/1.1 204 ")
        assert protocol._deadline is None and protocol.limits.pending == 0


async def test_a_head_over_the_limit_is_answered_400_however_it_is_read() -> None:
    """A target past MAX_HEAD_BYTES, in one read or in 100-byte reads, never reaches the app:
    uvicorn's 400 and the connection closed."""
    for piece in (1 << 20, 100):
        transport, seen, _ = await feed(request(MAX_HEAD_BYTES), piece)
        assert seen == []
        assert transport.written.startswith(b"HTTP/1.1 400 ")
        assert transport.written.endswith(b"Invalid HTTP request received.")
        assert transport.closed


async def test_many_small_headers_count_towards_the_limit() -> None:
    """5,000 empty headers (no long value anywhere) are over the limit too."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"a:\r\n" * 5000 + b"\r\n"
    transport, seen, _ = await feed(head, 1 << 20)
    assert seen == [] and transport.written.startswith(b"HTTP/1.1 400 ")


async def test_an_http_1_1_request_without_host_is_answered_400_as_h11_did() -> None:
    """HTTP/1.1 without Host is refused (RFC 9112); HTTP/1.0 without it reaches the app."""
    transport, seen, _ = await feed(b"GET / HTTP/1.1\r\n\r\n", 1 << 20)
    assert seen == [] and transport.written.startswith(b"HTTP/1.1 400 ")
    transport, seen, _ = await feed(b"GET / HTTP/1.0\r\n\r\n", 1 << 20)
    assert seen == ["/"] and transport.written.startswith(b"HTTP/1.1 204 ")


async def test_keep_alive_closes_a_timeout_after_the_last_response() -> None:
    """One timer per idle spell: a request inside the keep-alive timeout moves the close to a
    timeout after its own response; with none, the connection closes a timeout after."""
    get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    transport, seen, protocol = await feed(get, 1 << 20, keep_alive=0.2)
    await asyncio.sleep(0.12)
    protocol.data_received(get)
    await asyncio.sleep(0.12)  # 0.24 s after the first response, 0.12 s after the second
    assert seen == ["/", "/"] and not transport.closed
    await asyncio.sleep(0.2)
    assert transport.closed
