"""Presence across three gateway instances behind the round-robin proxy, on the emulators:
user presence in Firestore (transitions, debounce, several devices, sign-out), room presence
over the socket (snapshot, diffs, publish) and a crashed instance's members dropped.

Intervals are short (PRESENCE_GRACE=1.5, PRESENCE_DIFF_INTERVAL=0.2, SWEEP_INTERVAL=0.5: an
instance counts as dead 1.5 s after its last heartbeat). The last test SIGKILLs an instance.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.storage.schema import DEVICES, PRESENCE, PRESENCE_HOLDERS, SEQ, STATE
from tests.conftest import PubSubEmulator
from tests.e2e.conftest import Cluster, start_cluster
from tests.support import (
    UNIT,
    Client,
    TokenMinter,
    eventually,
    id_token_for,
    pubsub_rest,
    pull_all,
    start_sweep,
)

pytestmark = pytest.mark.e2e

GRACE = 1.5
CALLBACK_TOKEN = secrets.token_urlsafe(24)
ENV = {
    "PING_INTERVAL": "0.5",
    "PONG_TIMEOUT": "30",
    "SWEEP_INTERVAL": "0.5",
    "PONG_FLUSH_INTERVAL": "0.1",
    "PRESENCE_GRACE": str(GRACE),
    "PRESENCE_DIFF_INTERVAL": "0.2",
    "PRESENCE_ROOM_PREFIXES": "doc:",
    "WS_PUBLIC_ROOM_PREFIXES": "doc:",
}


@dataclass
class Events:
    """The presence events topic and a subscription made before any gateway started."""

    host: str
    topic: str
    subscription: str

    def pull(self) -> list[dict[str, Any]]:
        """Every event published since the last pull, decoded, in publish order per user."""
        messages = pull_all(self.host, self.subscription)
        return [json.loads(base64.b64decode(m["data"])) for m in messages]


@pytest.fixture(scope="module")
def events(project_id: str, pubsub: PubSubEmulator) -> Events:
    topic = f"presence-events-{secrets.token_hex(4)}"
    topic_path = f"projects/{project_id}/topics/{topic}"
    subscription = f"projects/{project_id}/subscriptions/{topic}-test"
    pubsub_rest(pubsub.host, "PUT", topic_path)
    pubsub_rest(pubsub.host, "PUT", subscription, {"topic": topic_path})
    return Events(pubsub.host, topic, subscription)


@pytest.fixture(scope="module")
def cluster(
    firestore_host: str,
    project_id: str,
    minter: TokenMinter,
    pubsub: PubSubEmulator,
    events: Events,
) -> Iterator[Cluster]:
    started = start_cluster(
        firestore_host,
        project_id,
        minter,
        pubsub,
        "presence",
        PRESENCE_EVENTS_TOPIC=events.topic,
        GATEWAY_CALLBACK_TOKEN=CALLBACK_TOKEN,
        **ENV,
    )
    yield started
    started.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


def uid(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def connect(cluster: Cluster, opened: list[Client], user: str, **claims: Any) -> Client:
    """A socket through the proxy, with a token carrying ``claims`` (custom claims)."""
    minter = cluster.minter
    assert minter is not None
    if claims:
        from firebase_admin import auth

        custom = auth.create_custom_token(user, claims, app=minter.app)
        token = await asyncio.to_thread(id_token_for, minter.auth_host, custom)
    else:
        token = minter(user)
    url = f"ws://127.0.0.1:{cluster.port}/ws/connect/{user}?token={token}"
    client = await Client.open(url)
    opened.append(client)
    return client


async def frame(client: Client, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next frame of this type (others before it are skipped)."""
    while True:
        got = await client.next(timeout)
        if got.get("type") == kind:
            return got


