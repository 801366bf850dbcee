"""Durable delivery as the client carries it out (``recover=True``; docs/protocol.md, Durable
delivery): the position presented on every connect, stream frames delivered once, their
``stream_ack`` sent at most every ``ack_interval`` seconds, and the ``recovery`` events.

What is new and what to acknowledge is :class:`~presence_client.streams.StreamPosition`'s
decision; this module reads the frames and writes the acks.
"""

from __future__ import annotations

import asyncio

from presence_client.events import ErrorEvent, Recovery, StreamMessage
from presence_client.frames import Frame
from presence_client.link import Link
from presence_client.streams import StreamPosition


class DurableStream:
    """One client's durable stream: its position, the delivery of stream frames and the acks."""

    def __init__(self, link: Link, recover: bool, ack_interval: float) -> None:
        self._link = link
        self._recover = recover
        self._ack_interval = ack_interval
        self.position = StreamPosition()
        self._ack_task: asyncio.Task[None] | None = None

    def params(self) -> dict[str, str] | None:
        """The recovery query parameters for the next socket, or None without ``recover``."""
        return self.position.params() if self._recover else None

    def on_stream(self, frame: Frame) -> bool:
        """Deliver a durable message unless it is a duplicate; acknowledge it afterwards."""
        epoch, offset = frame.get("epoch"), frame.get("offset")
        if not isinstance(epoch, str) or not isinstance(offset, int) or isinstance(offset, bool):
            self._link.emit(
                "error", ErrorEvent("protocol", "invalid_frame", "stream frame", frame=frame)
            )
            return False
        if not self.position.accept(epoch, offset):
            return False
        data = frame.get("data")
        self._link.emit("stream", StreamMessage(epoch, offset, data))
        if isinstance(data, dict) and isinstance(inner := data.get("type"), str):
            # The backend's message reaches on_message(type) as if it had been sent plainly.
            self._link.listeners.handle(inner, data)
        self._schedule_ack()
        return True

    def on_recovery(self, frame: Frame) -> None:
        epoch, offset = frame.get("epoch"), frame.get("offset")
        if not isinstance(epoch, str) or not isinstance(offset, int):
            return
        recovered = frame.get("recovered") is True
        missed, reason = frame.get("missed"), frame.get("reason")
        self.position.recovered(epoch, offset, recovered)
        event = Recovery(
            recovered,
            epoch,
            offset,
            missed if isinstance(missed, int) else 0,
            reason if isinstance(reason, str) else None,
        )
        self._link.emit("recovery", event)
        if not recovered:
            self._link.emit("not_recovered", event)

    def _schedule_ack(self) -> None:
        # One stream_ack per ack_interval at most: a replay of 300 messages must not cost 300
        # frames against the gateway's per-socket rate limit.
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = self._link.spawn(self._ack_later())

    async def _ack_later(self) -> None:
        await asyncio.sleep(self._ack_interval)
        frame = self.position.ack_frame()
        if frame is not None and not await self._link.send_text(frame):
            self.position.acked = 0  # not sent: the next message acknowledges again
