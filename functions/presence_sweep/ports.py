"""What the sweep works with, as interfaces (the stores, Firebase Auth, the gateway
callback, the instance registry, the presence events' topic), and the report it returns.
``presence_sweep.adapters`` and ``presence_sweep.reaper_adapters`` hold the real
implementations; the tests' fakes implement the same protocols."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from presence_sweep.decision import ClaimDecision, InstanceEntry, SessionRef
from presence_sweep.presence import PresenceEvent


class MemberStore(Protocol):
    def expired_page(
        self, cutoff: datetime, limit: int, after: Any | None
    ) -> tuple[list[str], Any | None]:
        """User ids of signed-in members with last_pong_at < cutoff, oldest first, and a
        cursor for the next page (None when this was the last)."""

    def claim(
        self,
        user_ids: Sequence[str],
        sweep_id: str,
        cutoff: datetime,
        now: datetime,
        claim_ttl: float,
        allowances: Mapping[str, float] | None = None,
    ) -> dict[str, ClaimDecision]:
        """Claim those still expired on a fresh read (``decision.decide_claim``), giving the
        users of lagging instances their ``allowances``."""

    def release(self, user_ids: Sequence[str], sweep_id: str) -> None: ...

    def finalize(
        self, user_ids: Sequence[str], sweep_id: str, now: datetime
    ) -> tuple[list[str], list[SessionRef]]:
        """Sign out the members this sweep claimed; return them and their active sessions."""


class AuthBackend(Protocol):
    def revoke(self, user_id: str) -> bool:
        """Revoke the user's refresh tokens; False when Auth has no such user.
        Raises AuthRevokeError on failure."""


class InstanceDirectory(Protocol):
    def entries(self, instance_ids: Sequence[str]) -> dict[str, InstanceEntry]:
        """Each registered instance's entry (last heartbeat, None for one that has stopped;
        internal URL), in one read; ids with no registry entry are absent."""

    def recent(self, since: datetime) -> dict[str, InstanceEntry]:
        """The entries of instances with a heartbeat at or after ``since``, by id."""


class Notifier(Protocol):
    def notify(self, internal_url: str, sessions: Sequence[SessionRef], now: datetime) -> int:
        """Ask one gateway instance to send the timeout and close; return sockets closed.
        Raises CallbackError on failure."""


class LostInstanceStore(Protocol):
    """What the reaper (``presence_sweep.reaper``) reads and writes for a lost instance."""

    def active_sessions_on(
        self, instance_id: str, limit: int, after: Any | None
    ) -> tuple[list[SessionRef], Any | None]:
        """Up to ``limit`` sessions still marked active on the instance, in id order after
        ``after``, and a cursor for the next page (None when this was the last)."""

    def settle(
        self, user_ids: Sequence[str], instance_id: str, at: datetime
    ) -> list[PresenceEvent]:
        """In one transaction, take the instance out of each user's holders record
        (``presence.decide`` with count 0, reason ``instance_lost``, at ``at``) and merge the
        public presence that changed; return the transitions, once committed."""

    def end_sessions(self, sessions: Sequence[SessionRef], at: datetime) -> None:
        """Mark the sessions ended at ``at`` (no close code) and remove each from its member's
        ``active_sessions``."""


class EventPublisher(Protocol):
    def publish(self, events: Sequence[PresenceEvent]) -> None:
        """Publish the events to ``PRESENCE_EVENTS_TOPIC``. Raises PublishError on failure."""


@dataclass
class SweepReport:
    sweep_id: str
    started_at: datetime
    cutoff: datetime
    examined: int = 0
    signed_out: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    auth_user_missing: int = 0
    auth_failures: int = 0
    callbacks: int = 0
    callback_failures: int = 0
    #: Callbacks not attempted, by reason (stale registry entry, failed earlier in the run).
    callbacks_skipped: Counter[str] = field(default_factory=Counter)
    sockets_closed: int = 0
    sessions_signed_out: int = 0
    duration_seconds: float = 0.0
    signed_out_users: list[str] = field(default_factory=list)
    #: Lost instances whose active sessions this run ended (``presence_sweep.reaper``).
    instances_reaped: int = 0
    sessions_reaped: int = 0
    #: Users the reaper turned offline (their last socket was on a lost instance).
    users_offline: int = 0
    presence_events_published: int = 0
    #: Events Pub/Sub did not take: logged, never published again.
    presence_event_failures: int = 0
    #: Registry reads or instances the reaper could not finish; the next run retries them.
    reap_failures: int = 0
    #: Lost instances left for a later run because every instance looked stale at once.
    reaps_deferred: int = 0
    #: Seconds spent in each phase (reap, query, claim, revoke, finalize, callbacks), summed
    #: over pages: with pages in flight at once, their sum may exceed ``duration_seconds``.
    #: They say where a slow run's time went (the emulator's collection scans, Auth, ...).
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` to the phase's total."""
        self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + seconds

    @property
    def ok(self) -> bool:
        """False when something must be retried (Cloud Scheduler should see a failure)."""
        return self.auth_failures == 0 and self.callback_failures == 0

    def add(self, page: SweepReport) -> None:
        """Fold one page's counts into this run's report."""
        self.signed_out += page.signed_out
        self.skipped.update(page.skipped)
        self.auth_user_missing += page.auth_user_missing
        self.auth_failures += page.auth_failures
        self.callbacks += page.callbacks
        self.callback_failures += page.callback_failures
        self.callbacks_skipped.update(page.callbacks_skipped)
        self.sockets_closed += page.sockets_closed
        self.sessions_signed_out += page.sessions_signed_out
        self.signed_out_users.extend(page.signed_out_users)
        for phase, seconds in page.phase_seconds.items():
            self.timed(phase, seconds)

    def summary(self) -> dict[str, Any]:
        return {
            "sweep_id": self.sweep_id,
            "cutoff": self.cutoff.isoformat(),
            "examined": self.examined,
            "signed_out": self.signed_out,
            "skipped": dict(self.skipped),
            "auth_user_missing": self.auth_user_missing,
            "auth_failures": self.auth_failures,
            "sessions_signed_out": self.sessions_signed_out,
            "callbacks": self.callbacks,
            "callback_failures": self.callback_failures,
            "callbacks_skipped": dict(self.callbacks_skipped),
            "sockets_closed": self.sockets_closed,
            "instances_reaped": self.instances_reaped,
            "sessions_reaped": self.sessions_reaped,
            "users_offline": self.users_offline,
            "presence_events_published": self.presence_events_published,
            "presence_event_failures": self.presence_event_failures,
            "reap_failures": self.reap_failures,
            "reaps_deferred": self.reaps_deferred,
            "duration_seconds": round(self.duration_seconds, 3),
            "phase_seconds": {k: round(v, 3) for k, v in sorted(self.phase_seconds.items())},
            "ok": self.ok,
        }
