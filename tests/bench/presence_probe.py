"""The presence scenario's probes (``presence_bench``): a socket that stamps each user's first
join and first leave in the ``presence_diff`` frames it receives, and a Firestore watch
(``on_snapshot``) that stamps every version of the users' ``presence`` and ``presence_holders``
documents. Stamps are the wall clock, like the scenario's own, all on one machine; a version
also carries its commit time (``update_time``), so the watch's own delivery can be told apart
from the gateway's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from gateway.storage.schema import PRESENCE, PRESENCE_HOLDERS, STATE


class Member:
    """One socket of one user: answers pings, stamps presence diffs, queues other frames."""

    def __init__(self, ws: Any, user: str) -> None:
        self.ws = ws
        self.user = user
        #: user -> when this socket first saw them in a diff's joins / leaves.
        self.joins: dict[str, float] = {}
        self.leaves: dict[str, float] = {}
        self.diffs = 0
        self.errors: list[dict[str, Any]] = []
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, base: str, user: str) -> Member:
        from websockets.asyncio.client import connect

        return cls(await connect(f"{base}/ws/connect/{user}", open_timeout=30), user)

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.ws:
                at = time.time()
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "ping":
                    with contextlib.suppress(ConnectionClosed):
                        await self.ws.send('{"type": "pong"}')
                elif kind == "presence_diff":
                    self.diffs += 1
                    for entry in frame["joins"]:
                        self.joins.setdefault(entry["user_id"], at)
                    for entry in frame["leaves"]:
                        self.leaves.setdefault(entry["user_id"], at)
                else:
                    if kind == "error":
                        self.errors.append(frame)
                    self.frames.put_nowait(frame)
        except (ConnectionClosed, OSError):
            pass  # a killed instance's sockets end here

    async def send_join(self, room: str) -> None:
        await self.ws.send(json.dumps({"type": "join", "room": room}))

    async def join(self, room: str, timeout: float = 30) -> dict[str, Any]:
        """Join and wait for the snapshot that follows ``joined``."""
        await self.send_join(room)
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if frame.get("type") == "presence" and frame.get("room") == room:
                    return frame
                if frame.get("type") == "error":
                    raise RuntimeError(f"{self.user}: join of {room} refused: {frame}")

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


class Version:
    """One version of a document as the watch delivered it."""

    __slots__ = ("received", "committed", "state")

    def __init__(self, received: float, committed: float, state: str | None) -> None:
        self.received = received
        self.committed = committed
        self.state = state


class Watch:
    """``on_snapshot`` over the ``presence`` and ``presence_holders`` collections: every
    version seen, by user. A version written and replaced between two deliveries is not seen:
    the scenario spaces its transitions seconds apart."""

    def __init__(self, db: Any) -> None:
        self._lock = threading.Lock()
        self.presence: dict[str, list[Version]] = {}
        self.holders: dict[str, list[Version]] = {}
        self._watches = [
            db.collection(PRESENCE).on_snapshot(self._on(self.presence)),
            db.collection(PRESENCE_HOLDERS).on_snapshot(self._on(self.holders)),
        ]

    def _on(self, into: dict[str, list[Version]]) -> Callable[..., None]:
        def callback(_docs: Any, changes: Any, _read_time: Any) -> None:
            at = time.time()
            with self._lock:
                for change in changes:
                    doc = change.document
                    if change.type.name == "REMOVED" or doc.update_time is None:
                        continue
                    state = (doc.to_dict() or {}).get(STATE)
                    into.setdefault(doc.id, []).append(
                        Version(at, doc.update_time.timestamp(), state)
                    )

        return callback

    def first(self, user: str, state: str, since: float = 0.0) -> Version | None:
        """The first version of ``presence/{user}`` in ``state`` committed at or after
        ``since`` (a little slack: the emulator's clock is this machine's)."""
        with self._lock:
            for version in self.presence.get(user, []):
                if version.state == state and version.committed >= since - 0.005:
                    return version
        return None

    def commits(self, users: list[str]) -> tuple[int, int, int]:
        """(versions of the users' presence documents, of their holders documents, distinct
        commit times among the holders versions: one per transaction, which writes the
        holders record of every user in it)."""
        with self._lock:
            presence = sum(len(self.presence.get(u, [])) for u in users)
            holders = [v.committed for u in users for v in self.holders.get(u, [])]
        return presence, len(holders), len(set(holders))

    def stop(self) -> None:
        for watch in self._watches:
            with contextlib.suppress(Exception):
                watch.unsubscribe()


async def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` every 20 ms; the wall-clock time it held, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"presence: {what} not within {timeout:g} s")
        await asyncio.sleep(0.02)
    return time.time()
