"""Half-open handshakes over real sockets: TCP connections that never send their request are
dropped after WS_HANDSHAKE_TIMEOUT, at most WS_MAX_PENDING_HANDSHAKES wait at once, and a
legitimate client is served meanwhile."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest
from websockets.asyncio.client import connect

from tests.support import UNIT, GatewayProc, TokenMinter, loads, start_gateway

pytestmark = pytest.mark.e2e

HALF_OPEN = 2000


def uid() -> str:
    return f"h-{uuid.uuid4().hex[:12]}"


def rss_mb(gateway: GatewayProc) -> float:
    assert gateway.process.popen is not None
    return float(psutil.Process(gateway.process.popen.pid).memory_info().rss) / 2**20


@pytest.fixture
def short_deadline(
    firestore_host: str, project_id: str, minter: TokenMinter
) -> Iterator[GatewayProc]:
    proc = start_gateway(
        firestore_host,
        project_id,
        minter,
        WS_HANDSHAKE_TIMEOUT="3",
        WS_MAX_CONNECTS_PER_MINUTE="0",
        PING_INTERVAL="0.5",
    )
    yield proc
    proc.stop()


@pytest.fixture
def small_cap(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    proc = start_gateway(
        firestore_host,
        project_id,
        minter,
        WS_HANDSHAKE_TIMEOUT="60",
        WS_MAX_PENDING_HANDSHAKES="50",
        PING_INTERVAL="0.5",
    )
    yield proc
    proc.stop()


#: Every connection a test opened, closed after it (unclosed writers warn at collection).
_opened: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
def close_connections() -> Iterator[None]:
    yield
    for writer in _opened:
        writer.close()
    _opened.clear()


async def open_silent(
    port: int, count: int, first_bytes: bytes = b""
) -> list[asyncio.StreamReader]:
    """``count`` TCP connections that send ``first_bytes`` (maybe nothing) and then nothing."""
    readers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        _opened.append(writer)
        if first_bytes:
            writer.write(first_bytes)
        readers.append(reader)
    return readers


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the server closes this connection (EOF or reset) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            data = await reader.read(1024)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""


async def first_ping_seconds(gateway: GatewayProc) -> float:
    started = time.monotonic()
    async with connect(gateway.ws(uid())) as ws:
        async with asyncio.timeout(10 * UNIT):
            while loads(await ws.recv())["type"] != "ping":
                pass
    return time.monotonic() - started


async def test_silent_connections_are_dropped_after_the_deadline_while_others_are_served(
    short_deadline: GatewayProc,
) -> None:
    """2,000 connections that never send a request (and a few that stop half-way through
    their request head) are closed after WS_HANDSHAKE_TIMEOUT; meanwhile a real client
    connects and gets its first ping; the gateway's memory goes back near its baseline."""
    baseline = rss_mb(short_deadline)
    silent = await open_silent(short_deadline.port, HALF_OPEN)
    slow = await open_silent(short_deadline.port, 20, b"GET /ws/connect/x HTTP/1.1\r\nHost: a\r\n")
    # Served while every one of them waits (the first ping comes within one PING_INTERVAL).
    assert await first_ping_seconds(short_deadline) < 10 * UNIT
    outcomes = await asyncio.gather(*(closed_by_server(r, 3 + 30 * UNIT) for r in [*silent, *slow]))
    assert all(outcomes), f"{outcomes.count(False)} of {len(outcomes)} still open"
    await asyncio.sleep(1)
    assert rss_mb(short_deadline) < baseline + 30, "memory did not return near its baseline"
    assert await first_ping_seconds(short_deadline) < 10 * UNIT


async def test_beyond_the_cap_a_new_connection_is_closed_on_arrival(
    small_cap: GatewayProc,
) -> None:
    """With 50 connections waiting (WS_MAX_PENDING_HANDSHAKES=50, deadline 60 s), the 51st is
    closed at once; once they are gone, clients connect again."""
    waiting = await open_silent(small_cap.port, 50)
    await asyncio.sleep(0.5)
    (extra,) = await open_silent(small_cap.port, 1)
    assert await closed_by_server(extra, 10 * UNIT)
    # The waiting ones are still open: the deadline is a minute away.
    assert not await closed_by_server(waiting[0], 0.5)
    for writer in _opened:
        writer.close()
    await asyncio.sleep(1)
    assert await first_ping_seconds(small_cap) < 10 * UNIT
