"""Room membership as the client keeps it: the rooms to be in (joined again on every new socket,
since membership belongs to a socket), and the futures of ``join()`` and ``leave()`` until the
gateway answers (docs/protocol.md, Rooms).

The frames themselves go out through the :class:`~presence_client.outbox.Outbox`, paced with
the buffered messages.
"""

from __future__ import annotations

import asyncio

from presence_client.closing import TERMINAL_STATES, State
from presence_client.events import Joined, Left, PresenceRoomError
from presence_client.frames import Frame, room_frame, room_refused
from presence_client.link import Link, retrieve
from presence_client.outbox import Outbox


class Rooms:
    """The rooms of one client and the joins and leaves waiting for the gateway."""

    def __init__(self, link: Link, outbox: Outbox) -> None:
        self._link = link
        self._outbox = outbox
        #: Rooms to be in: joined again on every new socket (membership belongs to a socket).
        self._rooms: set[str] = set()
        self._join_waiters: dict[str, list[asyncio.Future[Joined]]] = {}
        self._leave_waiters: dict[str, list[asyncio.Future[str]]] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._rooms)

    def join_frames(self) -> list[str]:
        """A new socket is in no room: the joins of them all."""
        return [room_frame("join", room) for room in sorted(self._rooms)]

    def join(self, room: str) -> asyncio.Future[Joined]:
        future: asyncio.Future[Joined] = asyncio.get_running_loop().create_future()
        future.add_done_callback(retrieve)
        state = self._link.state
        if state in TERMINAL_STATES:
            future.set_exception(
                PresenceRoomError(state.value, f"the client is {state.value}", room=room)
            )
            return future
        self._join_waiters.setdefault(room, []).append(future)
        self._rooms.add(room)
        if state is State.CONNECTED:
            self._outbox.control(room_frame("join", room))
        return future

    def leave(self, room: str) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._rooms.discard(room)
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
        code, message = frame.get("code"), frame.get("message")
        for future in self._join_waiters.pop(refused, []):
            if not future.done():
                future.set_exception(PresenceRoomError(str(code), str(message), room=refused))

    def settle(self, stop_code: str | None = None, why: str = "") -> None:
        """The socket is gone: leaves are done; joins wait for the next socket, or fail when
        there will be none (``stop_code``)."""
        self._outbox.drop_control()
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
