"""Presence on one instance: the debounced counts of its sockets per user and per (presence
room, user), turned into user-presence reports (``gateway.storage.presence_records``) and into
this instance's entries of the replicated room view (``gateway.protocol.presence``), and the
diffs sent to the members of each changed room.

Debounce: a count that rises is reported at once; one that falls is reported only after
``PRESENCE_GRACE`` (then at its value by that time), so a socket that closes and reconnects
within the grace changes nothing anyone sees. Closes the gateway decides on (timeout,
sign-out, expired token) are reported at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime
from typing import Any, Generic, TypeVar

from gateway.protocol import presence as rp
from gateway.protocol.messages import encode, iso, utc_now
from gateway.protocol.rooms import RoomRefused
from gateway.settings import Settings
from gateway.storage.presence_records import PresenceWriter, Report

logger = logging.getLogger("gateway.instance.presence")

K = TypeVar("K", bound=Hashable)
#: At most this long a stopping instance waits for falls still in their grace (Cloud Run
#: allows 10 s between SIGTERM and SIGKILL).
STOP_WAIT = 3.0
#: Closes reported at once, by close code, with their events' reason.
IMMEDIATE = {4408: "timeout", 4410: "signout", 4401: "token_expired"}


class Debounced(Generic[K]):
    """Counts whose rises are reported at once and falls after ``grace`` seconds."""

    def __init__(self, grace: float, on_change: Callable[[K, int, datetime, str], None]) -> None:
        self.grace = grace
        self.on_change = on_change
        self.actual: dict[K, int] = {}
        self.reported: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._fell: dict[K, tuple[datetime, str]] = {}

    def up(self, key: K) -> None:
        count = self.actual[key] = self.actual.get(key, 0) + 1
        if count >= self.reported.get(key, 0):
            self._cancel(key)
        if count > self.reported.get(key, 0):
            self._report(key, count, utc_now(), "connect")

    def down(self, key: K, reason: str, *, now: bool = False) -> None:
        count = self.actual.get(key, 0) - 1
        if count < 0:
            return
        if count:
            self.actual[key] = count
        else:
            self.actual.pop(key, None)
        self._fell[key] = (utc_now(), reason)
        if now or not self.grace:
            self._cancel(key)
            self._settle(key)
        elif key not in self._timers:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): nothing could wait
                self._settle(key)
                return
            self._timers[key] = loop.call_later(self.grace, self._settle, key)

    def _settle(self, key: K) -> None:
        self._timers.pop(key, None)
        count = self.actual.get(key, 0)
        at, reason = self._fell.pop(key, (utc_now(), "disconnect"))
        if count < self.reported.get(key, 0):
            self._report(key, count, at, reason)

    def _report(self, key: K, count: int, at: datetime, reason: str) -> None:
        if count:
            self.reported[key] = count
        else:
            self.reported.pop(key, None)
        self.on_change(key, count, at, reason)

    def _cancel(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
            self._fell.pop(key, None)

    def settle_all(self) -> None:
        """Report every pending fall now (the instance is stopping)."""
        for key, timer in list(self._timers.items()):
            timer.cancel()
            self._settle(key)

    @property
    def pending(self) -> int:
        return len(self._timers)


RoomSender = Callable[[str, str], Awaitable[Any]]


class LocalPresence:
    """This instance's part of presence (``PresenceService.presence``)."""

    def __init__(
        self, settings: Settings, writer: PresenceWriter | None, send_room: RoomSender
    ) -> None:
        self.settings = settings.presence
        self.me = settings.instance_id
        self.writer = writer
        self.view = rp.RoomView()
        self._send_room = send_room
        self.users: Debounced[str] = Debounced(self.settings.grace, self._user_changed)
        self.rooms: Debounced[tuple[str, str]] = Debounced(self.settings.grace, self._room_changed)
        self._info: dict[tuple[str, str], dict[str, Any]] = {}
        #: This instance's entries not yet published, by (room, user): the latest wins.
        self.outgoing: dict[tuple[str, str], rp.Wire] = {}
        self.outgoing_ready = asyncio.Event()
        self.diffs_sent = 0
        #: Owners whose digest showed this view missed their messages: resynced next watch.
        self.stale_owners: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # --- sockets ------------------------------------------------------------------------------

    def socket_opened(self, user_id: str) -> None:
        if self.writer is not None:
            self.users.up(user_id)

    def socket_closed(self, user_id: str, code: int | None) -> None:
        if self.writer is not None:
            reason = IMMEDIATE.get(code or 0)
            self.users.down(user_id, reason or "disconnect", now=reason is not None)

    def _user_changed(self, user_id: str, count: int, at: datetime, reason: str) -> None:
        assert self.writer is not None
        self.writer.report(Report(user_id, count, at, reason))

    # --- rooms --------------------------------------------------------------------------------

    def is_presence_room(self, room: str) -> bool:
        return rp.is_presence_room(room, self.settings.room_prefixes)

    def check_join(self, room: str, user_id: str) -> None:
        """Raise RoomRefused(room_full) when the user would exceed PRESENCE_ROOM_CAP."""
        cap = self.settings.room_cap
        if cap and not self.view.has_user(room, user_id) and self.view.occupancy(room)[0] >= cap:
            raise RoomRefused("room_full", f"Room {room!r} has {cap} users already", room)

    def joined(self, room: str, user_id: str, info: dict[str, Any]) -> None:
        self._info[(room, user_id)] = info
        self.rooms.up((room, user_id))

    def left(self, room: str, user_id: str, code: int | None = None) -> None:
        reason = IMMEDIATE.get(code or 0)
        self.rooms.down((room, user_id), reason or "disconnect", now=reason is not None)

    def _room_changed(self, key: tuple[str, str], count: int, at: datetime, reason: str) -> None:
        room, user_id = key
        info = self._info.get(key, {}) if count else {}
        if not count:
            self._info.pop(key, None)
        wire: rp.Wire = (room, user_id, count, rp.next_version(), info)
        self.view.apply(self.me, wire)
        self.outgoing[key] = wire
        self.outgoing_ready.set()

    def take_outgoing(self) -> list[rp.Wire]:
        wires, self.outgoing = list(self.outgoing.values()), {}
        self.outgoing_ready.clear()
        return wires

    def reassert(self) -> None:
        """Report every count again (users) and publish every entry again with a new version
        (rooms): what a sweep or the peers dropped while this instance looked lost returns."""
        now = utc_now()
        if self.writer is not None:
            for user_id, count in self.users.reported.items():
                self.writer.report(Report(user_id, count, now, "connect"))
        for key, count in self.rooms.reported.items():
            self._room_changed(key, count, now, "connect")

    def requeue(self, wires: list[rp.Wire]) -> None:
        """Entries whose publish failed: kept for the next one unless a newer one came."""
        for wire in wires:
            self.outgoing.setdefault((wire[0], wire[1]), wire)
        if self.outgoing:
            self.outgoing_ready.set()

    def snapshot_text(self, room: str) -> str:
        users, connections = self.view.occupancy(room)
        return encode(
            rp.PresenceSnapshot(
                "presence", room, self.view.members(room), users, connections, iso(utc_now())
            )
        )

    # --- diffs --------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._diff_loop(), name="presence-diffs")

    async def stop(self) -> None:
        """Stop the diffs, and report the falls still in their grace: the sockets were closed
        for the drain, and most clients reconnect elsewhere within a few seconds, which the
        wait lets their new instance count first (no offline shown)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.users.pending or self.rooms.pending:
            await asyncio.sleep(min(self.settings.grace, STOP_WAIT))
        self.users.settle_all()
        self.rooms.settle_all()

    async def _diff_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.diff_interval)
            try:
                await self.send_diffs()
                self.view.purge()
            except Exception:
                logger.exception("presence diffs failed")

    async def send_diffs(self) -> int:
        """Send each changed room's diff to its members here; return the rooms sent."""
        diffs = self.view.take_diffs()
        stamp = iso(utc_now())
        for room, (joins, leaves) in diffs.items():
            users, connections = self.view.occupancy(room)
            text = encode(
                rp.PresenceDiff("presence_diff", room, joins, leaves, users, connections, stamp)
            )
            await self._send_room(room, text)
        self.diffs_sent += len(diffs)
        return len(diffs)
