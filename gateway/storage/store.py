"""Firestore documents the gateway writes, and the backends that commit them.

The collections and fields, and who writes which, are declared in ``gateway.storage.schema`` (the
contract with the sweep function).

A :class:`Store` commits one batch of merge-writes atomically; the Firestore backend is what
runs (``gateway.storage.firestore_store``), the in-memory one here serves fast unit tests and is
held to the same behaviour, method by method, by ``tests/integration/test_store_contract.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from gateway.exceptions import WriteRejected
from gateway.storage.schema import (
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    CONNECTED_AT,
    DISCONNECTED_AT,
    HEARTBEAT_AT,
    INSTANCE_ID,
    INSTANCES,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_CONNECTED_AT,
    LAST_PONG_AT,
    LAST_SIGN_OUT_AT,
    MEMBERS,
    PONG_BACKLOG_SECONDS,
    SESSIONS,
    SHARD,
    SIGNED_OUT_AT,
    STARTED_AT,
    STOPPED_AT,
    UPDATED_AT,
    USER_ID,
    member_shard,
)

#: Reads on a request's path (admission, status, send, sign-out) fail fast: a caller is waiting.
READ_TIMEOUT = 2.0


class _Delete:
    """Sentinel: remove this (possibly nested) field. Firestore's DELETE_FIELD at commit."""

    def __repr__(self) -> str:
        return "DELETE_FIELD"


DELETE_FIELD: Any = _Delete()


_SCALARS = frozenset({datetime, str, int, float, bool, type(None)})


