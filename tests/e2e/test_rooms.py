"""Rooms across three gateway instances behind the round-robin proxy, over the Pub/Sub
emulator, with real ID tokens whose ``rooms`` custom claim is set through the Auth emulator
(as an application's backend would, with ``auth.set_custom_user_claims``).

Limits are small so that they can be reached: 3 rooms per socket, 2 member sockets per room
per instance, and ``public:`` rooms open to every signed-in user.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import PubSubEmulator
from tests.e2e.conftest import Cluster, start_cluster
from tests.support import (
    UNIT,
    Client,
    GatewayProc,
    TokenMinter,
    eventually,
    id_token_for,
    start_gateway,
)

pytestmark = pytest.mark.e2e

LIMITS = {
    "WS_MAX_ROOMS_PER_SOCKET": "3",
    "WS_MAX_ROOM_MEMBERS": "2",
    "WS_PUBLIC_ROOM_PREFIXES": "public:",
    "SWEEP_INTERVAL": "1",
}


@dataclass
class Rooms(Cluster):
    """Three instances behind one proxy URL, and a way to mint tokens with room grants."""

    minter: TokenMinter

    def token(self, user: str, rooms: list[str] | None) -> str:
        """A fresh ID token for the user, carrying ``rooms`` as a custom claim (none: the
        claim is absent)."""
        from firebase_admin import auth

        self.minter(user)  # the first sign-in creates the account
        claims = None if rooms is None else {"rooms": rooms}
        auth.set_custom_user_claims(user, claims, app=self.minter.app)
        return id_token_for(
            self.minter.auth_host, auth.create_custom_token(user, app=self.minter.app)
        )

    def ws(self, user: str, token: str, gateway: GatewayProc | None = None) -> str:
        port = gateway.port if gateway is not None else self.port
        return f"ws://127.0.0.1:{port}/ws/connect/{user}?token={token}"

    async def members(self, room: str) -> dict[str, Any]:
        response = await self.request("GET", f"/ws/rooms/{room}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module")
def rooms(
    firestore_host: str, project_id: str, minter: TokenMinter, pubsub: PubSubEmulator
) -> Iterator[Rooms]:
    rooms = start_cluster(firestore_host, project_id, minter, pubsub, "rooms", kind=Rooms, **LIMITS)
    yield rooms
    rooms.stop()


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


async def ask(client: Client, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a join or leave and return the gateway's answer to it."""
    await client.ws.send(json.dumps(frame))
    return await client.next()


async def sessions_by_instance(rooms: Rooms) -> dict[str, int]:
    """How many sockets each instance holds, asked of each instance directly."""
    counts = {}
    headers = {"Authorization": f"Bearer {rooms.admin_token}"}
    for gateway in rooms.instances:
        async with httpx.AsyncClient(base_url=gateway.http, headers=headers) as http:
            stats = (await http.get("/ws/stats", params={"scope": "instance"})).json()
        counts[instance_of(gateway)] = stats["total_connections"]
    return counts


async def quiet_for(client: Client, seconds: float) -> None:
    """Nothing but pings arrives on the socket for a while."""
    await asyncio.sleep(seconds * UNIT)
    assert client.frames.empty(), client.frames.get_nowait()


async def metric_total(rooms: Rooms, prefix: str) -> float:
    """A /metrics sample summed over the three instances."""
    total = 0.0
    for gateway in rooms.instances:
        async with httpx.AsyncClient(base_url=gateway.http) as http:
            for line in (await http.get("/metrics")).text.splitlines():
                if line.startswith(prefix):
                    total += float(line.rsplit(" ", 1)[1])
    return total


