"""The console's server side across three instances behind the round-robin proxy: who may
use it (the admin token, a Firebase ID token with the ``admin`` claim; nobody else; 404 while
it is off; 403 for a foreign Origin), its page and config, and its data routes over real
sockets: overview counts while sockets come and go, a user's sockets on two instances, the
events recorded, and a SIGKILLed instance shown as no longer answering."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import PubSubEmulator
from tests.e2e.conftest import Cluster, start_cluster
from tests.support import (
    Client,
    TokenMinter,
    eventually,
    id_token_for,
    start_gateway,
    unsigned_token,
)

pytestmark = pytest.mark.e2e

ORIGIN = "http://console.test"
CONSOLE = {
    "CONSOLE_ENABLED": "1",
    "ALLOWED_ORIGINS": ORIGIN,
    # Heartbeats every second: a SIGKILLed instance is stale (lost) 3 s after its last one.
    "SWEEP_INTERVAL": "1",
    "FANOUT_TIMEOUT": "1",
    "PONG_FLUSH_INTERVAL": "0.1",
    "WS_PUBLIC_ROOM_PREFIXES": "lobby:",
}


@pytest.fixture(scope="module")
def console_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for the page's build (its own tests build and check the real one)."""
    folder = tmp_path_factory.mktemp("console")
    (folder / "index.html").write_text("<!doctype html><title>console</title>")
    (folder / "console.js").write_text("export {};")
    return folder


@pytest.fixture(scope="module")
def cluster(
    firestore_host: str,
    project_id: str,
    minter: TokenMinter,
    pubsub: PubSubEmulator,
    console_dir: Path,
) -> Iterator[Cluster]:
    started = start_cluster(
        firestore_host,
        project_id,
        minter,
        pubsub,
        "console",
        CONSOLE_DIR=str(console_dir),
        **CONSOLE,
    )
    yield started
    started.stop()


def admin_token(auth_host: str, firebase_app: Any, *, admin: bool) -> str:
    """A real ID token of a fresh account, granted ``admin: true`` with firebase-admin's
    set_custom_user_claims first when ``admin`` (as docs/console.md tells operators)."""
    from firebase_admin import auth

    uid = f"op-{uuid.uuid4().hex[:10]}"
    auth.create_user(uid=uid, app=firebase_app)
    if admin:
        auth.set_custom_user_claims(uid, {"admin": True}, app=firebase_app)
    return id_token_for(auth_host, auth.create_custom_token(uid, app=firebase_app))