async def diff_naming(client: Client, user: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next diff that names ``user`` (a joiner's first diff also upserts itself)."""
    while True:
        diff = await frame(client, "presence_diff", timeout)
        names = [m["user_id"] for m in diff["joins"]] + [m["user_id"] for m in diff["leaves"]]
        assert len(names) == len(set(names)), f"a user named twice: {diff}"
        if user in names:
            return diff


async def join(client: Client, room: str, **info: Any) -> dict[str, Any]:
    """Join and return the snapshot that follows ``joined``."""
    await client.ws.send(json.dumps({"type": "join", "room": room, "info": info}))
    await frame(client, "joined")
    return await frame(client, "presence")


def doc(db: Any, collection: str, user: str) -> dict[str, Any]:
    snapshot = db.collection(collection).document(user).get()
    return snapshot.to_dict() or {} if snapshot.exists else {}


async def presence_is(db: Any, user: str, state: str, devices: int) -> dict[str, Any] | None:
    found = await asyncio.to_thread(doc, db, PRESENCE, user)
    return found if (found.get(STATE), found.get(DEVICES)) == (state, devices) else None


async def test_devices_on_several_instances_are_one_online_user_until_the_last_leaves(
    cluster: Cluster, clients: list[Client], firestore_client: Any
) -> None:
    """Two sockets (on two instances) count as two devices of one online user; closing one
    leaves them online, closing the last turns them offline."""
    user = uid("devices")
    first = await connect(cluster, clients, user)
    await eventually(lambda: presence_is(firestore_client, user, "online", 1))
    second = await connect(cluster, clients, user)
    await eventually(lambda: presence_is(firestore_client, user, "online", 2))
    await first.close()
    await eventually(lambda: presence_is(firestore_client, user, "online", 1))
    await second.close()
    offline = await eventually(lambda: presence_is(firestore_client, user, "offline", 0))
    assert offline["last_seen_at"] is not None
    assert await metric_sum(cluster, "gateway_presence_transitions_total") >= 2


async def metric_sum(cluster: Cluster, name: str) -> float:
    """A metric's value summed over the instances' /metrics."""
    total = 0.0
    headers = {"Authorization": f"Bearer {cluster.admin_token}"}
    for gateway in cluster.instances:
        async with httpx.AsyncClient(base_url=gateway.http, headers=headers) as http:
            text = (await http.get("/metrics")).text
        total += sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))
    return total


async def test_a_reconnect_within_the_grace_never_shows_offline(
    cluster: Cluster, clients: list[Client], firestore_client: Any
) -> None:
    """A socket that closes and reconnects (through the proxy, so on another instance) within
    PRESENCE_GRACE makes no transition; one that stays away longer shows offline, then
    online."""
    user = uid("blink")
    client = await connect(cluster, clients, user)
    await eventually(lambda: presence_is(firestore_client, user, "online", 1))
    await client.close()
    await connect(cluster, clients, user)
    for _ in range(int(GRACE * 2 / 0.1)):
        assert (await asyncio.to_thread(doc, firestore_client, PRESENCE, user))[STATE] == "online"
        await asyncio.sleep(0.1)
    holders = await asyncio.to_thread(doc, firestore_client, PRESENCE_HOLDERS, user)
    assert holders[SEQ] == 1, "one transition: the first online"
    await clients[-1].close()
    await eventually(lambda: presence_is(firestore_client, user, "offline", 0))
    await connect(cluster, clients, user)
    await eventually(lambda: presence_is(firestore_client, user, "online", 1))
    holders = await asyncio.to_thread(doc, firestore_client, PRESENCE_HOLDERS, user)
    assert holders[SEQ] == 3


async def test_a_sign_out_turns_the_user_offline_at_once(
    cluster: Cluster, clients: list[Client], firestore_client: Any
) -> None:
    """A sign-out closes the sockets with 4410 and the user is offline without the grace."""
    user = uid("signout")
    client = await connect(cluster, clients, user)
    await eventually(lambda: presence_is(firestore_client, user, "online", 1))
    response = await cluster.request("POST", f"/ws/signout/{user}")
    assert response.status_code == 200, response.text
    assert await client.closed() == 4410
    await eventually(lambda: presence_is(firestore_client, user, "offline", 0), timeout=GRACE)


