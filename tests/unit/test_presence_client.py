"""The Python presence client: its sans-I/O decisions without sockets, then its asyncio shell
against a tiny in-process ``websockets`` server standing in for the gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from presence_client import (
    Ack,
    CloseCode,
    Disconnected,
    PresenceClient,
    PresenceSendError,
    SignedOut,
    State,
    backoff_delay,
    decide_close,
    refresh_delay,
    socket_url,
    token_expiry,
)
from presence_client.buffer import Outgoing, RateLimit, SendBuffer, TokenBucket, encode_message
from presence_client.closing import Action, Backoff, is_stable
from presence_client.frames import FrameKind, classify_frame, parse_frame
from presence_client.tokens import on_invalid_token, token_is_stale

TIMEOUT_TEXT = "Your session has expired due to inactivity (3 hours). Please sign in again."


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT with these claims (the client never verifies; the gateway does)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def always(value: float) -> Callable[[], float]:
    return lambda: value


# --- backoff -------------------------------------------------------------------------------


def test_backoff_doubles_from_half_a_second_to_twenty() -> None:
    """With random() = 1 the caps are 0.5, 1, 2, 4, 8, 16, then 20 s for good."""
    caps = [backoff_delay(n, 0.5, 20.0, always(1.0)) for n in range(9)]
    assert caps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0]


def test_backoff_is_full_jitter() -> None:
    """The delay is random() times the cap: anywhere from 0 to the cap."""
    assert backoff_delay(3, 0.5, 20.0, always(0.0)) == 0.0
    assert backoff_delay(3, 0.5, 20.0, always(0.25)) == 1.0
    assert backoff_delay(-2, 0.5, 20.0, always(1.0)) == 0.5


def test_backoff_survives_a_very_long_outage() -> None:
    """Thousands of failed attempts still give a finite delay at the cap."""
    assert backoff_delay(10_000, 0.5, 20.0, always(1.0)) == 20.0


# --- close codes ---------------------------------------------------------------------------


def decide(code: int, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"attempt": 0, "auth_retried": False, "random": always(1.0)}
    options.update(kwargs)
    return decide_close(code, **options)


def test_4401_first_time_forces_a_token_refresh_and_reconnects_at_once() -> None:
    """4401: one forced get_token(True), no wait, the backoff does not grow."""
    d = decide(4401, attempt=3)
    assert (d.action, d.delay, d.force_refresh, d.auth_retried, d.attempt) == (
        Action.RECONNECT,
        0.0,
        True,
        True,
        3,
    )
    assert d.resend_unacked


def test_4401_after_the_forced_refresh_is_an_auth_error() -> None:
    """A second 4401 in a row stops with auth_error."""
    assert decide(4401, auth_retried=True).action is Action.AUTH_ERROR


def test_4401_after_a_working_connection_earns_a_new_forced_refresh() -> None:
    """A connection that got a ping (stable) forgets the earlier refusal."""
    d = decide(4401, auth_retried=True, stable=True)
    assert (d.action, d.force_refresh) == (Action.RECONNECT, True)


def test_4403_is_an_auth_error() -> None:
    """4403 (token for another user) stops with auth_error, no retry."""
    assert decide(4403).action is Action.AUTH_ERROR


def test_4408_signs_out() -> None:
    """4408 (session expired) signs out and never reconnects."""
    assert decide(4408).action is Action.SIGN_OUT
    assert decide(4408, reconnect=True, attempt=0).delay is None


def test_4429_backs_off_from_five_seconds() -> None:
    """4429: 5 s plus the normal jittered backoff, which grows."""
    first = decide(4429)
    second = decide(4429, attempt=first.attempt)
    assert (first.action, first.delay, first.attempt) == (Action.RECONNECT, 5.5, 1)
    assert second.delay == 6.0
    assert decide(4429, random=always(0.0)).delay == 5.0


def test_1012_reconnects_within_two_seconds_without_growing_the_backoff() -> None:
    """1012 (drain): random() * 2 s, attempt unchanged, unacked messages resent."""
    d = decide(1012, attempt=4, random=always(0.3))
    assert (d.action, d.delay, d.attempt, d.resend_unacked) == (
        Action.RECONNECT,
        pytest.approx(0.6),
        4,
        True,
    )


def test_4400_stops_with_invalid_user_id() -> None:
    """4400 stops (closed) with an invalid_user_id error."""
    d = decide(4400)
    assert (d.action, d.error_code) == (Action.STOP, "invalid_user_id")


@pytest.mark.parametrize(
    ("code", "resend"), [(1006, False), (1000, True), (1001, True), (1011, False), (4000, False)]
)
def test_other_codes_reconnect_with_the_normal_backoff(code: int, resend: bool) -> None:
    """Any other close: random() * min(20, 0.5 * 2**attempt); resend only after clean closes."""
    d = decide(code, attempt=2)
    assert (d.action, d.delay, d.attempt, d.resend_unacked) == (Action.RECONNECT, 2.0, 3, resend)


def test_a_close_by_the_app_or_without_reconnect_stops() -> None:
    """The application's close() and reconnect=False both stop instead of backing off."""
    assert decide(1006, closed_by_app=True).action is Action.STOP
    d = decide(1000, reconnect=False)
    assert (d.action, d.resend_unacked) == (Action.STOP, True)