async def get(cluster: Cluster, path: str, token: str | None = None, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {token or cluster.admin_token}"}
    headers.update(kwargs.pop("headers", {}))
    async with httpx.AsyncClient(base_url=cluster.url, headers=headers, timeout=30) as http:
        return await http.get(path, **kwargs)


@pytest.fixture
async def sockets(cluster: Cluster) -> AsyncIterator[list[Client]]:
    """Sockets a test opens (closed at its end)."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        await client.close()


async def open_socket(cluster: Cluster, index: int, user: str, into: list[Client]) -> Client:
    """A socket of ``user`` on instance ``index`` (directly, not through the proxy), answering
    pings."""
    client = await Client.open(cluster.instances[index].ws(user))
    into.append(client)
    return client


async def test_both_sign_ins_accepted_and_others_refused(
    cluster: Cluster, auth_host: str, firebase_app: Any, project_id: str
) -> None:
    """The admin token and an admin-claim ID token are taken by the console's routes and the
    REST API; a token without the claim, a forged one and garbage get 401 with the API's body;
    a foreign Origin gets 403, a listed one and the gateway's own are served."""
    assert (await get(cluster, "/ws/console/overview")).status_code == 200
    admin = admin_token(auth_host, firebase_app, admin=True)
    assert (await get(cluster, "/ws/console/overview", admin)).status_code == 200
    assert (await get(cluster, "/ws/stats", admin)).status_code == 200
    user = f"to-{uuid.uuid4().hex[:8]}"
    client = await Client.open(cluster.instances[1].ws(user))
    try:

        async def send() -> httpx.Response | None:
            # Litestar's route, not the fast path (which takes the admin token alone). A 404
            # until the socket's record is written (one flush) delivered nothing: retried.
            async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as http:
                answer = await http.post(
                    f"/ws/send/{user}", json={"x": 1}, headers={"Authorization": f"Bearer {admin}"}
                )
            assert answer.status_code in (200, 404), answer.text
            return answer if answer.status_code == 200 else None

        sent = await eventually(send, timeout=20, interval=0.25)
        assert sent is not None and sent.json()["connections"] == 1
        assert await client.next() == {"x": 1}
    finally:
        await client.close()
    plain = admin_token(auth_host, firebase_app, admin=False)
    # The Auth emulator checks no signature: forged here is a token of no account.
    forged = unsigned_token(project_id, f"ghost-{uuid.uuid4().hex[:8]}", admin=True)
    for token in (plain, forged, "not-a-token-at-all"):
        for path in ("/ws/console/overview", "/ws/console/events", "/ws/stats"):
            answer = await get(cluster, path, token)
            assert answer.status_code == 401, (path, answer.text)
            assert answer.json()["status"] == "error"
            assert answer.json()["status_code"] == 401
    foreign = await get(cluster, "/ws/console/overview", headers={"Origin": "https://evil.test"})
    assert foreign.status_code == 403
    assert foreign.json()["status_code"] == 403
    assert (
        await get(cluster, "/console", headers={"Origin": "https://evil.test"})
    ).status_code == 403
    listed = await get(cluster, "/ws/console/overview", headers={"Origin": ORIGIN})
    assert listed.status_code == 200
    own = await get(cluster, "/ws/console/overview", headers={"Origin": cluster.url})
    assert own.status_code == 200  # the page's own requests: same origin


async def test_page_and_config_served(cluster: Cluster, auth_host: str, project_id: str) -> None:
    """/console is the built index.html, its files beside it, and config.json names the
    project and the Auth emulator; unknown files are 404."""
    page = await get(cluster, "/console")
    assert page.status_code == 200 and page.text.startswith("<!doctype html>")
    assert page.headers["content-type"].startswith("text/html")
    script = await get(cluster, "/console/console.js")
    assert script.status_code == 200 and script.text == "export {};"
    assert (await get(cluster, "/console/console.css")).status_code == 404
    assert (await get(cluster, "/console/secrets.txt")).status_code == 404
    config = (await get(cluster, "/console/config.json")).json()
    assert config["firebase"]["projectId"] == project_id
    assert config["auth_emulator"] == f"http://{auth_host}"


async def test_console_off_answers_404(
    firestore_host: str, project_id: str, minter: TokenMinter, auth_host: str, firebase_app: Any
) -> None:
    """Without CONSOLE_ENABLED the page, its config and its data routes are 404, even to the
    admin token, and an admin-claim ID token is refused by the REST API (401)."""
    gateway = start_gateway(firestore_host, project_id, minter)
    admin = admin_token(auth_host, firebase_app, admin=True)
    try:
        async with httpx.AsyncClient(base_url=gateway.http, headers=gateway.auth) as http:
            for path in ("/console", "/console/config.json", "/ws/console/overview"):
                assert (await http.get(path)).status_code == 404, path
            assert (await http.get("/ws/console/users/someone")).status_code == 404
            refused = await http.get("/ws/stats", headers={"Authorization": f"Bearer {admin}"})
            assert refused.status_code == 401
    finally:
        gateway.stop()


def row(overview: dict[str, Any], gateway_index: int, cluster: Cluster) -> dict[str, Any]:
    wanted = cluster.instances[gateway_index].env["GATEWAY_INSTANCE_ID"]
    return next(r for r in overview["instances"] if r["instance_id"] == wanted)


async def test_overview_counts_sockets_as_they_come_and_go(
    cluster: Cluster, sockets: list[Client]
) -> None:
    """Totals and each instance's row follow sockets opened on all three instances (a user
    on two counted once) and closed again; the series end at the current count."""
    tag = uuid.uuid4().hex[:6]
    users = [f"ov-{tag}-{n}" for n in range(3)]
    for index, user in enumerate(users):
        await open_socket(cluster, index, user, sockets)
    await open_socket(cluster, 1, users[0], sockets)

    async def counted(expected: int, users_expected: int) -> dict[str, Any]:
        body: dict[str, Any] = (await get(cluster, "/ws/console/overview")).json()
        live = [r for r in body["instances"] if r["state"] == "live"]
        ok = (
            body["scope"] == "deployment"
            and len(live) == 3
            and body["totals"]["sockets"] == expected
            and body["totals"]["users"] == users_expected
            and body["series"]["connections"][-1:] == [expected]
        )
        return body if ok else {}

    body = await eventually(lambda: counted(4, 3), timeout=20, interval=0.25)
    assert [row(body, i, cluster)["sockets"] for i in range(3)] == [1, 2, 1]
    assert row(body, 1, cluster)["users"] == 2
    assert row(body, 0, cluster)["pubsub"] == "ok"
    assert body["totals"]["users_exact"] is True
    series = body["series"]
    lengths = {
        len(series[k])
        for k in ("t", "connections", "pongs_received_per_s", "pongs_persisted_per_s")
    }
    lengths |= {len(v) for v in series["signouts_per_min"].values()}
    lengths |= {len(v) for v in series["fanout_latency_ms"].values()}
    assert len(lengths) == 1 and body["interval_seconds"] == 2
    first = row(body, 0, cluster)
    assert first["version"] and first["started_at"] and first["last_heartbeat_at"]
    for client in sockets:
        await client.close()
    await eventually(lambda: counted(0, 0), timeout=20, interval=0.25)


async def test_user_sockets_listed_on_both_instances(
    cluster: Cluster, sockets: list[Client]
) -> None:
    """A user's sockets on two instances are both listed, with their rooms and a last pong;
    an invalid user id is 400 with the API's body."""
    user = f"us-{uuid.uuid4().hex[:8]}"
    first = await open_socket(cluster, 0, user, sockets)
    await open_socket(cluster, 2, user, sockets)
    await first.ws.send('{"type": "join", "room": "lobby:main"}')
    assert (await first.next())["type"] == "joined"
    ids = sorted(cluster.instances[i].env["GATEWAY_INSTANCE_ID"] for i in (0, 2))

    async def listed() -> dict[str, Any]:
        body: dict[str, Any] = (await get(cluster, f"/ws/console/users/{user}")).json()
        sockets_seen = body.get("sockets", [])
        ok = (
            sorted(s["instance_id"] for s in sockets_seen) == ids
            and all(s["last_pong_at"] for s in sockets_seen)
            and any(s["rooms"] == ["lobby:main"] for s in sockets_seen)
        )
        return body if ok else {}

    body = await eventually(listed, timeout=20, interval=0.25)
    assert body["user_id"] == user and body["scope"] == "deployment"
    assert body["unreachable_instances"] == []
    assert body["presence"] is None or body["presence"]["state"] in ("online", "offline")
    bad = await get(cluster, "/ws/console/users/a%2Fb")
    assert bad.status_code in (400, 404)
    invalid = await get(cluster, "/ws/console/users/..")
    assert invalid.status_code in (400, 404)
    spaced = await get(cluster, "/ws/console/users/bad user!")
    assert spaced.status_code == 400 and spaced.json()["status"] == "error"


async def test_events_recorded_and_filtered(cluster: Cluster) -> None:
    """A socket's connect and its disconnect with the close code, and a refused connect, are
    listed newest first, whichever instance they happened on, and the filters apply."""
    user = f"ev-{uuid.uuid4().hex[:8]}"
    async with connect(cluster.instances[2].ws(user)) as ws:
        await ws.recv()
    async with connect(cluster.instances[1].ws(user, token="bogus")) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()

    async def found() -> list[dict[str, Any]]:
        answer = await get(cluster, "/ws/console/events", params={"user": user})
        events: list[dict[str, Any]] = answer.json()["events"]
        kinds = [e["kind"] for e in events]
        return events if {"connect", "disconnect", "refused"} <= set(kinds) else []

    events = await eventually(found, timeout=20, interval=0.25)
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)
    disconnect = next(e for e in events if e["kind"] == "disconnect")
    assert disconnect["code"] == 1000
    assert disconnect["instance_id"] == cluster.instances[2].env["GATEWAY_INSTANCE_ID"]
    refused = next(e for e in events if e["kind"] == "refused")
    assert refused["code"] == 4401 and refused["reason"]
    only = await get(cluster, "/ws/console/events", params={"user": user, "kind": "connect"})
    assert {e["kind"] for e in only.json()["events"]} == {"connect"}
    limited = await get(cluster, "/ws/console/events", params={"limit": 1})
    assert len(limited.json()["events"]) == 1
    assert (await get(cluster, "/ws/console/events", params={"kind": "nope"})).status_code == 400


