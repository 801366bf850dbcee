"""Room presence as plain state: the replicated view of who is in each presence room, the
frames that show it, and the rules for a join's ``info`` and for ``publish``. No I/O here.

The view follows Phoenix.Tracker: every instance owns the entries of the sockets it holds,
one per (room, user): the user's device count in the room on that instance and their info.
Owners publish changes as absolute values stamped with a version that only grows
(:func:`next_version`), so a repeated or late message never undoes a newer one, and a removed
entry leaves its version behind (a tombstone, purged after ``TOMBSTONE_SECONDS``) for as long
as an older message could still arrive. What members see is per user: devices summed over the
instances, and a diff when a user appears, changes or is gone (:meth:`RoomView.take_diffs`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final, Literal, NamedTuple

import msgspec

#: The custom claim granting ``publish`` (same grammar as ``rooms``).
PUBLISH_CLAIM: Final = "rooms_publish"
#: The ID token claim a member's default info is taken from (Firebase sets it from the
#: account's display name).
NAME_CLAIM: Final = "name"
#: How long a removed entry's version is kept to refuse an older message about it. Fan-out
#: messages arrive within seconds or not at all (an instance that stops answering is dropped
#: whole), so a minute is ample.
TOMBSTONE_SECONDS: Final = 60.0

_last_version = 0


def next_version() -> int:
    """A version greater than every earlier one of this process, and than any an earlier
    process under the same instance id issued before it (wall-clock nanoseconds)."""
    global _last_version
    _last_version = max(_last_version + 1, time.time_ns())
    return _last_version


class PresenceMember(msgspec.Struct):
    user_id: str
    devices: int
    info: dict[str, Any]


class PresenceLeave(msgspec.Struct):
    user_id: str


class PresenceSnapshot(msgspec.Struct):
    """Sent after ``joined`` for a presence room: everyone in it, across the instances."""

    type: Literal["presence"]
    room: str
    members: list[PresenceMember]
    users: int
    connections: int
    timestamp: str


class PresenceDiff(msgspec.Struct):
    """Who appeared or changed (``joins``, an upsert) and who left, since the last diff."""

    type: Literal["presence_diff"]
    room: str
    joins: list[PresenceMember]
    leaves: list[PresenceLeave]
    users: int
    connections: int
    timestamp: str


class Published(msgspec.Struct):
    """A member's ``publish``, relayed to the room's other sockets."""

    type: Literal["publish"]
    room: str
    data: Any
    timestamp: str
    # "from" is a Python keyword: renamed on the wire.
    sender: str = msgspec.field(name="from")


def published_text(room: str, sender: str, data: Any, timestamp: str) -> str:
    return msgspec.json.encode(Published("publish", room, data, timestamp, sender)).decode()


def is_presence_room(room: str, prefixes: Iterable[str]) -> bool:
    return any(room.startswith(p) or room == p[:-1] for p in prefixes)


def check_info(value: Any, max_bytes: int) -> dict[str, Any] | None:
    """A join's ``info``: None when absent; a JSON object of at most ``max_bytes`` encoded.
    Raises ValueError with the reason otherwise."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError('"info" must be a JSON object')
    if len(msgspec.json.encode(value)) > max_bytes:
        raise ValueError(f'"info" must be at most {max_bytes} bytes encoded')
    return value


def default_info(claims_name: Any) -> dict[str, Any]:
    """The info of a member whose join carried none: the token's display name, if any."""
    if isinstance(claims_name, str) and claims_name:
        return {"name": claims_name[:128]}
    return {}


class Entry(NamedTuple):
    """One instance's share of one user in one room."""

    devices: int
    info: dict[str, Any]


#: A replicated entry on the wire: (room, user, devices, version, info); devices 0 removes it.
Wire = tuple[str, str, int, int, dict[str, Any]]


