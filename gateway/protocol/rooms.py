"""Rooms: named groups of sockets, as plain state and plain decisions. No I/O here.

A socket joins and leaves rooms with ``{"type": "join"}`` and ``{"type": "leave"}`` frames
(``gateway.web.sockets`` feeds them to the service, which asks this module). A REST call sends to a
room on every instance (``gateway.cluster.deployment``); each instance delivers to the members it
holds, which is why membership is kept per instance, in memory, like the sockets themselves:
a socket's rooms die with it, and a reconnecting client joins again (both clients do).

Who may join which room is the server's decision, never the client's:

* the ID token's ``rooms`` custom claim, a list of grants set by the application's backend
  (``auth.set_custom_user_claims(uid, {"rooms": ["team-42", "doc:7f3a:*"]})``): a grant is a
  room name, or a prefix grant ``prefix:*`` that matches the room ``prefix`` and every room
  under it (``prefix:…``). A prefix grant ends at a separator (``:``), so that ``doc:7f:*``
  never reaches ``doc:7fX``, another document; a ``*`` grant whose prefix does not end at one
  (``doc:7f*``, a bare ``*``) grants nothing: see ``allows``;
* ``WS_PUBLIC_ROOM_PREFIXES``: prefixes any signed-in user may join (a server-side rule), held
  to the same separator at start-up;
* with ``AUTH_MODE=off`` (emulators only) there are no tokens, so every room is open.

Refusals (documented in docs/protocol.md), each an ``error`` reply; the socket stays open:

==================  ==============================================================
code                when
==================  ==============================================================
``invalid_room``    the name breaks the rules below
``room_forbidden``  neither the token's ``rooms`` claim nor a public prefix allows it
``too_many_rooms``  the socket is already in ``WS_MAX_ROOMS_PER_SOCKET`` rooms
``room_full``       the room holds ``WS_MAX_ROOM_MEMBERS`` sockets on this instance
==================  ==============================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from gateway.exceptions import ProtocolError

MAX_ROOM_NAME = 128
#: Letters, digits and ``_ - . : @``: safe in a URL path segment (``/ws/rooms/{room}``) and a
#: Pub/Sub attribute, and free of ``*``, which marks a prefix grant in the claim.
ROOM_CHARS = "A-Z a-z 0-9 _ - . : @"
_ROOM = re.compile(rf"[A-Za-z0-9_\-.:@]{{1,{MAX_ROOM_NAME}}}")
#: Where a prefix grant may end: the one character of ROOM_CHARS that separates a name's
#: segments and never occurs inside the ids rooms are named after (``_ - . @`` do: UUIDs,
#: e-mail addresses, ``team-42``), so that a prefix ending in it covers whole segments only.
SEPARATOR = ":"
#: The custom claim holding a user's room grants.
ROOMS_CLAIM = "rooms"
#: Firebase custom claims are at most 1,000 bytes in all, so a longer list cannot be genuine.
MAX_GRANTS = 200


class RoomRefused(ProtocolError):
    """A join or leave the gateway will not do; the reply echoes ``room`` and ``id``."""

    def __init__(self, code: str, message: str, room: str) -> None:
        super().__init__(code, message)
        self.room = room


class Member(Protocol):
    """What the registry needs of a socket: who holds it, and which one it is."""

    @property
    def user_id(self) -> str: ...

    @property
    def session_id(self) -> str: ...


M = TypeVar("M", bound=Member)


def valid_room_name(room: str) -> bool:
    return _ROOM.fullmatch(room) is not None


def check_room_name(room: str) -> None:
    """Raise RoomRefused(invalid_room) unless ``room`` follows the naming rules."""
    if not valid_room_name(room):
        raise RoomRefused(
            "invalid_room",
            f"Room names are 1 to {MAX_ROOM_NAME} characters of {ROOM_CHARS}",
            room[: MAX_ROOM_NAME + 1],
        )


def valid_prefix(prefix: str) -> bool:
    """A public room prefix: room name characters ending at a separator (``public:``)."""
    return _ROOM.fullmatch(prefix) is not None and prefix.endswith(SEPARATOR)


def grants_from_claims(claims: Mapping[str, Any], claim: str = ROOMS_CLAIM) -> tuple[str, ...]:
    """The room grants of a verified token's claims: the ``rooms`` claim's strings (or another
    claim of the same grammar, ``rooms_publish``). Anything else (absent, not a list, entries
    that are not strings) grants nothing: a malformed claim must fail closed."""
    value = claims.get(claim)
    if not isinstance(value, list):
        return ()
    return tuple(g for g in value[:MAX_GRANTS] if isinstance(g, str) and g)


def refused_grants(grants: Iterable[str]) -> list[str]:
    """The ``*`` grants that grant nothing because their prefix does not end at a separator
    (a bare ``*``, ``doc:7f*``): the backend meant something by them, so they are worth a log
    line."""
    return [g for g in grants if g.endswith("*") and not g[:-1].endswith(SEPARATOR)]


def _under(room: str, prefix: str) -> bool:
    """``room`` is the prefix's own room or one under it: ``doc:7f:`` covers ``doc:7f`` and
    ``doc:7f:…``. The caller has checked that ``prefix`` ends with SEPARATOR."""
    return room.startswith(prefix) or room == prefix[:-1]


def allows(room: str, grants: Iterable[str] | None, public_prefixes: Iterable[str] = ()) -> bool:
    """Whether a socket with these grants may join ``room``. ``None``: no token at all
    (``AUTH_MODE=off``), every room is open. A grant ``prefix:*`` covers ``prefix`` and every
    room under ``prefix:``; a ``*`` grant whose prefix does not end at SEPARATOR grants
    nothing (a bare ``*`` would grant every room; ``doc:7f*`` would grant ``doc:7fX``, another
    document), and neither does a public prefix that does not (settings refuse one at
    start-up; checked here too so that the rule holds wherever the prefixes come from)."""
    if grants is None:
        return True
    for prefix in public_prefixes:
        if prefix.endswith(SEPARATOR) and _under(room, prefix):
            return True
    for grant in grants:
        if grant.endswith("*"):
            prefix = grant[:-1]
            if prefix.endswith(SEPARATOR) and _under(room, prefix):
                return True
        elif room == grant:
            return True
    return False


class RoomRegistry(Generic[M]):
    """Room memberships of the sockets this instance holds (by session id, unique per socket).

    Limits: at most ``max_rooms_per_socket`` rooms per socket and ``max_members`` sockets per
    room on this instance; 0 disables a limit. The member limit is per instance, like
    ``WS_MAX_SOCKETS_PER_USER``: counting a room across instances would cost a Firestore
    transaction per join, while what the limit protects (memory, and the time one room send
    holds the event loop) is each instance's own.
    """

    def __init__(self, max_rooms_per_socket: int = 0, max_members: int = 0) -> None:
        self.max_rooms_per_socket = max_rooms_per_socket
        self.max_members = max_members
        self._members: dict[str, dict[str, M]] = {}
        self._rooms_of: dict[str, set[str]] = {}
        self._memberships = 0

    def join(
        self,
        member: M,
        room: str,
        grants: Iterable[str] | None,
        public_prefixes: Iterable[str] = (),
    ) -> bool:
        """Add the socket to the room; False when it already was a member (nothing changes).
        Raises RoomRefused with the first rule the join breaks."""
        check_room_name(room)
        if not allows(room, grants, public_prefixes):
            raise RoomRefused(
                "room_forbidden", f"This token does not allow joining room {room!r}", room
            )
        joined = self._rooms_of.get(member.session_id, set())
        if room in joined:
            return False
        if self.max_rooms_per_socket and len(joined) >= self.max_rooms_per_socket:
            raise RoomRefused(
                "too_many_rooms",
                f"A socket may be in at most {self.max_rooms_per_socket} rooms",
                room,
            )
        members = self._members.get(room, {})
        if self.max_members and len(members) >= self.max_members:
            raise RoomRefused(
                "room_full", f"Room {room!r} has {self.max_members} members already", room
            )
        self._members.setdefault(room, members)[member.session_id] = member
        self._rooms_of.setdefault(member.session_id, joined).add(room)
        self._memberships += 1
        return True

    def leave(self, member: M, room: str) -> bool:
        """Take the socket out of the room; False when it was not in it."""
        joined = self._rooms_of.get(member.session_id)
        if joined is None or room not in joined:
            return False
        joined.discard(room)
        if not joined:
            del self._rooms_of[member.session_id]
        members = self._members[room]
        del members[member.session_id]
        if not members:
            del self._members[room]
        self._memberships -= 1
        return True

    def leave_all(self, member: M) -> list[str]:
        """Take the socket out of every room (it closed); return those rooms, sorted."""
        rooms = sorted(self._rooms_of.get(member.session_id, ()))
        for room in rooms:
            self.leave(member, room)
        return rooms

    def rooms_of(self, member: M) -> list[str]:
        return sorted(self._rooms_of.get(member.session_id, ()))

    def rooms_of_session(self, session_id: str) -> list[str]:
        return sorted(self._rooms_of.get(session_id, ()))

    def members(self, room: str) -> list[M]:
        return list(self._members.get(room, {}).values())

    def size(self, room: str) -> int:
        return len(self._members.get(room, ()))

    def rooms(self) -> dict[str, int]:
        """Every room with a member here, and how many sockets it holds here."""
        return {room: len(members) for room, members in self._members.items()}

    @property
    def total_rooms(self) -> int:
        return len(self._members)

    @property
    def total_memberships(self) -> int:
        return self._memberships
