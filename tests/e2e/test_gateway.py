"""The gateway end to end: a real uvicorn process, real sockets, the Firestore emulator."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    CONNECTED_AT,
    DISCONNECTED_AT,
    INSTANCE_ID,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_CONNECTED_AT,
    LAST_PONG_AT,
    MEMBERS,
    SESSIONS,
    UPDATED_AT,
    USER_ID,
)
from tests.support import UNIT, GatewayProc, eventually, loads

pytestmark = pytest.mark.e2e

PING_TEXT = "Server heartbeat - please respond with pong"


def uid() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


async def next_of(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of the given type, skipping heartbeats and others."""
    async with asyncio.timeout(timeout * UNIT):
        while True:
            message = loads(await ws.recv())
            if message.get("type") == kind:
                return message


def member(firestore_client: Any, user: str) -> dict[str, Any] | None:
    snapshot = firestore_client.collection(MEMBERS).document(user).get()
    return snapshot.to_dict() if snapshot.exists else None


def sessions_of(firestore_client: Any, user: str) -> list[dict[str, Any]]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = firestore_client.collection(SESSIONS).where(filter=FieldFilter(USER_ID, "==", user))
    return [s.to_dict() for s in query.stream()]


async def test_server_pings_in_the_guides_format(gateway: GatewayProc) -> None:
    """Pings arrive every PING_INTERVAL with exactly type, timestamp and message. The first
    comes at admission, and the next round may follow it within moments (docs/protocol.md):
    the interval is measured between two rounds."""
    async with connect(gateway.ws(uid())) as ws:
        pings = [await next_of(ws, "ping") for _ in range(3)]
    for ping in pings:
        assert list(ping) == ["type", "timestamp", "message"]
        assert ping["message"] == PING_TEXT
    stamps = [datetime.fromisoformat(m["timestamp"]) for m in pings]
    assert all(s.tzinfo is not None for s in stamps)
    assert 0.05 < (stamps[2] - stamps[1]).total_seconds() < 2 * UNIT


async def test_connect_records_member_and_session(
    gateway: GatewayProc, firestore_client: Any
) -> None:
    """Connecting marks the member signed in and opens a session, both naming the instance
    but not its internal URL (the user may read their member); closing ends the session."""
    user = uid()
    async with connect(gateway.ws(user)) as ws:
        await next_of(ws, "ping")

        async def recorded() -> tuple[Any, Any]:
            found = member(firestore_client, user), sessions_of(firestore_client, user)
            return found if found[0] and found[1] else ()  # type: ignore[return-value]

        record, sessions = await eventually(recorded)
        assert record[IS_SIGNED_IN] is True
        assert record[INSTANCE_ID] == gateway.env["GATEWAY_INSTANCE_ID"]
        assert {LAST_PONG_AT, UPDATED_AT, LAST_CONNECTED_AT} <= set(record)
        assert len(sessions) == 1 and sessions[0][IS_ACTIVE] is True
        assert sessions[0][INSTANCE_ID] == gateway.env["GATEWAY_INSTANCE_ID"]
        where = {INSTANCE_ID: gateway.env["GATEWAY_INSTANCE_ID"]}
        assert list(record[ACTIVE_SESSIONS].values()) == [where]
        assert INTERNAL_URL not in record and INTERNAL_URL not in sessions[0]

    async def closed() -> list[dict[str, Any]]:
        found = sessions_of(firestore_client, user)
        return found if found and found[0][IS_ACTIVE] is False else []

    (session,) = await eventually(closed)
    assert session[CLOSE_CODE] == 1000
    assert session[DISCONNECTED_AT] >= session[CONNECTED_AT]


