"""Three gateway instances behind a round-robin proxy, fanning out over the Pub/Sub emulator.

The proxy (tests/proxy.py) stands in for Cloud Run's front end: each new connection goes to
the next instance, with no stickiness. It is the only address the sweep (``GATEWAY_URL``), the
REST calls and the WebSocket clients use; no instance is told another's address. The tests
themselves look at one instance directly only to check where a socket landed.

Intervals are short (PING_INTERVAL=0.2, PONG_TIMEOUT=2, SWEEP_INTERVAL=0.5), so every client
that must stay signed in answers pings, and an instance counts as dead 1.5 s after its last
heartbeat. The tests run in file order; the last one stops the Pub/Sub emulator.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.cluster.directory import SETTLED_SECONDS
from gateway.storage.schema import IS_SIGNED_IN, LAST_SIGN_OUT_AT, MEMBERS
from tests.conftest import PubSubEmulator
from tests.e2e.conftest import Cluster, start_cluster
from tests.support import (
    UNIT,
    Client,
    GatewayProc,
    SweepStack,
    TokenMinter,
    eventually,
    start_gateway,
    start_proxy,
    start_sweep,
)

pytestmark = pytest.mark.e2e

SHORT = {
    "PING_INTERVAL": "0.2",
    "PONG_TIMEOUT": "2",
    "SWEEP_INTERVAL": "0.5",
    "PONG_FLUSH_INTERVAL": "0.1",
}


@dataclass
class Service(Cluster):
    """The deployment as its callers see it: one URL, any instance behind it."""

    minter: TokenMinter

    def ws(self, user: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/connect/{user}?token={self.minter(user)}"

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        response = await self.request("GET", path, params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def instance_of(gateway: GatewayProc) -> str:
    return gateway.env["GATEWAY_INSTANCE_ID"]


def uid(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def service(
    firestore_host: str,
    project_id: str,
    minter: TokenMinter,
    callback_token: str,
    pubsub: PubSubEmulator,
) -> Iterator[Service]:
    service = start_cluster(
        firestore_host,
        project_id,
        minter,
        pubsub,
        "fanout",
        kind=Service,
        GATEWAY_CALLBACK_TOKEN=callback_token,
        **SHORT,
    )
    yield service
    service.stop()


@pytest.fixture(scope="module")
def sweeper(
    service: Service, firestore_host: str, auth_host: str, project_id: str, callback_token: str
) -> Iterator[SweepStack]:
    """The sweep function calling the service URL (the proxy), as on Cloud Run."""
    stack = start_sweep(
        {
            "FIRESTORE_EMULATOR_HOST": firestore_host,
            "FIREBASE_AUTH_EMULATOR_HOST": auth_host,
            "GOOGLE_CLOUD_PROJECT": project_id,
            "GATEWAY_CALLBACK_TOKEN": callback_token,
            "GATEWAY_URL": service.url,
            "PONG_TIMEOUT": SHORT["PONG_TIMEOUT"],
            "SWEEP_INTERVAL": SHORT["SWEEP_INTERVAL"],
        },
        interval=float(SHORT["SWEEP_INTERVAL"]),
    )
    yield stack
    stack.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Every client a test opens, closed at its end."""
    opened: list[Client] = []
    yield opened
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


async def open_sockets(
    service: Service, opened: list[Client], user: str, count: int, *, silent: bool = False
) -> list[Client]:
    """``count`` sockets for the user through the proxy; returns them once the deployment's
    status shows them all."""
    new = [await Client.open(service.ws(user), silent=silent) for _ in range(count)]
    opened.extend(new)

    async def recorded() -> dict[str, Any]:
        body = await service.get(f"/ws/status/{user}")
        return body if body["connections"] == count else {}

    await eventually(recorded)
    return new


async def open_spread(
    service: Service, opened: list[Client], user: str, instances: int, *, silent: bool = False
) -> list[Client]:
    """One socket for the user on each of the first ``instances`` instances, opened on each
    directly (through the proxy, any other request shifts its turn and two sockets can land
    together); returns them once the deployment's status counts those still open (a silent
    user's are timed out within PONG_TIMEOUT, which a loaded machine can reach meanwhile)."""
    new: list[Client] = []
    for gateway in service.instances[:instances]:
        new.append(await Client.open(gateway.ws(user), silent=silent))
        opened.append(new[-1])

    async def recorded() -> dict[str, Any]:
        body = await service.get(f"/ws/status/{user}")
        live = sum(client.close_code is None for client in new)
        return body if body["connections"] == live else {}

    await eventually(recorded)
    return new


