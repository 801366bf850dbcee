"""Presence in one process: the replicated room view (gateway.protocol.presence), the debounced
counts (gateway.instance.presence), and the service's user presence, presence rooms and
publish over a MemoryStore. The same across three real instances is tests/e2e/test_presence.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.instance.presence import Debounced
from gateway.instance.registry import Connection
from gateway.instance.service import PresenceService
from gateway.protocol.messages import utc_now
from gateway.protocol.presence import PresenceLeave, PresenceMember, RoomView
from gateway.protocol.rooms import RoomRefused
from gateway.storage.presence_records import MemoryPresenceRecords, PresenceWriter, Report
from gateway.storage.schema import PRESENCE, PRESENCE_HOLDERS
from gateway.storage.store import MemoryStore
from gateway.storage.user_presence import PresenceEvent, decide
from tests.loopback import Recorder
from tests.support import unit_settings

# --- the view --------------------------------------------------------------------------------


def test_an_older_entry_never_undoes_a_newer_one_even_after_a_removal() -> None:
    """Versions order an owner's entries: a late message is ignored, and a removed entry's
    version stays behind to refuse an older add."""
    view = RoomView()
    assert view.apply("a", ("r", "u", 1, 10, {}))
    assert not view.apply("a", ("r", "u", 2, 9, {}))
    assert view.apply("a", ("r", "u", 0, 11, {}))
    assert not view.apply("a", ("r", "u", 1, 10, {}))
    assert view.members("r") == []


def test_members_are_per_user_with_devices_summed_over_instances() -> None:
    """One user on two instances is one member with both counts; the occupancy counts users
    and sockets."""
    view = RoomView()
    view.apply("a", ("r", "u", 2, 1, {"name": "U"}))
    view.apply("b", ("r", "u", 1, 1, {"name": "U"}))
    view.apply("b", ("r", "v", 1, 2, {}))
    assert view.members("r") == [PresenceMember("u", 3, {"name": "U"}), PresenceMember("v", 1, {})]
    assert view.occupancy("r") == (2, 4)


def test_diffs_name_a_user_once_and_leave_only_when_their_last_entry_goes() -> None:
    """A user's second instance is an upsert with the new count; their leave comes when no
    instance holds them any more; nothing changed, no diff."""
    view = RoomView()
    view.apply("a", ("r", "u", 1, 1, {}))
    assert view.take_diffs() == {"r": ([PresenceMember("u", 1, {})], [])}
    view.apply("b", ("r", "u", 1, 1, {}))
    assert view.take_diffs() == {"r": ([PresenceMember("u", 2, {})], [])}
    view.apply("a", ("r", "u", 0, 2, {}))
    view.apply("a", ("r", "u", 1, 3, {}))
    assert view.take_diffs() == {}, "back to where it was: nothing to show"
    view.apply("a", ("r", "u", 0, 4, {}))
    view.apply("b", ("r", "u", 0, 2, {}))
    assert view.take_diffs() == {"r": ([], [PresenceLeave("u")])}


def test_dropping_an_instance_sends_the_leaves_of_users_it_alone_held() -> None:
    """A lost instance's entries go; users another instance holds stay."""
    view = RoomView()
    view.apply("a", ("r", "u", 1, 1, {}))
    view.apply("a", ("r", "v", 1, 2, {}))
    view.apply("b", ("r", "v", 1, 1, {}))
    view.take_diffs()
    assert view.drop_instance("a") == ["r"]
    assert view.take_diffs() == {"r": ([PresenceMember("v", 1, {})], [PresenceLeave("u")])}
    assert view.instances() == {"b"} and view.newest_of("a") == 0


def test_a_sync_answer_replaces_an_owners_entries_but_keeps_newer_ones() -> None:
    """Entries of the owner missing from its answer are gone unless newer than the answer."""
    view = RoomView()
    view.apply("a", ("r", "stale", 1, 5, {}))
    view.apply("a", ("r", "fresh", 1, 20, {}))
    view.replace_instance("a", [("r", "kept", 1, 8, {})], as_of=10)
    assert [m.user_id for m in view.members("r")] == ["fresh", "kept"]
    assert view.count_of("a") == 2 and view.newest_of("a") == 20


# --- debounce --------------------------------------------------------------------------------


async def test_rises_are_reported_at_once_and_falls_after_the_grace() -> None:
    """A reconnect within the grace reports nothing; a fall that lasts is reported with the
    time the socket closed; an immediate fall skips the grace."""
    seen: list[tuple[str, int, str]] = []
    counts: Debounced[str] = Debounced(0.1, lambda k, n, at, why: seen.append((k, n, why)))
    counts.up("u")
    counts.down("u", "disconnect")
    counts.up("u")
    await asyncio.sleep(0.2)
    assert seen == [("u", 1, "connect")]
    counts.down("u", "disconnect")
    await asyncio.sleep(0.2)
    assert seen[-1] == ("u", 0, "disconnect")
    counts.up("v")
    counts.down("v", "timeout", now=True)
    assert seen[-1] == ("v", 0, "timeout")


# --- the service -----------------------------------------------------------------------------


def service(**overrides: Any) -> tuple[PresenceService, MemoryStore]:
    store = MemoryStore()
    settings = unit_settings(
        grace=0.05, room_prefixes=("doc:",), room_cap=2, info_bytes=64, **overrides
    )
    return PresenceService(settings, store), store