async def test_a_token_without_the_rooms_claim_is_refused_and_one_with_it_joins(
    rooms: Rooms, clients: list[Client]
) -> None:
    """Without the claim (or with a claim for other rooms) a join is refused with
    ``room_forbidden``, echoing the room and the id; a ``public:`` room is open to any token;
    a ``team:*`` grant lets the holder join ``team:…`` rooms. Refusals are counted."""
    room = f"team:{secrets.token_hex(4)}"
    refused_before = await metric_total(rooms, 'gateway_room_refusals_total{code="room_forbidden"}')
    plain_user, other_user, member_user = uid("plain"), uid("other"), uid("member")
    plain = await Client.open(rooms.ws(plain_user, rooms.token(plain_user, None)))
    other = await Client.open(rooms.ws(other_user, rooms.token(other_user, ["elsewhere"])))
    member = await Client.open(rooms.ws(member_user, rooms.token(member_user, ["team:*"])))
    clients.extend([plain, other, member])
    for client in (plain, other):
        refusal = await ask(client, {"type": "join", "room": room, "id": "j1"})
        assert refusal["type"] == "error" and refusal["code"] == "room_forbidden"
        assert (refusal["room"], refusal["id"]) == (room, "j1")
        assert room in refusal["message"] and refusal["timestamp"]
    public = await ask(plain, {"type": "join", "room": "public:lobby", "id": 2})
    assert (public["type"], public["room"], public["id"]) == ("joined", "public:lobby", 2)
    joined = await ask(member, {"type": "join", "room": room})
    assert (joined["type"], joined["room"]) == ("joined", room)
    assert "id" not in joined
    body = await rooms.members(room)
    assert body["users"] == [member_user] and body["connections"] == 1
    refused = await metric_total(rooms, 'gateway_room_refusals_total{code="room_forbidden"}')
    assert refused - refused_before == 2


async def test_prefix_grants_end_at_a_separator_and_a_bare_star_grants_nothing(
    rooms: Rooms, clients: list[Client]
) -> None:
    """Real tokens: ``doc:…:*`` joins the document's room and those under it but not a longer
    id (``doc:…X``); ``doc:…*`` (no separator) and a bare ``*`` grant nothing, and each is
    logged once however many sockets present it; a ``public:`` room is open to every token,
    ``publicity`` is not."""
    gateway = rooms.instances[2]
    doc = f"doc:{secrets.token_hex(4)}"

    async def answer(grants: list[str], room: str) -> str:
        user = uid("grant")
        client = await Client.open(rooms.ws(user, rooms.token(user, grants), gateway))
        clients.append(client)
        reply = await ask(client, {"type": "join", "room": room})
        return str(reply["type"] if reply["type"] == "joined" else reply["code"])

    bounded = [f"{doc}:*"]
    assert await answer(bounded, doc) == "joined"
    assert await answer(bounded, f"{doc}:comments") == "joined"
    assert await answer(bounded, f"{doc}X") == "room_forbidden"
    assert await answer(bounded, f"{doc}-1") == "room_forbidden"
    for unbounded in ([f"{doc}*"], ["*"]):
        for room in (doc, f"{doc}X", f"{doc}:comments", uid("any")):
            assert await answer(unbounded, room) == "room_forbidden", (unbounded, room)
    assert await answer(["*"], "public:lobby") == "joined"
    assert await answer(["*"], "public") == "joined"
    assert await answer(["*"], "publicity") == "room_forbidden"

    def warnings(grant: str) -> int:
        return gateway.log().count(f"rooms claim grant {grant!r} grants nothing")

    async def logged_once() -> bool:
        return warnings("*") == 1 and warnings(f"{doc}*") == 1

    await eventually(logged_once)


