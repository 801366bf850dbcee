"""The Python presence client against a real gateway process, with real Firebase ID tokens from
the Auth emulator: it stays connected answering pings, receives REST sends, gets its messages
acknowledged, refreshes its token on the live socket, stops on a refused token, and (with the
sweep on short intervals) ends signed out, for good, when it does not answer pings."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.storage.schema import IS_SIGNED_IN, LAST_PONG_AT, MEMBERS
from presence_client import Ack, PresenceClient, SignedOut, State
from tests.support import (
    UNIT,
    GatewayProc,
    SweepStack,
    TokenMinter,
    eventually,
    start_gateway,
    unsigned_token,
)

pytestmark = pytest.mark.e2e

#: The short-interval stack of the last test (read by the ``sweeper`` fixture).
SHORT = {"PING_INTERVAL": "0.2", "PONG_TIMEOUT": "2", "SWEEP_INTERVAL": "0.5"}
TIMEOUT_TEXT = "Your session has expired due to inactivity (2 seconds). Please sign in again."


def uid() -> str:
    return f"pc-{uuid.uuid4().hex[:12]}"


class Tokens:
    """get_token for one uid from the Auth emulator (minting blocks: run it in a thread),
    recording each call's force_refresh; ``first`` replaces the first answer."""

    def __init__(self, minter: TokenMinter, user: str, first: str | None = None) -> None:
        self.minter, self.user, self.first = minter, user, first
        self.calls: list[bool] = []

    async def __call__(self, force_refresh: bool) -> str:
        self.calls.append(force_refresh)
        if self.first is not None and len(self.calls) == 1:
            return self.first
        return await asyncio.to_thread(self.minter, self.user)


def new_client(
    gateway: GatewayProc, user: str, get_token: Tokens, **options: Any
) -> PresenceClient:
    return PresenceClient(f"ws://127.0.0.1:{gateway.port}", user, get_token, **options)


def member(firestore_client: Any, user: str) -> dict[str, Any] | None:
    snapshot = firestore_client.collection(MEMBERS).document(user).get()
    return snapshot.to_dict() if snapshot.exists else None


def count(client: PresenceClient, event: str) -> list[Any]:
    """The payloads of one event, as they come."""
    seen: list[Any] = []
    client.on(event, seen.append)  # type: ignore[call-overload]
    return seen


async def test_stays_connected_answering_pings(
    gateway: GatewayProc, minter: TokenMinter, firestore_client: Any
) -> None:
    """The client answers every ping: last_pong_at moves in Firestore, one connection."""
    user = uid()
    tokens = Tokens(minter, user)
    client = new_client(gateway, user, tokens)
    connects, pongs = count(client, "connected"), count(client, "pong")
    async with client:
        await client.wait_for_state(State.CONNECTED, timeout=20 * UNIT)

        async def first_pong() -> Any:
            record = member(firestore_client, user)
            return record and record.get(LAST_PONG_AT)

        initial = await eventually(first_pong, timeout=20)
        answered = len(pongs)

        async def advanced() -> bool:
            record = member(firestore_client, user)
            return bool(record and record[LAST_PONG_AT] > initial)

        await eventually(advanced, timeout=20)
        assert len(pongs) > answered
        assert client.state is State.CONNECTED
    assert len(connects) == 1 and tokens.calls == [False]


async def test_receives_a_rest_send(gateway: GatewayProc, minter: TokenMinter) -> None:
    """POST /ws/send/{uid} reaches the client as a frame (on_message and messages())."""
    user = uid()
    payload = {"type": "notification", "data": {"message": "Order shipped!", "order_id": "1"}}
    handled: list[dict[str, Any]] = []
    async with (
        new_client(gateway, user, Tokens(minter, user)) as client,
        httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http,
    ):
        client.on_message("notification", handled.append)
        stream = client.messages("notification")
        await client.wait_for_state(State.CONNECTED, timeout=20 * UNIT)

        async def delivered() -> bool:
            # The gateway registers the socket once it has checked the token: 404 until then.
            response = await http.post(f"/ws/send/{user}", json=payload)
            return response.status_code == 200

        await eventually(delivered, timeout=20)
        async with asyncio.timeout(10 * UNIT):
            frame = await anext(stream)
        stream.close()
    assert frame == payload and handled[0] == payload


async def test_sends_are_acknowledged(gateway: GatewayProc, minter: TokenMinter) -> None:
    """send() returns the gateway's ack, for a message buffered before start() and a live one."""
    user = uid()
    client = new_client(gateway, user, Tokens(minter, user))
    early = client.send({"n": 0})
    async with client:
        async with asyncio.timeout(20 * UNIT):
            first = await early
            second = await client.send({"text": "hello", "n": 1})
    assert isinstance(first, Ack) and isinstance(second, Ack)
    assert (first.id, second.id) == (1, 2)
    assert second.timestamp is not None
    assert datetime.fromisoformat(second.timestamp).tzinfo is not None