def test_a_stable_connection_resets_the_backoff() -> None:
    """A connection that worked starts the schedule over at attempt 0."""
    assert decide(1006, attempt=7, stable=True).delay == 0.5
    assert is_stable(True, 0.1, 10.0) and is_stable(False, 10.0, 10.0)
    assert not is_stable(False, 9.9, 10.0) and not is_stable(False, None, 10.0)


def test_custom_backoff_policy_is_used() -> None:
    """The schedule's numbers come from the Backoff policy."""
    policy = Backoff(minimum=1.0, maximum=3.0, rate_limited=1.0, restart_jitter=0.5)
    assert decide(1006, attempt=5, backoff=policy).delay == 3.0
    assert decide(4429, backoff=policy).delay == 2.0
    assert decide(1012, backoff=policy).delay == 0.5


# --- frames --------------------------------------------------------------------------------


def test_frames_are_classified_by_type() -> None:
    """ping, ack, auth_ok, error and timeout have reactions; everything else is the app's."""
    assert [
        classify_frame({"type": t})
        for t in ["ping", "ack", "auth_ok", "error", "timeout", "notification", "other"]
    ] == [
        FrameKind.PING,
        FrameKind.ACK,
        FrameKind.AUTH_OK,
        FrameKind.ERROR,
        FrameKind.TIMEOUT,
        FrameKind.OTHER,
        FrameKind.OTHER,
    ]
    assert classify_frame({"type": 3}) is FrameKind.OTHER and classify_frame({}) is FrameKind.OTHER


def test_only_json_objects_in_text_frames_are_frames() -> None:
    """Binary frames, bad JSON and non-objects are not frames."""
    assert parse_frame('{"type": "ping"}') == {"type": "ping"}
    assert parse_frame(b'{"type": "ping"}') is None
    assert parse_frame("[1]") is None and parse_frame("{nope") is None


def test_an_invalid_token_answer_forces_once_then_waits() -> None:
    """invalid_token for an unforced refresh: force at once; for a forced one: retry later."""
    assert on_invalid_token(pending_forced=False) == "force"
    assert on_invalid_token(pending_forced=True) == "later"


# --- tokens --------------------------------------------------------------------------------


def test_token_expiry_reads_exp_without_verifying() -> None:
    """exp of a base64url JWT payload (with - and _ and no padding), in epoch seconds."""
    token = jwt({"exp": 1_800_000_000, "name": "ü?>~~~"})
    assert "-" in token.split(".")[1] or "_" in token.split(".")[1]
    assert token_expiry(token) == 1_800_000_000.0


@pytest.mark.parametrize(
    "token",
    [None, "", "abc", "a.b.c", jwt({"sub": "x"}), jwt({"exp": "soon"}), jwt({"exp": True})],
)
def test_token_expiry_is_none_for_anything_else(token: str | None) -> None:
    """Tokens that are not JWTs with a numeric exp are never refreshed."""
    assert token_expiry(token) is None


