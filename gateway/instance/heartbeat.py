"""The heartbeat: a JSON ping to every socket every ``PING_INTERVAL``, and one to each socket
as it is accepted.

A round encodes its frame once and writes the same bytes to every socket
(``Connection.push_frame``; a server's frames are not masked), yielding every ``SEND_CHUNK``
sockets so pongs keep flowing. A socket just accepted gets the latest ping at once instead of
waiting up to ``PING_INTERVAL``: its client learns that its token was taken, and its pong starts
its clock.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.edge.framing import text_frame
from gateway.instance.registry import Connection, Registry
from gateway.protocol import messages
from gateway.protocol.messages import utc_now

logger = logging.getLogger("gateway.instance.heartbeat")

#: Sockets pinged between two yields to the event loop.
SEND_CHUNK = 256
#: How long an encoded ping may be reused for sockets being admitted: a storm of connects then
#: shares one frame a second instead of encoding one each, and a timestamp is never staler.
ADMISSION_PING_REUSE = 1.0
#: Ping generations whose time is remembered (``answered_at``): at PING_INTERVAL=30 s, over
#: eight hours, past any PONG_TIMEOUT worth having.
REMEMBERED_ROUNDS = 1_000


class Heartbeat:
    """Pings the sockets of one instance's registry."""

    def __init__(self, registry: Registry, interval: float) -> None:
        self.registry = registry
        #: PING_INTERVAL, seconds.
        self.interval = interval
        self.pings_sent = 0
        #: The latest ping (its text and frame) and when it was encoded (loop-independent
        #: monotonic seconds): the round's, or one made for sockets being admitted.
        self._ping: tuple[str, bytes] | None = None
        self._ping_at = 0.0
        #: Counts the pings encoded: a pong is written once per generation per socket
        #: (``PresenceService.pong``), so pongs nobody asked for cost no Firestore writes.
        self.generation = 0
        #: Epoch seconds each recent generation's ping was encoded.
        self._round_times: dict[int, float] = {}

    async def run(self) -> None:
        """Ping every socket every PING_INTERVAL, until cancelled."""
        loop = asyncio.get_running_loop()
        interval = self.interval
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            started = loop.time()
            try:
                await self.ping_round()
            except Exception:
                logger.exception("ping round failed")
            took = loop.time() - started
            next_at += interval
            if next_at < loop.time():
                # Behind schedule: start the next round now rather than bursting to catch up.
                if took > interval:
                    logger.warning(
                        "ping round took %.2fs, longer than PING_INTERVAL=%gs", took, interval
                    )
                next_at = loop.time()

    def _current_ping(self, fresh: bool) -> tuple[str, bytes]:
        """The ping to send now, as text and as a frame: a new one for a round (``fresh``),
        else the latest if it is under ``ADMISSION_PING_REUSE`` seconds old."""
        now = time.monotonic()
        if fresh or self._ping is None or now - self._ping_at > ADMISSION_PING_REUSE:
            text = messages.encode_ping(utc_now())
            self._ping, self._ping_at = (text, text_frame(text)), now
            self.generation += 1
            self._round_times[self.generation] = time.time()
            if len(self._round_times) > REMEMBERED_ROUNDS:
                del self._round_times[next(iter(self._round_times))]
        return self._ping

    def answered_at(self, generation: int) -> float | None:
        """When the ping of ``generation`` was sent (epoch seconds): a socket whose
        ``pong_round`` it is last answered at that moment plus its round trip, which tells the
        console its last pong without a clock read on the pong path. None when unknown."""
        return self._round_times.get(generation)

    async def first_ping(self, conn: Connection) -> bool:
        """Ping a socket just accepted, so that it need not wait up to PING_INTERVAL for the
        next round: a client learns at once that its token was taken, and its pong (merged
        in the write-behind buffer with the connect's own member write) starts its clock.
        The rounds carry on as before; one may follow within moments."""
        text, frame = self._current_ping(fresh=False)
        written = conn.push_frame(frame)
        sent = await conn.push(text) if written is None else written
        self.pings_sent += sent
        return sent

    async def ping_round(self) -> int:
        """Send one ping to every socket; return how many took it."""
        if not self.registry.total_connections:
            return 0
        text, frame = self._current_ping(fresh=True)
        sent = 0
        for index, conn in enumerate(list(self.registry), 1):
            written = conn.push_frame(frame)
            sent += await conn.push(text) if written is None else written
            if index % SEND_CHUNK == 0:
                # wsproto sends complete without suspending: yield so pongs keep flowing.
                await asyncio.sleep(0)
        self.pings_sent += sent
        return sent
