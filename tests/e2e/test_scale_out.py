"""Several gateway instances on one Firestore, with the sweep: issue 5's scale-out behaviour.

Three long-lived gateway processes (A, B, C) share the Firestore and Auth emulators and a
callback token, which is also how they call each other. Extra processes are started to be
killed (SIGKILL) or drained (SIGTERM). Intervals are short (PING_INTERVAL=0.2, PONG_TIMEOUT=2,
SWEEP_INTERVAL=0.5), so an instance counts as dead 1.5 s after its last heartbeat; every
client that must stay signed in answers pings.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support import (
    UNIT,
    Client,
    GatewayProc,
    SweepStack,
    TokenMinter,
    eventually,
    start_gateway,
)

pytestmark = pytest.mark.e2e

SHORT = {
    "PING_INTERVAL": "0.2",
    "PONG_TIMEOUT": "2",
    "SWEEP_INTERVAL": "0.5",
    "PONG_FLUSH_INTERVAL": "0.1",
}


Spawn = Callable[..., GatewayProc]


@pytest.fixture(scope="module")
def spawn(firestore_host: str, project_id: str, minter: TokenMinter, callback_token: str) -> Spawn:
    """Starts one more instance of the deployment: the shared callback token, SHORT
    intervals, plus any setting given."""

    def start(**extra: str) -> GatewayProc:
        return start_gateway(
            firestore_host,
            project_id,
            minter,
            **{"GATEWAY_CALLBACK_TOKEN": callback_token, **SHORT, **extra},
        )

    return start


@pytest.fixture(scope="module")
def trio(spawn: Spawn) -> Iterator[tuple[GatewayProc, GatewayProc, GatewayProc]]:
    started = [spawn() for _ in range(3)]
    yield started[0], started[1], started[2]
    for proc in started:
        proc.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Every client a test opens, closed at its end."""
    opened: list[Client] = []
    yield opened
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


def uid(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def instance_of(gateway: GatewayProc) -> str:
    return gateway.env["GATEWAY_INSTANCE_ID"]


async def open_on(
    opened: list[Client], gateway: GatewayProc, user: str, *, silent: bool = False
) -> Client:
    client = await Client.open(gateway.ws(user), silent=silent)
    opened.append(client)
    return client


async def get(gateway: GatewayProc, path: str, **params: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http:
        response = await http.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def post(gateway: GatewayProc, path: str, body: dict[str, Any], **params: str) -> Any:
    async with httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http:
        return await http.post(path, json=body, params=params)


async def seen_from(gateway: GatewayProc, user: str, instances: list[str]) -> dict[str, Any]:
    """Wait until ``gateway`` sees the user's sockets on exactly these instances (the member's
    ``active_sessions`` is written through the write-behind buffer, a flush behind)."""

    async def check() -> dict[str, Any]:
        body = await get(gateway, f"/ws/status/{user}")
        return body if body["instances"] == sorted(instances) else {}

    return await eventually(check)


async def test_send_on_any_instance_reaches_the_users_sockets_on_the_others(
    trio: tuple[GatewayProc, GatewayProc, GatewayProc], clients: list[Client]
) -> None:
    """A user with sockets on A and C gets a message POSTed to B on both; B holds none."""
    a, b, c = trio
    user = uid("cross")
    on_a, on_c = await open_on(clients, a, user), await open_on(clients, c, user)
    await seen_from(b, user, [instance_of(a), instance_of(c)])

    payload = {"type": "notification", "data": {"message": "Order shipped!", "order_id": "7"}}
    response = await post(b, f"/ws/send/{user}", payload)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "success",
        "message": "Message sent successfully",
        "connections": 2,
        "scope": "deployment",
        "instances": sorted([instance_of(a), instance_of(c)]),
        "unreachable_instances": [],
    }
    assert await on_a.next() == payload
    assert await on_c.next() == payload

    missing = await post(b, f"/ws/send/{uid('nobody')}", payload)
    assert missing.status_code == 404
    assert missing.json()["message"].endswith("is not connected")
    async with httpx.AsyncClient(base_url=b.http) as http:
        metrics = (await http.get("/metrics")).text
    assert 'gateway_peer_calls_total{call="send",outcome="ok"}' in metrics


async def test_broadcast_reaches_every_instance_and_counts_each_user_once(
    trio: tuple[GatewayProc, GatewayProc, GatewayProc], clients: list[Client]
) -> None:
    """recipients counts users across instances (a user on two instances once); the excluded
    user gets nothing."""
    a, b, c = trio
    both, solo, excluded = uid("both"), uid("solo"), uid("excluded")
    both_a, both_c = await open_on(clients, a, both), await open_on(clients, c, both)
    solo_b = await open_on(clients, b, solo)
    excluded_c = await open_on(clients, c, excluded)
    await seen_from(a, both, [instance_of(a), instance_of(c)])
    # The broadcast is counted from the instances' own registries, not from Firestore.
    payload = {"type": "announcement", "data": {"title": "Maintenance"}}
    response = await post(a, "/ws/broadcast", payload, exclude_user=excluded)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["message"]) == ("success", "Message broadcasted successfully")
    assert (body["recipients"], body["connections"]) == (2, 3)
    assert (body["scope"], body["unreachable_instances"]) == ("deployment", [])
    assert sorted(body["instances"]) == sorted(instance_of(g) for g in trio)
    for client in (both_a, both_c, solo_b):
        assert await client.next() == payload
    # The excluded user's first frame other than pings is the direct message sent after.
    direct = {"type": "direct", "n": 1}
    assert (await post(b, f"/ws/send/{excluded}", direct)).status_code == 200
    assert await excluded_c.next() == direct