async def holders(service: Service, user: str) -> list[str]:
    """The ids of the instances holding the user's sockets."""
    return [instance_of(gateway) for gateway in await service.holding(user)]


async def quiet_for(client: Client, seconds: float) -> None:
    """Nothing but pings arrives on the socket for a while."""
    await asyncio.sleep(seconds * UNIT)
    assert client.frames.empty(), client.frames.get_nowait()


async def test_a_send_answered_by_any_instance_reaches_the_socket_exactly_once(
    service: Service, clients: list[Client]
) -> None:
    """Three sends through the proxy land on three different instances, two of which do not
    hold the user's socket: the socket gets each message once, and each answer counts it."""
    user = uid("send")
    (socket,) = await open_sockets(service, clients, user, 1)
    for n in range(3):
        response = await service.request("POST", f"/ws/send/{user}", json={"type": "n", "n": n})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["message"]) == ("success", "Message sent successfully")
        assert (body["connections"], body["scope"]) == (1, "deployment")
        assert body["instances"] == await holders(service, user)
    received = sorted([(await socket.next())["n"] for _ in range(3)])
    assert received == [0, 1, 2]
    await quiet_for(socket, 1)
    missing = await service.request("POST", f"/ws/send/{uid('nobody')}", json={"type": "x"})
    assert missing.status_code == 404
    assert missing.json()["message"].endswith("is not connected")


async def test_a_broadcast_reaches_every_other_socket_on_every_instance_exactly_once(
    service: Service, clients: list[Client]
) -> None:
    """Sockets spread over the three instances each get one copy; the excluded user none;
    ``recipients`` counts users once across instances."""
    everywhere, users = uid("cast"), [uid("cast") for _ in range(2)]
    excluded = uid("excluded")
    sockets = await open_spread(service, clients, everywhere, 3)
    for user in users:
        sockets += await open_sockets(service, clients, user, 1)
    (left_out,) = await open_sockets(service, clients, excluded, 1)
    total = len(sockets) + 1

    async def settled() -> dict[str, Any]:
        stats = await service.get("/ws/stats")
        return stats if stats["total_connections"] == total else {}

    await settled()
    for _ in range(3):
        response = await service.request(
            "POST", "/ws/broadcast", json={"type": "news"}, params={"exclude_user": excluded}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["message"]) == ("success", "Message broadcasted successfully")
        assert (body["recipients"], body["connections"]) == (3, len(sockets))
        assert (body["scope"], body["unreachable_instances"]) == ("deployment", [])
        assert sorted(body["instances"]) == sorted(instance_of(g) for g in service.instances)
    for socket in sockets:
        assert [await socket.next() for _ in range(3)] == [{"type": "news"}] * 3
    await asyncio.gather(*(quiet_for(s, 1) for s in [*sockets, left_out]))


async def test_a_batch_reaches_each_user_once_on_any_instance_and_answers_each_entry(
    service: Service, clients: list[Client]
) -> None:
    """One ``POST /ws/send`` with users on different instances (one of them on two), a user
    connected nowhere and two invalid entries: every socket gets its own message once, each
    entry is answered in order, and the invalid ones fail alone. The durable variant stores
    each entry and delivers it as a stream frame."""
    users = [uid("batch") for _ in range(3)]
    sockets: dict[Client, str] = {}
    for user in users:
        sockets.update(dict.fromkeys(await open_sockets(service, clients, user, 1), user))
    spread = uid("batch-spread")
    sockets.update(dict.fromkeys(await open_spread(service, clients, spread, 2), spread))
    nobody = uid("nobody")
    entries = [{"user_id": u, "message": {"type": "b", "to": u}} for u in [*users, spread]]
    entries += [
        {"user_id": nobody, "message": {"type": "b"}},
        {"user_id": "bad/id", "message": {"type": "b"}},
        {"user_id": users[0], "message": "not an object"},
    ]
    response = await service.request("POST", "/ws/send", json={"messages": entries})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["status"] for r in body["results"]] == [
        *["sent"] * 4,
        "not_connected",
        "invalid",
        "invalid",
    ]
    assert [r["connections"] for r in body["results"][:4]] == [1, 1, 1, 2]
    assert (body["sent"], body["connections"], body["scope"]) == (4, 5, "deployment")
    assert body["unreachable_instances"] == []
    for socket, user in sockets.items():
        assert await socket.next() == {"type": "b", "to": user}
    await asyncio.gather(*(quiet_for(s, 1) for s in sockets))

    for refused in ({"messages": []}, {"messages": entries[:1] * 501}, {"messages": "x"}):
        response = await service.request("POST", "/ws/send", json=refused)
        assert response.status_code == 400, response.text
    await asyncio.gather(*(quiet_for(s, 0.5) for s in sockets))

    durable = await service.request(
        "POST",
        "/ws/send",
        params={"durable": "true"},
        json={"messages": [{"user_id": users[1], "message": {"d": 1}}, entries[4]]},
    )
    assert durable.status_code == 200, durable.text
    first, second = durable.json()["results"]
    assert (first["status"], first["connections"], second["status"]) == ("sent", 1, "stored")
    assert first["offset"] >= 1 and second["offset"] >= 1 and first["epoch"]
    [socket] = [s for s, u in sockets.items() if u == users[1]]
    frame = await socket.next()
    assert (frame["type"], frame["offset"], frame["data"]) == ("stream", first["offset"], {"d": 1})