async def test_a_room_send_reaches_members_on_three_instances_and_not_non_members(
    rooms: Rooms, clients: list[Client]
) -> None:
    """Members on all three instances each get a room send exactly once, whichever instance
    answers it; sockets of the same users that did not join, and other users, get nothing.
    ``GET /ws/rooms/{room}`` lists every member with its instance from any instance. A member
    that leaves gets no more; one that closes its socket drops out of the room."""
    room = uid("team")
    members: list[Client] = []
    outsiders: list[Client] = []
    where: list[str] = []
    member_users: list[str] = []
    # Through the proxy, round robin: a member per instance; a socket that lands on an
    # instance that already has one stays out of the room.
    while len(where) < 3:
        assert len(members) + len(outsiders) < 9, "the proxy does not spread connections"
        before = await sessions_by_instance(rooms)
        user = uid("member")
        client = await Client.open(rooms.ws(user, rooms.token(user, [room])))
        clients.append(client)

        async def landed(before: dict[str, int] = before) -> str:
            after = await sessions_by_instance(rooms)
            grew = [i for i in after if after[i] > before[i]]
            return grew[0] if len(grew) == 1 else ""

        instance = await eventually(landed)
        if instance in where:
            outsiders.append(client)
            continue
        assert (await ask(client, {"type": "join", "room": room}))["type"] == "joined"
        members.append(client)
        member_users.append(user)
        where.append(instance)
    # Another socket of a member's user, and a user allowed in the room: neither joined.
    stranger = uid("stranger")
    for user in (member_users[0], stranger):
        outsiders.append(await Client.open(rooms.ws(user, rooms.token(user, [room]))))
        clients.append(outsiders[-1])

    for _ in range(3):
        listed = await rooms.members(room)
        assert (listed["scope"], listed["unreachable_instances"]) == ("deployment", [])
        assert listed["connections"] == 3
        assert sorted(m["instance_id"] for m in listed["members"]) == sorted(where)
        assert listed["instances"] == sorted(instance_of(g) for g in rooms.instances)
        assert listed["total_users"] == len(listed["users"])

    for n in range(3):
        response = await rooms.request("POST", f"/ws/rooms/{room}/send", json={"type": "n", "n": n})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["message"], body["room"]) == (
            "success",
            "Message sent to room",
            room,
        )
        assert (body["connections"], body["scope"], body["unreachable_instances"]) == (
            3,
            "deployment",
            [],
        )
        assert body["recipients"] == 3
    for member in members:
        assert [(await member.next())["n"] for _ in range(3)] == [0, 1, 2]
    await asyncio.gather(*(quiet_for(c, 1) for c in [*members, *outsiders]))

    leaver, closer, stayer = members
    left = await ask(leaver, {"type": "leave", "room": room, "id": "bye"})
    assert (left["type"], left["room"], left["id"]) == ("left", room, "bye")
    again = await ask(leaver, {"type": "leave", "room": room})
    assert again["type"] == "left", "leaving a room one is not in is not an error"
    await closer.close()

    async def two_gone() -> dict[str, Any]:
        listed = await rooms.members(room)
        return listed if listed["connections"] == 1 else {}

    await eventually(two_gone)
    response = await rooms.request("POST", f"/ws/rooms/{room}/send", json={"type": "after"})
    assert response.json()["connections"] == 1
    assert await stayer.next() == {"type": "after"}
    await quiet_for(leaver, 1)


async def test_room_members_list_the_first_limit_and_keep_the_counts_exact(
    rooms: Rooms, clients: list[Client]
) -> None:
    """Members u1 on the first and second instances, u2 on the first, u3 on the third:
    ``limit=1`` and ``limit=2`` list the first members and users by id and say ``truncated``,
    from any instance; sockets are counted exactly, and users too once no instance holds more
    than ``limit`` (before that, a lower bound that says so). An out-of-range limit answers
    400 with the error body."""
    room, prefix = uid("bounded"), uid("listed")
    u1, u2, u3 = (f"{prefix}-{n}" for n in (1, 2, 3))
    first, second, third = rooms.instances
    for gateway, user in [(first, u1), (first, u2), (second, u1), (third, u3)]:
        client = await Client.open(rooms.ws(user, rooms.token(user, [room]), gateway))
        clients.append(client)
        assert (await ask(client, {"type": "join", "room": room}))["type"] == "joined"
    expected = {1: ([u1], 2, False), 2: ([u1, u2], 3, True), 4: ([u1, u2, u3], 3, True)}
    for limit, (users, total_users, exact) in expected.items():
        for _ in range(3):  # through the proxy: each instance answers in turn
            response = await rooms.request("GET", f"/ws/rooms/{room}", params={"limit": limit})
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["scope"], body["unreachable_instances"]) == ("deployment", [])
            assert body["users"] == users, limit
            assert [m["user_id"] for m in body["members"]] == [u1, u1, u2, u3][:limit]
            assert (body["connections"], body["truncated"]) == (4, limit < 4), limit
            assert (body["total_users"], body["total_users_exact"]) == (total_users, exact)
    response = await rooms.request("GET", f"/ws/rooms/{room}", params={"limit": "10001"})
    assert response.status_code == 400, response.text
    assert (response.json()["status"], response.json()["status_code"]) == ("error", 400)