async def test_stats_answers_for_the_deployment_or_for_one_instance(
    trio: tuple[GatewayProc, GatewayProc, GatewayProc], clients: list[Client]
) -> None:
    """Default scope counts every live instance (users once); ``scope=instance`` only one."""
    a, b, c = trio
    one, two = uid("s1"), uid("s2")
    await open_on(clients, a, one)
    await open_on(clients, b, two)
    await open_on(clients, c, two)

    whole = await get(c, "/ws/stats")
    assert whole["scope"] == "deployment"
    assert whole["instances"] == sorted(instance_of(g) for g in trio)
    assert whole["unreachable_instances"] == []
    assert whole["total_connections"] == 3
    assert sorted(whole["connected_users"]) == sorted([one, two])
    assert whole["total_users"] == 2
    assert sorted(whole["pong_writers"]) == whole["instances"]
    assert (whole["ping_interval_seconds"], whole["pong_timeout_seconds"]) == (0.2, 2)

    local = await get(c, "/ws/stats", scope="instance")
    assert (local["scope"], local["instances"]) == ("instance", [instance_of(c)])
    assert (local["total_connections"], local["connected_users"]) == (1, [two])
    assert list(local["pong_writers"]) == [instance_of(c)]


async def test_internal_routes_take_the_callback_credential_only(
    trio: tuple[GatewayProc, GatewayProc, GatewayProc], callback_token: str
) -> None:
    """The peer routes are not a back door: no token, or the admin token, gets 401."""
    a = trio[0]
    async with httpx.AsyncClient(base_url=a.http) as http:
        for headers in ({}, a.auth, {"Authorization": "Bearer wrong-token-wrong-token"}):
            assert (await http.get("/internal/stats", headers=headers)).status_code == 401
            sent = await http.post("/internal/send/u", json={"type": "x"}, headers=headers)
            assert sent.status_code == 401
            cast = await http.post("/internal/broadcast", json={"type": "x"}, headers=headers)
            assert cast.status_code == 401
        ok = await http.get(
            "/internal/stats", headers={"Authorization": f"Bearer {callback_token}"}
        )
        assert ok.status_code == 200 and ok.json()["scope"] == "instance"


async def test_sweep_times_out_the_users_sockets_on_every_instance(
    trio: tuple[GatewayProc, GatewayProc, GatewayProc],
    sweeper: SweepStack,
    clients: list[Client],
    firestore_client: Any,
) -> None:
    """A silent user with sockets on A and C gets the timeout and 4408 on both; a user who
    answers, on B, stays."""
    a, b, c = trio
    silent, live = uid("silent"), uid("live")
    quiet_a = await open_on(clients, a, silent, silent=True)
    quiet_c = await open_on(clients, c, silent, silent=True)
    chatty = await open_on(clients, b, live)
    for quiet in (quiet_a, quiet_c):
        frame = await quiet.next(timeout=30)
        assert frame["type"] == "timeout"
        assert await quiet.closed() == 4408
    member = firestore_client.collection("members").document(silent).get().to_dict()
    assert member["is_signed_in"] is False
    await asyncio.sleep(3 * 2 * UNIT)
    assert chatty.close_code is None and chatty.frames.empty()
    assert firestore_client.collection("members").document(live).get().get("is_signed_in")


