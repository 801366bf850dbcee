"""Durable delivery across three gateway instances behind the round-robin proxy, over the
Pub/Sub and Firestore emulators, with the Python client (``recover=True``) as the app.

The gateways run in a Firestore project of their own (streams and the documents of these
sockets stay out of the shared project that the corpus test scans), so with AUTH_MODE=off:
tokens would have to be minted for that project, and recovery does not depend on them.
``STREAM_HISTORY_SIZE`` is small so that the window can be exceeded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gateway.storage.schema import STREAMS
from presence_client import PresenceClient, Recovery, State, StreamMessage
from tests.conftest import PubSubEmulator
from tests.e2e.conftest import Cluster, start_cluster
from tests.support import UNIT, GatewayProc, eventually, start_gateway, start_proxy

pytestmark = pytest.mark.e2e

PROJECT = "demo-durable-e2e"
HISTORY = 20


@pytest.fixture(scope="module")
def cluster(firestore_host: str, pubsub: PubSubEmulator) -> Iterator[Cluster]:
    started = start_cluster(
        firestore_host,
        PROJECT,
        None,
        pubsub,
        "durable",
        STREAM_HISTORY_SIZE=str(HISTORY),
        PONG_FLUSH_INTERVAL="0.1",
    )
    yield started
    started.stop()


@pytest.fixture
def firestore(firestore_host: str) -> Iterator[Any]:
    from google.cloud import firestore

    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    client = firestore.Client(project=PROJECT)
    yield client
    client.close()


class App:
    """A PresenceClient with recover=True and what it heard: stream messages and recoveries."""

    def __init__(self, url: str, user: str) -> None:
        self.client = PresenceClient(url, user, None, recover=True, ack_interval=0.1)
        self.streamed: list[StreamMessage] = []
        self.recoveries: list[Recovery] = []
        self.not_recovered: list[Recovery] = []
        self.client.on("stream", self.streamed.append)
        self.client.on("recovery", self.recoveries.append)
        self.client.on("not_recovered", self.not_recovered.append)

    @property
    def offsets(self) -> list[int]:
        return [m.offset for m in self.streamed]

    async def recovered(self, count: int) -> Recovery:
        """Wait for the ``count``-th recovery result."""

        async def arrived() -> bool:
            return len(self.recoveries) >= count

        await eventually(arrived, timeout=30)
        return self.recoveries[count - 1]


@pytest.fixture
async def apps() -> AsyncIterator[list[App]]:
    opened: list[App] = []
    yield opened
    await asyncio.gather(*(a.client.close() for a in opened), return_exceptions=True)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def send_durable(base: str, token: str, user: str, n: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30 * UNIT) as http:
        response = await http.post(
            f"/ws/send/{user}", params={"durable": "true"}, json={"type": "note", "n": n}
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def open_app(apps: list[App], url: str, user: str, position: Any = None) -> App:
    app = App(url, user)
    if position is not None:
        # The same device on a new socket: what it holds (e.g. in local storage) moves along.
        app.client.stream_position = position
    apps.append(app)
    await app.client.start()
    await app.client.wait_for_state(State.CONNECTED, timeout=30 * UNIT)
    return app


async def test_messages_sent_while_offline_arrive_on_another_instance_exactly_once(
    cluster: Cluster, apps: list[App]
) -> None:
    """Two messages arrive live on instance A; three are stored while the client is away; it
    reconnects to instance B with its epoch and offset and gets the three in order, then the
    live ones sent during and after the recovery: offsets 3..8 on B, each once."""
    user = uid("offline")
    first, second = cluster.instances[0], cluster.instances[1]
    app = await open_app(apps, first.http, user)
    assert (await app.recovered(1)).recovered
    for n in (1, 2):
        body = await send_durable(cluster.url, cluster.admin_token, user, n)
        # (connections may say 0 when an instance not holding the socket answered before
        # Firestore listed it: the live copy still reaches it, as the next lines check)
        assert body["offset"] == n

    async def live_arrived() -> bool:
        return sorted(app.offsets) == [1, 2]

    await eventually(live_arrived, timeout=15)
    position = app.client.stream_position
    await app.client.close()
    for n in (3, 4, 5):
        body = await send_durable(cluster.url, cluster.admin_token, user, n)
        # Stored, delivered nowhere: no error, the client will recover it.
        assert (body["connections"], body["offset"]) == (0, n)
        assert body["message"] == "Message stored"

    again = App(second.http, user)
    again.client.stream_position = position
    apps.append(again)
    await again.client.start()
    # Sent while the second socket opens and recovers: live and replayed copies may overlap.
    for n in (6, 7):
        await send_durable(cluster.url, cluster.admin_token, user, n)
    result = await again.recovered(1)
    assert result.recovered and result.epoch == position.epoch
    await send_durable(cluster.url, cluster.admin_token, user, 8)

    async def all_arrived() -> bool:
        return len(again.offsets) >= 6

    await eventually(all_arrived, timeout=15)
    await asyncio.sleep(0.5 * UNIT)  # any duplicate would arrive by now; none may be kept
    # The replay comes first and in order; live messages sent by separate REST calls may
    # overtake one another on their way through Pub/Sub.
    assert again.offsets[:3] == [3, 4, 5]
    assert sorted(again.offsets) == [3, 4, 5, 6, 7, 8]
    assert sorted(m.data["n"] for m in again.streamed) == [3, 4, 5, 6, 7, 8]


async def test_a_reconnect_without_a_position_resumes_from_the_acknowledged_one(
    cluster: Cluster, apps: list[App]
) -> None:
    """The client's stream_ack is stored: a new device presenting nothing gets what follows."""
    user = uid("acked")
    app = await open_app(apps, cluster.instances[2].http, user)
    await app.recovered(1)
    for n in (1, 2):
        await send_durable(cluster.url, cluster.admin_token, user, n)

    async def acknowledged() -> bool:
        return app.client.stream_position.acked == 2

    await eventually(acknowledged, timeout=15)
    await app.client.close()
    await send_durable(cluster.url, cluster.admin_token, user, 3)
    await asyncio.sleep(0.5 * UNIT)  # the ack is written behind (PONG_FLUSH_INTERVAL)
    fresh = await open_app(apps, cluster.instances[0].http, user)
    result = await fresh.recovered(1)
    assert (result.recovered, result.missed) == (True, 1)
    assert fresh.offsets == [3]


