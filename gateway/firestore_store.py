"""The Firestore backend of :class:`gateway.store.Store`: google-cloud-firestore's async
client, with the write-behind buffer's commits sent as raw protobufs (see ``commit``)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.store import (
    DELETE_FIELD,
    INSTANCES,
    MEMBERS,
    SESSIONS,
    SignedOutSession,
    Write,
)

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
        # costs ~5 us per write. No library retry: the write-behind buffer owns retries and
        # backoff, so an outage shows up here at once instead of stalling a flush for a minute.
        raw = _raw_types()
        request = raw.wrap_commit(
            raw.CommitRequest(
                database=self._client._database_string,
                writes=[self._write_pb(w) for w in writes],
            )
        )
        await self._client._firestore_api.commit(
            request=request,
            metadata=self._client._rpc_metadata,
            timeout=COMMIT_TIMEOUT,
            retry=None,
        )

    def _write_pb(self, write: Write) -> Any:
        """A merge-set of ``write.fields`` as a raw protobuf Write (nested maps merge,
        DELETE_FIELD removes)."""
        out = _raw_types().Write()
        out.update.name = (
            f"{self._client._database_string}/documents/{write.collection}/{write.doc_id}"
        )
        _encode_merge(write.fields, (), out.update.fields, out.update_mask.field_paths)
        return out

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
    CommitRequest: Any
    #: The raw request in its proto-plus wrapper, without a copy: a dict of raw writes would
    #: be converted write by write (~2 us each).
    wrap_commit: Any


@functools.cache
def _raw_types() -> _RawTypes:
    # The raw (upb, C-implemented) protobuf classes under google-cloud-firestore's proto-plus
    # wrappers: building through proto-plus cost ~60 us per write, these ~5 us.
    from google.cloud.firestore_v1.types import common, document, firestore
    from google.cloud.firestore_v1.types import write as write_types
    from google.protobuf.timestamp_pb2 import Timestamp

    return _RawTypes(
        Write=write_types.Write.pb(),
        Document=document.Document.pb(),
        DocumentMask=common.DocumentMask.pb(),
        Value=document.Value.pb(),
        MapValue=document.MapValue.pb(),
        Timestamp=Timestamp,
        CommitRequest=firestore.CommitRequest.pb(),
        wrap_commit=firestore.CommitRequest.wrap,
    )


# Messages are filled in place (``target.timestamp_value.seconds = ...``) rather than built
# from keyword arguments and copied into their parent: a pong's Write costs ~3 us this way,
# ~8.5 us the other (measured on the 2-core development machine).


def _set_value(target: Any, value: Any) -> None:
    """Encode ``value`` into the Firestore ``Value`` message ``target``."""
    kind = value.__class__
    if kind is datetime:
        _set_timestamp(target, value)
    elif value is None:
        target.null_value = 0
    elif kind is bool:
        target.boolean_value = value
    elif isinstance(value, int):
        target.integer_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, datetime):
        _set_timestamp(target, value)
    elif isinstance(value, Mapping):
        target.map_value.SetInParent()  # an empty map is still a map value
        fields = target.map_value.fields
        for key, item in value.items():
            _set_value(fields[key], item)
    else:
        raise TypeError(f"cannot store {type(value).__name__} in Firestore")


def _set_timestamp(target: Any, value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    delta = value - _EPOCH
    stamp = target.timestamp_value
    stamp.seconds = delta.days * 86_400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000


#: Types that are never maps: tested by exact class before the (slower) Mapping ABC check.
_LEAVES = frozenset({datetime, str, int, float, bool, type(None)})


def _encode_merge(
    fields: Mapping[str, Any], prefix: tuple[str, ...], values: Any, mask: Any
) -> None:
    """Encode fields into the protobuf map ``values`` plus the update mask a merge-set would
    send: one leaf path per value (nested maps recurse), deleted fields in the mask but not in
    the values."""
    for key, value in fields.items():
        path = (*prefix, key)
        if value is DELETE_FIELD:
            mask.append(_field_path(path))
        elif value.__class__ not in _LEAVES and isinstance(value, Mapping) and value:
            nested = _raw_types().MapValue()
            _encode_merge(value, path, nested.fields, mask)
            if nested.fields:  # a map of deletions only leaves no value behind
                values[key].map_value.CopyFrom(nested)
        else:
            mask.append(_field_path(path))
            _set_value(values[key], value)


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
