"""The plain targeted send's own path (gateway.web.fast_send) answers as the Litestar route does.

Each request is made twice against one real gateway: as the fast path takes it (no query, no
``Origin``), and with ``?durable=false`` or an ``Origin`` header, which sends it through
Litestar's ``ws_send``. Status, body and delivery must be the same; whatever the fast path does
not take whole (bad JSON, a body that is not an object, a bad token, too large) is Litestar's
answer either way.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support import UNIT, GatewayProc, loads

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]

#: The two ways to the same handler: the fast path, and Litestar's route.
FAST: dict[str, Any] = {}
LITESTAR: dict[str, Any] = {"params": {"durable": "false"}}


def uid() -> str:
    return f"fast-{uuid.uuid4().hex[:12]}"


async def frames(ws: Any, count: int) -> list[dict[str, Any]]:
    """The next ``count`` frames other than pings."""
    found: list[dict[str, Any]] = []
    async with asyncio.timeout(5 * UNIT):
        while len(found) < count:
            message = loads(await ws.recv())
            if message.get("type") != "ping":
                found.append(message)
    return found


async def test_a_plain_send_answers_and_delivers_as_the_litestar_route_does(
    gateway: GatewayProc,
) -> None:
    """200 with the same body either way, and the socket gets both messages once."""
    user = uid()
    async with (
        httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http,
        connect(gateway.ws(user)) as ws,
    ):
        answers = []
        for n, way in enumerate((FAST, LITESTAR)):
            response = await http.post(f"/ws/send/{user}", json={"type": "n", "n": n}, **way)
            answers.append((response.status_code, response.json()))
            assert response.headers["content-type"].startswith("application/json")
        assert answers[0] == answers[1]
        assert answers[0][0] == 200 and answers[0][1]["connections"] == 1
        assert await frames(ws, 2) == [{"type": "n", "n": 0}, {"type": "n", "n": 1}]


async def test_errors_are_the_litestar_routes_whichever_way_the_request_comes(
    gateway: GatewayProc,
) -> None:
    """Not connected (404), bad JSON, a non-object body (400), a wrong token (401) and a
    body over WS_MAX_MESSAGE_BYTES (413) answer the same status and body both ways."""
    nobody = uid()
    cases: list[dict[str, Any]] = [
        {"json": {"type": "x"}},
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"json": ["a", "list"]},
        {"json": {"type": "x"}, "headers": {"authorization": "Bearer " + "w" * 32}},
        {"json": {"blob": "x" * 5000}},
    ]
    async with httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http:
        for case in cases:
            answers = []
            for way in (FAST, LITESTAR):
                response = await http.post(f"/ws/send/{nobody}", **case, **way)
                body = response.json()
                # Litestar's validation message quotes the URL, query included.
                body["message"] = body["message"].replace("?durable=false", "")
                answers.append((response.status_code, body))
            assert answers[0] == answers[1], case
        assert [a[0] for a in answers] == [413, 413]


async def test_a_browser_request_keeps_its_cors_headers(gateway: GatewayProc) -> None:
    """A request with an ``Origin`` goes through Litestar, which adds the CORS headers."""
    async with httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http:
        response = await http.post(
            f"/ws/send/{uid()}", json={"type": "x"}, headers={"origin": "https://app.example"}
        )
    assert response.status_code == 404
    assert "access-control-allow-origin" in response.headers


async def test_the_fast_path_is_counted_in_the_routes_own_request_metrics(
    gateway: GatewayProc,
) -> None:
    """Both ways add to one ``gateway_http_requests_total`` series for the route."""
    pattern = re.compile(
        r'^gateway_http_requests_total\{[^}]*method="POST"[^}]*path="/ws/send/\{user_id\}"'
        r'[^}]*status_code="404"[^}]*\} (\S+)$',
        re.M,
    )

    async with httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http:

        async def count() -> float:
            text = (await http.get("/metrics")).text
            return sum(float(v) for v in pattern.findall(text))

        before = await count()
        for way in (FAST, LITESTAR):
            await http.post(f"/ws/send/{uid()}", json={"type": "x"}, **way)
        assert await count() == before + 2
