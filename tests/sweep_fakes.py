"""In-memory stand-ins for the sweep's Firestore adapters, for fast unit tests of the sweep.

``MemoryMembers`` and ``MemoryInstances`` implement ``MemberStore`` and ``InstanceDirectory`` over
plain dicts of documents, with the same semantics as ``FirestoreMembers`` and
``FirestoreInstances``; ``tests/integration/test_sweep_store_contract.py`` runs one suite against
both, the real ones on the Firestore emulator. ``MemoryLostInstances`` is the reaper's
``LostInstanceStore`` (``FirestoreLostInstances``), ``MemoryPublisher`` its event publisher.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from presence_sweep.adapters import active_sessions, instance_entry
from presence_sweep.decision import ClaimDecision, InstanceEntry, SessionRef, decide_claim
from presence_sweep.exceptions import PublishError
from presence_sweep.presence import INSTANCE_LOST, PresenceEvent, decide
from presence_sweep.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    DISCONNECTED_AT,
    HEARTBEAT_AT,
    INSTANCE_ID,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_PONG_AT,
    LAST_SIGN_OUT_AT,
    MEMBER_SHARDS,
    SHARD,
    SIGN_OUT_CLAIM,
    SIGN_OUT_CLAIMED_AT,
    SIGNED_OUT_AT,
    UPDATED_AT,
    USER_ID,
)


class MemoryMembers:
    """``members`` and ``sessions`` documents by id. The sweep calls a store from several page
    threads at once; one lock stands in for Firestore's transactions."""

    def __init__(
        self,
        members: dict[str, dict[str, Any]] | None = None,
        sessions: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.members = members if members is not None else {}
        self.sessions = sessions if sessions is not None else {}
        self._lock = threading.Lock()

    def connect(self, ref: SessionRef) -> None:
        """Record a socket on its member and in its session document, as the gateway does (and,
        for a ref with a ``legacy_url``, as an older gateway did: the URL on the member too)."""
        where = {INSTANCE_ID: ref.instance_id}
        if ref.legacy_url:
            where[INTERNAL_URL] = ref.legacy_url
        self.members[ref.user_id].setdefault(ACTIVE_SESSIONS, {})[ref.session_id] = where
        self.sessions[ref.session_id] = {
            USER_ID: ref.user_id,
            IS_ACTIVE: True,
            INSTANCE_ID: ref.instance_id,
        }

    def expired_page(
        self, cutoff: datetime, limit: int, after: Any | None
    ) -> tuple[list[str], Any | None]:
        with self._lock:
            # FirestoreMembers queries one shard after the other, each ordered by the
            # inequality field, then by document id; a member without a shard is in no
            # shard's query (presence_sweep.backfill gives it one).
            expired = sorted(
                (member[SHARD], member[LAST_PONG_AT], user_id)
                for user_id, member in self.members.items()
                if member.get(IS_SIGNED_IN) is True
                and member.get(SHARD).__class__ is int
                and 0 <= member[SHARD] < MEMBER_SHARDS
                and isinstance(member.get(LAST_PONG_AT), datetime)
                and member[LAST_PONG_AT] < cutoff
            )
        page = [key for key in expired if after is None or key > after][:limit]
        return [user_id for *_, user_id in page], (page[-1] if len(page) == limit else None)

    def claim(
        self,
        user_ids: Sequence[str],
        sweep_id: str,
        cutoff: datetime,
        now: datetime,
        claim_ttl: float,
        allowances: Mapping[str, float] | None = None,
    ) -> dict[str, ClaimDecision]:
        decisions: dict[str, ClaimDecision] = {}
        with self._lock:
            for user_id in user_ids:
                member = self.members.get(user_id)
                decisions[user_id] = decide_claim(member, cutoff, now, claim_ttl, allowances)
                if member is not None and decisions[user_id].claim:
                    member.update({SIGN_OUT_CLAIM: sweep_id, SIGN_OUT_CLAIMED_AT: now})
        return decisions

    def release(self, user_ids: Sequence[str], sweep_id: str) -> None:
        with self._lock:
            for user_id in user_ids:
                member = self.members.get(user_id)
                if member is not None and member.get(SIGN_OUT_CLAIM) == sweep_id:
                    member.pop(SIGN_OUT_CLAIM, None)
                    member.pop(SIGN_OUT_CLAIMED_AT, None)

    def finalize(
        self, user_ids: Sequence[str], sweep_id: str, now: datetime
    ) -> tuple[list[str], list[SessionRef]]:
        done: list[str] = []
        sessions: list[SessionRef] = []
        with self._lock:
            for user_id in user_ids:
                member = self.members.get(user_id)
                if member is None or member.get(SIGN_OUT_CLAIM) != sweep_id:
                    continue
                sessions.extend(active_sessions(user_id, member))
                for key in (ACTIVE_SESSIONS, SIGN_OUT_CLAIM, SIGN_OUT_CLAIMED_AT):
                    member.pop(key, None)
                member.update({IS_SIGNED_IN: False, LAST_SIGN_OUT_AT: now, UPDATED_AT: now})
                done.append(user_id)
            for ref in sessions:
                self.sessions.setdefault(ref.session_id, {}).update(
                    {IS_ACTIVE: False, SIGNED_OUT_AT: now}
                )
        return done, sessions


class MemoryInstances:
    """``gateway_instances`` documents by id."""

    def __init__(self, instances: Mapping[str, Mapping[str, Any]]) -> None:
        self.instances = instances

    def entries(self, instance_ids: Sequence[str]) -> dict[str, InstanceEntry]:
        return {
            i: instance_entry(dict(self.instances[i])) for i in instance_ids if i in self.instances
        }

    def recent(self, since: datetime) -> dict[str, InstanceEntry]:
        return {
            i: instance_entry(dict(doc))
            for i, doc in self.instances.items()
            if isinstance(doc.get(HEARTBEAT_AT), datetime) and doc[HEARTBEAT_AT] >= since
        }


class MemoryLostInstances:
    """``members``, ``sessions``, ``presence`` and ``presence_holders`` documents by id, for the
    reaper; ``fail_settle`` names users whose settling transaction fails."""

    def __init__(
        self,
        members: dict[str, dict[str, Any]],
        sessions: dict[str, dict[str, Any]],
        holders: dict[str, dict[str, Any]] | None = None,
        presence: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.members, self.sessions = members, sessions
        self.holders = holders if holders is not None else {}
        self.presence = presence if presence is not None else {}
        self.fail_settle: set[str] = set()
        #: Each settle call's users, in order.
        self.settled: list[list[str]] = []

    def active_sessions_on(
        self, instance_id: str, limit: int, after: Any | None
    ) -> tuple[list[SessionRef], Any | None]:
        found = sorted(
            session_id
            for session_id, doc in self.sessions.items()
            if doc.get(INSTANCE_ID) == instance_id
            and doc.get(IS_ACTIVE) is True
            and (after is None or session_id > after)
        )[:limit]
        refs = [SessionRef(str(self.sessions[s].get(USER_ID) or ""), s, instance_id) for s in found]
        return refs, (found[-1] if len(found) == limit else None)

    def settle(
        self, user_ids: Sequence[str], instance_id: str, at: datetime
    ) -> list[PresenceEvent]:
        self.settled.append(list(user_ids))
        if self.fail_settle & set(user_ids):
            raise RuntimeError("injected: transaction failed")
        events = []
        for user_id in user_ids:
            outcome = decide(user_id, self.holders.get(user_id), instance_id, 0, at, INSTANCE_LOST)
            self.holders[user_id] = outcome.holders
            if outcome.presence is not None:
                self.presence.setdefault(user_id, {}).update(outcome.presence)
            if outcome.event is not None:
                events.append(outcome.event)
        return events

    def end_sessions(self, sessions: Sequence[SessionRef], at: datetime) -> None:
        for ref in sessions:
            self.sessions.setdefault(ref.session_id, {}).update(
                {IS_ACTIVE: False, DISCONNECTED_AT: at, CLOSE_CODE: None}
            )
            recorded = self.members.get(ref.user_id, {}).get(ACTIVE_SESSIONS)
            if isinstance(recorded, dict):
                recorded.pop(ref.session_id, None)


class MemoryPublisher:
    """Keeps the events it is given; raises PublishError while ``failing``."""

    def __init__(self, failing: bool = False) -> None:
        self.failing = failing
        self.events: list[PresenceEvent] = []

    def publish(self, events: Sequence[PresenceEvent]) -> None:
        if self.failing:
            raise PublishError("injected: Pub/Sub unavailable")
        self.events.extend(events)
