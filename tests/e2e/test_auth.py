"""Who may connect: Firebase ID tokens from the Auth emulator, refusals with close codes,
revocation against the member record, and token refresh on a long-lived socket."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.storage.schema import IS_SIGNED_IN, LAST_SIGN_OUT_AT, MEMBERS, SESSIONS, USER_ID
from tests.support import (
    UNIT,
    GatewayProc,
    TokenMinter,
    loads,
    start_gateway,
    unsigned_token,
)

pytestmark = pytest.mark.e2e


def uid() -> str:
    return f"a-{uuid.uuid4().hex[:12]}"


async def close_code(url: str, **kwargs: Any) -> tuple[int, str]:
    """Connect and return the close code and reason the server ends the socket with."""
    async with connect(url, **kwargs) as ws:
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(10 * UNIT):
                while True:
                    await ws.recv()
    assert caught.value.rcvd is not None
    return caught.value.rcvd.code, caught.value.rcvd.reason


def nothing_written(firestore_client: Any, user: str) -> bool:
    from google.cloud.firestore_v1.base_query import FieldFilter

    member = firestore_client.collection(MEMBERS).document(user).get()
    sessions = (
        firestore_client.collection(SESSIONS)
        .where(filter=FieldFilter(USER_ID, "==", user))
        .limit(1)
        .get()
    )
    return not member.exists and not sessions


async def test_a_valid_token_in_the_query_or_header_opens_the_socket(
    gateway: GatewayProc, minter: TokenMinter
) -> None:
    """?token= (browsers) and Authorization: Bearer (other clients) both work."""
    user = uid()
    async with connect(gateway.ws(user)) as ws:
        assert loads(await ws.recv())["type"] == "ping"
    headers = {"Authorization": f"Bearer {minter(user)}"}
    async with connect(gateway.bare_ws(user), additional_headers=headers) as ws:
        assert loads(await ws.recv())["type"] == "ping"


@pytest.mark.parametrize(
    ("make_token", "code", "reason"),
    [
        (lambda p, u, m: None, 4401, "missing token"),
        (lambda p, u, m: "not-a-jwt", 4401, "invalid token"),
        (lambda p, u, m: "x" * 9000, 4401, "invalid token"),
        (lambda p, u, m: unsigned_token("demo-someone-else", u), 4401, "invalid token"),
        (
            lambda p, u, m: unsigned_token(p, u, exp=int(time.time()) - 600, iat=1, auth_time=1),
            4401,
            "token expired",
        ),
        (lambda p, u, m: m("somebody-else-" + u), 4403, "token is for another user"),
    ],
    ids=["missing", "garbage", "oversized", "foreign-project", "expired", "other-user"],
)
async def test_bad_tokens_are_refused_and_write_nothing(
    gateway: GatewayProc,
    minter: TokenMinter,
    project_id: str,
    firestore_client: Any,
    make_token: Any,
    code: int,
    reason: str,
) -> None:
    """Each refusal has its documented close code, and no member or session is written."""
    user = uid()
    token = make_token(project_id, user, minter)
    url = gateway.bare_ws(user) + (f"?token={token}" if token else "")
    assert await close_code(url) == (code, reason)
    await asyncio.sleep(0.5)  # longer than a write-behind flush
    assert nothing_written(firestore_client, user)


async def test_a_token_from_before_the_last_sign_out_is_refused(
    gateway: GatewayProc, minter: TokenMinter, firestore_client: Any
) -> None:
    """A signed-out user's old token opens nothing: auth_time < last_sign_out_at."""
    user = uid()
    token = minter(user)
    firestore_client.collection(MEMBERS).document(user).set(
        {IS_SIGNED_IN: False, LAST_SIGN_OUT_AT: datetime.now(UTC) + timedelta(seconds=5)}
    )
    assert await close_code(gateway.ws(user, token)) == (4401, "token revoked: signed out since")