async def test_room_members_see_each_other_join_publish_and_leave_across_instances(
    cluster: Cluster, clients: list[Client]
) -> None:
    """Two users on two instances: each snapshot lists who is there, the first sees the
    second join (with its info) and publish, then leave after the grace; every diff names
    each user once."""
    room = f"doc:{secrets.token_hex(4)}"
    ana, ben = uid("ana"), uid("ben")
    a = await connect(cluster, clients, ana)
    snapshot = await join(a, room, name="Ana")
    assert [m["user_id"] for m in snapshot["members"]] == [ana]
    b = await connect(cluster, clients, ben, rooms_publish=["doc:*"])
    # Ben's instance learns of Ana over Pub/Sub: his snapshot may trail by a message.
    snapshot = await join(b, room, name="Ben")
    assert ben in [m["user_id"] for m in snapshot["members"]]
    diff = await diff_naming(a, ben)
    assert {"user_id": ben, "devices": 1, "info": {"name": "Ben"}} in diff["joins"]
    assert (diff["leaves"], diff["users"], diff["connections"]) == ([], 2, 2)

    async def listed() -> dict[str, Any] | None:
        response = await cluster.request("GET", f"/ws/rooms/{room}/presence")
        body: dict[str, Any] = response.json()
        return body if (body["users"], body["connections"]) == (2, 2) else None

    body = await eventually(listed)
    assert [m["user_id"] for m in body["members"]] == sorted([ana, ben])
    await b.ws.send(json.dumps({"type": "publish", "room": room, "data": {"typing": True}}))
    signal_ = await frame(a, "publish")
    assert (signal_["from"], signal_["room"], signal_["data"]) == (ben, room, {"typing": True})
    await b.close()
    diff = await diff_naming(a, ben, timeout=GRACE + 5)
    assert (diff["leaves"], diff["users"]) == ([{"user_id": ben}], 1)


async def test_a_publish_needs_membership(cluster: Cluster, clients: list[Client]) -> None:
    """A publish to a room the socket has not joined is refused with not_in_room."""
    client = await connect(cluster, clients, uid("outsider"))
    await client.ws.send(json.dumps({"type": "publish", "room": "doc:x", "data": 1, "id": 7}))
    error = await frame(client, "error")
    assert (error["code"], error["room"], error["id"]) == ("not_in_room", "doc:x", 7)


async def test_each_online_event_is_followed_by_exactly_one_offline(
    cluster: Cluster, clients: list[Client], events: Events, firestore_client: Any
) -> None:
    """Two sessions of one user (the second after an offline) and a signed-out user: on the
    events topic each user's events alternate online and offline, once each, with seq 1, 2,
    3..., and each offline names its reason."""
    events.pull()  # what earlier tests published
    twice, signed = uid("twice"), uid("signed")
    for _ in range(2):
        client = await connect(cluster, clients, twice)
        await eventually(lambda: presence_is(firestore_client, twice, "online", 1))
        await client.close()
        await eventually(lambda: presence_is(firestore_client, twice, "offline", 0))
    client = await connect(cluster, clients, signed)
    await eventually(lambda: presence_is(firestore_client, signed, "online", 1))
    await cluster.request("POST", f"/ws/signout/{signed}")
    await eventually(lambda: presence_is(firestore_client, signed, "offline", 0))
    got = await asyncio.to_thread(events.pull)
    by_user = {}
    for user in (twice, signed):
        mine = sorted((e for e in got if e["user_id"] == user), key=lambda e: e["seq"])
        by_user[user] = [(e["seq"], e["state"], e["reason"]) for e in mine]
    assert by_user[twice] == [
        (1, "online", "connect"),
        (2, "offline", "disconnect"),
        (3, "online", "connect"),
        (4, "offline", "disconnect"),
    ]
    assert by_user[signed] == [(1, "online", "connect"), (2, "offline", "signout")]