def test_refresh_is_scheduled_five_minutes_before_expiry() -> None:
    """An hour-long token is refreshed 55 minutes in."""
    assert refresh_delay(3600.0, 0.0) == 3300.0


def test_short_tokens_are_refreshed_halfway_and_expired_ones_at_once() -> None:
    """Under 10 minutes left: halfway; already expired: now."""
    assert refresh_delay(480.0, 0.0) == 240.0
    assert refresh_delay(600.0, 0.0) == 300.0
    assert refresh_delay(0.0, 1.0) == 0.0


def test_a_token_no_newer_than_the_current_one_is_stale() -> None:
    """Same token, or an exp not later: ask again with force_refresh."""
    old, new = jwt({"exp": 100}), jwt({"exp": 200})
    assert token_is_stale(old, old, 100.0)
    assert token_is_stale(jwt({"exp": 100, "n": 2}), old, 100.0)
    assert not token_is_stale(new, old, 100.0)
    assert not token_is_stale("opaque", "other", None)


def test_socket_url_is_built_from_the_base_url() -> None:
    """http(s) becomes ws(s), trailing slashes go, the user id and token are escaped."""
    assert socket_url("http://h:8000/", "u1") == "ws://h:8000/ws/connect/u1"
    assert socket_url("https://h", "a b") == "wss://h/ws/connect/a%20b"
    assert socket_url("ws://h", "u@x", "t+/=") == "ws://h/ws/connect/u%40x?token=t%2B%2F%3D"


# --- buffer and pacing ---------------------------------------------------------------------


def item(n: int) -> Outgoing[None]:
    return Outgoing(n, f"d{n}", encode_message(f"d{n}", n), None)


def test_message_frames_are_compact_json_and_refuse_nan() -> None:
    """{"type":"message","data":...,"id":N}; NaN is refused (the gateway refuses it)."""
    assert json.loads(encode_message(None, 1)) == {"type": "message", "data": None, "id": 1}
    with pytest.raises(ValueError):
        encode_message(math.nan, 2)


def test_buffer_keeps_order_and_drops_the_oldest_on_overflow() -> None:
    """Beyond its size the buffer drops its oldest messages, in order."""
    buffer: SendBuffer[None] = SendBuffer(2)
    assert buffer.push(item(1)) == [] and buffer.push(item(2)) == []
    assert [d.id for d in buffer.push(item(3))] == [1]
    assert [i.id for i in buffer] == [2, 3]
    with pytest.raises(ValueError):
        SendBuffer[None](0)


def test_unacked_messages_go_back_first_after_a_clean_close() -> None:
    """settle(resend=True): in-flight messages return to the front in id order."""
    buffer: SendBuffer[None] = SendBuffer(10)
    for n in (1, 2, 3):
        buffer.push(item(n))
    first, second = buffer.take(), buffer.take()
    assert first is not None and second is not None and buffer.unacked == 2
    buffer.push(item(4))
    settled = buffer.settle(resend=True)
    assert [i.id for i in settled.resent] == [1, 2]
    assert [i.id for i in buffer] == [1, 2, 3, 4] and buffer.unacked == 0


def test_unacked_messages_fail_after_an_unclean_close() -> None:
    """settle(resend=False): in-flight messages fail and are not sent again."""
    buffer: SendBuffer[None] = SendBuffer(10)
    buffer.push(item(1))
    buffer.push(item(2))
    buffer.take()
    settled = buffer.settle(resend=False)
    assert [i.id for i in settled.failed] == [1] and [i.id for i in buffer] == [2]


def test_resending_into_a_full_buffer_drops_the_oldest() -> None:
    """Requeued messages count towards the size; the oldest are dropped."""
    buffer: SendBuffer[None] = SendBuffer(2)
    buffer.push(item(1))
    buffer.take()
    buffer.push(item(2))
    buffer.push(item(3))
    settled = buffer.settle(resend=True)
    assert [i.id for i in settled.dropped] == [1] and [i.id for i in buffer] == [2, 3]