async def test_more_missed_than_the_window_holds_is_not_recovered(
    cluster: Cluster, apps: list[App]
) -> None:
    """HISTORY + 1 messages while offline: not recovered (window_exceeded), nothing replayed,
    and the client holds the stream's current position to carry on from."""
    user = uid("window")
    app = await open_app(apps, cluster.instances[0].http, user)
    await app.recovered(1)
    await send_durable(cluster.url, cluster.admin_token, user, 0)

    async def live_arrived() -> bool:
        return app.offsets == [1]

    await eventually(live_arrived, timeout=15)
    await app.client.close()
    for n in range(HISTORY + 1):
        await send_durable(cluster.instances[n % 3].http, cluster.admin_token, user, n)
    again = await open_app(apps, cluster.instances[1].http, user, app.client.stream_position)
    result = await again.recovered(1)
    assert (result.recovered, result.reason, result.offset) == (
        False,
        "window_exceeded",
        HISTORY + 2,
    )
    assert again.not_recovered == [result]
    assert again.streamed == []
    await send_durable(cluster.url, cluster.admin_token, user, 99)

    async def next_arrived() -> bool:
        return again.offsets == [HISTORY + 3]

    await eventually(next_arrived, timeout=15)


async def test_a_lost_stream_is_not_recovered_epoch_changed(
    cluster: Cluster, apps: list[App], firestore: Any
) -> None:
    """The stream's head deleted (lost): the next durable send starts a new epoch, and a client
    presenting the old one is told so."""
    user = uid("epoch")
    app = await open_app(apps, cluster.instances[2].http, user)
    await app.recovered(1)
    old = (await send_durable(cluster.url, cluster.admin_token, user, 1))["epoch"]
    await eventually(lambda: _true(app.offsets == [1]), timeout=15)
    await app.client.close()
    firestore.collection(STREAMS).document(user).delete()
    new = (await send_durable(cluster.url, cluster.admin_token, user, 2))["epoch"]
    assert new != old
    again = await open_app(apps, cluster.instances[0].http, user, app.client.stream_position)
    result = await again.recovered(1)
    assert (result.recovered, result.reason, result.epoch, result.offset) == (
        False,
        "epoch_changed",
        new,
        1,
    )


async def _true(value: bool) -> bool:
    return value


async def test_an_instance_drained_mid_stream_loses_nothing(
    cluster: Cluster, apps: list[App], firestore_host: str
) -> None:
    """The client's instance is drained (SIGTERM, sockets closed with 1012) while durable sends
    keep coming through the other instances: the client reconnects through the front end to a
    survivor and ends with every offset exactly once."""
    # Two more instances behind a front end of their own: whichever takes the socket is
    # drained, the client's next connection reaches the other.
    # With the default history: the client may be away for more than the cluster's small
    # window (HISTORY) while it backs off and reconnects, and this test is about the drain,
    # not the window (the instance a client recovers on applies its own STREAM_HISTORY_SIZE).
    env = {**cluster.env, "STREAM_HISTORY_SIZE": "300"}
    extra = [start_gateway(firestore_host, PROJECT, None, **env) for _ in range(2)]
    front, port = start_proxy([g.port for g in extra])
    user = uid("drain")
    total = 40
    try:
        app = await open_app(apps, f"ws://127.0.0.1:{port}", user)
        await app.recovered(1)
        (drained,) = [g for g in extra if await _holds(g, cluster.admin_token, user)]

        async def sender() -> None:
            for n in range(1, total + 1):
                target = cluster.instances[n % 3]
                await send_durable(target.http, cluster.admin_token, user, n)
                await asyncio.sleep(0.02)

        sending = asyncio.create_task(sender())
        await eventually(lambda: _true(len(app.offsets) >= 5), timeout=15)
        assert drained.process.popen is not None
        os.kill(drained.process.popen.pid, signal.SIGTERM)
        await sending
        await eventually(lambda: _true(len(app.recoveries) >= 2), timeout=30)

        async def complete() -> bool:
            return len(app.offsets) >= total

        await eventually(complete, timeout=30)
        await asyncio.sleep(0.5 * UNIT)
        # Each offset once (live copies through different instances may overtake each other).
        assert len(app.offsets) == total
        assert sorted(app.offsets) == list(range(1, total + 1))
        assert sorted(m.data["n"] for m in app.streamed) == list(range(1, total + 1))
        assert all(r.recovered for r in app.recoveries)
    finally:
        front.stop()
        for gateway in extra:
            gateway.stop()


async def _holds(gateway: GatewayProc, token: str, user: str) -> bool:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=gateway.http, headers=headers) as http:
        stats = (await http.get("/ws/stats", params={"scope": "instance"})).json()
    return user in stats["connected_users"]
