"""The Firestore backend of :class:`gateway.store.Store`: google-cloud-firestore's async
client, with the write-behind buffer's commits sent as raw protobufs (see ``commit``)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.schema import (
    HEARTBEAT_AT,
    INSTANCE_ID,
    INSTANCES,
    MEMBERS,
    SESSIONS,
    SIGNED_OUT_AT,
    USER_ID,
)
from gateway.store import DELETE_FIELD, SignedOutSession, Write

COMMIT_TIMEOUT = 10.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
            filter=FieldFilter(HEARTBEAT_AT, ">=", since)
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
            .where(filter=FieldFilter(INSTANCE_ID, "==", instance_id))
            .where(filter=FieldFilter(SIGNED_OUT_AT, ">=", since))
        )
        found = []
        async for snapshot in query.stream(retry=None, timeout=COMMIT_TIMEOUT):
            data = snapshot.to_dict() or {}
            found.append(
                SignedOutSession(str(data.get(USER_ID, "")), snapshot.id, data[SIGNED_OUT_AT])
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