def merge_fields(into: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Merge like Firestore's ``set(merge=True)``: nested maps merge, later values win."""
    for key, value in fields.items():
        if value.__class__ in _SCALARS:
            # The common case (every pong): an exact type test, not an ABC isinstance check.
            into[key] = value
            continue
        current = into.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            merge_fields(current, value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


class Write(NamedTuple):
    """Merge ``fields`` into ``collection/doc_id`` (creating it when absent).

    A NamedTuple rather than a dataclass: one is built per document per flush, thousands a
    second, and tuple construction is several times cheaper."""

    collection: str
    doc_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SignedOutSession:
    user_id: str
    session_id: str
    signed_out_at: datetime


class Store(Protocol):
    async def commit(self, writes: Sequence[Write]) -> None:
        """Commit all writes atomically or raise: :class:`WriteRejected` when Firestore
        refuses them as invalid (no retry can help), anything else when it may pass."""

    async def signed_out_sessions(
        self, instance_id: str, since: datetime
    ) -> list[SignedOutSession]:
        """Sessions of this instance signed out by a sweep at or after ``since``."""

    async def get_member(self, user_id: str, timeout: float) -> dict[str, Any] | None:
        """The member document, or None when there is none."""

    async def get_members(
        self, user_ids: Sequence[str], timeout: float
    ) -> dict[str, dict[str, Any]]:
        """The member documents that exist, by user id, in one read (admission's batches)."""

    async def get_instances(self, ids: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        """The gateway_instances documents that exist, by id."""

    async def recent_instances(self, since: datetime, timeout: float) -> dict[str, dict[str, Any]]:
        """The gateway_instances documents with a heartbeat at or after ``since``, by id."""

    async def close(self) -> None: ...


def connect_writes(user_id: str, session_id: str, instance_id: str, now: datetime) -> list[Write]:
    """A socket's member and session records. They name the instance only: the user may read
    their member document, so its internal URL stays in ``gateway_instances`` (the sweep's)."""
    return [
        Write(
            MEMBERS,
            user_id,
            {
                IS_SIGNED_IN: True,
                LAST_PONG_AT: now,
                LAST_CONNECTED_AT: now,
                UPDATED_AT: now,
                INSTANCE_ID: instance_id,
                ACTIVE_SESSIONS: {session_id: {INSTANCE_ID: instance_id}},
                # With the connect only, not with every pong: only this write sets
                # is_signed_in, so every member the sweep looks for got its shard here (and a
                # connected user reconnects at least hourly on Cloud Run; members written
                # before the field get theirs from presence_sweep.backfill). On a pong it would
                # only repeat the value, and an integer takes the pong off the commit encoder's
                # fast path (str and datetime only, gateway.storage.firestore_wire.is_flat).
                SHARD: member_shard(user_id),
            },
        ),
        Write(
            SESSIONS,
            session_id,
            {USER_ID: user_id, IS_ACTIVE: True, CONNECTED_AT: now, INSTANCE_ID: instance_id},
        ),
    ]


def reassert_writes(user_id: str, session_id: str, instance_id: str) -> list[Write]:
    """A live socket's member entry and session record again, for an instance whose records
    lagged so long that the sweep may have counted it lost and ended them: nothing about
    pongs or sign-ins, which only the socket's own pongs and connect may move."""
    return [
        Write(MEMBERS, user_id, {ACTIVE_SESSIONS: {session_id: {INSTANCE_ID: instance_id}}}),
        Write(
            SESSIONS,
            session_id,
            {
                USER_ID: user_id,
                IS_ACTIVE: True,
                INSTANCE_ID: instance_id,
                DISCONNECTED_AT: DELETE_FIELD,
                CLOSE_CODE: DELETE_FIELD,
            },
        ),
    ]


def pong_write(user_id: str, now: datetime) -> Write:
    return Write(MEMBERS, user_id, {LAST_PONG_AT: now, UPDATED_AT: now})


def disconnect_writes(
    user_id: str, session_id: str, close_code: int | None, now: datetime
) -> list[Write]:
    return [
        Write(MEMBERS, user_id, {ACTIVE_SESSIONS: {session_id: DELETE_FIELD}}),
        Write(
            SESSIONS,
            session_id,
            {IS_ACTIVE: False, DISCONNECTED_AT: now, CLOSE_CODE: close_code},
        ),
    ]


def sign_out_writes(user_id: str, session_ids: Sequence[str], now: datetime) -> list[Write]:
    """What a sign-out on demand records: the same fields the sweep writes, so the gateway
    refuses older tokens (``last_sign_out_at``) and the sessions read as signed out."""
    return [
        Write(MEMBERS, user_id, {IS_SIGNED_IN: False, LAST_SIGN_OUT_AT: now, UPDATED_AT: now}),
        *(Write(SESSIONS, s, {IS_ACTIVE: False, SIGNED_OUT_AT: now}) for s in session_ids),
    ]


def instance_write(instance_id: str, internal_url: str, now: datetime) -> Write:
    return Write(
        INSTANCES,
        instance_id,
        # A restart under a fixed GATEWAY_INSTANCE_ID must not stay marked stopped.
        {
            INTERNAL_URL: internal_url,
            STARTED_AT: now,
            HEARTBEAT_AT: now,
            STOPPED_AT: DELETE_FIELD,
            PONG_BACKLOG_SECONDS: 0.0,
        },
    )


def other_instances(member: Mapping[str, Any] | None, me: str) -> dict[str, int]:
    """The member's recorded sockets on instances other than ``me``, counted by instance
    (``active_sessions``; a malformed entry counts nowhere)."""
    counts: dict[str, int] = {}
    recorded = (member or {}).get(ACTIVE_SESSIONS)
    for where in recorded.values() if isinstance(recorded, dict) else ():
        instance = where.get(INSTANCE_ID) if isinstance(where, dict) else None
        if isinstance(instance, str) and instance != me:
            counts[instance] = counts.get(instance, 0) + 1
    return counts


def is_live(instance: Mapping[str, Any], cutoff: datetime) -> bool:
    """An instance counts as alive while it beats (every SWEEP_INTERVAL) and has not stopped."""
    beat = instance.get(HEARTBEAT_AT)
    return STOPPED_AT not in instance and isinstance(beat, datetime) and beat >= cutoff


#: Firestore stores integers as signed 64-bit values.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _check(value: Any) -> None:
    """Refuse what the Firestore backend cannot encode, before anything is applied, so that a
    bad batch fails whole in memory as it does there (:class:`WriteRejected`)."""
    if isinstance(value, Mapping):
        for nested in value.values():
            _check(nested)
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            raise WriteRejected("timestamps must be timezone-aware")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:
            raise WriteRejected(f"Value out of range: {value}")
    elif value is not None and value is not DELETE_FIELD:
        if not isinstance(value, bool | float | str):
            raise WriteRejected(f"cannot store {type(value).__name__} in Firestore")


def _sets_a_value(fields: Mapping[str, Any]) -> bool:
    """Whether merging ``fields`` writes anything but deletes (an empty map is a value)."""
    if not fields:
        return True
    return any(
        value is not DELETE_FIELD and (not isinstance(value, Mapping) or _sets_a_value(value))
        for value in fields.values()
    )


def _apply(doc: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Firestore's merge-set: nested maps merge leaf by leaf, but an empty map is a value (it
    replaces the field) and a map holding only deletes creates nothing."""
    for key, value in fields.items():
        if value is DELETE_FIELD:
            doc.pop(key, None)
        elif isinstance(value, Mapping) and value:
            nested = doc.get(key)
            if not isinstance(nested, dict):
                if not _sets_a_value(value):
                    continue
                nested = doc[key] = {}
            _apply(nested, value)
        elif isinstance(value, Mapping):
            doc[key] = {}
        else:
            doc[key] = value


def _copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy down to the nested maps: a reader must not change what is stored."""
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in doc.items()}


class MemoryStore:
    """An in-process store for unit tests; ``fail_next`` makes commits raise."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self.commits: list[list[Write]] = []
        self.fail_next = 0
        self.delay = 0.0

    async def commit(self, writes: Sequence[Write]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("injected commit failure")
        for write in writes:
            _check(write.fields)
        self.commits.append(list(writes))
        for write in writes:
            _apply(self.docs.setdefault((write.collection, write.doc_id), {}), write.fields)

    async def get_member(self, user_id: str, timeout: float) -> dict[str, Any] | None:
        doc = self.docs.get((MEMBERS, user_id))
        return _copy(doc) if doc is not None else None

    async def get_members(
        self, user_ids: Sequence[str], timeout: float
    ) -> dict[str, dict[str, Any]]:
        if self.delay:
            await asyncio.sleep(self.delay)
        return {u: _copy(self.docs[(MEMBERS, u)]) for u in user_ids if (MEMBERS, u) in self.docs}

    async def get_instances(self, ids: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        return {i: _copy(self.docs[(INSTANCES, i)]) for i in ids if (INSTANCES, i) in self.docs}

    async def recent_instances(self, since: datetime, timeout: float) -> dict[str, dict[str, Any]]:
        return {
            doc_id: _copy(doc)
            for (collection, doc_id), doc in self.docs.items()
            if collection == INSTANCES
            and isinstance(doc.get(HEARTBEAT_AT), datetime)
            and doc[HEARTBEAT_AT] >= since
        }

    async def signed_out_sessions(
        self, instance_id: str, since: datetime
    ) -> list[SignedOutSession]:
        return [
            SignedOutSession(str(doc.get(USER_ID, "")), doc_id, doc[SIGNED_OUT_AT])
            for (collection, doc_id), doc in self.docs.items()
            if collection == SESSIONS
            and doc.get(INSTANCE_ID) == instance_id
            and isinstance(doc.get(SIGNED_OUT_AT), datetime)
            and doc[SIGNED_OUT_AT] >= since
        ]

    async def close(self) -> None:
        return None