async def test_room_limits_and_names_are_refused_with_the_documented_errors(
    rooms: Rooms, clients: list[Client]
) -> None:
    """An invalid name is ``invalid_room`` (on the socket and as a 400 on the REST API), a
    fourth room ``too_many_rooms``, a third member socket of a room on one instance
    ``room_full``; each refusal leaves the socket open and its rooms as they were."""
    gateway = rooms.instances[0]
    user = uid("limits")
    token = rooms.token(user, ["lim:*"])
    first = await Client.open(rooms.ws(user, token, gateway))
    clients.append(first)
    for bad in ("has space", "a/b", "x" * 129, "star*", ""):
        refusal = await ask(first, {"type": "join", "room": bad, "id": bad[:8]})
        assert (refusal["type"], refusal["code"]) == ("error", "invalid_room")
        assert "1 to 128 characters" in refusal["message"]
    for n in range(3):
        assert (await ask(first, {"type": "join", "room": f"lim:{n}"}))["type"] == "joined"
    fourth = await ask(first, {"type": "join", "room": "lim:3"})
    assert (fourth["code"], fourth["room"]) == ("too_many_rooms", "lim:3")
    assert "at most 3 rooms" in fourth["message"]
    second = await Client.open(rooms.ws(user, token, gateway))
    third = await Client.open(rooms.ws(user, token, gateway))
    clients.extend([second, third])
    assert (await ask(second, {"type": "join", "room": "lim:0"}))["type"] == "joined"
    full = await ask(third, {"type": "join", "room": "lim:0"})
    assert (full["code"], full["room"]) == ("room_full", "lim:0")
    listed = await rooms.members("lim:0")
    assert listed["connections"] == 2 and first.close_code is None and third.close_code is None
    # The REST API applies the same naming rule.
    bad_send = await rooms.request("POST", "/ws/rooms/a%20b/send", json={"type": "x"})
    assert bad_send.status_code == 400
    assert "1 to 128 characters" in bad_send.json()["message"]
    assert (await rooms.request("GET", "/ws/rooms/a%20b")).status_code == 400
    async with httpx.AsyncClient(base_url=rooms.url) as anonymous:
        assert (await anonymous.get("/ws/rooms/lim:0")).status_code == 401


async def test_joins_and_leaves_are_counted_in_metrics_on_the_instance_that_holds_the_socket(
    rooms: Rooms, clients: list[Client]
) -> None:
    """/metrics counts room_join and room_leave connection events (a close leaves every room)
    and shows the rooms and memberships held."""
    gateway = rooms.instances[1]
    user = uid("counted")
    client = await Client.open(rooms.ws(user, rooms.token(user, ["cnt:*"]), gateway))
    clients.append(client)

    async def sample(name: str) -> float:
        """One sample of this instance's /metrics (``name`` with its labels); 0 if absent."""
        async with httpx.AsyncClient(base_url=gateway.http) as http:
            for line in (await http.get("/metrics")).text.splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    joins = await sample('gateway_connection_events_total{event="room_join"}')
    leaves = await sample('gateway_connection_events_total{event="room_leave"}')
    for room in ("cnt:a", "cnt:b"):
        assert (await ask(client, {"type": "join", "room": room}))["type"] == "joined"
    assert await sample('gateway_connection_events_total{event="room_join"}') == joins + 2
    assert await sample("gateway_room_memberships") >= 2
    await client.close()

    async def left_both() -> bool:
        now = await sample('gateway_connection_events_total{event="room_leave"}')
        return now == leaves + 2

    await eventually(left_both)