def socket(user: str, session: str, **kwargs: Any) -> tuple[Connection, Recorder]:
    wire = Recorder()
    return Connection(user, session, utc_now(), wire, **kwargs), wire


async def settled(svc: PresenceService) -> None:
    await asyncio.sleep(0.1)
    assert svc.presence_writer is not None
    await svc.presence_writer.flush()


async def test_the_users_presence_follows_their_sockets_and_a_sign_out_skips_the_grace() -> None:
    """Online with the first socket, devices with the second, offline after the last (the
    grace) or at once when the gateway closed it for a sign-out."""
    svc, store = service()
    first, _ = socket("u", "s1")
    second, _ = socket("u", "s2")
    svc.connected(first)
    svc.connected(second)
    await settled(svc)
    assert store.docs[(PRESENCE, "u")]["devices"] == 2
    svc.disconnected(first, 1000)
    svc.disconnected(second, 1000)
    await settled(svc)
    assert store.docs[(PRESENCE, "u")]["state"] == "offline"
    again, _ = socket("u", "s3")
    svc.connected(again)
    await settled(svc)
    again.closed_with = 4410
    svc.disconnected(again, 1000)
    assert svc.presence_writer is not None
    await svc.presence_writer.flush()
    assert store.docs[(PRESENCE, "u")]["state"] == "offline"
    assert store.docs[(PRESENCE_HOLDERS, "u")]["seq"] == 4


async def test_reasserting_after_a_lag_puts_back_what_a_sweep_reaped() -> None:
    """The sweep counted the instance lost (its count removed, the user offline); re-asserting
    makes the user online again with this instance's count."""
    svc, store = service()
    conn, _ = socket("u", "s1")
    svc.connected(conn)
    await settled(svc)
    reaped = decide("u", store.docs[(PRESENCE_HOLDERS, "u")], "local", 0, utc_now(), "x")
    store.docs[(PRESENCE_HOLDERS, "u")] = reaped.holders
    store.docs[(PRESENCE, "u")].update(reaped.presence or {})
    svc.reassert()
    await settled(svc)
    assert await svc.writer.flush_once()
    assert store.docs[(PRESENCE, "u")]["state"] == "online"
    assert store.docs[("sessions", "s1")]["is_active"] is True


async def test_a_presence_room_caps_its_users_and_checks_the_info() -> None:
    """PRESENCE_ROOM_CAP users, then room_full (a present user's second socket is fine);
    info over PRESENCE_INFO_BYTES is invalid_info."""
    svc, _ = service()
    for user in ("a", "b"):
        assert svc.join_room(socket(user, f"{user}1", room_grants=None)[0], "doc:1")
    assert svc.join_room(socket("a", "a2", room_grants=None)[0], "doc:1")
    with pytest.raises(RoomRefused) as full:
        svc.join_room(socket("c", "c1", room_grants=None)[0], "doc:1")
    assert full.value.code == "room_full"
    with pytest.raises(RoomRefused) as big:
        svc.join_room(socket("d", "d1", room_grants=None)[0], "doc:2", {"x": "y" * 100})
    assert big.value.code == "invalid_info"
    assert svc.presence.view.occupancy("doc:1") == (2, 3)


async def test_a_publish_reaches_the_other_members_and_needs_membership_and_a_grant() -> None:
    """The relay goes to every other socket of the room, not back to the sender; a socket
    outside the room or without the rooms_publish grant is refused."""
    svc, _ = service()
    sender, sent = socket("a", "a1", room_grants=("doc:*",), publish_grants=("doc:*",))
    peer, got = socket("b", "b1", room_grants=("doc:*",), publish_grants=())
    for conn in (sender, peer):
        svc.join_room(conn, "doc:1")
    assert await svc.publish(sender, "doc:1", {"typing": True}) == 1
    [relayed] = [json.loads(t) for t in got.texts()]
    assert (relayed["type"], relayed["from"], relayed["data"]) == ("publish", "a", {"typing": True})
    assert sent.texts() == []
    with pytest.raises(RoomRefused) as forbidden:
        await svc.publish(peer, "doc:1", 1)
    assert forbidden.value.code == "publish_forbidden"
    with pytest.raises(RoomRefused) as outside:
        await svc.publish(sender, "doc:2", 1)
    assert outside.value.code == "not_in_room"


class RollbackFailing(MemoryPresenceRecords):
    """Records whose transaction, cancelled while it begins, raises its rollback's ValueError
    in place of the cancellation, as google-cloud-firestore's does before it has an id."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.began = asyncio.Event()

    async def apply(self, instance: str, reports: Sequence[Report]) -> list[PresenceEvent]:
        self.began.set()
        try:
            await asyncio.sleep(60)
        except BaseException as exc:
            raise ValueError(
                "The transaction has no transaction ID: cannot be rolled back"
            ) from exc
        return []


async def test_closing_the_writer_ends_it_even_when_a_rollback_hides_the_cancellation() -> None:
    """A drain closing the presence writer mid-transaction returns (it hung the instance's
    shutdown for good when the rollback's error replaced the cancellation)."""
    records = RollbackFailing()
    writer = PresenceWriter(records, "i1", interval=0.01)
    writer.start()
    writer.report(Report("u", 1, utc_now(), "connect"))
    await asyncio.wait_for(records.began.wait(), 5)
    await asyncio.wait_for(writer.close(timeout=0.1), 5)
