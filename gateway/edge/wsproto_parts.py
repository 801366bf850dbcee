"""The small pieces ``gateway.edge.wsproto_lean.LeanWSProtocol`` keeps per socket in place of
uvicorn's: an inbox without a queue, a write gate without a standing event, wsproto's event
queue as a list, the inbox of a detached socket, and the proxy-header rewrite run once.
Why each exists, with its measured cost, is in ``gateway.edge.wsproto_lean``'s docstring."""

from __future__ import annotations

import asyncio
import copy
import weakref
from collections.abc import Awaitable
from typing import Any, Protocol

from uvicorn._types import WebSocketEvent
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from wsproto.connection import Connection

#: Scope keys kept after the accept: who the socket is, for anything that logs it later.
SCOPE_KEPT = ("type", "path", "client", "server", "scheme")


class TextSink(Protocol):
    """What the application installs to take small text frames synchronously."""

    def take_text(self, text: str) -> bool:
        """Handle ``text`` now and return True, or return False to have it delivered through
        ``receive()`` as usual."""


class EventConsumer(Protocol):
    """What the application installs to take every received event synchronously, once it
    has detached from the socket (``LeanWSProtocol.detach``)."""

    def put_event(self, event: WebSocketEvent) -> bool:
        """Take ``event``; return False to have reading paused until the consumer calls
        ``resume_reading`` (it has a backlog)."""


class EventList(list[Any]):
    """wsproto's pending-event queue as a list: events are drained as soon as they arrive, so
    it is nearly always empty, and an empty list is 56 bytes where an empty deque is ~780."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class Inbox:
    """Received ASGI events for the socket's one consumer, the application task; stands in for
    uvicorn's ``asyncio.Queue`` (``put_nowait`` and ``empty`` are what uvicorn calls)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[WebSocketEvent] = []
        #: The future a pending ``receive()`` returned; None while nobody waits.
        self._waiter: asyncio.Future[WebSocketEvent] | None = None

    def put_nowait(self, item: WebSocketEvent) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(item)
        else:
            # Nobody waits, or the waiting task was cancelled: keep it for the next receive().
            self._items.append(item)

    def empty(self) -> bool:
        return not self._items

    def take_all(self) -> list[WebSocketEvent]:
        items, self._items = self._items, []
        return items

    @property
    def waiting(self) -> bool:
        """Whether a receiver waits now (the next event goes straight to it)."""
        return self._waiter is not None and not self._waiter.done()

    def get(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[WebSocketEvent]:
        """A future for the next event: already done when one is queued."""
        future: asyncio.Future[WebSocketEvent] = loop.create_future()
        if self._items:
            future.set_result(self._items.pop(0))
        elif self.waiting:
            # asyncio.Queue would serve concurrent receivers in turn; ASGI applications
            # (this gateway's included) receive from one place, so refuse rather than hang.
            raise RuntimeError("receive() called while another receive() is pending")
        else:
            self._waiter = future
        return future


class Detached:
    """The inbox of a detached socket: every event goes straight to the consumer, and the
    protocol pauses reading while the consumer reports a backlog."""

    __slots__ = ("consumer", "backlogged")

    def __init__(self, consumer: EventConsumer) -> None:
        self.consumer = consumer
        self.backlogged = False

    def put_nowait(self, item: WebSocketEvent) -> None:
        self.backlogged = not self.consumer.put_event(item)

    def empty(self) -> bool:
        return True

    @property
    def waiting(self) -> bool:
        return True

    def get(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[WebSocketEvent]:
        raise RuntimeError("receive() called on a socket whose application detached")


class WriteGate:
    """Write flow control without a standing ``asyncio.Event``: open (None) nearly always; an
    Event exists only between the transport's ``pause_writing`` and ``resume_writing``."""

    __slots__ = ("_closed",)

    def __init__(self) -> None:
        self._closed: asyncio.Event | None = None

    def clear(self) -> None:
        if self._closed is None:
            self._closed = asyncio.Event()

    def set(self) -> None:
        closed, self._closed = self._closed, None
        if closed is not None:
            closed.set()

    def is_set(self) -> bool:
        return self._closed is None

    def wait(self) -> Awaitable[Any]:
        return _OPEN if self._closed is None else self._closed.wait()


class _Open:
    """An awaitable that completes at once (``await`` on it does not suspend)."""

    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())


_OPEN = _Open()


async def _scope_unchanged(scope: Any, receive: Any, send: Any) -> None:
    """The inner application of the proxy-header rewriter: the rewrite is all it is for."""


_rewriters: weakref.WeakKeyDictionary[ProxyHeadersMiddleware, ProxyHeadersMiddleware] = (
    weakref.WeakKeyDictionary()
)


def scope_rewriter(middleware: ProxyHeadersMiddleware) -> ProxyHeadersMiddleware:
    """The same middleware (same trusted hosts) around an application that returns at once:
    running it rewrites the scope, and nothing of it stays suspended. One per server."""
    rewriter = _rewriters.get(middleware)
    if rewriter is None:
        rewriter = copy.copy(middleware)
        rewriter.app = _scope_unchanged
        _rewriters[middleware] = rewriter
    return rewriter


def use_event_list(connection: Connection) -> None:
    events = getattr(connection, "_events", None)
    if events is not None and not isinstance(events, EventList):
        connection._events = EventList(events)  # type: ignore[assignment]


def trim_scope(scope: Any) -> None:
    # In place: the application's suspended frames hold this very dict.
    kept = {key: scope[key] for key in SCOPE_KEPT if key in scope}
    scope.clear()
    scope.update(kept)
