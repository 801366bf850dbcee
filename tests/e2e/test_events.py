"""Connection events for analytics: structured log entries (LOG_FORMAT=json, as on Cloud Run)
and their counters in /metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support import GatewayProc, TokenMinter, eventually, loads, start_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def json_gateway(
    firestore_host: str, project_id: str, minter: TokenMinter
) -> Iterator[GatewayProc]:
    proc = start_gateway(firestore_host, project_id, minter, LOG_FORMAT="json")
    yield proc
    proc.stop()


def events(gateway: GatewayProc, user: str) -> list[dict[str, Any]]:
    found = []
    for line in gateway.log().splitlines():
        if line.startswith("{"):
            event = json.loads(line).get("event")
            if isinstance(event, dict) and event.get("user_id") == user:
                found.append(event)
    return found


async def test_connect_and_disconnect_are_logged_as_events_and_counted(
    json_gateway: GatewayProc,
) -> None:
    """A socket's connect and its disconnect (close code, how long it lived) are JSON log
    entries with an ``event`` object, and /metrics counts them."""
    user = "events-user"
    async with connect(json_gateway.ws(user)) as ws:
        assert loads(await ws.recv())["type"] == "ping"

    async def both() -> list[dict[str, Any]]:
        found = events(json_gateway, user)
        return found if len(found) == 2 else []

    connected, disconnected = await eventually(both)
    instance = json_gateway.env["GATEWAY_INSTANCE_ID"]
    assert (connected["kind"], connected["instance_id"]) == ("connect", instance)
    assert connected["session_id"] == disconnected["session_id"]
    assert (disconnected["kind"], disconnected["code"]) == ("disconnect", 1000)
    assert 0 <= disconnected["duration_seconds"] < 60
    async with httpx.AsyncClient(base_url=json_gateway.http) as http:
        metrics = (await http.get("/metrics")).text
    assert 'gateway_connection_events_total{event="connect"}' in metrics
    assert 'gateway_disconnects_total{code="1000"}' in metrics