def test_acks_withdrawals_and_clear() -> None:
    """An ack removes its in-flight message once; withdraw removes a waiting one."""
    buffer: SendBuffer[None] = SendBuffer(5)
    for n in (1, 2, 3):
        buffer.push(item(n))
    buffer.take()
    assert buffer.ack(1) is not None and buffer.ack(1) is None
    assert buffer.ack("1") is None and buffer.ack(True) is None
    assert buffer.withdraw(3) and not buffer.withdraw(3)
    buffer.take()
    buffer.push(item(4))
    assert [i.id for i in buffer.clear()] == [2, 4]
    assert buffer.waiting == 0 and buffer.unacked == 0


def test_token_bucket_allows_a_burst_then_paces() -> None:
    """20 at once, then one every 0.1 s at 10/s."""
    bucket = TokenBucket(RateLimit(per_second=10, burst=20), now=0.0)
    assert all(bucket.take(0.0) == 0.0 for _ in range(20))
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.1) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.tokens == 19


# --- the asyncio shell against a stand-in gateway ------------------------------------------

Script = Callable[[ServerConnection, int], Awaitable[None]]


class StandIn:
    """A websockets server on port 0 running ``script(ws, n)`` for its n-th connection
    (1-based) and recording what it received."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[ServerConnection] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        try:
            await self.script(ws, len(self.connections))
        except ConnectionClosed:
            pass


@asynccontextmanager
async def stand_in(script: Script) -> AsyncIterator[StandIn]:
    gateway = StandIn(script)
    async with serve(gateway.handler, "127.0.0.1", 0) as server:
        gateway.port = server.sockets[0].getsockname()[1]
        yield gateway


class Tokens:
    """get_token that records its calls and hands out ``token(n)`` for the n-th call."""

    def __init__(self, token: Callable[[int], str] = lambda n: f"token-{n}") -> None:
        self.calls: list[bool] = []
        self.token = token

    async def __call__(self, force_refresh: bool) -> str:
        self.calls.append(force_refresh)
        return self.token(len(self.calls))


async def recv_json(ws: ServerConnection) -> dict[str, Any]:
    async with asyncio.timeout(3):
        frame = json.loads(await ws.recv())
    assert isinstance(frame, dict)
    return frame


async def hold(ws: ServerConnection) -> None:
    """Keep the socket open until the client closes it."""
    await ws.wait_closed()


def client_for(gateway: StandIn, tokens: Tokens | None = None, **options: Any) -> PresenceClient:
    options.setdefault("random", always(0.0))
    return PresenceClient(gateway.url, "user-1", tokens or Tokens(), **options)


def record(client: PresenceClient, *events: str) -> list[tuple[str, Any]]:
    """Every payload of these events, as (event, payload), in order."""
    seen: list[tuple[str, Any]] = []

    def listener(event: str) -> Callable[[Any], None]:
        return lambda payload: seen.append((event, payload))

    for event in events:
        # Names chosen at run time: on()'s overloads type-check literal names only.
        client.on(cast(Any, event), listener(event))
    return seen


async def test_a_ping_is_answered_with_a_pong() -> None:
    """A server ping gets {"type":"pong"}, then ping and pong events; the token is a header."""
    answered = asyncio.get_running_loop().create_future()

    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(json.dumps({"type": "ping", "timestamp": "t"}))
        assert ws.request is not None
        answered.set_result((await recv_json(ws), ws.request.headers["Authorization"]))
        await hold(ws)

    async with stand_in(script) as gateway:
        client = client_for(gateway)
        seen = record(client, "ping", "pong")
        async with client:
            async with asyncio.timeout(3):
                pong, auth = await answered
            assert pong == {"type": "pong"} and auth == "Bearer token-1"
            request = gateway.connections[0].request
            assert request is not None and request.path == "/ws/connect/user-1"
            async with asyncio.timeout(3):
                while len(seen) < 2:
                    await asyncio.sleep(0.01)
        assert [name for name, _ in seen] == ["ping", "pong"]
        assert client.state is State.CLOSED


async def test_pings_are_not_answered_with_answer_pings_off() -> None:
    """answer_pings=False: the ping event fires, no pong is sent."""
    got: list[str] = []

    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(json.dumps({"type": "ping"}))
        await ws.send(json.dumps({"type": "notification", "data": 1}))
        async for raw in ws:
            got.append(str(raw))

    async with stand_in(script) as gateway:
        client = client_for(gateway, answer_pings=False)
        notified = asyncio.Event()
        client.on_message("notification", lambda frame: notified.set())
        seen = record(client, "ping", "pong")
        async with client:
            async with asyncio.timeout(3):
                await notified.wait()
        assert [name for name, _ in seen] == ["ping"] and got == []


async def test_1012_reconnects_after_a_jittered_pause() -> None:
    """A draining gateway's 1012: reconnect within random() * 2 s, then connected again."""

    async def script(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.close(1012, "service restart")
        else:
            await hold(ws)

    async with stand_in(script) as gateway:
        client = client_for(gateway, random=always(0.01))
        seen = record(client, "disconnected", "connected")
        async with client:
            async with asyncio.timeout(3):
                while len(gateway.connections) < 2 or client.state is not State.CONNECTED:
                    await asyncio.sleep(0.01)
        assert seen[1] == ("disconnected", Disconnected(1012, "service restart", True, 0.02))
        assert [name for name, _ in seen[:3]] == ["connected", "disconnected", "connected"]


def test_4410_signs_out_by_the_service() -> None:
    """4410 (signed out by the service) signs out and never reconnects."""
    assert decide(4410).action is Action.SIGN_OUT
    assert decide(4410, reconnect=True, attempt=0).delay is None


async def test_signed_out_then_4410_is_a_sign_out_by_the_service() -> None:
    """The signed_out message + 4410: signed_out once, with the service's reason and text."""
    text = "You have been signed out. Please sign in again."

    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(json.dumps({"type": "signed_out", "reason": "x", "message": text}))
        await ws.close(4410, "signed out by the service")

    async with stand_in(script) as gateway:
        client = client_for(gateway, Tokens())
        seen = record(client, "signed_out")
        async with client:
            assert await client.wait_for_state(State.SIGNED_OUT, timeout=3) is State.SIGNED_OUT
            await asyncio.sleep(0.2)
            assert client.state is State.SIGNED_OUT
        assert seen == [("signed_out", SignedOut("signed out by the service", text, 4410, None))]


async def test_timeout_then_4408_signs_out_and_never_reconnects() -> None:
    """Timeout message + 4408: signed_out once with the server's text, no reconnect, sends fail."""

    async def script(ws: ServerConnection, n: int) -> None:
        await ws.send(json.dumps({"type": "timeout", "message": TIMEOUT_TEXT, "timestamp": "t"}))
        await ws.close(4408, "session expired")

    tokens = Tokens()
    async with stand_in(script) as gateway:
        client = client_for(gateway, tokens)
        seen = record(client, "signed_out", "disconnected")
        frames: list[dict[str, Any]] = []
        async with client:
            stream = client.messages()
            assert await client.wait_for_state(State.SIGNED_OUT, timeout=3) is State.SIGNED_OUT
            async with asyncio.timeout(3):
                frames = [frame async for frame in stream]
                while len(seen) < 2:
                    await asyncio.sleep(0.01)
            with pytest.raises(PresenceSendError) as caught:
                await client.send("late")
            assert caught.value.code == "signed_out"
            await asyncio.sleep(0.2)
            assert client.state is State.SIGNED_OUT
        assert seen == [
            ("signed_out", SignedOut("signed out for inactivity", TIMEOUT_TEXT, 4408, None)),
            ("disconnected", Disconnected(4408, "session expired", False)),
        ]
        assert [f["type"] for f in frames] == ["timeout"]
        assert len(gateway.connections) == 1 and tokens.calls == [False]


async def test_4408_alone_also_signs_out() -> None:
    """A 4408 without the timeout message: signed_out, message None, the close reason kept."""

    async def script(ws: ServerConnection, n: int) -> None:
        await ws.close(4408, "session expired")

    async with stand_in(script) as gateway:
        client = client_for(gateway)
        seen = record(client, "signed_out")
        async with client:
            await client.wait_for_state(State.SIGNED_OUT, timeout=3)
        assert seen == [
            ("signed_out", SignedOut("signed out for inactivity", None, 4408, "session expired"))
        ]
        assert len(gateway.connections) == 1


async def test_4401_twice_is_an_auth_error_after_one_forced_refresh() -> None:
    """4401, a forced get_token(True), 4401 again: auth_error and no more attempts."""

    async def script(ws: ServerConnection, n: int) -> None:
        await ws.close(4401, "invalid token")

    tokens = Tokens()
    async with stand_in(script) as gateway:
        client = client_for(gateway, tokens)
        seen = record(client, "auth_error")
        async with client:
            await client.wait_for_state(State.AUTH_ERROR, timeout=3)
            await asyncio.sleep(0.1)
        assert tokens.calls == [False, True] and len(gateway.connections) == 2
        assert [(e.code, e.reason) for _, e in seen] == [(4401, "invalid token")]


async def test_4403_is_an_auth_error_without_retry() -> None:
    """4403 stops at once: one connection, one token."""

    async def script(ws: ServerConnection, n: int) -> None:
        await ws.close(4403, "token is for another user")

    tokens = Tokens()
    async with stand_in(script) as gateway:
        async with client_for(gateway, tokens) as client:
            await client.wait_for_state(State.AUTH_ERROR, timeout=3)
            await asyncio.sleep(0.1)
        assert tokens.calls == [False] and len(gateway.connections) == 1


async def test_4400_closes_with_an_invalid_user_id_error() -> None:
    """4400 ends in closed with an invalid_user_id error event."""

    async def script(ws: ServerConnection, n: int) -> None:
        await ws.close(4400, "invalid user id")

    async with stand_in(script) as gateway:
        client = client_for(gateway)
        seen = record(client, "error")
        await client.start()
        await client.wait_for_state(State.CLOSED, timeout=3)
        assert [e.code for _, e in seen] == ["invalid_user_id"]
        await client.close()


async def test_4429_waits_at_least_the_rate_limited_floor() -> None:
    """4429: the reported delay is the floor plus the jittered backoff."""

    async def script(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.close(4429, "too many sockets for this user")
        else:
            await hold(ws)

    async with stand_in(script) as gateway:
        client = client_for(gateway, backoff_rate_limited=0.05, random=always(1.0))
        seen = record(client, "disconnected")
        async with client:
            await client.wait_for_state(State.RECONNECTING, timeout=3)
            await client.wait_for_state(State.CONNECTED, timeout=3)
        assert seen[0][1].delay == pytest.approx(0.05 + 0.5)


async def test_an_unreachable_gateway_is_retried_with_growing_backoff() -> None:
    """Nothing listening: connect_failed errors, 1006 disconnects on the backoff schedule."""
    async with stand_in(hold_script) as gateway:
        port = gateway.port
    client = PresenceClient(
        f"ws://127.0.0.1:{port}", "u", None, random=always(1.0), backoff_min=0.01
    )
    seen = record(client, "disconnected", "error")
    async with client:
        async with asyncio.timeout(3):
            while len(seen) < 6:
                await asyncio.sleep(0.01)
    drops = [e for name, e in seen if name == "disconnected"]
    assert [(e.code, e.delay) for e in drops[:3]] == [(1006, 0.01), (1006, 0.02), (1006, 0.04)]
    assert [name for name, _ in seen[:2]] == ["error", "disconnected"]
    assert (seen[0][1].source, seen[0][1].code) == ("socket", "connect_failed")


async def hold_script(ws: ServerConnection, n: int) -> None:
    await hold(ws)


async def test_buffer_overflow_drops_the_oldest_and_flushes_the_rest_in_order() -> None:
    """Oldest buffered send raises overflow; the rest go out in order on connect and get acks."""
    received: list[dict[str, Any]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            received.append(frame)
            await ws.send(json.dumps({"type": "ack", "id": frame["id"], "timestamp": "t"}))

    async with stand_in(script) as gateway:
        client = client_for(gateway, buffer_size=2)
        seen = record(client, "overflow")
        first, second, third = client.send("a"), client.send("b"), client.send({"c": 3})
        with pytest.raises(PresenceSendError) as caught:
            await first
        assert (caught.value.code, caught.value.id, caught.value.data) == ("overflow", 1, "a")
        assert [(e.id, e.data) for _, e in seen] == [(1, "a")]
        assert client.buffered == 2
        async with client:
            async with asyncio.timeout(3):
                assert await second == Ack(2, "t")
                assert await third == Ack(3, "t")
        assert received == [
            {"type": "message", "data": "b", "id": 2},
            {"type": "message", "data": {"c": 3}, "id": 3},
        ]


async def test_unacked_messages_are_resent_after_a_clean_close() -> None:
    """A message the gateway closed on (1000) without acking is sent again, same id."""
    received: list[tuple[int, dict[str, Any]]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        frame = await recv_json(ws)
        received.append((n, frame))
        if n == 1:
            await ws.close(1000, "bye")
            return
        await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
        await hold(ws)

    async with stand_in(script) as gateway:
        async with client_for(gateway) as client:
            async with asyncio.timeout(3):
                assert await client.send("x") == Ack(1, None)
        assert [(n, f["id"]) for n, f in received] == [(1, 1), (2, 1)]


async def test_unacked_messages_fail_maybe_delivered_after_a_drop() -> None:
    """After a drop (1006) an unacked send fails with maybe_delivered and is not resent."""
    received: list[int] = []

    async def script(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await recv_json(ws)
            received.append(n)
            ws.transport.abort()
        else:
            async for _ in ws:
                received.append(n)

    async with stand_in(script) as gateway:
        async with client_for(gateway) as client:
            with pytest.raises(PresenceSendError) as caught:
                async with asyncio.timeout(3):
                    await client.send("x")
            assert (caught.value.code, caught.value.maybe_delivered) == ("disconnected", True)
            await client.wait_for_state(State.CONNECTED, timeout=3)
            await asyncio.sleep(0.1)
        assert received == [1]


async def test_the_flush_is_paced_by_the_rate_limit() -> None:
    """A burst goes at once, the rest at per_second."""
    times: list[float] = []

    async def script(ws: ServerConnection, n: int) -> None:
        async for _ in ws:
            times.append(time.monotonic())

    async with stand_in(script) as gateway:
        client = client_for(gateway, rate_limit=RateLimit(per_second=40, burst=2))
        for n in range(6):
            client.send(n)
        async with client:
            async with asyncio.timeout(3):
                while len(times) < 6:
                    await asyncio.sleep(0.01)
        # 4 frames beyond the burst at 40/s: at least 0.1 s (less a little timer slack).
        assert times[-1] - times[0] >= 0.09


async def test_the_token_is_refreshed_on_the_live_socket_before_it_expires() -> None:
    """A short token is refreshed halfway; invalid_token forces a refresh; auth_ok is reported."""
    now = int(time.time())
    tokens = Tokens(lambda n: jwt({"exp": now + 1 if n == 1 else now + 3600, "n": n}))
    auths: list[tuple[dict[str, Any], bool]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        first = await recv_json(ws)
        await ws.send(json.dumps({"type": "error", "code": "invalid_token", "message": "no"}))
        second = await recv_json(ws)
        await ws.send(json.dumps({"type": "auth_ok", "expires_at": "2099-01-01T00:00:00+00:00"}))
        auths.extend([(first, False), (second, True)])
        await hold(ws)

    async with stand_in(script) as gateway:
        client = client_for(gateway, tokens)
        seen = record(client, "token_refreshed", "error")
        async with client:
            async with asyncio.timeout(4):
                while not any(name == "token_refreshed" for name, _ in seen):
                    await asyncio.sleep(0.01)
        assert tokens.calls == [False, False, True]
        assert [frame["type"] for frame, _ in auths] == ["auth", "auth"]
        assert auths[0][0]["token"] == tokens.token(2) and auths[1][0]["token"] == tokens.token(3)
        assert [name for name, _ in seen] == ["error", "token_refreshed"]
        assert seen[1][1].expires_at == "2099-01-01T00:00:00+00:00"


async def test_refresh_token_sends_only_a_changed_token() -> None:
    """refresh_token() sends {"type":"auth"} when get_token has a newer token, else nothing."""
    exp = int(time.time()) + 3600
    tokens = Tokens(lambda n: jwt({"exp": exp if n < 3 else exp + 60, "n": min(n, 2)}))
    frames: list[dict[str, Any]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        async for raw in ws:
            frames.append(json.loads(raw))

    async with stand_in(script) as gateway:
        async with client_for(gateway, tokens) as client:
            await client.wait_for_state(State.CONNECTED, timeout=3)
            await client.refresh_token()  # the second call hands back the same token
            await client.refresh_token()
            async with asyncio.timeout(3):
                while not frames:
                    await asyncio.sleep(0.01)
    assert tokens.calls == [False, False, False]
    assert frames == [{"type": "auth", "token": tokens.token(3)}]


async def test_start_after_a_sign_out_starts_over() -> None:
    """A terminal state stays until start(), which connects again from attempt 0."""

    async def script(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.close(4408, "session expired")
        else:
            await hold(ws)

    async with stand_in(script) as gateway:
        async with client_for(gateway) as client:
            await client.wait_for_state(State.SIGNED_OUT, timeout=3)
            await client.start()
            await client.start()  # a no-op while active
            await client.wait_for_state(State.CONNECTED, timeout=3)
        assert len(gateway.connections) == 2


async def test_close_stops_for_good_and_fails_what_is_waiting() -> None:
    """close(): state closed, waiting sends raise closed, nothing reconnects."""
    async with stand_in(hold_script) as gateway:
        client = client_for(gateway, rate_limit=RateLimit(per_second=0.001, burst=1))
        await client.start()
        await client.wait_for_state(State.CONNECTED, timeout=3)
        client.send("goes")
        waiting = client.send("waits")
        await client.close()
        with pytest.raises(PresenceSendError) as caught:
            await waiting
        assert caught.value.code == "closed" and client.state is State.CLOSED
        await asyncio.sleep(0.1)
        assert len(gateway.connections) == 1


async def test_bad_sends_fail_at_once_and_listener_errors_are_reported() -> None:
    """Bad or oversized data fail the send; listener errors are reported; bad names refused."""
    errors: list[BaseException] = []
    client = PresenceClient(
        "http://127.0.0.1:1", "u", None, max_message_bytes=64, report_error=errors.append
    )
    with pytest.raises(PresenceSendError) as caught:
        await client.send({"x": {1, 2}})
    assert caught.value.code == "invalid_data"
    with pytest.raises(PresenceSendError) as caught:
        await client.send("é" * 40)
    assert caught.value.code == "message_too_large"
    client.on("state", lambda event: 1 / 0)
    await client.close()
    assert client.state is State.CLOSED and isinstance(errors[0], ZeroDivisionError)
    with pytest.raises(ValueError):
        client.on("signedOut", print)  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        PresenceClient("ftp://h", "u", None)


async def test_async_listeners_run_as_tasks() -> None:
    """A listener returning a coroutine is run; its exception is reported."""
    errors: list[BaseException] = []
    ran = asyncio.Event()

    async def listener(event: Any) -> None:
        ran.set()
        raise RuntimeError("boom")

    client = PresenceClient("ws://127.0.0.1:1", "u", None, report_error=errors.append)
    client.on("state", listener)
    await client.close()
    async with asyncio.timeout(3):
        await ran.wait()
        while not errors:
            await asyncio.sleep(0.01)
    assert isinstance(errors[0], RuntimeError)


def test_close_codes_match_the_gateway() -> None:
    """The enum carries the gateway's codes."""
    assert (CloseCode.SESSION_EXPIRED, CloseCode.RATE_LIMITED, CloseCode.WRONG_USER) == (
        4408,
        4429,
        4403,
    )
