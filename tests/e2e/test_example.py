"""examples/room_echo.py, an application embedding the gateway with ``gateway.serving.serve``,
run as its own process: its handler relays room messages through the ``gateway`` it is given,
and the server is the one ``python -m gateway`` runs (the collector's threshold, tokens
redacted in the log)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from emulator import procs
from tests.support import Client, GatewayProc, TokenMinter, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]


@pytest.fixture(scope="module")
def app(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    gateway = start_gateway(
        firestore_host,
        project_id,
        minter,
        command=[sys.executable, str(procs.ROOT / "examples" / "room_echo.py")],
        WS_PUBLIC_ROOM_PREFIXES="team:",
    )
    yield gateway
    gateway.process.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


async def frame(client: Client, kind: str) -> dict[str, Any]:
    while True:
        got = await client.next()
        if got.get("type") == kind:
            return got


async def test_a_room_message_is_echoed_to_every_member_and_only_from_a_member(
    app: GatewayProc, clients: list[Client]
) -> None:
    """Ana and Ben joined team:1; Ana's message reaches both as an echo. Cy, outside the
    room, writes to it: nobody gets anything."""
    sockets = {}
    for user in ("ana", "ben", "cy"):
        sockets[user] = await Client.open(app.ws(user))
        clients.append(sockets[user])
    for user in ("ana", "ben"):
        await sockets[user].ws.send(json.dumps({"type": "join", "room": "team:1"}))
        await frame(sockets[user], "joined")
    say = {"type": "message", "data": {"room": "team:1", "text": "hi"}}
    await sockets["cy"].ws.send(json.dumps(say))
    await frame(sockets["cy"], "ack")
    await sockets["ana"].ws.send(json.dumps(say))
    for user in ("ana", "ben"):
        echo = await frame(sockets[user], "echo")
        assert echo == {"type": "echo", "room": "team:1", "from": "ana", "text": "hi"}
    assert sockets["ben"].frames.empty(), "one echo: cy's message reached nobody"


async def test_the_embedded_server_is_the_gateways_own(app: GatewayProc) -> None:
    """The collector's raised threshold is in effect, and the socket's token never reached
    the application's log."""
    async with httpx.AsyncClient(base_url=app.http, headers=app.auth) as http:
        metrics = (await http.get("/metrics")).text
    [runtime] = [line for line in metrics.splitlines() if line.startswith("gateway_runtime_info")]
    assert 'gc_thresholds="20000,' in runtime
    assert app.minter is not None
    assert app.minter("ana") not in app.process.log_path.read_text()