async def test_a_refreshed_token_gets_auth_ok(
    gateway: GatewayProc, minter: TokenMinter, project_id: str
) -> None:
    """A token expiring in seconds is replaced on the live socket: auth_ok, no reconnect."""
    user = uid()
    short = unsigned_token(project_id, user, exp=int(time.time()) + 6)
    tokens = Tokens(minter, user, first=short)
    client = new_client(gateway, user, tokens)
    refreshed, connects = count(client, "token_refreshed"), count(client, "connected")
    async with client:
        await client.wait_for_state(State.CONNECTED, timeout=20 * UNIT)

        async def got_auth_ok() -> bool:
            return bool(refreshed)

        await eventually(got_auth_ok, timeout=20)
        expires_at = datetime.fromisoformat(refreshed[0].expires_at)
        assert expires_at > datetime.now(UTC) + timedelta(minutes=30)
        assert client.state is State.CONNECTED
    assert tokens.calls == [False, False] and len(connects) == 1


async def test_a_token_for_another_user_is_an_auth_error_without_retry(
    gateway: GatewayProc, minter: TokenMinter
) -> None:
    """4403 (token is for another user): state auth_error, one connection, no retry loop."""
    user = uid()
    tokens = Tokens(minter, "intruder-" + user)
    client = new_client(gateway, user, tokens, random=lambda: 0.0)
    errors, attempts = count(client, "auth_error"), count(client, "connecting")
    async with client:
        await client.wait_for_state(State.AUTH_ERROR, timeout=20 * UNIT)
        await asyncio.sleep(1.0)
        assert client.state is State.AUTH_ERROR
    assert [(e.code, e.reason) for e in errors] == [(4403, "token is for another user")]
    assert len(attempts) == 1 and tokens.calls == [False]


async def test_an_invalid_token_gets_one_forced_refresh_then_an_auth_error(
    gateway: GatewayProc, minter: TokenMinter
) -> None:
    """4401 twice: one get_token(True) retry, then auth_error and nothing more."""
    user = uid()
    calls: list[bool] = []

    async def bad_token(force_refresh: bool) -> str:
        calls.append(force_refresh)
        return "not-a-jwt"

    client = PresenceClient(f"ws://127.0.0.1:{gateway.port}", user, bad_token)
    errors = count(client, "auth_error")
    async with client:
        await client.wait_for_state(State.AUTH_ERROR, timeout=20 * UNIT)
        await asyncio.sleep(1.0)
    assert calls == [False, True]
    assert [(e.code, e.reason) for e in errors] == [(4401, "invalid token")]


# --- the short-interval stack: gateway, sweep function, scheduler ----------------------------
# Last in the module: the sweep's short PONG_TIMEOUT applies to every member of the project.


@pytest.fixture(scope="module")
def short_gateway(
    firestore_host: str, project_id: str, callback_token: str, minter: TokenMinter
) -> Iterator[GatewayProc]:
    """A gateway with PONG_TIMEOUT=2, SWEEP_INTERVAL=0.5 that the sweep calls back."""
    proc = start_gateway(
        firestore_host, project_id, minter, GATEWAY_CALLBACK_TOKEN=callback_token, **SHORT
    )
    yield proc
    proc.stop()


async def test_a_client_that_does_not_answer_pings_ends_signed_out(
    short_gateway: GatewayProc,
    sweeper: SweepStack,
    minter: TokenMinter,
    firestore_client: Any,
) -> None:
    """answer_pings=False: the sweep times it out; signed_out with the message, no reconnect."""
    user = uid()
    tokens = Tokens(minter, user)
    await asyncio.to_thread(minter, user)  # the account exists before the clock starts
    client = new_client(short_gateway, user, tokens, answer_pings=False)
    signed_out, attempts = count(client, "signed_out"), count(client, "connecting")
    disconnects, pings = count(client, "disconnected"), count(client, "ping")
    async with client:
        await client.wait_for_state(State.SIGNED_OUT, timeout=60 * UNIT)
        # Well past a few sweeps and backoff windows: still signed out, no new attempt.
        await asyncio.sleep(3.0)
        assert client.state is State.SIGNED_OUT
    assert signed_out == [SignedOut("signed out for inactivity", TIMEOUT_TEXT, 4408, None)]
    assert pings, "the gateway kept pinging; the client kept quiet"
    assert len(attempts) == 1 and tokens.calls == [False]
    assert [(d.code, d.will_reconnect) for d in disconnects] == [(4408, False)]
    record = member(firestore_client, user)
    assert record is not None and record[IS_SIGNED_IN] is False