@pytest.fixture(scope="module")
def short_lived(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    """A gateway that closes sockets 1 s after their token expires."""
    proc = start_gateway(firestore_host, project_id, minter, TOKEN_GRACE="1")
    yield proc
    proc.stop()


async def test_a_socket_whose_token_expires_is_closed_after_the_grace(
    short_lived: GatewayProc, project_id: str
) -> None:
    """No refresh: an error frame token_expired, then close 4401."""
    user = uid()
    expires = int(time.time()) + 3
    token = unsigned_token(project_id, user, exp=expires)
    async with connect(short_lived.ws(user, token)) as ws:
        frames = []
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(15 * UNIT):
                while True:
                    frames.append(loads(await ws.recv()))
    assert caught.value.rcvd is not None
    assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (4401, "token expired")
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "token_expired"
    # Not before the token's expiry plus TOKEN_GRACE=1.
    assert time.time() >= expires + 1


async def test_refreshing_the_token_keeps_the_socket_open(
    short_lived: GatewayProc, project_id: str, minter: TokenMinter
) -> None:
    """{"type": "auth", "token": ...} with a fresh token moves the expiry; bad ones are
    answered with invalid_token and change nothing."""
    user = uid()
    token = unsigned_token(project_id, user, exp=int(time.time()) + 2)
    async with connect(short_lived.ws(user, token)) as ws:
        await ws.send(json.dumps({"type": "auth", "token": minter("intruder-" + user)}))
        async with asyncio.timeout(5 * UNIT):
            while (frame := loads(await ws.recv()))["type"] != "error":
                pass
        assert frame["code"] == "invalid_token"
        await ws.send(json.dumps({"type": "auth", "token": minter(user)}))
        async with asyncio.timeout(5 * UNIT):
            while (frame := loads(await ws.recv()))["type"] != "auth_ok":
                pass
        assert datetime.fromisoformat(frame["expires_at"]) > datetime.now(UTC) + timedelta(
            minutes=30
        )
        # Well past the first token's expiry plus grace, the socket still gets pings.
        await asyncio.sleep(4 * UNIT)
        async with asyncio.timeout(5 * UNIT):
            assert loads(await ws.recv())["type"] == "ping"


async def next_reply(ws: Any, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind`` or ``error`` (pings and others skipped)."""
    async with asyncio.timeout(5 * UNIT):
        while (frame := loads(await ws.recv()))["type"] not in (kind, "error"):
            pass
    return frame


async def test_an_auth_frame_with_a_token_from_before_the_sign_out_is_refused(
    gateway: GatewayProc, project_id: str, minter: TokenMinter
) -> None:
    """A token issued before the user's last sign-out is refused in an ``auth`` frame as it is
    at connect, so the wider room grants it carries do not come back through a socket opened
    with a newer, narrower token."""
    import httpx

    user = uid()
    minter(user)  # the account exists in the Auth emulator, as for any signed-in user
    old = unsigned_token(
        project_id, user, auth_time=int(time.time()) - 60, rooms=["team-1", "secret-room"]
    )
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10 * UNIT) as http:
        answer = await http.post(f"/ws/signout/{user}", headers=gateway.auth)
    assert answer.status_code == 200, answer.text
    assert await close_code(gateway.ws(user, old)) == (4401, "token revoked: signed out since")
    await asyncio.sleep(1.1)  # auth_time has whole seconds: the new sign-in is after the sign-out
    new = unsigned_token(project_id, user, auth_time=int(time.time()), rooms=["team-1"])
    async with connect(gateway.ws(user, new)) as ws:
        await ws.send(json.dumps({"type": "join", "room": "secret-room", "id": 1}))
        assert (await next_reply(ws, "joined"))["code"] == "room_forbidden"
        await ws.send(json.dumps({"type": "auth", "token": old}))
        refused = await next_reply(ws, "auth_ok")
        assert (refused["type"], refused["code"]) == ("error", "invalid_token")
        assert "revoked" in refused["message"]
        await ws.send(json.dumps({"type": "join", "room": "secret-room", "id": 2}))
        assert (await next_reply(ws, "joined"))["code"] == "room_forbidden"
        await ws.send(json.dumps({"type": "join", "room": "team-1", "id": 3}))
        assert (await next_reply(ws, "joined"))["type"] == "joined"
        # A token of the new sign-in is still taken.
        await ws.send(json.dumps({"type": "auth", "token": new}))
        assert (await next_reply(ws, "auth_ok"))["type"] == "auth_ok"