def _counter(metrics: str, name: str) -> float:
    """One sample of a /metrics page (0 when absent)."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_sends_made_at_once_to_users_elsewhere_each_arrive_once_with_their_own_answer(
    service: Service, clients: list[Client]
) -> None:
    """Forty sends posted at once to the first instance, for users held on the other two: each
    socket gets its own message once and each answer counts its own socket. Every send went
    out either alone or inside a send_batch with others made at the same moment, as the
    instance's counters add up."""
    first, *others = service.instances
    users = [uid("together") for _ in range(40)]
    sockets: dict[str, Client] = {}
    for k, user in enumerate(users):
        socket = await Client.open(others[k % 2].ws(user))
        clients.append(socket)
        sockets[user] = socket
    headers = {"Authorization": f"Bearer {service.admin_token}"}
    async with httpx.AsyncClient(base_url=first.http, headers=headers, timeout=30) as http:

        async def recorded() -> bool:
            found = await asyncio.gather(*(http.get(f"/ws/status/{u}") for u in users))
            return all(r.json()["connections"] == 1 for r in found)

        await eventually(recorded)
        before = (await http.get("/metrics")).text
        answers = await asyncio.gather(
            *(http.post(f"/ws/send/{u}", json={"type": "t", "to": u}) for u in users)
        )
        after = (await http.get("/metrics")).text
    for user, answer in zip(users, answers, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["connections"], body["scope"]) == (1, "deployment")
        assert body["instances"] == [instance_of(others[users.index(user) % 2])]
    for user, socket in sockets.items():
        assert await socket.next() == {"type": "t", "to": user}
    await asyncio.gather(*(quiet_for(s, 0.5) for s in sockets.values()))
    alone = 'gateway_fanout_published_total{kind="send",outcome="ok"}'
    coalesced = "gateway_fanout_sends_coalesced_total"
    grew = {n: _counter(after, n) - _counter(before, n) for n in (alone, coalesced)}
    assert grew[alone] + grew[coalesced] == len(users), grew


@pytest.mark.parametrize("settled", [False, True], ids=["young", "settled"])
async def test_a_user_who_moves_between_instances_between_sends_gets_every_send(
    service: Service, clients: list[Client], settled: bool
) -> None:
    """Sends answered by instance A while the user's socket is on A take the local path
    (nothing published); the user then moves to B, and the next send answered by A finds
    them there. ``settled``: the socket on A is older than SETTLED_SECONDS, so A's second
    send reuses the first's read and is answered inside the HTTP protocol."""
    user = uid("mover")
    a, b = service.instances[0], service.instances[1]
    headers = {"Authorization": f"Bearer {service.admin_token}"}
    first = await Client.open(a.ws(user, service.minter(user)))
    clients.append(first)
    if settled:
        await asyncio.sleep(SETTLED_SECONDS + 0.2)
    async with httpx.AsyncClient(base_url=a.http, headers=headers) as at_a:
        for n in range(2):
            sent = (await at_a.post(f"/ws/send/{user}", json={"n": n})).json()
            assert sent["instances"] == [instance_of(a)]
        assert [await first.next() for _ in range(2)] == [{"n": 0}, {"n": 1}]
        await first.close()
        second = await Client.open(b.ws(user, service.minter(user)))
        clients.append(second)

        async def moved() -> bool:
            body = (await at_a.get(f"/ws/status/{user}")).json()
            return bool(body["instances"] == [instance_of(b)])

        await eventually(moved)
        sent = (await at_a.post(f"/ws/send/{user}", json={"n": 2})).json()
        assert (sent["connections"], sent["instances"]) == (1, [instance_of(b)])
        assert await second.next() == {"n": 2}


