"""What :class:`~presence_client.PresenceClient` tells its listeners, and what ``send()``
resolves or fails with.

Each event name (``client.on(name, callback)``) has one payload type; ``message`` and ``ping``
hand over the server frame itself (a ``dict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from presence_client.closing import CloseCode, State
from presence_client.frames import Frame

#: Every event name ``on()`` accepts.
EVENTS = frozenset(
    {
        "state",
        "connecting",
        "connected",
        "disconnected",
        "signed_out",
        "auth_error",
        "message",
        "ping",
        "pong",
        "overflow",
        "token_refreshed",
        "error",
        "joined",
        "left",
        "stream",
        "recovery",
        "not_recovered",
        "presence",
        "presence_diff",
        "presence_change",
        "publish",
    }
)


@dataclass(frozen=True, slots=True)
class StateChanged:
    """``state``: every state change."""

    state: State
    previous: State


@dataclass(frozen=True, slots=True)
class Connecting:
    """``connecting``: a connection attempt starts (before ``get_token``)."""

    attempt: int
    force_refresh: bool


@dataclass(frozen=True, slots=True)
class Connected:
    """``connected``: the socket opened. The gateway accepts a socket before checking its
    token, so a refused one shows as ``connected`` then ``disconnected`` with the code."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """``disconnected``: a socket closed (1006 when it never opened or dropped without a close
    frame); ``delay`` is the wait in seconds when it will reconnect."""

    code: int
    reason: str
    will_reconnect: bool
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class SignedOut:
    """``signed_out``: the gateway's ``timeout`` message or a 4408 close (inactivity), or its
    ``signed_out`` message or a 4410 close (the service signed the user out); ``message`` is
    the gateway's text (None when only the close came, ``close_reason`` then its reason);
    emitted once."""

    reason: str
    message: str | None
    code: int = CloseCode.SESSION_EXPIRED
    close_reason: str | None = None


@dataclass(frozen=True, slots=True)
class AuthError:
    """``auth_error``: the gateway refused the user's tokens for good (4403, or 4401 after a
    forced refresh, or the forced refresh itself failed)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Pong:
    """``pong``: the client answered a ping (``time``: ``time.time()`` when it did)."""

    time: float
    ping: Frame


@dataclass(frozen=True, slots=True)
class Overflow:
    """``overflow``: the offline buffer dropped its oldest message; its send raises
    :class:`PresenceSendError` with code ``overflow``."""

    id: int
    data: Any


@dataclass(frozen=True, slots=True)
class TokenRefreshed:
    """``token_refreshed``: the gateway accepted a fresh token (``auth_ok``)."""

    expires_at: str | None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """``error``: ``source`` is ``server`` (an ``error`` frame: ``invalid_token``,
    ``token_expired``, ..., or ``invalid_user_id`` after 4400), ``get_token`` (the callback
    raised), ``protocol`` (a frame that is not a JSON object), ``socket`` (the connection
    could not be opened: ``connect_failed``, before a 1006 ``disconnected``) or ``client``
    (an internal error stopped the client: a bug, reported rather than hidden)."""

    source: str
    code: str
    message: str
    frame: Frame | None = None
    exception: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Joined:
    """``joined``, and what ``await client.join(room)`` returns: the gateway accepted the join
    (also each rejoin after a reconnect)."""

    room: str
    timestamp: str | None


@dataclass(frozen=True, slots=True)
class Left:
    """``left``: the socket left ``room``; ``reason`` is ``leave`` (asked) or ``not_allowed``
    (a refreshed token no longer grants it; the client drops the room)."""

    room: str
    reason: str


@dataclass(frozen=True, slots=True)
class Member:
    """One user in a presence room: their sockets in it (``devices``) and the ``info`` their
    join carried."""

    user_id: str
    devices: int
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """``presence``: a presence room's members across the deployment, after each join
    (rejoins included); ``users`` and ``connections`` are its occupancy."""

    room: str
    members: tuple[Member, ...]
    users: int
    connections: int
    timestamp: str | None


@dataclass(frozen=True, slots=True)
class PresenceDiff:
    """``presence_diff``: changes after the snapshot. ``joins`` are upserts by ``user_id``,
    ``leaves`` the users whose last socket in the room is gone; occupancy after the diff."""

    room: str
    joins: tuple[Member, ...]
    leaves: tuple[str, ...]
    users: int
    connections: int
    timestamp: str | None


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """``presence_change``: the room's member list after a snapshot or a diff, or empty when
    it was dropped (leave, disconnect, close); render from this one."""

    room: str
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class Published:
    """``publish``: a signal another member relayed to a room this socket is in; ``sender``
    is the frame's ``from`` (a Python keyword)."""

    room: str
    sender: str
    data: Any
    timestamp: str | None


class PresenceRoomError(Exception):
    """Why a ``join()`` failed. ``code``: the gateway's ``room_forbidden``, ``invalid_room``,
    ``too_many_rooms`` or ``room_full``; ``invalid_info`` (the info is not a JSON object); or
    ``closed``, ``signed_out``, ``auth_error``."""

    def __init__(self, code: str, message: str, *, room: str) -> None:
        super().__init__(message)
        self.code = code
        self.room = room

    def __repr__(self) -> str:
        return f"PresenceRoomError({self.code!r}, {str(self)!r}, room={self.room!r})"


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """``stream``: a durable message, once (duplicates by offset are dropped before this).
    ``data`` is what the backend sent; the client acknowledges it after the listeners ran."""

    epoch: str
    offset: int
    data: Any


@dataclass(frozen=True, slots=True)
class Recovery:
    """``recovery`` (every socket opened with ``recover=True``) and ``not_recovered`` (when
    ``recovered`` is False: the window was exceeded or the epoch changed, ``reason`` says which;
    refetch the application's state). ``missed``: messages replayed before it."""

    recovered: bool
    epoch: str
    offset: int
    missed: int
    reason: str | None


@dataclass(frozen=True, slots=True)
class Ack:
    """What ``await client.send(data)`` returns: the gateway's ``ack`` for that message."""

    id: int
    timestamp: str | None


class PresenceSendError(Exception):
    """Why a ``send()`` failed. ``code``: ``overflow``, ``invalid_data``,
    ``message_too_large``, ``disconnected`` (the socket died before the ack;
    ``maybe_delivered`` is then True), ``closed``, ``signed_out`` or ``auth_error``."""

    def __init__(
        self, code: str, message: str, *, id: int, data: Any, maybe_delivered: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.id = id
        self.data = data
        self.maybe_delivered = maybe_delivered

    def __repr__(self) -> str:
        return f"PresenceSendError({self.code!r}, {str(self)!r}, id={self.id})"