async def test_every_pong_moves_last_pong_at(gateway: GatewayProc, firestore_client: Any) -> None:
    """A client answering pings sees members/{uid}.last_pong_at advance in Firestore."""
    user = uid()
    async with connect(gateway.ws(user)) as ws:
        await next_of(ws, "ping")
        await ws.send(json.dumps({"type": "pong"}))

        async def first_pong() -> Any:
            record = member(firestore_client, user)
            return record and record[LAST_PONG_AT]

        initial = await eventually(first_pong)
        for _ in range(3):
            await next_of(ws, "ping")
            await ws.send(json.dumps({"type": "pong"}))

        async def advanced() -> bool:
            record = member(firestore_client, user)
            return bool(record and record[LAST_PONG_AT] > initial)

        await eventually(advanced)


async def test_client_ping_is_answered_with_a_pong(gateway: GatewayProc) -> None:
    """{"type": "ping"} from the client gets {"type": "pong", "timestamp": ...}."""
    async with connect(gateway.ws(uid())) as ws:
        await ws.send(json.dumps({"type": "ping", "timestamp": "2025-10-23T10:30:00"}))
        pong = await next_of(ws, "pong")
    assert set(pong) == {"type", "timestamp"}


async def test_client_message_is_acknowledged_with_its_id(gateway: GatewayProc) -> None:
    """A client message gets an ack echoing its id and is logged by the default handler."""
    user = uid()
    async with connect(gateway.ws(user)) as ws:
        await ws.send(json.dumps({"type": "message", "data": {"hello": "world"}, "id": "m-1"}))
        ack = await next_of(ws, "ack")
    assert ack["id"] == "m-1"

    async def logged() -> bool:
        return f"message from user={user}" in gateway.log()

    await eventually(logged)


async def test_unknown_type_is_ignored_and_the_socket_stays_open(gateway: GatewayProc) -> None:
    """An unknown type gets no reply, is logged, and the socket keeps working."""
    async with connect(gateway.ws(uid())) as ws:
        await ws.send(json.dumps({"type": "teleport"}))
        await ws.send(json.dumps({"type": "ping"}))
        frame = await next_of(ws, "pong")
        assert frame["type"] == "pong"
    assert "ignored unknown message type 'teleport'" in gateway.log()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{oops", "invalid_json"),
        ("[1,2,3]", "not_an_object"),
        ('{"data": 1}', "missing_type"),
        ('{"type": 7}', "invalid_type"),
        (b"\x00\x01binary", "binary_frame"),
    ],
)
async def test_bad_frames_get_an_error_reply_and_the_socket_stays_open(
    gateway: GatewayProc, frame: str | bytes, code: str
) -> None:
    """Each bad frame gets {"type": "error", "code": ...}; a ping afterwards still works."""
    async with connect(gateway.ws(uid())) as ws:
        await ws.send(frame)
        error = await next_of(ws, "error")
        assert error["code"] == code and error["message"]
        await ws.send(json.dumps({"type": "ping"}))
        assert (await next_of(ws, "pong"))["type"] == "pong"


async def test_oversized_frame_closes_with_1009_and_others_keep_pinging(
    gateway: GatewayProc,
) -> None:
    """A frame over WS_MAX_MESSAGE_BYTES closes that socket with 1009; others are unaffected."""
    async with connect(gateway.ws(uid())) as bystander, connect(gateway.ws(uid())) as ws:
        await ws.send(json.dumps({"type": "message", "data": "x" * 10_000}))
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(5 * UNIT):
                while True:
                    await ws.recv()
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009
        await next_of(bystander, "ping")
        await next_of(bystander, "ping")


async def test_invalid_user_id_is_closed_with_4400(gateway: GatewayProc) -> None:
    """A user id that cannot be a Firestore document id is refused with close code 4400."""
    async with connect(gateway.ws("__reserved__")) as ws:
        with pytest.raises(ConnectionClosed) as caught:
            await ws.recv()
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 4400


