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


# --- the answer given inside the HTTP protocol (gateway.edge.inline_send), on raw sockets ---


def raw_post(gateway: GatewayProc, user: str, body: bytes, extra: bytes = b"") -> bytes:
    head = (
        f"POST /ws/send/{user} HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: {gateway.auth['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    return head + extra + b"\r\n" + body


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One whole HTTP response (head and content-length body), 100 Continue skipped."""
    async with asyncio.timeout(5 * UNIT):
        head = await reader.readuntil(b"\r\n\r\n")
        while head.startswith(b"HTTP/1.1 100 "):
            head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head, re.I)
        assert length is not None, head
        return head + await reader.readexactly(int(length[1]))


def without_date(answer: bytes) -> bytes:
    return re.sub(rb"\r\ndate: [^\r]*\r\n", b"\r\ndate: -\r\n", answer)


async def test_the_inline_answer_is_byte_for_byte_the_asgi_paths(gateway: GatewayProc) -> None:
    """A plain send answered inline and the same send with ``Expect: 100-continue`` (which
    goes through the ASGI task) answer the same bytes, date aside; both are delivered."""
    user = uid()
    async with connect(gateway.ws(user)) as ws:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        answers = []
        for extra in (b"", b"Expect: 100-continue\r\n"):
            writer.write(raw_post(gateway, user, b'{"type":"n"}', extra))
            answers.append(without_date(await read_answer(reader)))
        writer.close()
        assert answers[0] == answers[1]
        assert answers[0].startswith(b"HTTP/1.1 200 OK\r\ndate: -\r\nserver: ")
        assert await frames(ws, 2) == [{"type": "n"}, {"type": "n"}]


async def test_pipelined_requests_are_answered_and_delivered_in_order(
    gateway: GatewayProc,
) -> None:
    """Sends, a Litestar request and a send to nobody written in one packet: each answered,
    in request order, on the one connection; the frames arrive in order, once."""
    user = uid()
    async with connect(gateway.ws(user)) as ws:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            raw_post(gateway, user, b'{"n":0}')
            + b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
            + raw_post(gateway, user, b'{"n":1}')
            + raw_post(gateway, uid(), b'{"n":2}')
            + raw_post(gateway, user, b'{"n":3}')
        )
        answers = [await read_answer(reader) for _ in range(5)]
        writer.close()
        statuses = [a.split(b" ", 2)[1] for a in answers]
        assert statuses == [b"200", b"200", b"200", b"404", b"200"]
        assert answers[1].endswith(b"}") and b'"ok"' in answers[1], answers[1]
        assert await frames(ws, 3) == [{"n": 0}, {"n": 1}, {"n": 3}]


async def test_a_kept_alive_connection_is_reused_and_a_body_may_come_in_pieces(
    gateway: GatewayProc,
) -> None:
    """One connection: sends one after another, one after an idle second, and one whose head
    and body arrive in several packets, all answered 200 and delivered once."""
    user = uid()
    async with connect(gateway.ws(user)) as ws:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        for n in range(3):
            writer.write(raw_post(gateway, user, b'{"n":%d}' % n))
            assert (await read_answer(reader)).startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(1)
        request = raw_post(gateway, user, b'{"n":3,"pad":"' + b"p" * 200 + b'"}')
        for start in range(0, len(request), 60):
            writer.write(request[start : start + 60])
            await writer.drain()
            await asyncio.sleep(0.02)
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        got = await frames(ws, 4)
        assert [f["n"] for f in got] == [0, 1, 2, 3]
