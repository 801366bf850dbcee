"""The rooms part of ``PresenceService``: joins and leaves (with presence rooms' counting),
``publish``, and sends to a room's member sockets on this instance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from gateway.instance.analytics import ConnectionEvents
from gateway.instance.presence import LocalPresence
from gateway.instance.registry import Connection
from gateway.protocol import messages, rooms
from gateway.protocol.messages import iso, utc_now
from gateway.protocol.presence import check_info, default_info, published_text
from gateway.settings import Settings


class RoomMethods:
    """Mixed into PresenceService, which sets these attributes."""

    settings: Settings
    rooms: rooms.RoomRegistry[Connection]
    room_refusals: Counter[str]
    events: ConnectionEvents
    presence: LocalPresence
    relay: Callable[[str, str], None] | None

    async def _send_all(self, conns: Iterable[Connection], text: str) -> int:
        raise NotImplementedError

    def join_room(self, conn: Connection, room: str, info: Any = None) -> bool:
        """Add the socket to the room if its token and the limits allow; raise RoomRefused
        otherwise. False when it already was a member. A presence room's join also counts the
        user in its presence, with ``info`` (or the token's name) as their member info."""
        tracked = self.presence.is_presence_room(room)
        try:
            if tracked:
                try:
                    info = check_info(info, self.settings.presence.info_bytes)
                except ValueError as exc:
                    raise rooms.RoomRefused("invalid_info", str(exc), room) from None
            joined = self.rooms.join(
                conn, room, conn.room_grants, self.settings.sockets.public_room_prefixes
            )
            if joined and tracked:
                try:
                    self.presence.check_join(room, conn.user_id)
                except rooms.RoomRefused:
                    self.rooms.leave(conn, room)
                    raise
        except rooms.RoomRefused as exc:
            self.room_refusals[exc.code] += 1
            raise
        if joined:
            self.events.room_join(conn, room, len(self.rooms.rooms_of(conn)))
            if tracked:
                self.presence.joined(room, conn.user_id, info or default_info(conn.name))
        return joined

    def leave_room(self, conn: Connection, room: str, reason: str = "leave") -> bool:
        """Take the socket out of the room; False when it was not a member."""
        left = self.rooms.leave(conn, room)
        if left:
            self.events.room_leave(conn, room, reason, len(self.rooms.rooms_of(conn)))
            if self.presence.is_presence_room(room):
                self.presence.left(room, conn.user_id)
        return left

    async def publish(self, conn: Connection, room: str, data: Any) -> int:
        """Relay a member's ``publish`` to the room's other sockets, here and (through
        ``relay``) on the other instances; return the sockets here that took it. Raises
        RoomRefused when the socket is not in the room or may not publish to it."""
        if room not in self.rooms.rooms_of(conn):
            raise rooms.RoomRefused("not_in_room", f"Join room {room!r} before publishing", room)
        if not rooms.allows(room, conn.publish_grants):
            raise rooms.RoomRefused(
                "publish_forbidden", f"This token does not allow publishing to {room!r}", room
            )
        text = published_text(room, conn.user_id, data, iso(utc_now()))
        if self.relay is not None:
            self.relay(room, text)
        targets = [c for c in self.rooms.members(room) if c is not conn]
        return await self._send_all(targets, text) if targets else 0

    async def drop_ungranted_rooms(self, conn: Connection) -> list[str]:
        """After a token refresh: leave the rooms the new token no longer grants, telling the
        client with ``left`` and ``reason: "not_allowed"``; return those rooms."""
        dropped = [
            room
            for room in self.rooms.rooms_of(conn)
            if not rooms.allows(room, conn.room_grants, self.settings.sockets.public_room_prefixes)
        ]
        for room in dropped:
            self.leave_room(conn, room, "not_allowed")
            frame = messages.Left("left", room, iso(utc_now()), reason="not_allowed")
            await conn.send_text(messages.encode(frame), self.settings.sockets.send_timeout)
        return dropped

    async def send_room_text(self, room: str, text: str) -> tuple[set[str], int]:
        """Send an encoded frame to the room's member sockets here; return the users reached
        and how many sockets took it."""
        targets = self.rooms.members(room)
        if not targets:
            return set(), 0
        delivered = await self._send_all(targets, text)
        return {c.user_id for c in targets if not c.closed}, delivered

    async def _send_room_local(self, room: str, text: str) -> None:
        await self.send_room_text(room, text)

    def room_members(self, room: str) -> list[tuple[str, str]]:
        """The room's member sockets here, as (user_id, session_id)."""
        return sorted((c.user_id, c.session_id) for c in self.rooms.members(room))
