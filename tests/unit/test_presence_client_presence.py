"""The Python client's room presence and ``publish``: the join's info, the member lists kept from
snapshots and diffs, the events, and signals both ways, against the in-process stand-in
gateway of tests/unit/test_presence_client.py. The protocol is docs/presence.md."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from presence_client import (
    Member,
    PresenceChange,
    PresenceClient,
    PresenceDiff,
    PresenceRoomError,
    PresenceSendError,
    PresenceSnapshot,
    Published,
)
from presence_client.frames import FrameKind, classify_frame, room_frame, room_refused
from presence_client.presence import diff_of, snapshot_of
from tests.unit.test_presence_client import client_for, hold, record, recv_json, stand_in

ANA = {"user_id": "ana", "devices": 1, "info": {"name": "Ana"}}
BEN = {"user_id": "ben", "devices": 1, "info": {"name": "Ben"}}
M_ANA, M_BEN = Member("ana", 1, {"name": "Ana"}), Member("ben", 1, {"name": "Ben"})


def snapshot(room: str, *members: dict[str, Any]) -> str:
    n = len(members)
    frame = {"type": "presence", "room": room, "members": list(members), "users": n}
    return json.dumps({**frame, "connections": n, "timestamp": "t"})


def diff(room: str, joins: list[dict[str, Any]], leaves: list[str]) -> str:
    frame = {"type": "presence_diff", "room": room, "joins": joins, "users": 0, "connections": 0}
    return json.dumps({**frame, "leaves": [{"user_id": u} for u in leaves], "timestamp": "t"})


async def answer_join(ws: ServerConnection) -> dict[str, Any]:
    frame = await recv_json(ws)
    await ws.send(json.dumps({"type": "joined", "room": frame["room"], "timestamp": "t"}))
    return frame


async def until(check: Any) -> None:
    async with asyncio.timeout(3):
        while not check():
            await asyncio.sleep(0.01)


def test_presence_frames_are_recognised_and_parsed() -> None:
    """presence, presence_diff and publish are their own kinds; a join frame carries its info;
    invalid_info refuses a join, a publish refusal does not; malformed members are skipped and
    a frame without a room is no event."""
    assert classify_frame({"type": "presence"}) is FrameKind.PRESENCE
    assert classify_frame({"type": "presence_diff"}) is FrameKind.PRESENCE_DIFF
    assert classify_frame({"type": "publish"}) is FrameKind.PUBLISH
    assert room_frame("join", "doc:7", info={"name": "Ana"}) == (
        '{"type":"join","room":"doc:7","info":{"name":"Ana"}}'
    )
    assert room_refused({"type": "error", "code": "invalid_info", "room": "doc:7"}) == "doc:7"
    assert room_refused({"type": "error", "code": "publish_forbidden", "room": "doc:7"}) is None
    assert room_refused({"type": "error", "code": "not_in_room", "room": "doc:7"}) is None
    parsed = snapshot_of(json.loads(snapshot("doc:7", ANA, {"devices": 2}, {"user_id": "cy"})))
    assert parsed is not None and parsed.members == (M_ANA, Member("cy", 1, {}))
    assert snapshot_of({"type": "presence", "room": "doc:7"}) is None
    assert diff_of({"type": "presence_diff"}) is None


async def test_join_sends_its_info_and_every_rejoin_sends_it_again() -> None:
    """``join(room, info=...)`` puts the info in the join frame; after a reconnect (1012) the
    new socket's join carries the same info; a room joined without info sends none."""
    received: dict[int, list[dict[str, Any]]] = {1: [], 2: []}

    async def script(ws: ServerConnection, n: int) -> None:
        for _ in range(2):
            received[n].append(await answer_join(ws))
        if n == 1:
            await ws.close(1012, "restart")
            return
        await hold(ws)

    async with stand_in(script) as gateway:
        client = client_for(gateway)
        client.join("doc:7", info={"name": "Ana", "color": "#e33"})
        client.join("team")
        async with client:
            await until(lambda: len(received[2]) == 2)
    expected = [
        {"type": "join", "room": "doc:7", "info": {"name": "Ana", "color": "#e33"}},
        {"type": "join", "room": "team"},
    ]
    assert received == {1: expected, 2: expected}


async def test_an_info_that_is_not_a_json_object_fails_the_join() -> None:
    """A list or a value JSON cannot encode as info fails with ``invalid_info``, unsent."""

    async def script(ws: ServerConnection, n: int) -> None:
        await hold(ws)

    async with stand_in(script) as gateway:
        client = client_for(gateway)
        for info in ([1], {"at": object()}):
            with pytest.raises(PresenceRoomError) as refused:
                await client.join("doc:7", info=info)  # type: ignore[arg-type]
            assert refused.value.code == "invalid_info"
        assert client.rooms == []


