"""Token decisions: when a Firebase ID token expires, when to refresh it on the live socket,
whether ``get_token`` handed back anything new, and what to do when the gateway refuses it.

Pure functions over token strings and epoch seconds; :mod:`presence_client.refresh` carries
them out with a timer and the socket.
"""

from __future__ import annotations

import base64
import binascii
import json
import math


def on_invalid_token(pending_forced: bool) -> str:
    """After an ``invalid_token`` answer to our ``auth`` frame: ``"force"`` (ask
    ``get_token(True)`` at once) unless that was already a forced token, then ``"later"``
    (retry after ``token_retry_delay``; no tight loop: the gateway closes with 4401 after
    ``TOKEN_GRACE``, which takes the reconnect path)."""
    return "later" if pending_forced else "force"


def token_expiry(token: str | None) -> float | None:
    """The ``exp`` claim of a JWT in epoch seconds, or None. Not verified: the gateway verifies."""
    if not isinstance(token, str):
        return None
    parts = token.split(".")
    if len(parts) < 2:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    # bool is an int in Python; a JWT's exp is never a boolean.
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


def refresh_delay(expires_at: float, now: float, lead: float = 300.0) -> float:
    """Seconds to wait before refreshing a token that expires at ``expires_at``: ``lead``
    before expiry, or halfway through what is left when less than twice ``lead`` is left."""
    left = expires_at - now
    if left <= 0:
        return 0.0
    return left - lead if left > 2 * lead else left / 2


def token_is_stale(token: str | None, current: str | None, current_expiry: float | None) -> bool:
    """Whether ``get_token`` handed back nothing newer than the socket's token (Firebase returns
    its cached token until shortly before expiry): then the refresh asks again, forced."""
    if token == current:
        return True
    expiry = token_expiry(token)
    return expiry is not None and current_expiry is not None and expiry <= current_expiry