async def test_status_stats_send_with_several_sockets_per_user(gateway: GatewayProc) -> None:
    """Two sockets of one user count as one user; a send reaches both; status follows."""
    user, other = uid(), uid()
    async with (
        httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http,
        connect(gateway.ws(user)) as tab1,
        connect(gateway.ws(user)) as tab2,
        connect(gateway.ws(other)) as ws_other,
    ):

        async def counted() -> dict[str, Any]:
            body: dict[str, Any] = (await http.get(f"/ws/status/{user}")).json()
            return body if body["connections"] == 2 else {}

        status = await counted() or await eventually(counted)
        instance = gateway.env["GATEWAY_INSTANCE_ID"]
        assert status == {
            "user_id": user,
            "is_connected": True,
            "status": "connected",
            "connections": 2,
            "scope": "deployment",
            "instances": [instance],
        }
        local = (await http.get(f"/ws/status/{user}", params={"scope": "instance"})).json()
        assert (local["scope"], local["connections"]) == ("instance", 2)
        stats = (await http.get("/ws/stats")).json()
        assert {user, other} <= set(stats["connected_users"])
        assert stats["connected_users"].count(user) == 1
        assert stats["total_connections"] >= 3
        assert stats["ping_interval_seconds"] == 0.2
        assert stats["pong_timeout_seconds"] == 10800

        payload = {"type": "notification", "data": {"message": "Order shipped!", "order_id": "1"}}
        response = await http.post(f"/ws/send/{user}", json=payload)
        assert response.status_code == 200
        # Without PUBSUB_TOPIC the gateway cannot reach other instances, and says so.
        assert "no PUBSUB_TOPIC: this instance is alone" in gateway.log()
        assert response.json() == {
            "status": "success",
            "message": "Message sent successfully",
            "connections": 2,
            "scope": "instance",
            "instances": [instance],
            "unreachable_instances": [],
        }
        assert await next_of(tab1, "notification") == payload
        assert await next_of(tab2, "notification") == payload
        await ws_other.send(json.dumps({"type": "ping"}))
        # The other user got the pong it asked for and no notification before it.
        async with asyncio.timeout(5 * UNIT):
            while (frame := loads(await ws_other.recv()))["type"] != "pong":
                assert frame["type"] == "ping"

    async def gone() -> bool:
        async with httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http:
            body = (await http.get(f"/ws/status/{user}")).json()
        return bool(
            body
            == {
                "user_id": user,
                "is_connected": False,
                "status": "disconnected",
                "connections": 0,
                "scope": "deployment",
                "instances": [],
            }
        )

    await eventually(gone)


async def test_send_to_a_user_who_is_not_connected_is_404(gateway: GatewayProc) -> None:
    """The 404 body says which user is not connected."""
    async with httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http:
        response = await http.post("/ws/send/nobody-here", json={"type": "x"})
    assert response.status_code == 404
    assert response.json() == {
        "status": "error",
        "message": "User 'nobody-here' is not connected",
        "status_code": 404,
    }


async def test_broadcast_reaches_everyone_but_the_excluded_user(gateway: GatewayProc) -> None:
    """recipients counts users reached; the excluded user's sockets get nothing."""
    users = [uid() for _ in range(3)]
    async with (
        httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http,
        connect(gateway.ws(users[0])) as a1,
        connect(gateway.ws(users[0])) as a2,
        connect(gateway.ws(users[1])) as b,
        connect(gateway.ws(users[2])) as excluded,
    ):

        async def all_in() -> bool:
            stats = (await http.get("/ws/stats")).json()
            return set(users) <= set(stats["connected_users"])

        await eventually(all_in)
        before = (await http.get("/ws/stats")).json()["total_users"]
        payload = {"type": "announcement", "data": {"title": "System Maintenance"}}
        response = await http.post("/ws/broadcast", params={"exclude_user": users[2]}, json=payload)
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "success"
        assert body["message"] == "Message broadcasted successfully"
        # Other modules' sockets may still be closing; every user but the excluded one counts.
        assert body["recipients"] == before - 1
        for ws in (a1, a2, b):
            assert await next_of(ws, "announcement") == payload
        await excluded.send(json.dumps({"type": "ping"}))
        async with asyncio.timeout(5 * UNIT):
            while (frame := loads(await excluded.recv()))["type"] != "pong":
                assert frame["type"] == "ping"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/ws/stats", None),
        ("GET", "/ws/status/someone", None),
        ("POST", "/ws/send/someone", {"type": "x"}),
        ("POST", "/ws/broadcast", {"type": "x"}),
    ],
)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token-wrong-token", "Basic abc"])
async def test_rest_api_requires_the_admin_token(
    gateway: GatewayProc, method: str, path: str, body: Any, header: str | None
) -> None:
    """Without the right bearer token the REST API answers 401 with an error body."""
    headers = {"Authorization": header} if header else {}
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        response = await http.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["status"] == "error"