async def test_snapshot_and_diffs_keep_the_member_list_and_emit_their_events() -> None:
    """A snapshot sets the list (``presence`` then ``presence_change``); a diff upserts its
    joins by user and removes its leaves; a later snapshot replaces the list."""
    ana_twice = {**ANA, "devices": 2}

    async def script(ws: ServerConnection, n: int) -> None:
        await answer_join(ws)
        await ws.send(snapshot("doc:7", ANA, BEN))
        await ws.send(diff("doc:7", [ana_twice, {"user_id": "cy"}], ["ben"]))
        await ws.send(snapshot("doc:7", BEN))
        await hold(ws)

    async with stand_in(script) as gateway:
        async with client_for(gateway) as client:
            seen = record(client, "presence", "presence_diff", "presence_change")
            await client.join("doc:7")
            await until(lambda: len(seen) == 6)
            assert client.members("doc:7") == [M_BEN]
            heard = list(seen)  # close() then drops the list: one more presence_change
    twice, cy = Member("ana", 2, {"name": "Ana"}), Member("cy", 1, {})
    assert heard == [
        ("presence", PresenceSnapshot("doc:7", (M_ANA, M_BEN), 2, 2, "t")),
        ("presence_change", PresenceChange("doc:7", (M_ANA, M_BEN))),
        ("presence_diff", PresenceDiff("doc:7", (twice, cy), ("ben",), 0, 0, "t")),
        ("presence_change", PresenceChange("doc:7", (twice, cy))),
        ("presence", PresenceSnapshot("doc:7", (M_BEN,), 1, 1, "t")),
        ("presence_change", PresenceChange("doc:7", (M_BEN,))),
    ]


async def test_the_list_is_dropped_on_leave_and_a_late_snapshot_keeps_none() -> None:
    """``leave`` empties the list (``presence_change`` with no members); a snapshot or diff
    for the room arriving after it brings no list back."""
    gate = asyncio.Event()

    async def script(ws: ServerConnection, n: int) -> None:
        await answer_join(ws)
        await ws.send(snapshot("doc:7", ANA))
        assert (await recv_json(ws))["type"] == "leave"
        await ws.send(snapshot("doc:7", ANA))
        await ws.send(diff("doc:7", [BEN], []))
        await ws.send(json.dumps({"type": "left", "room": "doc:7", "timestamp": "t"}))
        gate.set()
        await hold(ws)

    async with stand_in(script) as gateway:
        async with client_for(gateway) as client:
            changes = record(client, "presence_change")
            await client.join("doc:7")
            await until(lambda: client.members("doc:7") == [M_ANA])
            await client.leave("doc:7")
            await gate.wait()
            assert client.members("doc:7") == []
            assert changes[-1] == ("presence_change", PresenceChange("doc:7", ()))
            assert len(changes) == 2


async def test_a_disconnect_drops_the_list_and_the_snapshot_after_the_rejoin_rebuilds_it() -> None:
    """The socket closing (1012) empties every list; the new socket's snapshot fills it."""

    async def script(ws: ServerConnection, n: int) -> None:
        await answer_join(ws)
        await ws.send(snapshot("doc:7", ANA, BEN) if n == 1 else snapshot("doc:7", ANA))
        if n == 1:
            await asyncio.sleep(0.1)
            await ws.close(1012, "restart")
            return
        await hold(ws)

    async with stand_in(script) as gateway:
        async with client_for(gateway) as client:
            changes = record(client, "presence_change")
            await client.join("doc:7")
            await until(lambda: len(changes) == 3)
            assert [c.members for _, c in changes] == [(M_ANA, M_BEN), (), (M_ANA,)]
            assert client.members("doc:7") == [M_ANA]


async def test_publish_goes_out_on_the_live_socket_only_and_incoming_ones_are_events() -> None:
    """``publish`` sends ``{"type":"publish","room","data"}`` and returns True; offline or
    outside the room it returns False and sends nothing; a relayed publish frame is a
    ``publish`` event with its sender."""
    received: list[dict[str, Any]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        await answer_join(ws)
        received.append(await recv_json(ws))
        relayed = {"type": "publish", "room": "doc:7", "from": "ben", "data": {"typing": True}}
        await ws.send(json.dumps({**relayed, "timestamp": "t"}))
        await hold(ws)

    async with stand_in(script) as gateway:
        client: PresenceClient = client_for(gateway)
        assert client.publish("doc:7", {"typing": True}) is False
        async with client:
            signals = record(client, "publish")
            await client.join("doc:7")
            assert client.publish("elsewhere", {"typing": True}) is False
            assert client.publish("doc:7", {"typing": True}) is True
            await until(lambda: signals)
    assert received == [{"type": "publish", "room": "doc:7", "data": {"typing": True}}]
    assert signals == [("publish", Published("doc:7", "ben", {"typing": True}, "t"))]


async def test_publish_refuses_data_that_is_not_json_or_too_large() -> None:
    """Data JSON cannot encode raises ``invalid_data``; a frame over the limit raises
    ``message_too_large``."""

    async def script(ws: ServerConnection, n: int) -> None:
        await hold(ws)

    async with stand_in(script) as gateway:
        client = client_for(gateway, max_message_bytes=100)
        with pytest.raises(PresenceSendError) as bad:
            client.publish("doc:7", {"x": float("nan")})
        assert bad.value.code == "invalid_data"
        with pytest.raises(PresenceSendError) as big:
            client.publish("doc:7", "x" * 200)
        assert big.value.code == "message_too_large"
