"""What the client does when a socket closes: the close codes, the client's states and the
reconnect schedule.

:func:`decide_close` is the close-code table of the JavaScript client (clients/js/README.md,
"Close codes") as a pure function of the code and the backoff counters, so that it is tested
without a socket, a clock or an event loop (``tests/unit/test_presence_client.py``); each
code's reaction is the ``client`` entry of gateway/protocol/protocol.json, which
``tests/contract/test_protocol_clients.py`` holds it to. Times are in seconds (the JavaScript
client's are in milliseconds; the rules are the same).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum

Random = Callable[[], float]


class CloseCode(IntEnum):
    """Close codes: the gateway's (gateway/protocol/protocol.json, docs/protocol.md), and the
    three a WebSocket reports on its own (1001, 1005, 1006)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    NO_STATUS = 1005
    ABNORMAL = 1006
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    INVALID_USER_ID = 4400
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403
    #: 4403's older name, kept for applications that use it (an alias of FORBIDDEN).
    WRONG_USER = 4403
    SESSION_EXPIRED = 4408
    SIGNED_OUT = 4410
    RATE_LIMITED = 4429


class State(StrEnum):
    """The client's states; ``signed_out``, ``auth_error`` and ``closed`` are terminal: nothing
    reconnects until the application calls ``start()`` again."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    SIGNED_OUT = "signed_out"
    AUTH_ERROR = "auth_error"
    CLOSED = "closed"


TERMINAL_STATES = frozenset({State.SIGNED_OUT, State.AUTH_ERROR, State.CLOSED})
ACTIVE_STATES = frozenset({State.CONNECTING, State.CONNECTED, State.RECONNECTING})
SIGNED_OUT_REASON = "signed out for inactivity"
#: The reason when the service signed the user out (``signed_out`` message, close 4410).
SIGNED_OUT_BY_SERVICE_REASON = "signed out by the service"

# A clean close with one of these codes means the gateway read none of the frames it did not
# acknowledge: it acks a message before handing it to the application, and an ack is sent
# before the close frame on the same ordered stream. Unacknowledged messages are resent.
RESEND_AFTER = frozenset({1000, 1001, 1005, 1012, 4401, 4429})

# 0.5 s * 2**64 is far beyond any sensible maximum; capping the exponent keeps the float finite
# after an outage of thousands of attempts (2.0 ** 1100 raises OverflowError).
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class Backoff:
    """The reconnect schedule, in seconds (the JavaScript client's ``backoff`` option)."""

    #: The first reconnect's delay cap; doubles with each failed attempt.
    minimum: float = 0.5
    #: The largest delay cap.
    maximum: float = 20.0
    #: Floor added to the delay after a 4429 (the gateway said: too many).
    rate_limited: float = 5.0
    #: After a 1012 (an instance draining), reconnect within ``random() * restart_jitter``.
    restart_jitter: float = 2.0
    #: A connection up this long (or that got a ping) resets the backoff.
    reset_after: float = 10.0


def backoff_delay(
    attempt: int, minimum: float = 0.5, maximum: float = 20.0, random: Random = _random.random
) -> float:
    """Full-jitter exponential backoff: ``random() * min(maximum, minimum * 2**attempt)``."""
    cap = min(maximum, minimum * 2.0 ** min(max(0, attempt), _MAX_EXPONENT))
    return random() * cap


class Action(StrEnum):
    """What the client does after a socket closed."""

    RECONNECT = "reconnect"
    SIGN_OUT = "sign_out"
    AUTH_ERROR = "auth_error"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class CloseDecision:
    """The reaction to one close (:func:`decide_close`)."""

    action: Action
    #: Seconds before the next connection attempt (``RECONNECT`` only).
    delay: float | None = None
    #: The next connection asks ``get_token(True)`` (after a first 4401).
    force_refresh: bool = False
    #: The backoff counter to carry into the next attempt.
    attempt: int = 0
    #: A forced token refresh has been spent on a 4401 (a second 4401 is final).
    auth_retried: bool = False
    #: Unacknowledged messages go back to the buffer (the gateway did not handle them);
    #: otherwise they fail with ``maybe_delivered``.
    resend_unacked: bool = False
    #: An ``error`` event to emit (``invalid_user_id`` after 4400).
    error_code: str | None = None


def decide_close(
    code: int,
    *,
    attempt: int,
    auth_retried: bool,
    stable: bool = False,
    reconnect: bool = True,
    closed_by_app: bool = False,
    backoff: Backoff = Backoff(),  # frozen: one shared default is safe
    random: Random = _random.random,
) -> CloseDecision:
    """The reaction to a socket closed with ``code``: the close-code table of the JavaScript
    client (clients/js/README.md, "Close codes").

    ``attempt`` counts consecutive failed connections, ``auth_retried`` says whether a forced
    token refresh was already spent on a 4401, ``stable`` whether the connection that closed
    worked (got a ping or stayed up ``backoff.reset_after``): it earns a fresh start.
    """
    if stable:
        attempt, auth_retried = 0, False
    resend = code in RESEND_AFTER
    if closed_by_app:
        return CloseDecision(Action.STOP, attempt=attempt, auth_retried=auth_retried)
    if code in (CloseCode.SESSION_EXPIRED, CloseCode.SIGNED_OUT):
        return CloseDecision(Action.SIGN_OUT, attempt=attempt, auth_retried=auth_retried)
    if code == CloseCode.FORBIDDEN:
        return CloseDecision(Action.AUTH_ERROR, attempt=attempt, auth_retried=auth_retried)
    if code == CloseCode.INVALID_USER_ID:
        return CloseDecision(
            Action.STOP, attempt=attempt, auth_retried=auth_retried, error_code="invalid_user_id"
        )
    if code == CloseCode.UNAUTHENTICATED and auth_retried:
        # The forced refresh did not help: only signing in again will.
        return CloseDecision(Action.AUTH_ERROR, attempt=attempt, auth_retried=True)
    if not reconnect:
        return CloseDecision(
            Action.STOP, attempt=attempt, auth_retried=auth_retried, resend_unacked=resend
        )
    if code == CloseCode.UNAUTHENTICATED:
        # Probably an expired or revoked token: one immediate try with a forced refresh.
        return CloseDecision(
            Action.RECONNECT,
            delay=0.0,
            force_refresh=True,
            attempt=attempt,
            auth_retried=True,
            resend_unacked=resend,
        )
    if code == CloseCode.RATE_LIMITED:
        delay = backoff.rate_limited + backoff_delay(
            attempt, backoff.minimum, backoff.maximum, random
        )
        return CloseDecision(
            Action.RECONNECT,
            delay=delay,
            attempt=attempt + 1,
            auth_retried=auth_retried,
            resend_unacked=resend,
        )
    if code == CloseCode.SERVICE_RESTART:
        # A draining instance closes all its sockets at once: spread their return, and do not
        # count it as a failure (the backoff does not grow).
        return CloseDecision(
            Action.RECONNECT,
            delay=random() * backoff.restart_jitter,
            attempt=attempt,
            auth_retried=auth_retried,
            resend_unacked=resend,
        )
    return CloseDecision(
        Action.RECONNECT,
        delay=backoff_delay(attempt, backoff.minimum, backoff.maximum, random),
        attempt=attempt + 1,
        auth_retried=auth_retried,
        resend_unacked=resend,
    )


def is_stable(got_ping: bool, uptime: float | None, reset_after: float) -> bool:
    """Whether a connection proved itself: a ping means the gateway accepted the token; a
    socket refused at once (opened, then 4401) must keep backing off."""
    return got_ping or (uptime is not None and uptime >= reset_after)
