"""The sweep's decisions, pure: whether a member may be claimed for sign-out, and where each
signed-out session's gateway is called. ``presence_sweep.core`` runs them against the stores."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from presence_sweep.schema import IS_SIGNED_IN, LAST_PONG_AT, SIGN_OUT_CLAIM, SIGN_OUT_CLAIMED_AT


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


@dataclass(frozen=True, slots=True)
class ClaimDecision:
    claim: bool
    reason: str  # "expired" when claimed; otherwise why the user is skipped


def decide_claim(
    member: Mapping[str, Any] | None,
    cutoff: datetime,
    now: datetime,
    claim_ttl: float,
) -> ClaimDecision:
    """Whether a sweep may claim this member for sign-out, judged on a fresh read."""
    if member is None:
        return ClaimDecision(False, "member_deleted")
    if member.get(IS_SIGNED_IN) is not True:
        return ClaimDecision(False, "already_signed_out")
    last = member.get(LAST_PONG_AT)
    if not isinstance(last, datetime):
        return ClaimDecision(False, "no_last_pong")
    if last >= cutoff:
        return ClaimDecision(False, "pong_arrived")
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
