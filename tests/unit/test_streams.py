"""Durable streams: the recovery decision as plain code, the ack frame, and the service's
replay with live messages arriving meanwhile (in-memory stores, no sockets)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from gateway.exceptions import ConfigError, ProtocolError
from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.protocol.frames import StreamAck, decode_frame
from gateway.protocol.messages import utc_now
from gateway.settings import Settings
from gateway.storage.schema import ACKED_EPOCH, ACKED_OFFSET, STREAM_ACKS
from gateway.storage.store import MemoryStore
from gateway.storage.streams import (
    Entry,
    Head,
    MemoryStreamStore,
    Plan,
    Position,
    Refusal,
    check_entries,
    plan_recovery,
    recovery_request,
    stream_frame,
)
from tests.support import unit_settings


def settings(**overrides: Any) -> Settings:
    return unit_settings(**overrides)


class Wire:
    """An ASGI send that records the frames' JSON."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            self.frames.append(json.loads(message["text"]))


def test_a_client_within_the_window_gets_what_follows_its_offset() -> None:
    """Same epoch, fewer than the history size missed: replay after its offset up to the top."""
    assert plan_recovery(Position("e1", 7), Head("e1", 10), 300) == Plan("e1", 7, 10)
    assert plan_recovery(Position("e1", 10), Head("e1", 10), 300) == Plan("e1", 10, 10)


def test_a_changed_epoch_or_an_offset_past_the_top_is_not_recovered() -> None:
    """The stream was lost and created again: the app must refetch."""
    assert plan_recovery(Position("old", 3), Head("new", 5), 300) == Refusal(
        "new", 5, "epoch_changed"
    )
    assert plan_recovery(Position("e1", 9), Head("e1", 5), 300).reason == "epoch_changed"  # type: ignore[union-attr]
    assert plan_recovery(Position("e1", 9), None, 300) == Refusal("", 0, "epoch_changed")


def test_more_missed_than_the_history_holds_is_not_recovered() -> None:
    assert plan_recovery(Position("e1", 0), Head("e1", 301), 300) == Refusal(
        "e1", 301, "window_exceeded"
    )
    assert plan_recovery(Position("e1", 1), Head("e1", 301), 300) == Plan("e1", 1, 301)


def test_a_client_that_saw_no_stream_recovers_it_from_the_start() -> None:
    """Epoch "" offset 0 matches any epoch; without a stream there is nothing to miss."""
    assert plan_recovery(Position("", 0), Head("e1", 4), 300) == Plan("e1", 0, 4)
    assert plan_recovery(Position("", 0), None, 300) == Plan("", 0, 0)
    assert plan_recovery(None, None, 300) == Plan("", 0, 0)


def test_no_position_presented_resumes_from_the_acknowledged_one() -> None:
    assert plan_recovery(None, Head("e1", 9, "e1", 6), 300) == Plan("e1", 6, 9)
    assert plan_recovery(None, Head("e1", 9), 300) == Refusal("e1", 9, "no_position")


def test_missing_or_expired_entries_exceed_the_window() -> None:
    now = utc_now()
    old = now - timedelta(seconds=301)
    plan = Plan("e1", 2, 4)
    entries = [Entry(3, "{}", now), Entry(4, "{}", now)]
    assert check_entries(entries, plan, now, 300)
    assert not check_entries(entries[1:], plan, now, 300)  # offset 3 deleted by TTL
    assert not check_entries([Entry(3, "{}", old), entries[1]], plan, now, 300)


def test_the_query_string_asks_for_recovery() -> None:
    assert recovery_request(b"token=x") == (False, None)
    assert recovery_request(b"recover=true") == (True, None)
    assert recovery_request(b"recover=true&epoch=ab&offset=12") == (True, Position("ab", 12))
    assert recovery_request(b"recover=1&epoch=&offset=0") == (True, Position("", 0))
    for bad in (b"recover=true&offset=-1", b"recover=true&epoch=ab", b"recover=1&offset=x"):
        with pytest.raises(ValueError):
            recovery_request(bad)


def test_stream_ack_frames_are_decoded_and_checked() -> None:
    assert decode_frame('{"type":"stream_ack","epoch":"e","offset":3}', None, 1024) == StreamAck(
        "e", 3
    )
    for bad in (
        '{"type":"stream_ack","offset":3}',
        '{"type":"stream_ack","epoch":"e","offset":-1}',
        '{"type":"stream_ack","epoch":"e","offset":true}',
    ):
        with pytest.raises(ProtocolError) as caught:
            decode_frame(bad, None, 1024)
        assert caught.value.code == "invalid_field"


