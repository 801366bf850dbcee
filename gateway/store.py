"""Firestore documents the gateway writes, and the backends that commit them.

Documents (field names are the contract with the sweep function; see README):

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
runs, the in-memory one serves fast unit tests and is held to the same behaviour by the
integration tests.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

MEMBERS = "members"
SESSIONS = "sessions"
INSTANCES = "gateway_instances"
ACTIVE_SESSIONS = "active_sessions"

COMMIT_TIMEOUT = 10.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Delete:
    """Sentinel: remove this (possibly nested) field. Firestore's DELETE_FIELD at commit."""

    def __repr__(self) -> str:
        return "DELETE_FIELD"


DELETE_FIELD: Any = _Delete()


def merge_fields(into: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Merge like Firestore's ``set(merge=True)``: nested maps merge, later values win."""
    for key, value in fields.items():
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


class FirestoreStore:
    """Commits through google-cloud-firestore's async client (emulator or production)."""

    def __init__(self, project_id: str) -> None:
        # Imported here so that importing the package never builds or loads a client.
        from google.cloud import firestore

        self._client = firestore.AsyncClient(project=project_id)

    async def commit(self, writes: Sequence[Write]) -> None:
        # The Commit RPC is called with protobufs built here instead of through
        # batch.set(merge=True) + batch.commit(): the library walks every value in Python on the
        # way in (~200 us of CPU per write) and wraps every write result on the way out, which
        # froze the event loop for ~100 ms per 500-write batch at 5,000 pongs/s. This path
        # costs ~20 us per write. No library retry: the write-behind buffer owns retries and
        # backoff, so an outage shows up here at once instead of stalling a flush for a minute.
        await self._client._firestore_api.commit(
            request={
                "database": self._client._database_string,
                "writes": [self._write_pb(w) for w in writes],
            },
            metadata=self._client._rpc_metadata,
            timeout=COMMIT_TIMEOUT,
            retry=None,
        )

    def _write_pb(self, write: Write) -> Any:
        """A merge-set of ``write.fields`` as a raw protobuf Write (nested maps merge,
        DELETE_FIELD removes)."""
        pb = _raw_types()
        values: dict[str, Any] = {}
        mask: list[str] = []
        _encode_merge(write.fields, (), values, mask)
        name = f"{self._client._database_string}/documents/{write.collection}/{write.doc_id}"
        return pb.Write(
            update=pb.Document(name=name, fields=values),
            update_mask=pb.DocumentMask(field_paths=mask),
        )

    async def get_member(self, user_id: str, timeout: float) -> dict[str, Any] | None:
        snapshot = (
            await self._client.collection(MEMBERS)
            .document(user_id)
            .get(retry=None, timeout=timeout)
        )
        return snapshot.to_dict() if snapshot.exists else None

    async def get_instances(self, ids: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        refs = [self._client.collection(INSTANCES).document(i) for i in ids]
        found: dict[str, dict[str, Any]] = {}
        async for snapshot in self._client.get_all(refs, retry=None, timeout=timeout):
            if snapshot.exists:
                found[snapshot.id] = snapshot.to_dict() or {}
        return found

    async def recent_instances(self, since: datetime, timeout: float) -> dict[str, dict[str, Any]]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self._client.collection(INSTANCES).where(
            filter=FieldFilter("heartbeat_at", ">=", since)
        )
        found: dict[str, dict[str, Any]] = {}
        async for snapshot in query.stream(retry=None, timeout=timeout):
            found[snapshot.id] = snapshot.to_dict() or {}
        return found

    async def signed_out_sessions(
        self, instance_id: str, since: datetime
    ) -> list[SignedOutSession]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        # Composite index (instance_id, signed_out_at) in firestore.indexes.json.
        query = (
            self._client.collection(SESSIONS)
            .where(filter=FieldFilter("instance_id", "==", instance_id))
            .where(filter=FieldFilter("signed_out_at", ">=", since))
        )
        found = []
        async for snapshot in query.stream(retry=None, timeout=COMMIT_TIMEOUT):
            data = snapshot.to_dict() or {}
            found.append(
                SignedOutSession(str(data.get("user_id", "")), snapshot.id, data["signed_out_at"])
            )
        return found

    async def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class _RawTypes:
    Write: Any
    Document: Any
    DocumentMask: Any
    Value: Any
    MapValue: Any
    Timestamp: Any


@functools.cache
def _raw_types() -> _RawTypes:
    # The raw (upb, C-implemented) protobuf classes under google-cloud-firestore's proto-plus
    # wrappers: building through proto-plus cost ~60 us per write, these ~5 us.
    from google.cloud.firestore_v1.types import common, document
    from google.cloud.firestore_v1.types import write as write_types
    from google.protobuf.timestamp_pb2 import Timestamp

    return _RawTypes(
        Write=write_types.Write.pb(),
        Document=document.Document.pb(),
        DocumentMask=common.DocumentMask.pb(),
        Value=document.Value.pb(),
        MapValue=document.MapValue.pb(),
        Timestamp=Timestamp,
    )


def _encode_value(value: Any) -> Any:
    pb = _raw_types()
    if value is None:
        return pb.Value(null_value=0)
    if isinstance(value, bool):
        return pb.Value(boolean_value=value)
    if isinstance(value, int):
        return pb.Value(integer_value=value)
    if isinstance(value, float):
        return pb.Value(double_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        delta = value - _EPOCH
        return pb.Value(
            timestamp_value=pb.Timestamp(
                seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
            )
        )
    if isinstance(value, Mapping):
        return pb.Value(
            map_value=pb.MapValue(fields={k: _encode_value(v) for k, v in value.items()})
        )
    raise TypeError(f"cannot store {type(value).__name__} in Firestore")


def _encode_merge(
    fields: Mapping[str, Any], prefix: tuple[str, ...], values: dict[str, Any], mask: list[str]
) -> None:
    """Encode fields as Firestore values plus the update mask a merge-set would send: one leaf
    path per value (nested maps recurse), deleted fields in the mask but not in the values."""
    for key, value in fields.items():
        path = (*prefix, key)
        if value is DELETE_FIELD:
            mask.append(_field_path(path))
        elif isinstance(value, Mapping) and value:
            nested: dict[str, Any] = {}
            _encode_merge(value, path, nested, mask)
            if nested:
                values[key] = _raw_types().Value(map_value=_raw_types().MapValue(fields=nested))
        else:
            mask.append(_field_path(path))
            values[key] = _encode_value(value)


_SIMPLE_SEGMENT = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")


@functools.lru_cache(maxsize=4096)
def _field_path(path: tuple[str, ...]) -> str:
    """Firestore's field path syntax: segments joined by dots, backquoted unless simple."""
    return ".".join(
        part
        if _SIMPLE_SEGMENT.fullmatch(part)
        else "`" + part.replace("\\", "\\\\").replace("`", "\\`") + "`"
        for part in path
    )


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
