"""The sweep's decisions, pure: whether a member may be claimed for sign-out, and where each
signed-out session's gateway is called. ``presence_sweep.core`` runs them against the stores."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from presence_sweep.schema import (
    ACTIVE_SESSIONS,
    INSTANCE_ID,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    SIGN_OUT_CLAIM,
    SIGN_OUT_CLAIMED_AT,
)

#: A live instance whose oldest unwritten pong has waited longer than this is *lagging*: its
#: users' stored last_pong_at may be older than their real last pong by about that much. A
#: healthy instance's backlog is one flush interval (0.2 s by default).
LAGGING_AFTER_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class SessionRef:
    """An active socket session of a user being signed out, and the instance holding it."""

    user_id: str
    session_id: str
    instance_id: str
    #: The instance's URL as an older gateway recorded it on the member; "" on entries written
    #: now, whose instance is found in the registry (``InstanceEntry``) instead.
    legacy_url: str = ""


@dataclass(frozen=True, slots=True)
class InstanceEntry:
    """A gateway instance's registry entry (``gateway_instances``) as the sweep reads it."""

    #: The last heartbeat; None when the instance stopped or never beat.
    heartbeat: datetime | None
    #: Where the instance takes callbacks; "" when the entry has none.
    internal_url: str = ""
    #: How long its oldest unwritten pong had waited at that heartbeat (seconds).
    pong_backlog: float = 0.0


def lag_allowances(
    entries: Mapping[str, InstanceEntry], now: datetime, stale_before: datetime
) -> dict[str, float]:
    """Seconds of grace for the users of each live instance whose records lag: its pong
    backlog at its last heartbeat, plus the time since (the backlog may have grown by that
    much meanwhile). A dead instance gets none: its users' sockets died with it."""
    return {
        instance_id: entry.pong_backlog + (now - entry.heartbeat).total_seconds()
        for instance_id, entry in entries.items()
        if entry.heartbeat is not None
        and entry.heartbeat >= stale_before
        and entry.pong_backlog > LAGGING_AFTER_SECONDS
    }


@dataclass(frozen=True, slots=True)
class ClaimDecision:
    claim: bool
    reason: str  # "expired" when claimed; otherwise why the user is skipped


def decide_claim(
    member: Mapping[str, Any] | None,
    cutoff: datetime,
    now: datetime,
    claim_ttl: float,
    allowances: Mapping[str, float] | None = None,
) -> ClaimDecision:
    """Whether a sweep may claim this member for sign-out, judged on a fresh read.

    ``allowances`` (``lag_allowances``): a member held by a live instance whose records lag is
    given that much longer, so a Firestore that cannot keep up never gets a user who answers
    every ping signed out."""
    if member is None:
        return ClaimDecision(False, "member_deleted")
    if member.get(IS_SIGNED_IN) is not True:
        return ClaimDecision(False, "already_signed_out")
    last = member.get(LAST_PONG_AT)
    if not isinstance(last, datetime):
        return ClaimDecision(False, "no_last_pong")
    if last >= cutoff:
        return ClaimDecision(False, "pong_arrived")
    grace = max((allowances or {}).get(i, 0.0) for i in _instances_of(member))
    if grace and last >= cutoff - timedelta(seconds=grace):
        return ClaimDecision(False, "instance_lagging")
    claimed_at = member.get(SIGN_OUT_CLAIMED_AT)
    if (
        member.get(SIGN_OUT_CLAIM)
        and isinstance(claimed_at, datetime)
        and now - claimed_at < timedelta(seconds=claim_ttl)
    ):
        return ClaimDecision(False, "claimed_by_other_sweep")
    return ClaimDecision(True, "expired")


def group_by_instance(
    sessions: Iterable[SessionRef], urls: Mapping[str, str], gateway_url: str = ""
) -> tuple[dict[str, list[SessionRef]], set[str]]:
    """Sessions grouped by the URL to call, and the instances no URL is known for.

    The URL is ``gateway_url`` for all when set (the service URL, any instance answers), else
    the instance's internal URL from the registry (``urls``, by instance id), else the one an
    older gateway recorded with the session: the registry's is the instance's current one."""
    grouped: dict[str, list[SessionRef]] = {}
    unaddressed: set[str] = set()
    for ref in sessions:
        url = gateway_url or urls.get(ref.instance_id) or ref.legacy_url
        if url:
            grouped.setdefault(url, []).append(ref)
        else:
            unaddressed.add(ref.instance_id)
    return grouped, unaddressed


def _instances_of(member: Mapping[str, Any]) -> set[str]:
    """The instances that may hold the member's sockets: the last one it connected to, and
    each of its recorded sessions'."""
    found = {str(member.get(INSTANCE_ID, ""))}
    sessions = member.get(ACTIVE_SESSIONS)
    if isinstance(sessions, Mapping):
        found.update(
            str(where.get(INSTANCE_ID, ""))
            for where in sessions.values()
            if isinstance(where, Mapping)
        )
    return found
