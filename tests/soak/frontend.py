"""The soak's front end: the round-robin proxy of tests/proxy.py, in the population's own
event loop, that can also cut every connection through it at once (a front end restart, a
network blip: every client and every request in flight loses its connection together)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence

CHUNK = 65_536


class Frontend:
    """Listen on 127.0.0.1:``port`` and spread connections over the backend ports in turn,
    skipping any that refuses (a killed instance)."""

    def __init__(self, port: int, backends: Sequence[int]) -> None:
        self.port = port
        self.backends = list(backends)
        self._turn = itertools.cycle(self.backends)
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        #: Connections cut by ``cut()`` over the run.
        self.cut_total = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, backlog=4096
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        # The pipes end once their transports are gone; cancelled handlers would be logged.
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    def cut(self) -> int:
        """Abort every connection passing through now, both sides; how many were cut."""
        writers = list(self._writers)
        for writer in writers:
            writer.transport.abort()
        self.cut_total += len(writers) // 2
        return len(writers) // 2

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._relay(client_r, client_w)
        finally:
            self._handlers.discard(handler)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        for _ in self.backends:
            try:
                server_r, server_w = await asyncio.open_connection("127.0.0.1", next(self._turn))
                break
            except OSError:
                continue
        else:
            client_w.close()
            return
        pair = (client_w, server_w)
        self._writers.update(pair)
        try:
            await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
        finally:
            self._writers.difference_update(pair)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
