"""Firestore documents the gateway writes, and the backends that commit them.

Documents (field names are the contract with the sweep function; see docs/operations.md):

``members/{user_id}``
    ``is_signed_in``, ``last_pong_at``, ``updated_at``, ``last_connected_at``, ``instance_id``,
    ``active_sessions`` (map: session id -> ``{instance_id, internal_url}``; lets the sweep find
    a user's sockets by reading the member it already reads, without a query)
``sessions/{session_id}`` (one per socket)
    ``user_id``, ``is_active``, ``connected_at``, ``instance_id``, ``internal_url``,
    ``disconnected_at``, ``close_code``
``gateway_instances/{instance_id}``
    ``internal_url``, ``started_at``, ``heartbeat_at``, ``stopped_at`` (on a clean shutdown)

A :class:`Store` commits one batch of merge-writes atomically; the Firestore backend is what
runs (``gateway.firestore_store``), the in-memory one here serves fast unit tests and is held
to the same behaviour by the integration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

MEMBERS = "members"
SESSIONS = "sessions"
INSTANCES = "gateway_instances"
ACTIVE_SESSIONS = "active_sessions"
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
        """Commit all writes atomically or raise."""

    async def signed_out_sessions(
        self, instance_id: str, since: datetime
    ) -> list[SignedOutSession]:
        """Sessions of this instance signed out by a sweep at or after ``since``."""

    async def get_member(self, user_id: str, timeout: float) -> dict[str, Any] | None:
        """The member document, or None when there is none."""

    async def get_instances(self, ids: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        """The gateway_instances documents that exist, by id."""

    async def recent_instances(self, since: datetime, timeout: float) -> dict[str, dict[str, Any]]:
        """The gateway_instances documents with a heartbeat at or after ``since``, by id."""

    async def close(self) -> None: ...


def connect_writes(
    user_id: str, session_id: str, instance_id: str, internal_url: str, now: datetime
) -> list[Write]:
    return [
        Write(
            MEMBERS,
            user_id,
            {
                "is_signed_in": True,
                "last_pong_at": now,
                "last_connected_at": now,
                "updated_at": now,
                "instance_id": instance_id,
                ACTIVE_SESSIONS: {
                    session_id: {"instance_id": instance_id, "internal_url": internal_url}
                },
            },
        ),
        Write(
            SESSIONS,
            session_id,
            {
                "user_id": user_id,
                "is_active": True,
                "connected_at": now,
                "instance_id": instance_id,
                "internal_url": internal_url,
            },
        ),
    ]


def pong_write(user_id: str, now: datetime) -> Write:
    return Write(MEMBERS, user_id, {"last_pong_at": now, "updated_at": now})


def disconnect_writes(
    user_id: str, session_id: str, close_code: int | None, now: datetime
) -> list[Write]:
    return [
        Write(MEMBERS, user_id, {ACTIVE_SESSIONS: {session_id: DELETE_FIELD}}),
        Write(
            SESSIONS,
            session_id,
            {"is_active": False, "disconnected_at": now, "close_code": close_code},
        ),
    ]


def sign_out_writes(user_id: str, session_ids: Sequence[str], now: datetime) -> list[Write]:
    """What a sign-out on demand records: the same fields the sweep writes, so the gateway
    refuses older tokens (``last_sign_out_at``) and the sessions read as signed out."""
    return [
        Write(
            MEMBERS, user_id, {"is_signed_in": False, "last_sign_out_at": now, "updated_at": now}
        ),
        *(Write(SESSIONS, s, {"is_active": False, "signed_out_at": now}) for s in session_ids),
    ]


def instance_write(instance_id: str, internal_url: str, now: datetime) -> Write:
    return Write(
        INSTANCES,
        instance_id,
        # A restart under a fixed GATEWAY_INSTANCE_ID must not stay marked stopped.
        {
            "internal_url": internal_url,
            "started_at": now,
            "heartbeat_at": now,
            "stopped_at": DELETE_FIELD,
        },
    )


def is_live(instance: Mapping[str, Any], cutoff: datetime) -> bool:
    """An instance counts as alive while it beats (every SWEEP_INTERVAL) and has not stopped."""
    beat = instance.get("heartbeat_at")
    return "stopped_at" not in instance and isinstance(beat, datetime) and beat >= cutoff


def _apply(doc: dict[str, Any], fields: Mapping[str, Any]) -> None:
    for key, value in fields.items():
        if value is DELETE_FIELD:
            doc.pop(key, None)
        elif isinstance(value, Mapping):
            nested = doc.get(key)
            if not isinstance(nested, dict):
                nested = doc[key] = {}
            _apply(nested, value)
        else:
            doc[key] = value


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
        self.commits.append(list(writes))
        for write in writes:
            _apply(self.docs.setdefault((write.collection, write.doc_id), {}), write.fields)

    async def get_member(self, user_id: str, timeout: float) -> dict[str, Any] | None:
        doc = self.docs.get((MEMBERS, user_id))
        return dict(doc) if doc is not None else None

    async def get_instances(self, ids: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        return {i: dict(self.docs[(INSTANCES, i)]) for i in ids if (INSTANCES, i) in self.docs}

    async def recent_instances(self, since: datetime, timeout: float) -> dict[str, dict[str, Any]]:
        return {
            doc_id: dict(doc)
            for (collection, doc_id), doc in self.docs.items()
            if collection == INSTANCES
            and isinstance(doc.get("heartbeat_at"), datetime)
            and doc["heartbeat_at"] >= since
        }

    async def signed_out_sessions(
        self, instance_id: str, since: datetime
    ) -> list[SignedOutSession]:
        return [
            SignedOutSession(str(doc.get("user_id")), doc_id, doc["signed_out_at"])
            for (collection, doc_id), doc in self.docs.items()
            if collection == SESSIONS
            and doc.get("instance_id") == instance_id
            and isinstance(doc.get("signed_out_at"), datetime)
            and doc["signed_out_at"] >= since
        ]

    async def close(self) -> None:
        return None
