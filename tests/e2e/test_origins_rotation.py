"""Browser origins for sockets and CORS, and admin-token rotation."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support import GatewayProc, TokenMinter, loads, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]

APP = "http://app.example"
NEW, OLD = secrets.token_urlsafe(24), secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def guarded(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    proc = start_gateway(
        firestore_host,
        project_id,
        minter,
        ALLOWED_ORIGINS=f"{APP}, http://localhost:3000/",
        GATEWAY_ADMIN_TOKEN=f"{NEW},{OLD}",
    )
    yield proc
    proc.stop()


async def test_sockets_from_allowed_origins_or_without_origin_are_served(
    guarded: GatewayProc,
) -> None:
    """A page of an allowed origin (trailing slash ignored), or a non-browser client, connects."""
    for origin in (APP, "http://localhost:3000", None):
        user = f"o-{uuid.uuid4().hex[:10]}"
        kwargs = {"origin": origin} if origin else {}
        async with connect(guarded.ws(user), **kwargs) as ws:
            assert loads(await ws.recv())["type"] == "ping"


async def test_sockets_from_other_origins_are_refused_at_the_handshake(
    guarded: GatewayProc,
) -> None:
    """A page of another origin gets HTTP 403 and no socket."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(guarded.ws("o-evil"), origin="http://evil.example"):
            pass
    assert caught.value.response.status_code == 403


async def test_cors_preflight_allows_only_the_configured_origins(guarded: GatewayProc) -> None:
    """The REST API answers CORS preflights for allowed origins only."""
    async with httpx.AsyncClient(base_url=guarded.http) as http:
        ok = await http.options(
            "/ws/stats",
            headers={
                "Origin": APP,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        bad = await http.options(
            "/ws/stats",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
        )
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == APP
    assert "access-control-allow-origin" not in bad.headers


async def test_every_listed_admin_token_works_during_a_rotation(guarded: GatewayProc) -> None:
    """GATEWAY_ADMIN_TOKEN=new,old accepts both; anything else is 401."""
    async with httpx.AsyncClient(base_url=guarded.http) as http:
        for token, status in ((NEW, 200), (OLD, 200), (NEW + "x", 401), (f"{NEW},{OLD}", 401)):
            response = await http.get("/ws/stats", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == status, token
