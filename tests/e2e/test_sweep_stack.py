"""The whole stack with short intervals: gateway, sweep function, local scheduler, emulators.

PING_INTERVAL=0.2, PONG_TIMEOUT=2, SWEEP_INTERVAL=0.5: a client that stops answering is timed
out within seconds, through the same HTTP path Cloud Scheduler and the callback take.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.storage.schema import (
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_SIGN_OUT_AT,
    MEMBERS,
    SESSIONS,
    SIGNED_OUT_AT,
    UPDATED_AT,
    USER_ID,
)
from tests.support import (
    UNIT,
    GatewayProc,
    SweepStack,
    TokenMinter,
    eventually,
    loads,
    start_gateway,
)

pytestmark = pytest.mark.e2e

TIMEOUT_TEXT = "Your session has expired due to inactivity (2 seconds). Please sign in again."
SHORT = {"PING_INTERVAL": "0.2", "PONG_TIMEOUT": "2", "SWEEP_INTERVAL": "0.5"}


@pytest.fixture(scope="module")
def gateway(
    firestore_host: str, project_id: str, callback_token: str, minter: TokenMinter
) -> Iterator[GatewayProc]:
    proc = start_gateway(
        firestore_host, project_id, minter, GATEWAY_CALLBACK_TOKEN=callback_token, **SHORT
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def unreachable_gateway(
    firestore_host: str, project_id: str, callback_token: str, minter: TokenMinter
) -> Iterator[GatewayProc]:
    """A gateway whose registered internal URL leads nowhere: every callback to it fails."""
    proc = start_gateway(
        firestore_host,
        project_id,
        minter,
        GATEWAY_CALLBACK_TOKEN=callback_token,
        GATEWAY_INTERNAL_URL="http://127.0.0.1:9",
        **SHORT,
    )
    yield proc
    proc.stop()


async def answer_pings(ws: ClientConnection, stop: asyncio.Event) -> list[dict[str, Any]]:
    """Pong every ping until stopped; return every frame seen."""
    seen: list[dict[str, Any]] = []
    while not stop.is_set():
        try:
            async with asyncio.timeout(0.5):
                frame = loads(await ws.recv())
        except TimeoutError:
            continue
        seen.append(frame)
        if frame["type"] == "ping":
            await ws.send(json.dumps({"type": "pong"}))
    return seen


async def until_closed(ws: ClientConnection, timeout: float) -> tuple[list[dict[str, Any]], int]:
    """Read (without answering) until the server closes; return frames and the close code."""
    frames: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as caught:
        async with asyncio.timeout(timeout * UNIT):
            while True:
                frames.append(loads(await ws.recv()))
    assert caught.value.rcvd is not None
    return frames, caught.value.rcvd.code


async def test_silent_client_is_timed_out_and_signed_out_while_a_live_one_stays(
    gateway: GatewayProc,
    sweeper: SweepStack,
    firestore_client: Any,
    firebase_app: Any,
) -> None:
    """The silent client gets the timeout message and 4408, through the sweep's callback to
    the instance at the URL of its registry entry (members do not carry it); Firestore and Auth
    record the sign-out; the client that keeps answering stays connected and signed in."""
    from firebase_admin import auth

    silent, live = f"silent-{secrets.token_hex(4)}", f"live-{secrets.token_hex(4)}"
    for user in (silent, live):
        auth.create_user(uid=user, app=firebase_app)
        gateway.ws(user)  # mint the sockets' tokens now, before the revocation clock starts
    valid_after = auth.get_user(silent, app=firebase_app).tokens_valid_after_timestamp
    live_valid_after = auth.get_user(live, app=firebase_app).tokens_valid_after_timestamp
    await asyncio.sleep(1.1)  # Auth records revocation in whole seconds

    stop = asyncio.Event()
    async with connect(gateway.ws(silent)) as quiet, connect(gateway.ws(live)) as chatty:
        responder = asyncio.create_task(answer_pings(chatty, stop))
        frames, code = await until_closed(quiet, timeout=20)
        timeout = frames[-1]
        assert code == 4408
        assert timeout["type"] == "timeout" and list(timeout) == ["type", "message", "timestamp"]
        assert timeout["message"] == TIMEOUT_TEXT
        assert datetime.fromisoformat(timeout["timestamp"]).tzinfo is not None
        assert [f["type"] for f in frames[:-1]] == ["ping"] * (len(frames) - 1)
        # The callback closed it, not the gateway's own poll (which waits out a grace first).
        assert "reconcile closed" not in gateway.log()
        # The run's report is logged when the whole run ends, which may be after the
        # callback that closed the socket (the run still walks the other shards).

        async def reported() -> bool:
            return re.search(r'"sockets_closed": [1-9]', sweeper.log()) is not None

        try:
            await eventually(reported, timeout=30)
        except AssertionError:
            raise AssertionError(sweeper.log()[-2000:]) from None
        # The live client outlasts several timeouts' worth of sweeps.
        await asyncio.sleep(3 * 2 * UNIT)
        stop.set()
        seen = await responder
        assert not any(f["type"] == "timeout" for f in seen)
        assert sum(f["type"] == "ping" for f in seen) > 10

    member = firestore_client.collection(MEMBERS).document(silent).get().to_dict()
    assert member[IS_SIGNED_IN] is False
    # A pong already in the gateway's buffer may land after the sign-out and bump updated_at.
    assert member[UPDATED_AT] >= member[LAST_SIGN_OUT_AT]
    from google.cloud.firestore_v1.base_query import FieldFilter

    sessions = list(
        firestore_client.collection(SESSIONS)
        .where(filter=FieldFilter(USER_ID, "==", silent))
        .stream()
    )
    assert len(sessions) == 1
    session = sessions[0].to_dict()
    assert session[IS_ACTIVE] is False and session[SIGNED_OUT_AT] == member[LAST_SIGN_OUT_AT]
    assert auth.get_user(silent, app=firebase_app).tokens_valid_after_timestamp > valid_after

    alive = firestore_client.collection(MEMBERS).document(live).get().to_dict()
    assert alive[IS_SIGNED_IN] is True
    assert auth.get_user(live, app=firebase_app).tokens_valid_after_timestamp == live_valid_after


async def test_gateway_closes_by_itself_when_the_callback_cannot_reach_it(
    unreachable_gateway: GatewayProc, sweeper: SweepStack, firestore_client: Any
) -> None:
    """With the callback failing, the sign-out stands and the gateway's own poll closes the
    socket with the timeout message; the sweep answers the scheduler with a failure."""
    user = f"orphan-{secrets.token_hex(4)}"
    async with connect(unreachable_gateway.ws(user)) as quiet:
        frames, code = await until_closed(quiet, timeout=30)
    assert code == 4408
    assert frames[-1]["type"] == "timeout" and frames[-1]["message"] == TIMEOUT_TEXT
    member = firestore_client.collection(MEMBERS).document(user).get().to_dict()
    assert member[IS_SIGNED_IN] is False
    assert "reconcile closed 1 signed-out sockets" in unreachable_gateway.log()

    async def scheduler_saw_failure() -> bool:
        return "sweep answered 500" in sweeper.log()

    await eventually(scheduler_saw_failure, timeout=10)


async def test_callback_requires_its_own_token(gateway: GatewayProc) -> None:
    """The admin token does not open the internal callback, nor does no token."""
    import httpx

    body = {"sessions": [{"user_id": "u", "session_id": "s"}]}
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        for headers in (
            {},
            gateway.auth,
            {"Authorization": "Bearer not-the-callback-token"},
        ):
            response = await http.post("/internal/timeout", json=body, headers=headers)
            assert response.status_code == 401, headers
        ok = await http.post(
            "/internal/timeout",
            json=body,
            headers={"Authorization": f"Bearer {gateway.env['GATEWAY_CALLBACK_TOKEN']}"},
        )
    assert ok.status_code == 200
    assert ok.json() == {"status": "success", "closed": 0, "not_found": 1}
