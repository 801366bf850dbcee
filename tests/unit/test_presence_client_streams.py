"""The Python client's durable streams: the position it holds, presents and acknowledges,
de-duplication by offset, and the recovery events, against the in-process stand-in gateway of
tests/unit/test_presence_client.py.

The client against real gateways is in tests/e2e/test_durable.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection

from presence_client import Recovery, StreamMessage, StreamPosition
from presence_client.frames import socket_url
from tests.unit.test_presence_client import client_for, hold, record, recv_json, stand_in


def stream(epoch: str, offset: int, n: int) -> str:
    return json.dumps(
        {"type": "stream", "epoch": epoch, "offset": offset, "data": {"type": "note", "n": n}}
    )


def recovery(recovered: bool, epoch: str, offset: int, **extra: Any) -> str:
    body = {"type": "recovery", "recovered": recovered, "epoch": epoch, "offset": offset}
    return json.dumps({**body, "missed": 0, "timestamp": "t", **extra})


def test_the_position_drops_duplicates_and_tolerates_out_of_order_offsets() -> None:
    """Offsets seen are delivered once; a later offset before an earlier one leaves the earlier
    one deliverable; the contiguous offset is what gets acknowledged and presented."""
    position = StreamPosition()
    assert position.params() == {"recover": "true"}
    assert position.accept("e1", 1)
    assert not position.accept("e1", 1)
    assert position.accept("e1", 3)
    assert position.offset == 1
    assert position.accept("e1", 2)
    assert position.offset == 3 and not position.seen
    assert not position.accept("e1", 2)
    assert position.ack_frame() == '{"type":"stream_ack","epoch":"e1","offset":3}'
    assert position.ack_frame() is None
    assert position.params() == {"recover": "true", "epoch": "e1", "offset": "3"}


def test_a_recovery_result_sets_the_position() -> None:
    """Not recovered: the stream starts over at the result's position; a client that had seen
    no stream ("") adopts the first epoch it gets."""
    position = StreamPosition()
    position.recovered("", 0, True)
    assert position.accept("e1", 1)
    position.recovered("e2", 40, False)
    assert (position.epoch, position.offset) == ("e2", 40)
    assert not position.accept("e2", 40) and position.accept("e2", 41)
    assert not position.accept("e1", 99)  # an old epoch's frame


def test_an_unavailable_recovery_keeps_what_was_seen_so_a_later_replay_is_not_repeated() -> None:
    """Not recovered in the same epoch (Firestore could not be read) keeps the position and
    the offsets seen above it: the next recovery's replay of offsets already delivered is
    dropped (found by make soak, seed 7: messages delivered twice)."""
    position = StreamPosition()
    position.recovered("", 0, True)
    assert position.accept("e1", 1)
    assert position.accept("e1", 3) and position.accept("e1", 4)
    position.recovered("e1", 1, False)
    assert (position.epoch, position.offset, position.seen) == ("e1", 1, {3, 4})
    assert position.accept("e1", 2)
    assert not position.accept("e1", 3) and not position.accept("e1", 4)
    assert position.offset == 4
    position.recovered("e1", 2, False)
    assert position.offset == 4


def test_the_url_carries_the_token_then_the_position() -> None:
    url = socket_url("http://h:1", "u", "tok", {"recover": "true", "epoch": "", "offset": "0"})
    assert url == "ws://h:1/ws/connect/u?token=tok&recover=true&epoch=&offset=0"


async def test_stream_frames_are_delivered_once_acknowledged_and_presented_on_reconnect() -> None:
    """A duplicate is dropped; the inner message reaches on_message(type); one stream_ack covers
    both; the next socket presents epoch and offset, and a not-recovered result is an event."""
    urls: list[str] = []
    acks: list[dict[str, Any]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        urls.append(ws.request.path if ws.request else "")
        if n == 1:
            await ws.send(recovery(True, "", 0))
            for offset in (1, 2, 1):
                await ws.send(stream("e1", offset, offset))
            acks.append(await recv_json(ws))
            await ws.close(1012)
        else:
            await ws.send(recovery(False, "e2", 9, reason="epoch_changed"))
            await hold(ws)

    async with stand_in(script) as gateway:
        async with client_for(gateway, recover=True, ack_interval=0.05) as client:
            seen = record(client, "stream", "recovery", "not_recovered")
            notes: list[Any] = []
            client.on_message("note", lambda data: notes.append(data["n"]))

            async def done() -> None:
                while not any(event == "not_recovered" for event, _ in seen):
                    await asyncio.sleep(0.01)

            async with asyncio.timeout(5):
                await done()
    assert notes == [1, 2]
    assert [p for e, p in seen if e == "stream"] == [
        StreamMessage("e1", 1, {"type": "note", "n": 1}),
        StreamMessage("e1", 2, {"type": "note", "n": 2}),
    ]
    assert acks == [{"type": "stream_ack", "epoch": "e1", "offset": 2}]
    assert parse_qs(urlsplit(urls[0]).query) == {"recover": ["true"]}
    assert parse_qs(urlsplit(urls[1]).query, keep_blank_values=True) == {
        "recover": ["true"],
        "epoch": ["e1"],
        "offset": ["2"],
    }
    refused = Recovery(False, "e2", 9, 0, "epoch_changed")
    assert ("not_recovered", refused) in seen and ("recovery", refused) in seen
    assert (client.stream_position.epoch, client.stream_position.offset) == ("e2", 9)
