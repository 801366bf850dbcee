"""gateway.edge.wsproto_lean: the trimmed uvicorn protocol behaves like uvicorn's, holding less.

The in-process tests run a real uvicorn server with ``LeanWSProtocol`` on a loopback port and a
small ASGI application, and talk to it with the ``websockets`` client.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wsproto.connection import Connection

from gateway.edge.wsproto_lean import FRAMES_EXTENSION, LeanWSProtocol
from gateway.edge.wsproto_parts import SCOPE_KEPT, EventList, Inbox, WriteGate
from gateway.serving import websocket_protocol
from gateway.settings import Settings

MAX_SIZE = 1024


# --- Inbox and WriteGate -------------------------------------------------------------------


async def test_inbox_hands_queued_events_out_in_order() -> None:
    loop = asyncio.get_running_loop()
    inbox = Inbox()
    inbox.put_nowait({"type": "websocket.connect"})
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    assert not inbox.empty()
    assert (await inbox.get(loop))["type"] == "websocket.connect"
    assert (await inbox.get(loop))["type"] == "websocket.disconnect"
    assert inbox.empty()


async def test_inbox_wakes_a_waiting_receiver() -> None:
    loop = asyncio.get_running_loop()
    inbox = Inbox()
    pending = inbox.get(loop)
    assert not pending.done()
    inbox.put_nowait({"type": "websocket.receive", "text": "hi"})
    assert await pending == {"type": "websocket.receive", "text": "hi"}
    assert inbox.empty()


async def test_inbox_keeps_an_event_whose_receiver_was_cancelled() -> None:
    loop = asyncio.get_running_loop()
    inbox = Inbox()
    inbox.get(loop).cancel()
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1012})
    assert await inbox.get(loop) == {"type": "websocket.disconnect", "code": 1012}


async def test_inbox_refuses_a_second_concurrent_receiver() -> None:
    loop = asyncio.get_running_loop()
    inbox = Inbox()
    inbox.get(loop)
    with pytest.raises(RuntimeError):
        inbox.get(loop)


async def test_write_gate_waits_only_while_paused() -> None:
    gate = WriteGate()
    assert gate.is_set()
    await gate.wait()  # open: completes at once
    gate.clear()
    assert not gate.is_set()
    waiter = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    gate.set()
    await asyncio.wait_for(waiter, 1)
    gate.set()  # setting an open gate is harmless
    assert gate.is_set()


def test_event_list_is_a_fifo() -> None:
    events = EventList([1])
    events.append(2)
    assert events.popleft() == 1
    assert events.popleft() == 2
    assert not events


def test_default_implementation_runs_the_lean_protocol() -> None:
    base = {"FIRESTORE_EMULATOR_HOST": "127.0.0.1:1", "GATEWAY_ADMIN_TOKEN": "a" * 32}
    assert websocket_protocol(Settings.from_env(base)) is LeanWSProtocol
    other = Settings.from_env({**base, "WS_IMPLEMENTATION": "websockets-sansio"})
    assert websocket_protocol(other) == "websockets-sansio"


# --- a real server ---------------------------------------------------------------------------


@dataclass
class Echo:
    """An ASGI app that accepts every socket, echoes frames and records what it saw."""

    scopes: list[dict[str, Any]] = field(default_factory=list)
    disconnects: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        self.scopes.append(dict(scope))
        await send({"type": "websocket.accept"})
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                self.disconnects.append(event)
                return
            if event.get("text") == "close me":
                await send({"type": "websocket.close", "code": 4000, "reason": "asked"})
            else:
                await send({"type": "websocket.send", "text": event.get("text")})


class Consumer:
    """A detached socket's consumer: echoes each text event from a worker task, one at a
    time, and reports a backlog beyond ``limit`` events (as ``gateway.web.sockets.SocketSink``)."""

    def __init__(self, protocol: LeanWSProtocol, limit: int, delay: float) -> None:
        self.protocol, self.limit, self.delay = protocol, limit, delay
        self.backlog: list[Any] = []
        self.seen: list[Any] = []
        self.worker: asyncio.Task[None] | None = None
        self.backlog_reported = 0

    def put_event(self, event: Any) -> bool:
        self.seen.append(event)
        if event["type"] == "websocket.receive":
            self.backlog.append(event)
            if self.worker is None:
                self.worker = asyncio.get_running_loop().create_task(self._work())
        full = len(self.backlog) >= self.limit
        self.backlog_reported += full
        return not full

    async def _work(self) -> None:
        while self.backlog:
            event = self.backlog.pop(0)
            if len(self.backlog) == self.limit - 1:
                self.protocol.resume_reading()
            await asyncio.sleep(self.delay)
            await self.protocol.send({"type": "websocket.send", "text": event["text"]})
        self.worker = None


@dataclass
class DetachingEcho:
    """An ASGI app that accepts, waits ``before`` seconds, then detaches the socket to a
    ``Consumer`` and returns."""

    before: float = 0.0
    limit: int = 1000
    delay: float = 0.0
    consumers: list[Consumer] = field(default_factory=list)
    returned: int = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        protocol: LeanWSProtocol = scope["extensions"][FRAMES_EXTENSION]
        await send({"type": "websocket.accept"})
        await asyncio.sleep(self.before)
        consumer = Consumer(protocol, self.limit, self.delay)
        self.consumers.append(consumer)
        protocol.detach(consumer)
        self.returned += 1


@dataclass
class Running:
    server: uvicorn.Server
    app: Any
    url: str

    def protocols(self) -> list[LeanWSProtocol]:
        return [p for p in self.server.server_state.connections if isinstance(p, LeanWSProtocol)]


@asynccontextmanager
async def serve(trusted: str, app: Any = None) -> AsyncIterator[Running]:
    app = Echo() if app is None else app
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ws=LeanWSProtocol,
        ws_max_size=MAX_SIZE,
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        lifespan="off",
        log_config=None,
        access_log=False,
        forwarded_allow_ips=trusted,
    )
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)  # what Server.serve() sets up
    await server.startup()
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(server, app, f"ws://127.0.0.1:{port}/ws/connect/u1?token=secret")
    finally:
        server.should_exit = True
        await server.shutdown()


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    # Loopback is trusted to send X-Forwarded-* (uvicorn's default, written out).
    async with serve("127.0.0.1") as server:
        yield server


async def _wait_for(predicate: Any) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 2 s")


async def test_echo_and_the_handshake_state_is_dropped(running: Running) -> None:
    async with connect(running.url, compression=None) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        [protocol] = running.protocols()
        # wsproto's frame connection directly, without the h11 handshake behind it
        assert type(protocol.conn) is Connection
        assert isinstance(protocol.conn._events, EventList)
        # the scope the application holds is trimmed in place: no headers, no token
        assert set(protocol.scope) <= set(SCOPE_KEPT)
        assert protocol.scope["path"] == "/ws/connect/u1"
        # every attribute uvicorn sets is a slot: no instance dict to grow
        assert vars(protocol) == {}
        # a message taken at once by the waiting application leaves reading on
        assert not protocol.read_paused and protocol.transport.is_reading()
        # the application saw the full scope before accepting
        assert running.app.scopes[0]["query_string"] == b"token=secret"
    await _wait_for(lambda: running.app.disconnects)
    assert running.app.disconnects[0]["code"] == 1000


async def test_proxy_headers_are_applied_without_the_middleware_frame(running: Running) -> None:
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    async with connect(running.url, compression=None, additional_headers=headers) as ws:
        await ws.send("x")
        await ws.recv()
        [protocol] = running.protocols()
        assert not isinstance(protocol.app, ProxyHeadersMiddleware)
    scope = running.app.scopes[0]
    assert scope["client"][0] == "203.0.113.7"
    assert scope["scheme"] == "wss"


async def test_untrusted_proxy_headers_are_ignored() -> None:
    headers = {"X-Forwarded-For": "203.0.113.7"}
    async with serve("192.0.2.1") as running:
        async with connect(running.url, compression=None, additional_headers=headers) as ws:
            await ws.send("x")
            await ws.recv()
        assert running.app.scopes[0]["client"][0] == "127.0.0.1"


async def test_too_large_message_closes_with_1009(running: Running) -> None:
    async with connect(running.url, compression=None, max_size=None) as ws:
        await ws.send("x" * (MAX_SIZE + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    await _wait_for(lambda: running.app.disconnects)
    assert running.app.disconnects[0]["code"] == 1009


async def test_application_close_reaches_the_client(running: Running) -> None:
    async with connect(running.url, compression=None) as ws:
        await ws.send("close me")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "asked")


async def test_send_waits_while_the_transport_is_paused(running: Running) -> None:
    async with connect(running.url, compression=None) as ws:
        await ws.send("x")
        await ws.recv()
        [protocol] = running.protocols()
        protocol.pause_writing()
        sending = asyncio.ensure_future(protocol.send({"type": "websocket.send", "text": "late"}))
        await asyncio.sleep(0.05)
        assert not sending.done()
        protocol.resume_writing()
        await asyncio.wait_for(sending, 1)
        assert await ws.recv() == "late"


async def test_many_frames_in_one_read_are_all_delivered(running: Running) -> None:
    async with connect(running.url, compression=None) as ws:
        for i in range(50):
            await ws.send(str(i))
        assert [await ws.recv() for _ in range(50)] == [str(i) for i in range(50)]
        [protocol] = running.protocols()
        # whatever queued up while the application was busy, reading resumed once it was taken
        await _wait_for(lambda: not protocol.read_paused)
        assert protocol.transport.is_reading()


async def test_shutdown_closes_open_sockets_with_1012(running: Running) -> None:
    async with connect(running.url, compression=None) as ws:
        await ws.send("x")
        await ws.recv()
        [protocol] = running.protocols()
        protocol.shutdown()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    await _wait_for(lambda: running.app.disconnects)
    assert running.app.disconnects[0]["code"] == 1012


def _masked_text(text: str) -> bytes:
    """One final, masked client text frame (payloads under 126 bytes)."""
    payload = text.encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + body


async def test_frames_arriving_together_pause_reading_until_taken(running: Running) -> None:
    """Several messages in one read: the first goes to the waiting application, the rest queue
    up with reading paused (uvicorn's back-pressure), and reading resumes once all are taken."""
    host, port = running.url.removeprefix("ws://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws/connect/u1 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    [protocol] = running.protocols()
    pauses = 0
    pause = protocol.transport.pause_reading

    def counting_pause() -> None:
        nonlocal pauses
        pauses += 1
        pause()

    protocol.transport.pause_reading = counting_pause  # type: ignore[method-assign]
    writer.write(b"".join(_masked_text(str(i)) for i in range(20)))
    echoed = [(await reader.readexactly(2 + len(str(i))))[2:].decode() for i in range(20)]
    assert echoed == [str(i) for i in range(20)]
    assert pauses >= 1
    await _wait_for(lambda: not protocol.read_paused)
    assert protocol.transport.is_reading()
    writer.close()


# --- a detached socket (no application task once accepted) -----------------------------------


async def test_a_detached_socket_stays_open_with_no_task_and_its_consumer_gets_every_event() -> (
    None
):
    app = DetachingEcho()
    async with serve("127.0.0.1", app) as running, connect(running.url, compression=None) as ws:
        await _wait_for(lambda: app.returned == 1)
        # the application returned, the socket did not close, and no task is left for it
        await _wait_for(lambda: not running.server.server_state.tasks)
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.close()
        [consumer] = app.consumers
        await _wait_for(lambda: consumer.seen[-1]["type"] == "websocket.disconnect")
        # the client's close frame, then the transport's loss (the consumer ignores the second)
        assert [e.get("text", e.get("code")) for e in consumer.seen][:2] == ["hello", 1000]


async def test_events_queued_before_detaching_are_handed_over_in_order() -> None:
    app = DetachingEcho(before=0.3)
    async with serve("127.0.0.1", app) as running, connect(running.url, compression=None) as ws:
        for i in range(5):
            await ws.send(str(i))
        assert [await ws.recv() for _ in range(5)] == [str(i) for i in range(5)]
        [protocol] = running.protocols()
        # reading paused while they waited in the inbox, and resumed when handed over
        assert not protocol.read_paused and protocol.transport.is_reading()


async def test_a_consumer_backlog_pauses_reading_until_it_drains() -> None:
    app = DetachingEcho(limit=3, delay=0.02)
    async with serve("127.0.0.1", app) as running, connect(running.url, compression=None) as ws:
        await _wait_for(lambda: app.returned == 1)
        for i in range(30):
            await ws.send(str(i))
        assert [await ws.recv() for _ in range(30)] == [str(i) for i in range(30)]
        [consumer] = app.consumers
        assert consumer.backlog_reported >= 1  # the backlog was reached, reading paused
        [protocol] = running.protocols()
        await _wait_for(lambda: not protocol.read_paused)
        assert protocol.transport.is_reading()


async def test_shutdown_reaches_a_detached_consumer_as_1012() -> None:
    app = DetachingEcho()
    async with serve("127.0.0.1", app) as running, connect(running.url, compression=None) as ws:
        await _wait_for(lambda: app.returned == 1)
        [protocol] = running.protocols()
        protocol.shutdown()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        [consumer] = app.consumers
        assert consumer.seen[0] == {"type": "websocket.disconnect", "code": 1012}
