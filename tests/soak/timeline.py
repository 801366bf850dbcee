"""What the soak records and what its checks answer: each user's timeline of events, and the
violations found. Plain data, shared by the checkers and the harness."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Roles in the population.
STEADY = "steady"  # answers every ping, stays connected (some refresh their token)
SILENT = "silent"  # answers, then goes silent on purpose and must be signed out
CHURN = "churn"  # answers every ping, closes and connects again now and then
DURABLE = "durable"  # answers every ping, holds a durable stream (recover=True)
ROOM = "room"  # answers every ping, is in a room
ROLES = (STEADY, SILENT, CHURN, DURABLE, ROOM)
#: Roles whose clients answer every ping for the whole run (invariant 1).
ANSWERING = frozenset({STEADY, CHURN, DURABLE, ROOM})

# Event kinds in a timeline (``Event.kind``).
CONNECTED = "connected"
DISCONNECTED = "disconnected"  # detail: code, reason
SIGNED_OUT = "signed_out"  # detail: code, message
AUTH_ERROR = "auth_error"  # detail: code
WENT_SILENT = "went_silent"
CLOSED = "closed"  # the population closed the client itself (churn, the end)
JOINED = "joined"  # detail: room
STREAM = "stream"  # detail: epoch, offset, seq
RECOVERY = "recovery"  # detail: recovered, epoch, offset
ROOM_MESSAGE = "room_message"  # detail: room, seq
REFRESHED = "token_refreshed"


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"t={self.t:7.2f}s {self.kind} {extra}".rstrip()


@dataclass(slots=True)
class Timeline:
    """One user's client as the population saw it (times in seconds from the run's start)."""

    user: str
    role: str
    events: list[Event] = field(default_factory=list)

    def add(self, t: float, kind: str, **detail: Any) -> None:
        self.events.append(Event(t, kind, detail))

    def of(self, *kinds: str) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    def describe(self) -> str:
        lines = [f"user {self.user} ({self.role}):"]
        lines += [f"  {e.describe()}" for e in self.events]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: int
    message: str
    user: str | None = None
    t: float | None = None

    def describe(self) -> str:
        when = f"t={self.t:.2f}s" if self.t is not None else "at the end"
        who = self.user or "-"
        return f"[{self.invariant}] {when} user {who}: {self.message}"


@dataclass(slots=True)
class Outcome:
    """A checker's answer: how many checks it made and what broke."""

    checks: int = 0
    violations: list[Violation] = field(default_factory=list)
    #: What the checker saw that the gateway's documented design allows but the invariant's
    #: strict reading would not (printed under the table, not counted as violations).
    notes: list[str] = field(default_factory=list)

    def check(self, ok: bool, violation: Violation) -> None:
        self.checks += 1
        if not ok:
            self.violations.append(violation)

    def merge(self, other: Outcome) -> Outcome:
        self.checks += other.checks
        self.violations.extend(other.violations)
        self.notes.extend(other.notes)
        return self
