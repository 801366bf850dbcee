"""Durable delivery on one instance: a durable message's frame to the user's sockets here,
a reconnecting socket's recovery (replaying what its client missed, then the ``recovery``
frame, then the live messages queued meanwhile), and the client's acknowledgements.

The stream itself (offsets, epoch, entries) lives in a ``gateway.storage.streams.StreamStore``;
what to replay is ``gateway.storage.streams``' pure decision (``plan_recovery``, ``check_entries``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from gateway.instance.registry import Connection, Registry
from gateway.protocol import messages
from gateway.protocol.messages import iso, utc_now
from gateway.storage.schema import ACKED_AT, ACKED_EPOCH, ACKED_OFFSET, STREAM_ACKS
from gateway.storage.store import READ_TIMEOUT, Write
from gateway.storage.streams import (
    Plan,
    Position,
    RecoveryFrame,
    StreamStore,
    check_entries,
    plan_recovery,
    stream_frame,
)
from gateway.storage.writer import WriteBehind

logger = logging.getLogger("gateway.instance.stream_delivery")

#: Seconds between two writes of one user's acknowledged position. A client acks each durable
#: message (or floods acks within its frame rate); the position only matters to a reconnect
#: that presents none, so within this window only the latest ack is kept and it is written
#: when the window ends: a hostile socket then costs at most one ack write a second, and no
#: acknowledgement is lost.
ACK_WRITE_INTERVAL = 1.0


class StreamDelivery:
    """The service's side of durable streams (``PresenceService.streams``)."""

    def __init__(
        self,
        store: StreamStore,
        registry: Registry,
        writer: WriteBehind,
        send_all: Callable[[Iterable[Connection], str], Awaitable[int]],
        *,
        send_timeout: float,
        history_size: int,
        history_ttl: float,
    ) -> None:
        self.store = store
        self.registry = registry
        self.writer = writer
        #: The service's chunked send to several sockets.
        self._send_all = send_all
        self.send_timeout = send_timeout
        self.history_size = history_size
        self.history_ttl = history_ttl
        #: Recoveries by outcome (recovered, or the reason they did not), and messages replayed.
        self.recoveries: Counter[str] = Counter()
        self.replayed = 0
        self.acks = 0
        #: Acks folded into a later write of the same user's position (ACK_WRITE_INTERVAL).
        self.acks_coalesced = 0
        self.appends = 0
        #: Users whose position was written in the last ACK_WRITE_INTERVAL, with the latest
        #: ack held since (None: none held). An entry leaves when its window ends quietly.
        self._acks_held: dict[str, tuple[str, int] | None] = {}

    async def send(self, user_id: str, text: str, offset: int) -> int:
        """Send a durable message's frame to the user's sockets here. A socket still replaying
        what it missed gets it queued, behind the replay, so the client sees offsets in order."""
        live = []
        queued = 0
        for conn in self.registry.sockets_of(user_id):
            if conn.replay is not None:
                conn.replay.append((offset, text))
                queued += 1
            else:
                live.append(conn)
        return queued + (await self._send_all(live, text) if live else 0)

    async def recover(self, conn: Connection, position: Position | None) -> RecoveryFrame:
        """Replay what the socket's client missed of the user's stream, send the ``recovery``
        frame, then the live messages queued meanwhile (``conn.replay``, set before the socket
        was registered). Returns the frame sent."""
        timeout = self.send_timeout
        try:
            result, frames = await self._plan_replay(conn.user_id, position)
        except Exception as exc:
            logger.warning("recovery failed user=%s: %r", conn.user_id, exc)
            # Without the stream nobody can tell what the client missed: it refetches.
            epoch, offset = (position.epoch, position.offset) if position else ("", 0)
            result, frames = self._recovery(False, epoch, offset, 0, "unavailable"), []
        for frame in frames:
            await conn.send_text(frame, timeout)
        self.replayed += len(frames)
        await conn.send_text(messages.encode(result), timeout)
        # Live messages that arrived during the replay: those it covered are dropped (the
        # client would drop them too), the rest follow in the order they came.
        queued = conn.replay or []
        while queued:
            batch = list(queued)
            queued.clear()
            for offset, text in batch:
                if not (result.epoch and offset <= result.offset):
                    await conn.send_text(text, timeout)
        conn.replay = None
        return result

    async def _plan_replay(
        self, user_id: str, position: Position | None
    ) -> tuple[RecoveryFrame, list[str]]:
        """The recovery frame and the missed messages' frames, from the stream store."""
        head = await self.store.head(user_id, READ_TIMEOUT, with_ack=position is None)
        decision = plan_recovery(position, head, self.history_size)
        if not isinstance(decision, Plan):
            return self._recovery(False, decision.epoch, decision.top, 0, decision.reason), []
        entries = []
        if decision.top > decision.after:
            entries = await self.store.entries(user_id, decision.after, decision.top, READ_TIMEOUT)
            if not check_entries(entries, decision, utc_now(), self.history_ttl):
                return (
                    self._recovery(False, decision.epoch, decision.top, 0, "window_exceeded"),
                    [],
                )
        frames = [stream_frame(decision.epoch, e.offset, e.payload) for e in entries]
        return self._recovery(True, decision.epoch, decision.top, len(frames), None), frames

    def _recovery(
        self, recovered: bool, epoch: str, offset: int, missed: int, reason: str | None
    ) -> RecoveryFrame:
        self.recoveries["recovered" if recovered else reason or "not_recovered"] += 1
        return RecoveryFrame("recovery", recovered, epoch, offset, missed, iso(utc_now()), reason)

    def ack(self, conn: Connection, epoch: str, offset: int) -> None:
        """Store the user's acknowledged position, written behind: a reconnect presenting none
        resumes from it."""
        self.acks += 1
        user_id = conn.user_id
        if user_id in self._acks_held:
            self._acks_held[user_id] = (epoch, offset)
            self.acks_coalesced += 1
            return
        self._write_ack(user_id, epoch, offset)

    def release_ack(self, user_id: str) -> None:
        """Write the user's held ack now, if there is one (a socket of theirs closed)."""
        position = self._acks_held.get(user_id)
        if position is not None:
            self._write_ack(user_id, *position)

    def flush_acks(self) -> None:
        """Write every held ack now (the instance is stopping)."""
        held, self._acks_held = self._acks_held, {}
        for user_id, position in held.items():
            if position is not None:
                self.writer.put(Write(STREAM_ACKS, user_id, _ack_fields(*position)), urgent=False)

    def _write_ack(self, user_id: str, epoch: str, offset: int) -> None:
        # Not urgent: a position may wait behind pongs (recovery falls back to the stream's
        # own retention), where a heartbeat or a session record may not.
        self.writer.put(Write(STREAM_ACKS, user_id, _ack_fields(epoch, offset)), urgent=False)
        self._acks_held[user_id] = None
        asyncio.get_running_loop().call_later(ACK_WRITE_INTERVAL, self._window_ended, user_id)

    def _window_ended(self, user_id: str) -> None:
        if user_id not in self._acks_held:
            return  # flushed at stop
        position = self._acks_held.pop(user_id)
        if position is not None:
            self._write_ack(user_id, *position)


def _ack_fields(epoch: str, offset: int) -> dict[str, object]:
    return {ACKED_EPOCH: epoch, ACKED_OFFSET: offset, ACKED_AT: utc_now()}