def test_stream_settings_default_to_centrifugos_history_and_are_validated() -> None:
    env = {"GATEWAY_ADMIN_TOKEN": "a" * 20, "GOOGLE_CLOUD_PROJECT": "p"}
    parsed = Settings.from_env(env)
    assert (parsed.streams.history_size, parsed.streams.history_ttl) == (300, 300.0)
    custom = Settings.from_env({**env, "STREAM_HISTORY_SIZE": "50", "STREAM_HISTORY_TTL": "120"})
    assert (custom.streams.history_size, custom.streams.history_ttl) == (50, 120.0)
    for name, value in (
        ("STREAM_HISTORY_SIZE", "0"),
        ("STREAM_HISTORY_SIZE", "20000"),
        ("STREAM_HISTORY_TTL", "-1"),
        ("STREAM_HISTORY_TTL", "1e9"),
    ):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({**env, name: value})
        assert name in str(caught.value)


def test_the_stream_frame_inserts_the_payload_unchanged() -> None:
    frame = json.loads(stream_frame("e1", 5, '{"type":"note","n":[1,2]}'))
    assert frame == {
        "type": "stream",
        "epoch": "e1",
        "offset": 5,
        "data": {"type": "note", "n": [1, 2]},
    }


class SlowStreams(MemoryStreamStore):
    """Holds the entries read until released, so live messages arrive mid-recovery."""

    def __init__(self, docs: dict[tuple[str, str], dict[str, Any]]) -> None:
        super().__init__(docs, 300)
        self.release = asyncio.Event()

    async def entries(self, user_id: str, after: int, top: int, timeout: float) -> list[Entry]:
        await self.release.wait()
        return await super().entries(user_id, after, top, timeout)


async def test_live_messages_during_a_replay_follow_it_in_order_without_duplicates() -> None:
    """Missed 2..3 replayed, the recovery frame, then the live 4 queued meanwhile; a live copy
    of 3 that raced the replay is dropped."""
    store = MemoryStore()
    streams = SlowStreams(store.docs)
    service = PresenceService(settings(), store, streams=streams)
    epoch, _ = await streams.append("u1", '{"n":1}', utc_now())
    for n in (2, 3):
        await streams.append("u1", f'{{"n":{n}}}', utc_now())
    wire = Wire()
    conn = Connection("u1", "s1", utc_now(), wire)
    conn.replay = []
    service.connected(conn)
    recovery = asyncio.create_task(service.streams.recover(conn, Position(epoch, 1)))
    await asyncio.sleep(0)
    await service.streams.send("u1", stream_frame(epoch, 3, '{"n":3}'), 3)
    _, four = await streams.append("u1", '{"n":4}', utc_now())
    await service.streams.send("u1", stream_frame(epoch, four, '{"n":4}'), four)
    assert wire.frames == []
    streams.release.set()
    result = await recovery
    assert result.recovered and result.missed == 2
    kinds = [(f["type"], f.get("offset")) for f in wire.frames]
    assert kinds == [("stream", 2), ("stream", 3), ("recovery", 3), ("stream", 4)]
    assert conn.replay is None
    await service.streams.send("u1", stream_frame(epoch, 5, "{}"), 5)
    assert wire.frames[-1]["offset"] == 5


async def test_a_store_failure_answers_not_recovered_unavailable() -> None:
    store = MemoryStore()
    streams = MemoryStreamStore(store.docs, 300)

    async def broken(user_id: str, timeout: float, *, with_ack: bool = False) -> Head | None:
        raise ConnectionError("down")

    streams.head = broken  # type: ignore[method-assign]
    service = PresenceService(settings(), store, streams=streams)
    wire = Wire()
    conn = Connection("u1", "s1", utc_now(), wire)
    conn.replay = []
    result = await service.streams.recover(conn, Position("e", 4))
    assert (result.recovered, result.reason, result.epoch, result.offset) == (
        False,
        "unavailable",
        "e",
        4,
    )
    assert wire.frames[-1]["type"] == "recovery"


async def test_an_ack_is_written_behind_and_stands_in_for_a_missing_position() -> None:
    store = MemoryStore()
    streams = MemoryStreamStore(store.docs, 300)
    service = PresenceService(settings(), store, streams=streams)
    epoch, _ = await streams.append("u1", "{}", utc_now())
    await streams.append("u1", '{"n":2}', utc_now())
    conn = Connection("u1", "s1", utc_now(), Wire())
    service.streams.ack(conn, epoch, 1)
    await service.writer.flush_once()
    doc = store.docs[(STREAM_ACKS, "u1")]
    assert (doc[ACKED_EPOCH], doc[ACKED_OFFSET]) == (epoch, 1)
    wire = Wire()
    again = Connection("u1", "s2", utc_now(), wire)
    again.replay = []
    result = await service.streams.recover(again, None)
    assert result.recovered and [f.get("offset") for f in wire.frames] == [2, 2]
