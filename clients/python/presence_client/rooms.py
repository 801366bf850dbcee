"""Room membership as the client keeps it: the rooms to be in (joined again on every new socket,
since membership belongs to a socket), and the futures of ``join()`` and ``leave()`` until the
gateway answers (docs/protocol.md, Rooms).

The frames themselves go out through the :class:`~presence_client.outbox.Outbox`, paced with
the buffered messages. A presence room's member list (:mod:`presence_client.presence`) lives
and dies with the membership, so the rooms drop it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from presence_client.closing import TERMINAL_STATES, State
from presence_client.events import Joined, Left, PresenceRoomError, PresenceSendError
from presence_client.frames import Frame, room_frame, room_refused
from presence_client.link import Link, retrieve
from presence_client.outbox import Outbox
from presence_client.presence import RoomPresence, publish_frame


class Rooms:
    """The rooms of one client and the joins and leaves waiting for the gateway."""

    def __init__(
        self, link: Link, outbox: Outbox, presence: RoomPresence, max_message_bytes: int
    ) -> None:
        self._link = link
        self._outbox = outbox
        self.presence = presence
        self._max_message_bytes = max_message_bytes
        #: Rooms to be in: joined again on every new socket (membership belongs to a socket).
        self._rooms: set[str] = set()
        #: The info each room's join carries, sent again on every rejoin.
        self._info: dict[str, dict[str, Any]] = {}
        self._join_waiters: dict[str, list[asyncio.Future[Joined]]] = {}
        self._leave_waiters: dict[str, list[asyncio.Future[str]]] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._rooms)

    def join_frames(self) -> list[str]:
        """A new socket is in no room: the joins of them all."""
        return [room_frame("join", r, info=self._info.get(r)) for r in sorted(self._rooms)]

    def join(self, room: str, info: Mapping[str, Any] | None = None) -> asyncio.Future[Joined]:
        future: asyncio.Future[Joined] = asyncio.get_running_loop().create_future()
        future.add_done_callback(retrieve)
        state = self._link.state
        try:
            if state in TERMINAL_STATES:
                raise PresenceRoomError(state.value, f"the client is {state.value}", room=room)
            frame = room_frame("join", room, info=_info(room, info))
        except PresenceRoomError as refused:
            future.set_exception(refused)
            return future
        self._join_waiters.setdefault(room, []).append(future)
        self._rooms.add(room)
        self._info.pop(room, None)
        if info is not None:
            self._info[room] = dict(info)
        if state is State.CONNECTED:
            self._outbox.control(frame)
        return future

    def publish(self, room: str, data: Any) -> bool:
        """Queue a ``publish`` on the live socket; False when offline or not in the room."""
        try:
            frame = publish_frame(room, data)
        except (TypeError, ValueError, RecursionError) as exc:
            message = f"data is not JSON: {exc}"
            raise PresenceSendError("invalid_data", message, id=0, data=data) from exc
        if len(frame.encode()) > self._max_message_bytes:
            raise PresenceSendError(
                "message_too_large",
                f"the frame exceeds {self._max_message_bytes} bytes",
                id=0,
                data=data,
            )
        if self._link.state is not State.CONNECTED or room not in self._rooms:
            return False
        # A control frame: after the room's join, and dropped with the socket, so that a stale
        # signal (typing) is never replayed on the next one.
        self._outbox.control(frame)
        return True

    def on_presence(self, frame: Frame) -> None:
        self.presence.on_presence(frame, keep=frame.get("room") in self._rooms)

    def leave(self, room: str) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._rooms.discard(room)
        self._info.pop(room, None)
        self.presence.drop(room)
        if self._link.state is not State.CONNECTED:
            future.set_result(room)
            return future
        self._leave_waiters.setdefault(room, []).append(future)
        self._outbox.control(room_frame("leave", room))
        return future

    def on_joined(self, frame: Frame) -> None:
        room, timestamp = str(frame.get("room")), frame.get("timestamp")
        joined = Joined(room, timestamp if isinstance(timestamp, str) else None)
        for future in self._join_waiters.pop(room, []):
            if not future.done():
                future.set_result(joined)
        self._link.emit("joined", joined)

    def on_left(self, frame: Frame) -> None:
        room, reason = str(frame.get("room")), frame.get("reason") or "leave"
        if reason != "leave":
            self._rooms.discard(room)  # e.g. not_allowed: the refreshed token lost it
            self._info.pop(room, None)
        self.presence.drop(room)
        for future in self._leave_waiters.pop(room, []):
            if not future.done():
                future.set_result(room)
        self._link.emit("left", Left(room, str(reason)))

    def on_error(self, frame: Frame) -> None:
        """An ``error`` frame that may refuse a join."""
        refused = room_refused(frame)
        if refused is None:
            return
        # Final for this token: the room is not asked for again on the next socket.
        self._rooms.discard(refused)
        self._info.pop(refused, None)
        code, message = frame.get("code"), frame.get("message")
        for future in self._join_waiters.pop(refused, []):
            if not future.done():
                future.set_exception(PresenceRoomError(str(code), str(message), room=refused))

    def settle(self, stop_code: str | None = None, why: str = "") -> None:
        """The socket is gone: leaves are done; joins wait for the next socket, or fail when
        there will be none (``stop_code``)."""
        self._outbox.drop_control()
        self.presence.drop_all()  # the snapshot after the rejoin rebuilds each list
        for room, futures in self._leave_waiters.items():
            for left in futures:
                if not left.done():
                    left.set_result(room)
        self._leave_waiters.clear()
        if stop_code is None:
            return
        for room, waiting in self._join_waiters.items():
            for joined in waiting:
                if not joined.done():
                    joined.set_exception(
                        PresenceRoomError(stop_code, f"not joined: {why}", room=room)
                    )
        self._join_waiters.clear()


def _info(room: str, info: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A join's info: None, or a JSON object (raises PresenceRoomError ``invalid_info``)."""
    if info is None:
        return None
    if not isinstance(info, Mapping):
        raise PresenceRoomError("invalid_info", "info must be a JSON object", room=room)
    try:
        json.dumps(info, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise PresenceRoomError("invalid_info", f"info is not JSON: {exc}", room=room) from exc
    return info
