"""Errors raised by the sweep.

Hierarchy::

    SweepError
    ├── SweepConfigError   a setting is missing or invalid (names the variable)
    ├── AuthRevokeError    Firebase Auth refused or failed to revoke a user's tokens
    ├── CallbackError      a gateway instance did not accept the timeout callback
    ├── PublishError       Pub/Sub did not take a batch of presence events
    └── SweepFailed        the run finished but something must be retried (the scheduled
                           entry point raises it so Cloud Scheduler sees a non-2xx and retries)
"""

from __future__ import annotations


class SweepError(Exception):
    """Base class of the sweep's errors."""


class SweepConfigError(SweepError):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


class AuthRevokeError(SweepError):
    """Revoking a user's refresh tokens failed; the user stays signed in for the next sweep."""


class CallbackError(SweepError):
    """A gateway instance could not be told to close sockets."""


class PublishError(SweepError):
    """Pub/Sub refused or failed to take presence events; they are not published again (the
    transitions they describe are already in Firestore)."""


class SweepFailed(SweepError):
    """The sweep ran but left work for a retry (see the report in the message)."""