class RoomView:
    """Every presence room's entries, by room, user and owning instance."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, dict[str, Entry]]] = {}
        #: (instance, room, user) -> the newest version applied (also for removed entries).
        self._versions: dict[tuple[str, str, str], int] = {}
        #: Removed entries' keys, by the monotonic time of removal (tombstone purge).
        self._removed: dict[tuple[str, str, str], float] = {}
        #: What members were last shown, per room: user -> (devices, info).
        self._shown: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
        #: Rooms with a change not yet in a diff.
        self._dirty: set[str] = set()
        #: Each owner's newest version applied (never purged): its digest is compared to it.
        self._newest: dict[str, int] = {}

    # --- changes ------------------------------------------------------------------------------

    def apply(self, instance: str, entry: Wire) -> bool:
        """Apply one owner's entry unless a newer one was applied; True when it changed."""
        room, user, devices, version, info = entry
        key = (instance, room, user)
        if version <= self._versions.get(key, -1):
            return False
        self._versions[key] = version
        if version > self._newest.get(instance, 0):
            self._newest[instance] = version
        users = self._rooms.get(room)
        if devices > 0:
            self._removed.pop(key, None)
            if users is None:
                users = self._rooms[room] = {}
            users.setdefault(user, {})[instance] = Entry(devices, info)
        else:
            self._removed[key] = time.monotonic()
            held = users.get(user) if users is not None else None
            if held is None or held.pop(instance, None) is None:
                return False
            if not held:
                del users[user]  # type: ignore[union-attr]
                if not users:
                    del self._rooms[room]
        self._dirty.add(room)
        return True

    def replace_instance(self, instance: str, entries: Iterable[Wire], as_of: int) -> None:
        """An owner's whole state at version ``as_of`` (its answer to a sync): its entries not
        listed and not newer than ``as_of`` are gone."""
        listed = set()
        for entry in entries:
            listed.add((entry[0], entry[1]))
            self.apply(instance, entry)
        for room, user in [(r, u) for (i, r, u) in self._live_keys(instance)]:
            key = (instance, room, user)
            if (room, user) not in listed and self._versions.get(key, 0) <= as_of:
                self.apply(instance, (room, user, 0, max(as_of, self._versions[key]) + 1, {}))

    def drop_instance(self, instance: str) -> list[str]:
        """Forget every entry of an instance that is gone; return the rooms that changed."""
        changed = []
        for _, room, user in list(self._live_keys(instance)):
            held = self._rooms[room][user]
            del held[instance]
            if not held:
                del self._rooms[room][user]
                if not self._rooms[room]:
                    del self._rooms[room]
            changed.append(room)
        for key in [k for k in self._versions if k[0] == instance]:
            del self._versions[key]
            self._removed.pop(key, None)
        self._newest.pop(instance, None)
        self._dirty.update(changed)
        return sorted(set(changed))

    def purge(self, now: float | None = None) -> None:
        """Forget tombstones older than TOMBSTONE_SECONDS."""
        cutoff = (time.monotonic() if now is None else now) - TOMBSTONE_SECONDS
        for key in [k for k, at in self._removed.items() if at < cutoff]:
            del self._removed[key]
            self._versions.pop(key, None)

    def _live_keys(self, instance: str) -> list[tuple[str, str, str]]:
        return [
            (instance, room, user)
            for room, users in self._rooms.items()
            for user, held in users.items()
            if instance in held
        ]

    # --- reading ------------------------------------------------------------------------------

    def instances(self) -> set[str]:
        return {i for users in self._rooms.values() for held in users.values() for i in held}

    def count_of(self, instance: str) -> int:
        """How many entries the view holds of an owner."""
        return len(self._live_keys(instance))

    def newest_of(self, instance: str) -> int:
        """The newest version applied of an owner's entries (0: none)."""
        return self._newest.get(instance, 0)

    def owned(self, instance: str) -> list[Wire]:
        """An instance's entries as it would publish them (a sync answer)."""
        return [
            (room, user, e.devices, self._versions[(instance, room, user)], e.info)
            for room, users in self._rooms.items()
            for user, held in users.items()
            if (e := held.get(instance)) is not None
        ]

    def has_user(self, room: str, user: str) -> bool:
        return user in self._rooms.get(room, ())

    def members(self, room: str) -> list[PresenceMember]:
        return [
            PresenceMember(user, devices, info)
            for user, (devices, info) in sorted(self._merged(room).items())
        ]

    def occupancy(self, room: str) -> tuple[int, int]:
        """(users, connections) in the room across the instances."""
        users = self._rooms.get(room, {})
        return len(users), sum(e.devices for held in users.values() for e in held.values())

    def room_instances(self, room: str) -> list[str]:
        """The instances holding entries of the room."""
        return sorted({i for held in self._rooms.get(room, {}).values() for i in held})

    def rooms(self) -> list[str]:
        return sorted(self._rooms)

    def _merged(self, room: str) -> dict[str, tuple[int, dict[str, Any]]]:
        merged: dict[str, tuple[int, dict[str, Any]]] = {}
        for user, held in self._rooms.get(room, {}).items():
            # The info of the instance that sorts first: every instance picks the same one.
            first = held[min(held)]
            merged[user] = (sum(e.devices for e in held.values()), first.info)
        return merged

    def take_diffs(self) -> dict[str, tuple[list[PresenceMember], list[PresenceLeave]]]:
        """Each changed room's joins (new or changed users) and leaves since the last call."""
        diffs = {}
        for room in sorted(self._dirty):
            now = self._merged(room)
            shown = self._shown.get(room, {})
            joins = [
                PresenceMember(user, *state)
                for user, state in sorted(now.items())
                if shown.get(user) != state
            ]
            leaves = [PresenceLeave(user) for user in sorted(shown) if user not in now]
            if now:
                self._shown[room] = now
            else:
                self._shown.pop(room, None)
            if joins or leaves:
                diffs[room] = (joins, leaves)
        self._dirty.clear()
        return diffs