async def test_a_killed_instance_loses_no_sign_out_and_its_users_reconnect_elsewhere(
    spawn: Spawn,
    trio: tuple[GatewayProc, GatewayProc, GatewayProc],
    sweeper: SweepStack,
    clients: list[Client],
    firestore_client: Any,
) -> None:
    """SIGKILL an instance: a user who reconnects to B stays signed in and is counted on B
    only; a user who does not come back is still signed out; the sweep skips the dead
    instance and keeps timing out the users of the live ones."""
    a, b, c = trio
    victim = spawn()
    mover, gone, idle_b = uid("mover"), uid("gone"), uid("idle")
    try:
        await open_on(clients, victim, mover)
        await open_on(clients, victim, gone)
        await seen_from(c, mover, [instance_of(victim)])
        assert victim.process.popen is not None
        os.kill(victim.process.popen.pid, signal.SIGKILL)
        # The client's socket drops without a close frame; it reconnects to another instance.
        await open_on(clients, b, mover)
        quiet_b = await open_on(clients, b, idle_b, silent=True)

        assert (await quiet_b.next(timeout=30))["type"] == "timeout"
        assert await quiet_b.closed() == 4408

        def signed_in(user: str) -> Any:
            return firestore_client.collection("members").document(user).get().get("is_signed_in")

        async def gone_signed_out() -> bool:
            return signed_in(gone) is False

        await eventually(gone_signed_out, timeout=30)
        await seen_from(c, mover, [instance_of(b)])
        await asyncio.sleep(3 * 2 * UNIT)
        assert signed_in(mover) is True

        async def dead_instance_skipped() -> bool:
            return '"stale instance"' in sweeper.log()

        await eventually(dead_instance_skipped, timeout=15)
    finally:
        victim.stop()


async def test_a_drained_instance_stops_counting_at_once_and_its_users_move(
    spawn: Spawn,
    trio: tuple[GatewayProc, GatewayProc, GatewayProc],
    sweeper: SweepStack,
    clients: list[Client],
    firestore_client: Any,
) -> None:
    """SIGTERM: the instance closes its sockets with 1012 and marks itself stopped, so the
    others stop counting it without waiting for its heartbeat to age; its users reconnect to
    A and stay signed in."""
    a = trio[0]
    draining = spawn()
    user = uid("drained")
    try:
        first = await open_on(clients, draining, user)
        await seen_from(a, user, [instance_of(draining)])
        draining.stop()
        assert await first.closed() == 1012
        stopped = firestore_client.collection("gateway_instances").document(instance_of(draining))
        assert stopped.get().get("stopped_at") is not None
        status = await get(a, f"/ws/status/{user}")
        assert (status["is_connected"], status["instances"]) == (False, [])
        await open_on(clients, a, user)
        await seen_from(trio[2], user, [instance_of(a)])
        await asyncio.sleep(3 * 2 * UNIT)
        assert firestore_client.collection("members").document(user).get().get("is_signed_in")
    finally:
        draining.stop()


async def test_a_hung_instance_is_reported_after_peer_timeout_and_others_are_served(
    spawn: Spawn,
    trio: tuple[GatewayProc, GatewayProc, GatewayProc],
    clients: list[Client],
    firestore_client: Any,
) -> None:
    """A registered, heartbeating instance that accepts connections and never answers costs a
    broadcast PEER_TIMEOUT, is named in unreachable_instances, and every other socket gets the
    message."""
    from datetime import UTC, datetime

    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # hold the connection until the caller gives up

    hung = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    hung_id = uid("hung")
    registry = firestore_client.collection("gateway_instances").document(hung_id)
    registry.set({"internal_url": f"http://127.0.0.1:{port}", "heartbeat_at": datetime.now(UTC)})
    impatient = spawn(PEER_TIMEOUT="1")
    try:
        user = uid("patient")
        client = await open_on(clients, trio[1], user)
        await seen_from(impatient, user, [instance_of(trio[1])])
        registry.set({"heartbeat_at": datetime.now(UTC)}, merge=True)
        started = asyncio.get_running_loop().time()
        response = await post(impatient, "/ws/broadcast", {"type": "news"})
        took = asyncio.get_running_loop().time() - started
        assert response.status_code == 200, response.text
        body = response.json()
        assert hung_id in body["unreachable_instances"]
        assert instance_of(trio[1]) in body["instances"]
        assert await client.next() == {"type": "news"}
        assert took < 5 * UNIT
    finally:
        impatient.stop()
        for writer in held:
            writer.close()
        hung.close()
        await hung.wait_closed()
        registry.delete()
