"""Errors raised by the gateway package.

Hierarchy::

    GatewayError
    ├── ConfigError            a setting is missing or invalid (raised at start-up)
    ├── ProtocolError          a client frame cannot be accepted (mapped to an error reply
    │                          or a close code by the socket edge)
    ├── AuthError              a socket's credentials are missing, invalid, revoked or for
    │                          another user (mapped to close code 4401 or 4403)
    ├── UserNotConnectedError  a REST call targets a user with no socket in the deployment
    │                          (mapped to 404)
    ├── DeploymentUnavailable  the deployment-wide answer needs Firestore or the message
    │                          broker, and it cannot be reached (mapped to 503)
    └── WriteRejected          Firestore refused a commit as invalid, not as unavailable:
                               sent again unchanged it can never land (the write-behind
                               buffer isolates and drops the write at fault)

Only the edges (the socket handler, the REST controllers) turn these into close codes and
HTTP statuses; the core raises and returns plain values.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(GatewayError):
    """A setting read from the environment is missing or invalid.

    The message always names the environment variable, so a failed start says what to fix.
    """

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


class ProtocolError(GatewayError):
    """A client frame broke the socket protocol.

    ``code`` is the machine-readable error code sent in ``{"type": "error", "code": ...}``;
    ``close_code`` is set when the socket must be closed instead of answered.
    """

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


class AuthError(GatewayError):
    """A socket may not be opened (or kept open) with the credentials it presented.

    ``close_code`` is 4401 (no valid credentials) or 4403 (valid, but for another user);
    ``reason`` is the short text sent in the close frame.
    """

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


class UserNotConnectedError(GatewayError):
    """The user has no open socket on any live gateway instance."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"User {user_id!r} is not connected")
        self.user_id = user_id


class DeploymentUnavailable(GatewayError):
    """The deployment-wide answer needs Firestore or the message broker, which did not answer."""


class WriteRejected(GatewayError):
    """Firestore refused a commit because of what it holds (a value out of range, a field it
    cannot store), as opposed to being unreachable or overloaded.

    Retrying the same commit can never succeed, so the writer must not treat it like an
    outage: it splits the batch until the write at fault is alone, and drops that one."""