@pytest.mark.parametrize(
    ("content", "status"),
    [("[1, 2]", 400), ("not json", 400), ('"text"', 400), ("x" * 5000, 413)],
)
async def test_send_rejects_bodies_that_are_not_json_objects(
    gateway: GatewayProc, content: str, status: int
) -> None:
    """Send bodies must be JSON objects within the size limit; nothing is sent otherwise."""
    async with httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http:
        response = await http.post(
            "/ws/broadcast", content=content, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == status
    assert response.json()["status"] == "error"


async def test_health_and_openapi_are_served(gateway: GatewayProc) -> None:
    """/healthz answers without auth; the OpenAPI schema lists the REST endpoints."""
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        health = (await http.get("/healthz")).json()
        schema = (await http.get("/schema/openapi.json")).json()
    assert health["status"] == "ok"
    assert {"/ws/status/{user_id}", "/ws/stats", "/ws/send/{user_id}", "/ws/broadcast"} <= set(
        schema["paths"]
    )


async def test_sockets_on_other_paths_are_refused_at_the_handshake(gateway: GatewayProc) -> None:
    """Only /ws/connect/{user_id} takes sockets; elsewhere the handshake gets HTTP 403."""
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as caught:
        async with connect(f"ws://127.0.0.1:{gateway.port}/ws/other"):
            pass
    assert caught.value.response.status_code == 403


async def test_metrics_count_sockets_pongs_and_refusals(gateway: GatewayProc) -> None:
    """/metrics (Prometheus text) reports connections, pongs, the lag and commit-duration
    histograms, refusals."""
    async with connect(gateway.ws(uid())) as ws, httpx.AsyncClient(base_url=gateway.http) as http:
        await next_of(ws, "ping")
        await ws.send(json.dumps({"type": "pong"}))
        async with connect(gateway.bare_ws("x" + uid())) as refused:
            with pytest.raises(ConnectionClosed):
                await refused.recv()

        async def scraped() -> dict[str, float]:
            text = (await http.get("/metrics")).text
            lines = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line and not line.startswith("#")
            }
            # The pong is committed a flush (PONG_FLUSH_INTERVAL) after it arrives.
            return lines if lines.get("gateway_pongs_persisted_total", 0) >= 1 else {}

        lines = await eventually(scraped)
    assert lines["gateway_connections"] >= 1
    # python -m gateway runs on asyncio's loop with the raised young-generation GC threshold.
    (runtime,) = [key for key in lines if key.startswith("gateway_runtime_info{")]
    assert 'event_loop="asyncio"' in runtime and 'gc_thresholds="20000,10,10"' in runtime
    assert lines["gateway_pongs_received_total"] >= 1
    assert lines["gateway_pings_sent_total"] >= 1
    assert lines['gateway_refusals_total{reason="missing token"}'] >= 1
    assert lines['gateway_pong_persist_lag_seconds_bucket{le="+Inf"}'] >= 1
    commits = lines["gateway_firestore_commits_total"]
    assert commits >= 1
    assert lines['gateway_firestore_commit_seconds_bucket{le="+Inf"}'] >= 1
    assert lines["gateway_firestore_commit_seconds_sum"] > 0
    assert any(key.startswith("gateway_http_requests_total") for key in lines)
