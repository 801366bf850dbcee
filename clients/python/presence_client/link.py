"""What the parts of a client share: its state (and who waits for one), the live socket, the
background tasks and the listeners.

The connection loop (:mod:`presence_client.connection`) sets the state and the socket; the
outbox, rooms, durable stream and token refresh read them through this one small object
instead of holding a reference to the whole client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from presence_client.closing import State
from presence_client.events import StateChanged
from presence_client.listeners import Listeners


def retrieve(future: asyncio.Future[Any]) -> None:
    # The caller may never await a send (fire and forget): mark its exception as retrieved so
    # that asyncio does not log "Future exception was never retrieved". Events say what happened.
    if not future.cancelled():
        future.exception()


class Link:
    """The state, the socket and the tasks of one client."""

    def __init__(self, listeners: Listeners) -> None:
        self.listeners = listeners
        self.state = State.IDLE
        #: The open socket, None between connections.
        self.ws: ClientConnection | None = None
        self._tasks: set[asyncio.Future[Any]] = set()  # strong references until done
        self._state_waiters: list[tuple[frozenset[State], asyncio.Future[State]]] = []

    def emit(self, event: str, payload: object) -> None:
        self.listeners.emit(event, payload)

    def set_state(self, state: State) -> None:
        if state is self.state:
            return
        previous, self.state = self.state, state
        for states, future in list(self._state_waiters):
            if state in states and not future.done():
                future.set_result(state)
        self.emit("state", StateChanged(state, previous))

    async def wait_for_state(self, states: frozenset[State], timeout: float | None) -> State:
        if self.state in states:
            return self.state
        future: asyncio.Future[State] = asyncio.get_running_loop().create_future()
        entry = (states, future)
        self._state_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if entry in self._state_waiters:
                self._state_waiters.remove(entry)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def send_text(self, text: str) -> bool:
        """Write a frame on the live socket; False when there is none or it closed."""
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send(text)
        except ConnectionClosed:
            return False
        return True