async def test_status_and_stats_answer_for_the_deployment_from_any_instance(
    service: Service, clients: list[Client]
) -> None:
    """A user with sockets on two instances is seen the same from every instance; stats
    merges all three."""
    user = uid("status")
    await open_spread(service, clients, user, 2)
    where = sorted(set(await holders(service, user)))
    assert len(where) == 2 and len(await holders(service, user)) == 2
    for _ in range(3):
        status = await service.get(f"/ws/status/{user}")
        assert status == {
            "user_id": user,
            "is_connected": True,
            "status": "connected",
            "connections": 2,
            "scope": "deployment",
            "instances": where,
        }
        stats = await service.get("/ws/stats")
        assert stats["scope"] == "deployment"
        assert stats["instances"] == sorted(instance_of(g) for g in service.instances)
        assert (stats["unreachable_instances"], stats["total_connections"]) == ([], 2)
        assert stats["connected_users"] == [user]
        assert sorted(stats["pong_writers"]) == stats["instances"]


async def test_stats_list_the_first_limit_users_and_keep_the_counts_exact(
    service: Service, clients: list[Client]
) -> None:
    """u1 on the first and second instances, u2 on the first, u3 on the third: ``limit=1``
    and ``limit=2`` list the first users by id and say ``truncated``, from any instance;
    sockets are counted exactly, and users too once no instance holds more than ``limit``
    (before that, a lower bound that says so). A limit out of 0..10,000 or not an integer
    answers 400 with the error body."""
    prefix = uid("limit")
    u1, u2, u3 = (f"{prefix}-{n}" for n in (1, 2, 3))
    first, second, third = service.instances
    for gateway, user in [(first, u1), (first, u2), (second, u1), (third, u3)]:
        clients.append(await Client.open(gateway.ws(user, service.minter(user))))

    async def settled() -> dict[str, Any]:
        stats = await service.get("/ws/stats", limit="10")
        everyone = stats["connected_users"] == [u1, u2, u3]
        return stats if everyone and stats["total_connections"] == 4 else {}

    await eventually(settled)
    expected = {1: ([u1], 2, False), 2: ([u1, u2], 3, True), 3: ([u1, u2, u3], 3, True)}
    for limit, (users, total_users, exact) in expected.items():
        for _ in range(3):  # through the proxy: each instance answers in turn
            stats = await service.get("/ws/stats", limit=str(limit))
            assert (stats["scope"], stats["unreachable_instances"]) == ("deployment", [])
            assert stats["connected_users"] == users, limit
            assert (stats["truncated"], stats["total_connections"]) == (limit < 3, 4), limit
            assert (stats["total_users"], stats["total_users_exact"]) == (total_users, exact)
    alone = await service.get("/ws/stats", scope="instance", limit="1")
    assert (alone["total_users_exact"], len(alone["connected_users"])) == (True, 1)
    for bad in ("-1", "10001", "ten", "1.5"):
        response = await service.request("GET", "/ws/stats", params={"limit": bad})
        assert response.status_code == 400, (bad, response.text)
        body = response.json()
        assert (body["status"], body["status_code"]) == ("error", 400)
        assert "limit" in body["message"]


async def test_the_sweeps_callback_times_out_a_users_sockets_on_all_three_instances(
    service: Service, sweeper: SweepStack, clients: list[Client], firestore_client: Any
) -> None:
    """A silent user with a socket on each instance gets exactly one timeout on each socket
    and 4408 on each; the callback reached one instance and the others got the timeouts
    through the fan-out; a user who answers stays."""
    silent, live = uid("silent"), uid("live")
    quiet = await open_spread(service, clients, silent, 3, silent=True)
    (chatty,) = await open_sockets(service, clients, live, 1)
    for socket in quiet:
        frame = await socket.next(timeout=30)
        assert frame["type"] == "timeout"
        assert "2 seconds" in frame["message"]
        assert await socket.closed() == 4408
        assert socket.frames.empty()
    member = firestore_client.collection(MEMBERS).document(silent).get().to_dict()
    assert member[IS_SIGNED_IN] is False
    served = 0
    for gateway in service.instances:
        async with httpx.AsyncClient(base_url=gateway.http) as http:
            metrics = (await http.get("/metrics")).text
        served += 'gateway_fanout_received_total{kind="timeout",outcome="served"}' in metrics
    assert served >= 2, "the callback's instance handed the timeouts to the other two"
    await asyncio.sleep(3 * 2 * UNIT)
    assert chatty.close_code is None and chatty.frames.empty()