async def test_sigkilled_instance_shown_gone(cluster: Cluster) -> None:
    """An instance SIGKILLed (no drain) with a socket is listed as unreachable, then lost
    once its heartbeat is stale, and the socket it last reported counts in the
    instance_lost series; the others stay live. Last in the module: it costs an instance."""
    victim = cluster.instances[2]
    victim_id = victim.env["GATEWAY_INSTANCE_ID"]
    client = await Client.open(victim.ws(f"kill-{uuid.uuid4().hex[:8]}"))
    seen: set[str] = set()

    async def overview() -> dict[str, Any]:
        # Asked of a surviving instance directly: the proxy may still pick the dead one, and
        # the instance_lost count is the answering instance's memory.
        async with httpx.AsyncClient(
            base_url=cluster.instances[0].http,
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
            timeout=30,
        ) as http:
            body: dict[str, Any] = (await http.get("/ws/console/overview")).json()
        return body

    async def victim_holds_it() -> bool:
        return row(await overview(), 2, cluster)["sockets"] == 1

    await eventually(victim_holds_it, timeout=20, interval=0.25)
    assert victim.process.popen is not None
    os.kill(victim.process.popen.pid, signal.SIGKILL)

    async def lost() -> dict[str, Any]:
        body = await overview()
        state = next(r["state"] for r in body["instances"] if r["instance_id"] == victim_id)
        seen.add(state)
        counted = sum(body["series"]["signouts_per_min"]["instance_lost"])
        return body if state == "lost" and counted else {}

    body = await eventually(lost, timeout=30, interval=0.25)
    await client.close()
    assert seen <= {"live", "unreachable", "lost"}
    live = {r["instance_id"] for r in body["instances"] if r["state"] == "live"}
    assert live == {cluster.instances[i].env["GATEWAY_INSTANCE_ID"] for i in (0, 1)}
    gone = next(r for r in body["instances"] if r["instance_id"] == victim_id)
    assert gone["sockets"] is None and gone["last_heartbeat_at"]
    # One socket lost in one 2 s step: 30 a minute.
    assert sum(body["series"]["signouts_per_min"]["instance_lost"]) == 30
