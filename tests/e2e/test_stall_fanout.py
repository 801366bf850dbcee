"""A room send around a Firestore stall names the instance that missed it (found by the soak,
docs/soak.md): three gateway instances on the Pub/Sub emulator, whose only way to Firestore is a
``tests.throttle.ThrottleProxy`` that the test stops (``rate = 0``) and resumes, while the
instance holding one member is SIGSTOPped and cannot receive.

Before the fix, a stalled registry made every heartbeat stale at once (or could not be read),
the answering instance waited for nobody by name, and the send answered complete. The rule
itself, with fakes, is in tests/unit/test_liveness.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PubSubEmulator
from tests.e2e.conftest import Cluster, start_cluster
from tests.support import Client, GatewayProc, TokenMinter, eventually
from tests.throttle import ThrottleProxy

pytestmark = pytest.mark.e2e

#: An instance counts as dead 1.5 s after its last heartbeat; FANOUT_TIMEOUT is 2 s.
SHORT = {
    "SWEEP_INTERVAL": "0.5",
    "PONG_TIMEOUT": "60",
    "FANOUT_TIMEOUT": "2",
    "WS_PUBLIC_ROOM_PREFIXES": "public:",
}
ROOM = "public:stall"


@pytest.fixture(scope="module")
def link(firestore_host: str) -> Iterator[ThrottleProxy]:
    """The proxy in front of the session's Firestore emulator (unthrottled until stopped)."""
    proxy = ThrottleProxy(firestore_host).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def cluster(
    link: ThrottleProxy, project_id: str, minter: TokenMinter, pubsub: PubSubEmulator
) -> Iterator[Cluster]:
    cluster = start_cluster(link.address, project_id, minter, pubsub, "stall", **SHORT)
    yield cluster
    cluster.stop()


def instance_of(gateway: GatewayProc) -> str:
    return gateway.env["GATEWAY_INSTANCE_ID"]


def admin(gateway: GatewayProc) -> httpx.AsyncClient:
    """A client of this instance alone (not the round-robin proxy)."""
    token = gateway.env["GATEWAY_ADMIN_TOKEN"]
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=gateway.http, headers=headers, timeout=30)


async def room_send(gateway: GatewayProc, text: str) -> dict[str, Any]:
    """POST /ws/rooms/{room}/send answered by this instance."""
    async with admin(gateway) as http:
        response = await http.post(f"/ws/rooms/{ROOM}/send", json={"type": text})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def member(gateway: GatewayProc) -> Client:
    """A socket on this instance, joined to the room."""
    client = await Client.open(gateway.ws(f"stall-{secrets.token_hex(4)}"))
    await client.ws.send(json.dumps({"type": "join", "room": ROOM}))
    assert (await client.next())["type"] == "joined"
    return client


async def test_a_room_send_around_a_firestore_stall_names_the_instance_that_missed_it(
    cluster: Cluster, link: ThrottleProxy
) -> None:
    """With Firestore stalled (registry unreadable) and, once it resumed, every heartbeat
    stale, a room send answered by A names C (SIGSTOPped, holding a member) unreachable
    instead of answering complete; once the grace after the stall is over, C (still
    stopped, so dead by the clock) is dropped again."""
    a, _, c = cluster.instances
    on_a, on_c = await member(a), await member(c)
    assert c.process.popen is not None
    pid = c.process.popen.pid
    try:

        async def all_answer() -> dict[str, Any]:
            body = await room_send(a, "warm-up")
            return body if body["connections"] == 2 and not body["unreachable_instances"] else {}

        # A's registry read now knows B and C as live.
        await eventually(all_answer, timeout=20)
        for client in (on_a, on_c):
            while not client.frames.empty():
                client.frames.get_nowait()

        link.rate = 0
        os.kill(pid, signal.SIGSTOP)
        # Past A's one-second cache, and every heartbeat past its 1.5 s.
        await asyncio.sleep(1.6)
        during = await room_send(a, "during")
        assert (during["scope"], during["unreachable_instances"]) == (
            "deployment",
            [instance_of(c)],
        ), during
        assert "using the last live set" in a.log()

        link.rate = None

        async def reads_again() -> bool:
            async with admin(a) as http:
                status = await http.get("/ws/status/nobody")
            return status.status_code == 200 and status.json()["scope"] == "deployment"

        await eventually(reads_again, timeout=20)
        after = await room_send(a, "after")
        assert (after["scope"], after["unreachable_instances"]) == (
            "deployment",
            [instance_of(c)],
        ), after
        assert after["connections"] == 1
        assert [(await on_a.next())["type"] for _ in range(2)] == ["during", "after"]

        async def c_dropped() -> dict[str, Any]:
            body = await room_send(a, "later")
            return body if body["unreachable_instances"] == [] else {}

        await eventually(c_dropped, timeout=30)
    finally:
        link.rate = None
        os.kill(pid, signal.SIGCONT)
    # C was only stopped: its member gets what it missed, late (in any order, as Pub/Sub
    # delivers; the later sends after them).
    missed: set[str] = set()
    while not {"during", "after"} <= missed:
        missed.add((await on_c.next(timeout=20))["type"])
    await on_a.close()
    await on_c.close()
