"""Status for the whole deployment: two gateway processes on one Firestore."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support import GatewayProc, TokenMinter, eventually, loads, start_gateway

pytestmark = pytest.mark.e2e

FAST = {"SWEEP_INTERVAL": "0.5", "PONG_FLUSH_INTERVAL": "0.1"}


@pytest.fixture
def pair(
    firestore_host: str, project_id: str, minter: TokenMinter
) -> Iterator[tuple[GatewayProc, GatewayProc]]:
    a = start_gateway(firestore_host, project_id, minter, **FAST)
    b = start_gateway(firestore_host, project_id, minter, **FAST)
    yield a, b
    a.stop()
    b.stop()


async def status(gateway: GatewayProc, user: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http:
        body: dict[str, Any] = (await http.get(f"/ws/status/{user}")).json()
    return body


async def test_status_sees_sockets_on_other_instances_until_that_instance_dies(
    pair: tuple[GatewayProc, GatewayProc],
) -> None:
    """B reports A's socket; after A is SIGKILLed (no clean shutdown), A's sessions stop
    counting once its heartbeat is older than 3 x SWEEP_INTERVAL."""
    a, b = pair
    user = f"dep-{uuid.uuid4().hex[:10]}"
    a_id = a.env["GATEWAY_INSTANCE_ID"]
    async with connect(a.ws(user)) as ws:
        assert loads(await ws.recv())["type"] == "ping"

        async def seen_from_b() -> dict[str, Any]:
            body = await status(b, user)
            return body if body["is_connected"] else {}

        body = await eventually(seen_from_b)
        assert (body["connections"], body["instances"], body["scope"]) == (1, [a_id], "deployment")
        assert a.process.popen is not None
        os.kill(a.process.popen.pid, signal.SIGKILL)

        async def gone_from_b() -> dict[str, Any]:
            body = await status(b, user)
            return body if not body["is_connected"] else {}

        body = await eventually(gone_from_b, timeout=15)
    assert (body["connections"], body["instances"]) == (0, [])
