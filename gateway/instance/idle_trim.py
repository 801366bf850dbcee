"""Give memory back to the system once an instance has no sockets left.

When a crowd of sockets leaves, CPython keeps their cyclic garbage until a full collection
(which, with the young generation's threshold of 20,000 objects, can be a long time on an idle
instance), and glibc keeps freed heap pages in its arenas rather than returning them. Neither
is a leak, but both read as one: the chaos soak measured instances 10 to 12 % above their
idle baseline after the population left, and a full collection plus ``malloc_trim(0)`` took
them to within 6 % (docs/soak.md). An instance with no sockets has nobody to pause, so that is
when it collects and trims: once per idle spell, after the spell has lasted ``SETTLE`` seconds.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("gateway")

#: How long the instance must have held no socket before it trims (a reconnect wave often
#: follows a disconnect within a second or two, and trimming then would be wasted work).
SETTLE = 2.0
#: How often the loop looks at the socket count.
EVERY = 1.0


@dataclass
class IdleSpell:
    """Decides when to trim: once after sockets were seen, when none have been open for
    ``settle`` seconds. Pure: it is told the count and the time."""

    settle: float = SETTLE
    _busy: bool = False
    _idle_since: float | None = None

    def observe(self, sockets: int, now: float) -> bool:
        """Whether to trim now, given the instance's socket count at ``now``."""
        if sockets > 0:
            self._busy, self._idle_since = True, None
            return False
        if not self._busy:
            return False  # trimmed already this spell, or never held a socket
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.settle:
            return False
        self._busy, self._idle_since = False, None
        return True


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, loaded once (also what the soak's memory probe reads glibc through)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    return getattr(libc(), "malloc_trim", None)


async def release_memory() -> None:
    """A full collection, then glibc's trim (in a thread: ctypes releases the GIL for it)."""
    collected = gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        await asyncio.to_thread(trim, 0)
    logger.debug("idle: collected %d objects, trimmed=%s", collected, trim is not None)


async def trim_when_idle(sockets: Callable[[], int], spell: IdleSpell | None = None) -> None:
    """Run until cancelled: trim once per idle spell (``IdleSpell``)."""
    spell = spell or IdleSpell()
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(EVERY)
        if spell.observe(sockets(), loop.time()):
            try:
                await release_memory()
            except Exception:
                logger.exception("idle memory release failed")
