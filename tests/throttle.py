"""A TCP proxy that limits the bytes per second it passes, standing in for a Firestore that
cannot keep up (the kernel here has no ``netem`` qdisc, so bandwidth is shaped in user space).

It runs on a thread of its own with its own event loop, so a test can change ``rate`` while its
clients keep their own loop busy. Both directions share one link: what the gateway sends
(commits) and what it receives (their answers) queue for the same bandwidth, as on a congested
link. Chunks take the link in the order they arrive, each for ``size / rate`` seconds, so a
stream of large chunks is not starved by small ones (a token bucket that lets any chunk through
once enough tokens are banked gave three streams of 100-byte writes 91 % of the bandwidth and a
stream of 4 KB chunks 9 %). ``rate=None`` passes everything through and counts it, so a test can
measure what the unthrottled traffic needs before choosing a fraction of it; ``rate=0`` passes
nothing until it changes.

What a client writes beyond the rate waits in its own socket's send buffer, which on loopback
grows to 4 MB (``net.ipv4.tcp_wmem``), ahead of whatever it writes next: a link with a deep
queue, where a request's latency is the backlog ahead of it, and the bytes of a request
abandoned at its deadline still take their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

CHUNK = 4096
#: Idle link time (seconds) that may be spent at once later: one second's worth of bytes.
BURST = 1.0
#: How often a chunk waiting for its turn looks whether ``rate`` changed (seconds).
RECHECK = 0.25


class ThrottleProxy:
    """Listen on ``127.0.0.1:port`` and forward to ``target`` (``host:port``)."""

    def __init__(self, target: str, port: int = 0) -> None:
        host, _, target_port = target.rpartition(":")
        self.target = (host, int(target_port))
        self.port = port
        #: Bytes per second across both directions; None: unlimited.
        self.rate: float | None = None
        #: Bytes passed, both directions, and of those the ones sent towards ``target``.
        self.bytes = 0
        self.upstream = 0
        #: When the link is next free (monotonic seconds): each chunk books its time after it.
        self._free_at = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False
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
        """Stop listening, drop every connection and end the proxy's thread."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def throughput(self, seconds: float) -> float:
        """Bytes per second passed over the next ``seconds`` (blocks the caller)."""
        before = self.bytes
        time.sleep(seconds)
        return (self.bytes - before) / seconds

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        # Each connection's pipes end once their transports are gone (the server's callback
        # would log a cancelled handler as an error, so they are left to finish).
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self._writers.add(client_w)
        try:
            try:
                server_r, server_w = await asyncio.open_connection(*self.target)
            except OSError:
                client_w.close()
                return
            self._writers.add(server_w)
            try:
                await asyncio.gather(
                    self._pipe(client_r, server_w, upstream=True),
                    self._pipe(server_r, client_w, upstream=False),
                )
            finally:
                self._writers.discard(server_w)
        finally:
            self._writers.discard(client_w)
            self._handlers.discard(handler)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self._take(len(data))
                self.bytes += len(data)
                if upstream:
                    self.upstream += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _take(self, size: int) -> None:
        """Wait for this chunk's turn on the link: after every chunk that arrived before it,
        ``size / rate`` seconds of its own (at most ``BURST`` of idle time banked)."""
        while (rate := self.rate) is not None and rate <= 0 and not self._closing:
            await asyncio.sleep(RECHECK)
        if rate is None or self._closing:
            return
        self._free_at = max(self._free_at, time.monotonic() - BURST) + size / rate
        due = self._free_at
        # Lifting the limit releases the chunks already waiting; a new rate applies to the
        # chunks that arrive after it (each waits for at most one CHUNK already booked).
        while self.rate is not None and not self._closing and (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(min(wait, RECHECK))
