"""Who hears what the client does: event listeners (``on``), per-type frame handlers
(``on_message``) and the async iterators of ``messages()``.

:class:`Listeners` calls each callback inline and runs awaitables it returns as tasks; a
callback's exception goes to ``report_error`` and never reaches the connection's bookkeeping.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Self

from presence_client.events import EVENTS
from presence_client.frames import Frame

logger = logging.getLogger("presence_client")

Unsubscribe = Callable[[], None]
Callback = Callable[[Any], object]


def log_listener_error(error: BaseException) -> None:
    logger.error("a presence client listener raised", exc_info=error)


class MessageStream:
    """``async for frame in client.messages()``: server frames (of the given types, or all),
    until the client reaches a terminal state or the stream is closed. Unbounded: read it."""

    def __init__(self, registry: set[MessageStream], types: frozenset[str]) -> None:
        # The set of open streams it is offered frames from; it leaves it when it ends.
        self._registry = registry
        self.types = types
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._ended = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Frame:
        if self._ended and self._queue.empty():
            raise StopAsyncIteration
        frame = await self._queue.get()
        if frame is None:
            self._ended = True
            raise StopAsyncIteration
        return frame

    def close(self) -> None:
        """Stop receiving frames; the iteration ends after those already queued."""
        self._end()

    def _offer(self, frame: Frame) -> None:
        if not self._ended and (not self.types or frame.get("type") in self.types):
            self._queue.put_nowait(frame)

    def _end(self) -> None:
        if not self._ended:
            self._queue.put_nowait(None)
            self._registry.discard(self)


class Listeners:
    """The client's event listeners, frame handlers and open message streams."""

    def __init__(self, report_error: Callable[[BaseException], None]) -> None:
        self._report_error = report_error
        self._listeners: dict[str, list[Callback]] = {}
        self._handlers: dict[str, list[Callback]] = {}
        self._streams: set[MessageStream] = set()
        self._tasks: set[asyncio.Future[Any]] = set()  # strong references until done

    def on(self, event: str, callback: Callback) -> Unsubscribe:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; one of {', '.join(sorted(EVENTS))}")
        return self._subscribe(self._listeners, event, callback)

    def on_message(self, type: str, callback: Callback) -> Unsubscribe:
        return self._subscribe(self._handlers, type, callback)

    def messages(self, types: frozenset[str], *, ended: bool) -> MessageStream:
        """A new stream of frames; ``ended`` (the client is in a terminal state) ends it at once."""
        stream = MessageStream(self._streams, types)
        if ended:
            stream._end()
        else:
            self._streams.add(stream)
        return stream

    def offer(self, frame: Frame) -> None:
        """Queue a server frame on every open stream."""
        for stream in list(self._streams):
            stream._offer(frame)

    def end_streams(self) -> None:
        for stream in list(self._streams):
            stream._end()

    def emit(self, event: str, payload: object) -> None:
        for callback in list(self._listeners.get(event, ())):
            self._call(callback, payload)

    def handle(self, frame_type: str, frame: Frame) -> None:
        """Hand a frame to the ``on_message`` handlers of ``frame_type``."""
        for handler in list(self._handlers.get(frame_type, ())):
            self._call(handler, frame)

    @staticmethod
    def _subscribe(table: dict[str, list[Callback]], key: str, callback: Callback) -> Unsubscribe:
        if not callable(callback):
            raise TypeError("callback must be callable")
        callbacks = table.setdefault(key, [])
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def _call(self, callback: Callback, payload: object) -> None:
        try:
            result = callback(payload)
        except Exception as exc:
            # A listener's bug must not break the connection's bookkeeping.
            self._report_error(exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._listener_done)

    def _listener_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._report_error(error)
