"""Every WebSocket close code the gateway uses, in one table.

Decisions name a code (``CloseCode.SESSION_EXPIRED``); the socket edge sends its number.
``tests/contract/test_protocol_description.py`` holds this table, the close codes of
``protocol.json`` beside it (with what the clients do on each) and docs/protocol.md's table equal.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """Close codes, RFC 6455's and the gateway's own (4000-4999, HTTP-like)."""

    #: The client or the gateway ended the socket normally.
    NORMAL = 1000
    #: A socket on a path the gateway does not serve, or from a foreign browser origin.
    POLICY_VIOLATION = 1008
    #: A frame larger than ``WS_MAX_MESSAGE_BYTES``.
    MESSAGE_TOO_BIG = 1009
    #: The gateway failed handling the socket.
    INTERNAL_ERROR = 1011
    #: The instance is shutting down (a deploy or a scale-in): reconnect.
    SERVICE_RESTART = 1012
    #: The user id in the socket's path is not a valid Firebase uid.
    INVALID_USER_ID = 4400
    #: No ID token, or an invalid, expired or revoked one.
    UNAUTHENTICATED = 4401
    #: A valid ID token, for another user.
    FORBIDDEN = 4403
    #: The user's session expired: no pong for ``PONG_TIMEOUT`` (after the ``timeout`` message).
    SESSION_EXPIRED = 4408
    #: Signed out by the service (after the ``signed_out`` message).
    SIGNED_OUT = 4410
    #: A limit was exceeded: messages per second, sockets per user, connection attempts.
    RATE_LIMITED = 4429