async def test_a_snapshot_taken_while_others_join_and_leave_converges_with_its_diffs(
    cluster: Cluster, clients: list[Client]
) -> None:
    """Users join and leave on every instance while a late joiner joins: its snapshot plus
    the diffs after it end at exactly the users still in the room."""
    room = f"doc:{secrets.token_hex(4)}"
    users = [uid(f"churn{n}") for n in range(6)]
    sockets = [await connect(cluster, clients, user) for user in users]
    late_user = uid("late")
    late = await connect(cluster, clients, late_user)

    async def churn() -> None:
        await asyncio.gather(*(join(s, room) for s in sockets))
        await asyncio.gather(*(s.close() for s in sockets[:3]))

    joining = asyncio.create_task(churn())
    snapshot = await join(late, room)
    await joining
    members = {m["user_id"] for m in snapshot["members"]}
    settle_until = asyncio.get_running_loop().time() + (GRACE + 3) * UNIT
    while asyncio.get_running_loop().time() < settle_until:
        try:
            diff = await frame(late, "presence_diff", timeout=0.5)
        except TimeoutError:
            continue
        members |= {m["user_id"] for m in diff["joins"]}
        members -= {m["user_id"] for m in diff["leaves"]}
    assert members == {*users[3:], late_user}


async def test_a_killed_instances_users_leave_rooms_and_go_offline_within_the_bound(
    cluster: Cluster,
    clients: list[Client],
    events: Events,
    firestore_client: Any,
    firestore_host: str,
    auth_host: str,
    project_id: str,
    pubsub: PubSubEmulator,
) -> None:
    """SIGKILL the instance holding a member: the other members get its leave once the
    instance misses three heartbeats (plus a watch and a diff interval), and the sweep turns
    the user offline (reason instance_lost): one offline event for its one online."""
    sweep = start_sweep(
        {
            "FIRESTORE_EMULATOR_HOST": firestore_host,
            "FIREBASE_AUTH_EMULATOR_HOST": auth_host,
            "PUBSUB_EMULATOR_HOST": pubsub.host,
            "GOOGLE_CLOUD_PROJECT": project_id,
            "GATEWAY_CALLBACK_TOKEN": CALLBACK_TOKEN,
            "GATEWAY_URL": cluster.url,
            # Longer than the gateways': this sweep is here to reap, not to sign out the
            # users other tests left on the shared emulator (a run over them takes seconds).
            "PONG_TIMEOUT": "3600",
            "SWEEP_INTERVAL": ENV["SWEEP_INTERVAL"],
            "PRESENCE_EVENTS_TOPIC": events.topic,
        },
        interval=float(ENV["SWEEP_INTERVAL"]),
    )
    try:
        room = f"doc:{secrets.token_hex(4)}"
        watcher, doomed = uid("watcher"), uid("doomed")
        w = await connect(cluster, clients, watcher)
        await join(w, room)
        d = await connect(cluster, clients, doomed)
        await join(d, room)
        await diff_naming(w, doomed)
        await eventually(lambda: presence_is(firestore_client, doomed, "online", 1))
        [victim] = await cluster.holding(doomed)
        assert victim not in await cluster.holding(watcher), "the proxy spreads connections"
        await asyncio.to_thread(events.pull)
        os.kill(victim.process.popen.pid, signal.SIGKILL)
        sweep_interval = float(ENV["SWEEP_INTERVAL"])
        # Three missed beats, a watch pass, a diff interval; and slack for a loaded machine.
        bound = 3 * sweep_interval + sweep_interval + 0.2 + 2.0
        diff = await diff_naming(w, doomed, timeout=bound + 5 * UNIT)
        assert diff["leaves"] == [{"user_id": doomed}]
        # The sweep's bound is INSTANCE_STALE_AFTER (3 beats) and one sweep interval while a
        # run takes less than an interval (docs/presence.md; measured by make bench). On a
        # loaded machine a run can take seconds, and the reap waits for the run under way.
        await eventually(
            lambda: presence_is(firestore_client, doomed, "offline", 0), timeout=bound + 45
        )
        got = [e for e in await asyncio.to_thread(events.pull) if e["user_id"] == doomed]
        assert [(e["state"], e["reason"], e["seq"]) for e in got] == [
            ("offline", "instance_lost", 2)
        ]
    finally:
        sweep.stop()
