"""A TCP proxy that limits the bytes per second it passes, standing in for a Firestore that
cannot keep up (the kernel here has no ``netem`` qdisc, so bandwidth is shaped in user space).

It runs on a thread of its own with its own event loop, so a test can change ``rate`` while its
clients keep their own loop busy. Both directions share one token bucket: what the gateway
sends (commits) and what it receives (their answers) compete for the same bandwidth, as on a
congested link. ``rate=None`` passes everything through and counts it, so a test can measure
what the unthrottled traffic needs before choosing a fraction of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

CHUNK = 4096


class ThrottleProxy:
    """Listen on ``127.0.0.1:port`` and forward to ``target`` (``host:port``)."""

    def __init__(self, target: str, port: int = 0) -> None:
        host, _, target_port = target.rpartition(":")
        self.target = (host, int(target_port))
        self.port = port
        #: Bytes per second across both directions; None: unlimited.
        self.rate: float | None = None
        self.bytes = 0
        self._tokens = 0.0
        self._refilled = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ThrottleProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def throughput(self, seconds: float) -> float:
        """Bytes per second passed over the next ``seconds`` (blocks the caller)."""
        before = self.bytes
        time.sleep(seconds)
        return (self.bytes - before) / seconds

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self._take(len(data))
                self.bytes += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _take(self, size: int) -> None:
        """Wait until the bucket holds ``size`` bytes (at most one second's worth banked)."""
        while (rate := self.rate) is not None:
            now = time.monotonic()
            self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            if self._tokens >= size or self._tokens >= rate:
                self._tokens -= size
                return
            await asyncio.sleep(min(1.0, (size - self._tokens) / rate))
