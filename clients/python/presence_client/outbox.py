"""Everything the client writes besides pongs, acks and token frames: ``send()`` with its offline
buffer, the join and leave frames of the current socket, and the pump that writes both paced
under the gateway's per-socket rate limit.

The buffer and ack rules are :class:`~presence_client.buffer.SendBuffer`'s; this module turns
them into futures that resolve with an :class:`~presence_client.events.Ack` or fail with a
:class:`~presence_client.events.PresenceSendError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from presence_client.buffer import Outgoing, RateLimit, SendBuffer, TokenBucket, encode_message
from presence_client.closing import TERMINAL_STATES
from presence_client.events import Ack, Overflow, PresenceSendError
from presence_client.frames import Frame
from presence_client.link import Link, retrieve

Waiter = asyncio.Future[Ack]


class Outbox:
    """The send buffer, the control frames (joins, leaves) and the pump of one client."""

    def __init__(
        self, link: Link, buffer_size: int, rate_limit: RateLimit | None, max_message_bytes: int
    ) -> None:
        self._link = link
        self.buffer: SendBuffer[Waiter] = SendBuffer(buffer_size)
        self._rate_limit = rate_limit
        self._max_message_bytes = max_message_bytes
        self._bucket: TokenBucket | None = None
        self._next_id = 1
        #: join/leave frames for the current socket, sent before buffered messages.
        self._control: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None

    def send(self, data: Any) -> Waiter:
        """A message for the buffer, or a future already failed (see ``PresenceClient.send``)."""
        waiter: Waiter = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(retrieve)
        message_id = self._next_id
        self._next_id += 1
        try:
            frame = encode_message(data, message_id)
        except (TypeError, ValueError, RecursionError) as exc:
            waiter.set_exception(
                PresenceSendError(
                    "invalid_data", f"data is not JSON: {exc}", id=message_id, data=data
                )
            )
            return waiter
        if len(frame.encode()) > self._max_message_bytes:
            waiter.set_exception(
                PresenceSendError(
                    "message_too_large",
                    f"the frame exceeds {self._max_message_bytes} bytes",
                    id=message_id,
                    data=data,
                )
            )
            return waiter
        state = self._link.state
        if state in TERMINAL_STATES:
            waiter.set_exception(
                PresenceSendError(state.value, f"the client is {state}", id=message_id, data=data)
            )
            return waiter
        for dropped in self.buffer.push(Outgoing(message_id, data, frame, waiter)):
            self._overflow(dropped)
        waiter.add_done_callback(lambda f: f.cancelled() and self.buffer.withdraw(message_id))
        self._wakeup.set()
        return waiter

    def control(self, frame: str) -> None:
        """Queue a join or leave frame on the current socket, ahead of buffered messages."""
        self._control.append(frame)
        self._wakeup.set()

    def open(self, ws: ClientConnection, control: Iterable[str]) -> None:
        """A new socket: its control frames first, then the buffer, written by a new pump."""
        self._control = deque(control)
        self._pump_task = self._link.spawn(self._pump(ws))

    def drop_control(self) -> None:
        """The socket is gone: its joins and leaves mean nothing on the next one."""
        self._control.clear()

    def stop_pump(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            self._pump_task = None

    def ack(self, frame: Frame) -> None:
        """Resolve the send an ``ack`` frame acknowledges."""
        item = self.buffer.ack(frame.get("id"))
        if item is not None and not item.waiter.done():
            timestamp = frame.get("timestamp")
            item.waiter.set_result(Ack(item.id, timestamp if isinstance(timestamp, str) else None))

    def settle(self, resend: bool, code: int) -> None:
        """After a close: resend the unacknowledged messages or fail them (``decide_close``)."""
        settled = self.buffer.settle(resend)
        for item in settled.failed:
            self._reject(
                item,
                "disconnected",
                f"the connection closed ({code}) before the gateway acknowledged the message",
                maybe_delivered=True,
            )
        for item in settled.dropped:
            self._overflow(item)

    def fail_all(self, code: str, why: str) -> None:
        """The client stopped: everything waiting or unacknowledged fails with ``code``."""
        for item in self.buffer.clear():
            self._reject(item, code, f"not sent: {why}")

    async def _pump(self, ws: ClientConnection) -> None:
        """Send buffered messages in order, paced under the gateway's per-socket limit."""
        loop = asyncio.get_running_loop()
        if self._rate_limit is not None and self._bucket is None:
            self._bucket = TokenBucket(self._rate_limit, loop.time())
        while True:
            if not self._control and self.buffer.peek() is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._bucket is not None:
                wait = self._bucket.take(loop.time())
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
            if self._control:
                # Joins and leaves count against the same per-socket limit as messages.
                try:
                    await ws.send(self._control[0])
                except ConnectionClosed:
                    return
                if self._control:
                    self._control.popleft()
                continue
            item = self.buffer.take()
            assert item is not None  # peeked above, nothing awaited since
            try:
                # Counted as in flight before the write: if the socket dies mid-send, the close
                # code decides (resend after a clean close, "maybe delivered" otherwise).
                await ws.send(item.frame)
            except ConnectionClosed:
                return

    def _overflow(self, item: Outgoing[Waiter]) -> None:
        self._reject(item, "overflow", "dropped: the offline buffer is full")
        self._link.emit("overflow", Overflow(item.id, item.data))

    @staticmethod
    def _reject(
        item: Outgoing[Waiter], code: str, message: str, *, maybe_delivered: bool = False
    ) -> None:
        if not item.waiter.done():
            item.waiter.set_exception(
                PresenceSendError(
                    code, message, id=item.id, data=item.data, maybe_delivered=maybe_delivered
                )
            )
