"""A reconnect storm against a real gateway process: a few hundred clients with real ID tokens
from the Auth emulator connect at once, as after a drain. Behaviour only (everyone admitted,
no one refused, each pinged at admission); the figures come from ``make bench --only storm``."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support import UNIT, GatewayProc, TokenMinter, eventually, loads, start_gateway

pytestmark = pytest.mark.e2e

CLIENTS = 300
#: Client addresses the sockets come from (127.0.0.1 .. 127.0.0.N): 30 each, under the default
#: WS_MAX_CONNECTS_PER_MINUTE (300 per address), which stays on.
ADDRESSES = 10
#: Far beyond the test: any ping a socket gets is its admission ping, not a round's.
PING_INTERVAL = "3600"


@pytest.fixture
def storm_gateway(
    firestore_host: str, project_id: str, minter: TokenMinter
) -> Iterator[GatewayProc]:
    proc = start_gateway(firestore_host, project_id, minter, PING_INTERVAL=PING_INTERVAL)
    yield proc
    proc.stop()


async def mint_all(minter: TokenMinter, users: list[str]) -> None:
    """Real ID tokens for every user, a few sign-ins at a time, before the storm starts."""
    gate = asyncio.Semaphore(16)

    async def one(user: str) -> None:
        async with gate:
            await asyncio.to_thread(minter, user)

    await asyncio.gather(*(one(u) for u in users))


async def first_frame(gateway: GatewayProc, user: str, index: int) -> tuple[Any, dict[str, Any]]:
    """Connect from the index's client address and answer the first frame the gateway sends
    (a refusal shows as the close instead); return the open socket and that frame."""
    source = f"127.0.0.{index % ADDRESSES + 1}"
    ws = await connect(gateway.ws(user), local_addr=(source, 0), open_timeout=60 * UNIT)
    _opened.append(ws)
    async with asyncio.timeout(60 * UNIT):
        frame = loads(await ws.recv())
    await ws.send(json.dumps({"type": "pong"}))
    return ws, frame


#: Every socket a test opened, closed after it.
_opened: list[Any] = []


@pytest.fixture(autouse=True)
async def close_sockets() -> Any:
    yield
    await asyncio.gather(*(ws.close() for ws in _opened), return_exceptions=True)
    _opened.clear()


async def metrics(gateway: GatewayProc) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        text = (await http.get("/metrics")).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def test_a_storm_of_clients_is_admitted_whole_and_pinged_at_admission(
    storm_gateway: GatewayProc, minter: TokenMinter
) -> None:
    """300 clients with real tokens connect at once from 10 addresses: every socket is
    accepted, none refused (by the token check, the connect limiter or the handshake cap),
    and each one's first frame is a ping, although the next ping round is an hour away."""
    users = [f"storm-{uuid.uuid4().hex[:10]}-{i}" for i in range(CLIENTS)]
    await mint_all(minter, users)
    frames = await asyncio.gather(
        *(first_frame(storm_gateway, u, i) for i, u in enumerate(users)), return_exceptions=True
    )
    failures = [f for f in frames if isinstance(f, BaseException)]
    assert not failures, f"{len(failures)} of {CLIENTS} failed, e.g. {failures[0]!r}"
    kinds = [f[1]["type"] for f in frames if isinstance(f, tuple)]
    assert kinds == ["ping"] * CLIENTS
    async with httpx.AsyncClient(base_url=storm_gateway.http) as http:
        assert (await http.get("/healthz")).json()["connections"] == CLIENTS
    lines = await metrics(storm_gateway)
    assert not [k for k in lines if k.startswith("gateway_refusals_total")], lines
    assert lines["gateway_pings_sent_total"] == CLIENTS

    async def all_pongs_taken() -> bool:
        return (await metrics(storm_gateway)).get("gateway_pongs_received_total") == CLIENTS

    await eventually(all_pongs_taken, timeout=30)