async def test_a_killed_instance_leaves_its_subscription_and_its_users_are_signed_out(
    service: Service,
    sweeper: SweepStack,
    clients: list[Client],
    firestore_client: Any,
    firestore_host: str,
    project_id: str,
    minter: TokenMinter,
    callback_token: str,
    pubsub: PubSubEmulator,
) -> None:
    """A fourth instance joins and takes a socket, then is SIGKILLed: its subscription
    stays behind (Pub/Sub's expiration collects it), broadcasts keep reaching the others and
    name it until its heartbeat ages out, and its user, gone with it, is signed out by the
    sweep. A drained instance (SIGTERM) deletes its subscription."""
    from google.api_core import exceptions

    from tests.integration.test_broker import admin

    extra = {
        "GATEWAY_ADMIN_TOKEN": service.admin_token,
        "GATEWAY_CALLBACK_TOKEN": callback_token,
        "PUBSUB_EMULATOR_HOST": pubsub.host,
        "PUBSUB_TOPIC": service.topic,
        **SHORT,
    }
    victim = start_gateway(firestore_host, project_id, minter, **extra)
    drained = start_gateway(firestore_host, project_id, minter, **extra)
    subscriptions = admin(pubsub.host)
    path = f"projects/{project_id}/subscriptions/{service.topic}-{instance_of(victim)}"
    drained_path = f"projects/{project_id}/subscriptions/{service.topic}-{instance_of(drained)}"
    try:
        gone, stays = uid("gone"), uid("stays")
        # The front end sends a new connection to the new instance.
        front, front_port = start_proxy([victim.port])
        url = f"ws://127.0.0.1:{front_port}/ws/connect/{gone}?token={minter(gone)}"
        clients.append(await Client.open(url))
        front.stop()
        (kept,) = await open_sockets(service, clients, stays, 1)

        async def subscribed() -> bool:
            try:
                return bool(subscriptions.get_subscription(subscription=path).name)
            except exceptions.NotFound:
                return False

        await eventually(subscribed)
        # Stopping waits for the drain: off the event loop, so that the clients keep answering.
        await asyncio.to_thread(drained.stop)
        with pytest.raises(exceptions.NotFound):
            subscriptions.get_subscription(subscription=drained_path)
        assert victim.process.popen is not None
        os.kill(victim.process.popen.pid, signal.SIGKILL)
        assert await subscribed(), "a killed instance cannot delete its subscription"

        response = await service.request("POST", "/ws/broadcast", json={"type": "still"})
        assert response.status_code == 200, response.text
        assert await kept.next() == {"type": "still"}

        def signed_in(user: str) -> Any:
            return firestore_client.collection(MEMBERS).document(user).get().get(IS_SIGNED_IN)

        async def gone_signed_out() -> bool:
            return signed_in(gone) is False

        await eventually(gone_signed_out, timeout=30)

        async def dead_not_counted() -> dict[str, Any]:
            stats = await service.get("/ws/stats")
            return stats if instance_of(victim) not in stats["unreachable_instances"] else {}

        stats = await eventually(dead_not_counted, timeout=15)
        assert stats["scope"] == "deployment"
        assert signed_in(stays) is True
    finally:
        victim.stop()
        drained.stop()


