"""Limits over real sockets: messages per second, sockets per user, attempts per address."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support import UNIT, GatewayProc, TokenMinter, loads, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]


def uid() -> str:
    return f"l-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def limited(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    """A gateway with small limits (a fresh one per test: the attempt counter is per process)."""
    proc = start_gateway(
        firestore_host,
        project_id,
        minter,
        WS_MAX_MESSAGES_PER_SECOND="5",
        WS_MAX_SOCKETS_PER_USER="2",
        WS_MAX_CONNECTS_PER_MINUTE="6",
        PING_INTERVAL="0.5",
    )
    yield proc
    proc.stop()


async def test_a_flooding_socket_is_closed_and_others_keep_their_pings(
    limited: GatewayProc,
) -> None:
    """Beyond the burst, a flood closes that socket with 4429; a bystander is untouched."""
    async with connect(limited.ws(uid())) as bystander, connect(limited.ws(uid())) as flood:
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(10 * UNIT):
                for _ in range(1000):
                    await flood.send(json.dumps({"type": "pong"}))
                    await asyncio.sleep(0)
                while True:
                    await flood.recv()
        assert caught.value.rcvd is not None
        assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (4429, "too many messages")
        async with asyncio.timeout(5 * UNIT):
            while loads(await bystander.recv())["type"] != "ping":
                pass


async def test_a_steady_client_under_the_rate_is_never_limited(limited: GatewayProc) -> None:
    """Four messages a second against a limit of five keeps the socket open."""
    async with connect(limited.ws(uid())) as ws:
        for _ in range(12):
            await ws.send(json.dumps({"type": "ping"}))
            await asyncio.sleep(0.25)
        async with asyncio.timeout(5 * UNIT):
            while loads(await ws.recv())["type"] != "pong":
                pass


async def test_sockets_per_user_and_attempts_per_address_are_capped(
    limited: GatewayProc,
) -> None:
    """A third socket for one user gets 4429; past six attempts a minute, every attempt does."""
    # The attempt window is the calendar minute: start well inside one.
    if time.time() % 60 > 40:
        await asyncio.sleep(61 - time.time() % 60)
    user = uid()
    async with connect(limited.ws(user)), connect(limited.ws(user)):
        async with connect(limited.ws(user)) as third:
            with pytest.raises(ConnectionClosed) as caught:
                await third.recv()
        assert caught.value.rcvd is not None
        assert caught.value.rcvd.reason == "too many sockets for this user"
        assert caught.value.rcvd.code == 4429
        codes = []
        for _ in range(4):
            async with connect(limited.ws(uid())) as ws:
                try:
                    async with asyncio.timeout(5 * UNIT):
                        await ws.recv()
                    codes.append(None)
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    codes.append((exc.rcvd.code, exc.rcvd.reason))
    # Attempts 4..6 were admitted (they got a ping), 7 was refused.
    assert codes[:3] == [None, None, None]
    assert codes[3] == (4429, "too many connection attempts")
