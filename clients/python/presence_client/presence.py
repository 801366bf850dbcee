"""Room presence as the client keeps it (docs/presence.md, Room presence): each presence room's
member list from its snapshot and diffs, the events that tell of them, and the ``publish``
frames in both directions.

The list belongs to the socket like the membership: :class:`~presence_client.rooms.Rooms`
drops it on leave and on every disconnect, and the snapshot after the rejoin rebuilds it.
"""

from __future__ import annotations

import json
from typing import Any

from presence_client.events import (
    ErrorEvent,
    Member,
    PresenceChange,
    PresenceDiff,
    PresenceSnapshot,
    Published,
)
from presence_client.frames import Frame
from presence_client.link import Link


def member_of(entry: Any) -> Member | None:
    """A member entry of a presence frame, or None when it names no user."""
    if not isinstance(entry, dict) or not isinstance(entry.get("user_id"), str):
        return None
    devices, info = entry.get("devices"), entry.get("info")
    return Member(
        entry["user_id"],
        devices if isinstance(devices, int) and not isinstance(devices, bool) else 1,
        info if isinstance(info, dict) else {},
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def snapshot_of(frame: Frame) -> PresenceSnapshot | None:
    """A ``presence`` frame as its event, or None when it has no room or member list."""
    room, entries = frame.get("room"), frame.get("members")
    if not isinstance(room, str) or not isinstance(entries, list):
        return None
    members = tuple(m for m in map(member_of, entries) if m is not None)
    users, connections = _count(frame.get("users")), _count(frame.get("connections"))
    return PresenceSnapshot(room, members, users, connections, _text(frame.get("timestamp")))


def diff_of(frame: Frame) -> PresenceDiff | None:
    """A ``presence_diff`` frame as its event, or None when it has no room."""
    room = frame.get("room")
    if not isinstance(room, str):
        return None
    joins, leaves = frame.get("joins"), frame.get("leaves")
    return PresenceDiff(
        room,
        tuple(m for m in map(member_of, joins if isinstance(joins, list) else []) if m),
        tuple(
            e["user_id"]
            for e in (leaves if isinstance(leaves, list) else [])
            if isinstance(e, dict) and isinstance(e.get("user_id"), str)
        ),
        _count(frame.get("users")),
        _count(frame.get("connections")),
        _text(frame.get("timestamp")),
    )


def publish_frame(room: str, data: Any) -> str:
    """The ``publish`` frame; raises TypeError or ValueError for data that is not JSON."""
    fields = {"type": "publish", "room": room, "data": data}
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


class RoomPresence:
    """The member lists of one client's presence rooms, and the events about them."""

    def __init__(self, link: Link) -> None:
        self._link = link
        #: room -> user_id -> member, in the order they arrived (a dict keeps it).
        self._lists: dict[str, dict[str, Member]] = {}

    def members(self, room: str) -> list[Member]:
        return list(self._lists.get(room, {}).values())

    def on_presence(self, frame: Frame, *, keep: bool) -> None:
        """A snapshot replaces the room's list; ``keep`` is False for a room left meanwhile
        (the leave crossed the snapshot), whose list must not come back."""
        event = snapshot_of(frame)
        if event is None:
            self._invalid("presence frame")
            return
        if keep:
            self._lists[event.room] = {m.user_id: m for m in event.members}
        self._link.emit("presence", event)
        if keep:
            self._changed(event.room)

    def on_diff(self, frame: Frame) -> None:
        event = diff_of(frame)
        if event is None:
            self._invalid("presence_diff frame")
            return
        members = self._lists.get(event.room)
        if members is not None:
            for user_id in event.leaves:
                members.pop(user_id, None)
            for member in event.joins:
                members[member.user_id] = member
        self._link.emit("presence_diff", event)
        # A diff with no snapshot before it (a room left, a socket gone) changes no list.
        if members is not None:
            self._changed(event.room)

    def on_publish(self, frame: Frame) -> None:
        room, sender = frame.get("room"), frame.get("from")
        if isinstance(room, str):
            timestamp = _text(frame.get("timestamp"))
            event = Published(room, str(sender), frame.get("data"), timestamp)
            self._link.emit("publish", event)

    def drop(self, room: str) -> None:
        """Forget a room's list (left, or its socket gone); its listeners see it empty."""
        if self._lists.pop(room, None) is not None:
            self._link.emit("presence_change", PresenceChange(room, ()))

    def drop_all(self) -> None:
        for room in list(self._lists):
            self.drop(room)

    def _changed(self, room: str) -> None:
        self._link.emit("presence_change", PresenceChange(room, tuple(self.members(room))))

    def _invalid(self, what: str) -> None:
        self._link.emit("error", ErrorEvent("protocol", "invalid_frame", what))
