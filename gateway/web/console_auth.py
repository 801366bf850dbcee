"""Who may use the console and the REST API besides the admin token: with ``CONSOLE_ENABLED``,
a Firebase ID token whose claims carry ``admin: true`` (docs/console.md).

Each such token costs a Firebase Auth call (its revocation check), so an answer is remembered
for ``REMEMBER_SECONDS``: a console polling every two seconds makes one call per token per
ten seconds, and an admin whose claim was removed or who was signed out is refused within
that. Refusals are remembered too, so a client repeating a bad token costs no call each time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

#: How long a token's verdict is reused before it is checked again.
REMEMBER_SECONDS = 10.0
#: Verdicts remembered at most; past it they are all forgotten at once (they are cheap to
#: redo, and the bound keeps a flood of distinct tokens from growing memory).
MAX_REMEMBERED = 1_024

#: Checks a token: the admin's uid, or None when it is not an admin's.
AdminCheck = Callable[[str], Awaitable[str | None]]


class AdminTokens:
    """Verdicts on admin-claim tokens, remembered for a while."""

    def __init__(self, check: AdminCheck, clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self._clock = clock
        self._verdicts: dict[str, tuple[float, str | None]] = {}
        #: Tokens checked with Firebase Auth (not answered from memory).
        self.checks = 0

    async def admin(self, token: str) -> str | None:
        """The admin's uid for ``token``, or None."""
        now = self._clock()
        remembered = self._verdicts.get(token)
        if remembered is not None and now < remembered[0]:
            return remembered[1]
        self.checks += 1
        uid = await self._check(token)
        if len(self._verdicts) >= MAX_REMEMBERED:
            self._verdicts.clear()
        self._verdicts[token] = (now + REMEMBER_SECONDS, uid)
        return uid