async def test_sign_out_on_demand_closes_every_socket_and_refuses_the_old_token(
    service: Service, clients: list[Client], firestore_client: Any, firebase_app: Any
) -> None:
    """POST /ws/signout/{uid} on any instance: the user's sockets on all three instances get
    the signed_out message and 4410, the records and Firebase Auth say signed out, the old
    token is refused on reconnect, a second call closes nothing, and others stay."""
    from firebase_admin import auth

    user, bystander = uid("signout"), uid("bystander")
    sockets = await open_spread(service, clients, user, 3)
    (other,) = await open_sockets(service, clients, bystander, 1)
    called_at = int(time.time())  # Auth keeps tokens_valid_after in whole seconds
    response = await service.request("POST", f"/ws/signout/{user}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["message"], body["user_id"]) == (
        "success",
        "User signed out",
        user,
    )
    assert body["revoked"] is True
    assert (body["sessions_signed_out"], body["connections_closed"]) == (3, 3)
    assert (body["scope"], body["unreachable_instances"]) == ("deployment", [])
    for socket in sockets:
        frame = await socket.next()
        assert (frame["type"], frame["reason"]) == ("signed_out", "signed out by the service")
        assert await socket.closed() == 4410
    member = firestore_client.collection(MEMBERS).document(user).get().to_dict()
    assert member[IS_SIGNED_IN] is False and member[LAST_SIGN_OUT_AT] is not None
    assert auth.get_user(user, app=firebase_app).tokens_valid_after_timestamp >= called_at * 1000
    again = await Client.open(service.ws(user))
    clients.append(again)
    assert await again.closed() == 4401
    second = await service.request("POST", f"/ws/signout/{user}")
    assert second.status_code == 200
    assert (second.json()["sessions_signed_out"], second.json()["connections_closed"]) == (0, 0)
    assert other.close_code is None
    signouts = 0.0
    for gateway in service.instances:
        async with httpx.AsyncClient(base_url=gateway.http) as http:
            for line in (await http.get("/metrics")).text.splitlines():
                if line.startswith('gateway_connection_events_total{event="signout"}'):
                    signouts += float(line.rsplit(" ", 1)[1])
    assert signouts == 3, "one signout event per socket, on the instance that held it"


async def test_with_pubsub_down_local_sockets_are_served_and_no_sign_out_is_lost(
    service: Service,
    sweeper: SweepStack,
    clients: list[Client],
    pubsub: PubSubEmulator,
    firestore_client: Any,
) -> None:
    """The emulator stops for 10 s: sockets keep their pings, a send either reaches a local
    socket or answers a clear 503, broadcasts say they reached one instance, and a silent
    user is still timed out (the callback fails; each instance's poll closes its sockets).
    After the emulator is back (empty), cross-instance delivery resumes with no restart."""
    user, silent = uid("outage"), uid("outage-silent")
    (socket,) = await open_sockets(service, clients, user, 1)
    quiet = await open_spread(service, clients, silent, 2, silent=True)
    # Off the event loop: stopping (and starting) an emulator takes seconds, and the clients
    # must keep answering pings meanwhile or the sweep would sign them out.
    await asyncio.to_thread(pubsub.stop)
    try:
        pings = socket.pings
        outcomes: set[int] = set()
        for n in range(12):
            response = await service.request("POST", f"/ws/send/{user}", json={"n": n})
            outcomes.add(response.status_code)
            if response.status_code == 503:
                assert "message broker cannot be reached" in response.json()["message"]
            else:
                assert response.status_code == 200 and response.json()["connections"] == 1
            if outcomes == {200, 503}:
                break
        assert outcomes == {200, 503}
        cast = await service.request("POST", "/ws/broadcast", json={"type": "partial"})
        assert cast.status_code == 200 and cast.json()["scope"] == "instance"
        batch = await service.request(
            "POST", "/ws/send", json={"messages": [{"user_id": user, "message": {"n": "b"}}]}
        )
        assert batch.status_code == 200, batch.text
        [entry] = batch.json()["results"]
        # Answered by the user's instance: delivered there, nothing to publish; by another:
        # the publish fails and the entry may have been missed.
        assert (entry["status"], entry.get("connections", 0), batch.json()["scope"]) in (
            ("sent", 1, "deployment"),
            ("unreachable", 0, "instance"),
        )
        for q in quiet:
            # The partial broadcast reaches a silent socket still open on the instance that
            # answered it; the timeout comes after.
            frame = await q.next(timeout=30)
            if frame == {"type": "partial"}:
                frame = await q.next(timeout=30)
            assert frame["type"] == "timeout"
            assert await q.closed() == 4408
        assert socket.pings > pings and socket.close_code is None
        await asyncio.sleep(max(0.0, 10 - 3) * UNIT)
    finally:
        await asyncio.to_thread(pubsub.start)

    async def delivered_from_everywhere() -> bool:
        answers = [
            await service.request("POST", f"/ws/send/{user}", json={"n": "after"}) for _ in range(3)
        ]
        return all(r.status_code == 200 and r.json()["connections"] == 1 for r in answers)

    await eventually(delivered_from_everywhere, timeout=60, interval=1)
    frames = []
    while not socket.frames.empty():
        frames.append(socket.frames.get_nowait())
    assert frames[-3:] == [{"n": "after"}] * 3
    member = firestore_client.collection(MEMBERS).document(silent).get().to_dict()
    assert member[IS_SIGNED_IN] is False
