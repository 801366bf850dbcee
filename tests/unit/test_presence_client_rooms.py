"""The Python client's rooms: join and leave frames, refusals, rejoining on every new socket,
against the in-process stand-in gateway of tests/unit/test_presence_client.py.

The client against real gateways and a real ``rooms`` claim is in tests/e2e/test_rooms.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from presence_client import Joined, Left, PresenceRoomError
from presence_client.frames import FrameKind, classify_frame, room_frame, room_refused
from tests.unit.test_presence_client import client_for, hold, record, recv_json, stand_in


def test_room_frames_and_refusals_are_recognised() -> None:
    """join/leave frames are compact JSON; joined and left are their own kinds; an error
    names a refused room only for the codes refusing a join."""
    assert room_frame("join", "team-1") == '{"type":"join","room":"team-1"}'
    assert classify_frame({"type": "joined", "room": "a"}) is FrameKind.JOINED
    assert classify_frame({"type": "left", "room": "a"}) is FrameKind.LEFT
    assert room_refused({"type": "error", "code": "room_forbidden", "room": "a"}) == "a"
    assert room_refused({"type": "error", "code": "room_full", "room": "b"}) == "b"
    assert room_refused({"type": "error", "code": "invalid_json"}) is None
    assert room_refused({"type": "error", "code": "invalid_field", "room": "a"}) is None


async def test_join_resolves_on_joined_and_a_refusal_raises_and_drops_the_room() -> None:
    """``await client.join(room)`` returns the gateway's ``joined``; a ``room_forbidden``
    answer raises PresenceRoomError with the code and room, which leaves ``rooms``."""

    async def script(ws: ServerConnection, n: int) -> None:
        for _ in range(2):
            frame = await recv_json(ws)
            if frame["room"] == "open":
                await ws.send(json.dumps({"type": "joined", "room": "open", "timestamp": "t"}))
            else:
                refusal = {
                    "type": "error",
                    "code": "room_forbidden",
                    "message": "This token does not allow joining room 'closed'",
                    "timestamp": "t",
                    "room": "closed",
                }
                await ws.send(json.dumps(refusal))
        await hold(ws)

    async with stand_in(script) as gateway:
        async with client_for(gateway) as client:
            seen = record(client, "joined")
            async with asyncio.timeout(3):
                assert await client.join("open") == Joined("open", "t")
                with pytest.raises(PresenceRoomError) as refused:
                    await client.join("closed")
            assert (refused.value.code, refused.value.room) == ("room_forbidden", "closed")
            assert client.rooms == ["open"]
            assert seen == [("joined", Joined("open", "t"))]


async def test_rooms_are_joined_again_on_a_new_socket_before_buffered_messages() -> None:
    """Joins made before the socket opens are sent on connect; after a reconnect (1012) the
    new socket joins every room again, ahead of a message sent while offline."""
    received: dict[int, list[dict[str, Any]]] = {1: [], 2: []}

    async def script(ws: ServerConnection, n: int) -> None:
        for _ in range(2 if n == 1 else 3):
            frame = await recv_json(ws)
            received[n].append(frame)
            if frame["type"] == "join":
                answer = {"type": "joined", "room": frame["room"], "timestamp": "t"}
                await ws.send(json.dumps(answer))
            else:
                await ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
        if n == 1:
            await ws.close(1012, "restart")
            return
        await hold(ws)

    async with stand_in(script) as gateway:
        client = client_for(gateway)
        first = client.join("b")
        client.join("a")
        async with client:
            async with asyncio.timeout(3):
                await first
                while len(gateway.connections) < 2:
                    await asyncio.sleep(0.01)
                await client.send("hello")
    assert [f["room"] for f in received[1]] == ["a", "b"]
    assert [(f["type"], f.get("room")) for f in received[2]] == [
        ("join", "a"),
        ("join", "b"),
        ("message", None),
    ]


async def test_leave_resolves_on_left_and_an_unasked_left_drops_the_room() -> None:
    """``leave`` sends the frame and resolves on ``left``; a ``left`` with reason
    ``not_allowed`` (the refreshed token lost the room) removes it and emits ``left``."""

    async def script(ws: ServerConnection, n: int) -> None:
        for _ in range(2):
            frame = await recv_json(ws)
            await ws.send(json.dumps({"type": "joined", "room": frame["room"]}))
        frame = await recv_json(ws)
        assert frame == {"type": "leave", "room": "a"}
        await ws.send(json.dumps({"type": "left", "room": "a", "timestamp": "t"}))
        await ws.send(json.dumps({"type": "left", "room": "b", "reason": "not_allowed"}))
        await hold(ws)

    async with stand_in(script) as gateway:
        async with client_for(gateway) as client:
            seen = record(client, "left")
            async with asyncio.timeout(3):
                await client.join("a")
                await client.join("b")
                assert await client.leave("a") == "a"
                while len(seen) < 2:
                    await asyncio.sleep(0.01)
            assert seen == [("left", Left("a", "leave")), ("left", Left("b", "not_allowed"))]
            assert client.rooms == []


async def test_pending_joins_fail_when_the_client_closes_and_leave_offline_is_immediate() -> None:
    """A join still waiting when ``close()`` runs raises with code ``closed``; joining a
    closed client raises at once; leaving while offline resolves at once."""

    async def script(ws: ServerConnection, n: int) -> None:
        await hold(ws)  # never answers the join

    async with stand_in(script) as gateway:
        client = client_for(gateway)
        assert await client.leave("x") == "x"
        await client.start()
        pending = client.join("a")
        await client.close()
        with pytest.raises(PresenceRoomError) as stopped:
            await pending
        assert (stopped.value.code, stopped.value.room) == ("closed", "a")
        with pytest.raises(PresenceRoomError):
            await client.join("b")