async def test_the_python_client_joins_receives_a_room_send_and_is_refused_without_the_grant(
    rooms: Rooms,
) -> None:
    """presence_client against the real gateways: ``join`` of a granted room returns
    ``joined`` and the room's messages arrive; a room the token lacks raises
    PresenceRoomError(room_forbidden) and is not kept."""
    from presence_client import PresenceClient, PresenceRoomError, State

    user, room = uid("pyclient"), uid("py")
    token = rooms.token(user, [room])

    async def get_token(force_refresh: bool) -> str:
        return token

    async with PresenceClient(rooms.url, user, get_token) as client:
        await client.wait_for_state(State.CONNECTED, timeout=30 * UNIT)
        got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        client.on_message("room-news", got.put_nowait)
        async with asyncio.timeout(10 * UNIT):
            joined = await client.join(room)
            assert joined.room == room
            with pytest.raises(PresenceRoomError) as refused:
                await client.join(uid("other"))
        assert refused.value.code == "room_forbidden" and client.rooms == [room]
        response = await rooms.request(
            "POST", f"/ws/rooms/{room}/send", json={"type": "room-news", "n": 1}
        )
        assert response.json()["connections"] == 1
        async with asyncio.timeout(10 * UNIT):
            assert (await got.get())["n"] == 1


async def test_a_refreshed_token_without_the_grant_takes_the_socket_out_of_the_room(
    rooms: Rooms, clients: list[Client]
) -> None:
    """The backend withdraws the room from the user's claim; when the socket presents its next
    token (``auth``), the gateway answers ``auth_ok``, then ``left`` with reason
    ``not_allowed``, and room sends no longer reach it."""
    user, room = uid("revoked"), uid("team")
    client = await Client.open(rooms.ws(user, rooms.token(user, [room])))
    clients.append(client)
    assert (await ask(client, {"type": "join", "room": room}))["type"] == "joined"
    await client.ws.send(json.dumps({"type": "auth", "token": rooms.token(user, ["other"])}))
    assert (await client.next())["type"] == "auth_ok"
    left = await client.next()
    assert (left["type"], left["room"], left["reason"]) == ("left", room, "not_allowed")
    assert (await rooms.members(room))["connections"] == 0
    response = await rooms.request("POST", f"/ws/rooms/{room}/send", json={"type": "x"})
    assert response.json()["connections"] == 0
    await quiet_for(client, 1)


@pytest.fixture(scope="module")
def json_gateway(
    firestore_host: str, project_id: str, minter: TokenMinter
) -> Iterator[GatewayProc]:
    """One gateway logging Cloud Logging's JSON, as on Cloud Run."""
    proc = start_gateway(firestore_host, project_id, minter, LOG_FORMAT="json")
    yield proc
    proc.stop()


async def test_room_join_and_leave_are_structured_log_events(
    rooms: Rooms, json_gateway: GatewayProc, clients: list[Client]
) -> None:
    """With LOG_FORMAT=json each join and leave is a log entry whose ``event`` (Cloud
    Logging's jsonPayload.event) names the room; a close leaves with reason ``disconnect``."""
    user = uid("logged")
    client = await Client.open(rooms.ws(user, rooms.token(user, ["log:*"]), json_gateway))
    clients.append(client)
    for room in ("log:a", "log:b"):
        assert (await ask(client, {"type": "join", "room": room}))["type"] == "joined"
    assert (await ask(client, {"type": "leave", "room": "log:a"}))["type"] == "left"
    await client.close()

    def room_events() -> list[tuple[str, str, str | None]]:
        found = []
        for line in json_gateway.log().splitlines():
            if line.startswith("{"):
                event = json.loads(line).get("event")
                if isinstance(event, dict) and event.get("user_id") == user and "room" in event:
                    found.append((event["kind"], event["room"], event.get("reason")))
        return found

    async def all_four() -> list[tuple[str, str, str | None]]:
        found = room_events()
        return found if len(found) == 4 else []

    assert await eventually(all_four) == [
        ("room_join", "log:a", None),
        ("room_join", "log:b", None),
        ("room_leave", "log:a", "leave"),
        ("room_leave", "log:b", "disconnect"),
    ]
