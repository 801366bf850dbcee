"""The Firestore backend of :class:`gateway.storage.store.Store`: google-cloud-firestore's async
client, with the write-behind buffer's commits sent as wire bytes (see ``commit``)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.exceptions import WriteRejected
from gateway.storage.firestore_reads import BatchGet, read_document
from gateway.storage.firestore_wire import (
    CommitEncoder,
    call_metadata,
    field_path,
    timestamp_parts,
)
from gateway.storage.schema import (
    HEARTBEAT_AT,
    INSTANCE_ID,
    INSTANCES,
    MEMBERS,
    SESSIONS,
    SIGNED_OUT_AT,
    USER_ID,
)
from gateway.storage.store import DELETE_FIELD, SignedOutSession, Write

COMMIT_TIMEOUT = 10.0
COMMIT_METHOD = "/google.firestore.v1.Firestore/Commit"
#: The client's private members ``commit`` uses (checked when the store is built).
_PRIVATE_API = ("_firestore_api", "_database_string", "_rpc_metadata")
#: Member reads of at most this many ids are read on the event loop (``BatchGet``), larger
#: ones in a worker thread: see ``get_members``. Each document streamed takes a loop
#: iteration, tens of milliseconds each in a storm: 8 stays far within the 2 s read deadline.
LOOP_READ_MAX = 8


class FirestoreStore:
    """Commits through google-cloud-firestore's async client (emulator or production)."""

    def __init__(self, project_id: str) -> None:
        # Imported here so that importing the package never builds or loads a client.
        from google.cloud import firestore

        self._client = firestore.AsyncClient(project=project_id)
        # commit() leans on three private members of the client; a library release without them
        # must stop the gateway at start-up, not fail every flush while pongs pile up.
        missing = [name for name in _PRIVATE_API if not hasattr(type(self._client), name)]
        if missing:
            raise ImportError(
                f"google-cloud-firestore {_library_version()} lacks {', '.join(missing)}, which "
                "FirestoreStore.commit uses (tested with 2.34): pin a tested version or move "
                "commit to commit_with_batch"
            )
        #: Batched member reads only (``get_members``): see there why they do not use the
        #: async client.
        self._blocking_client = firestore.Client(project=project_id)
        self._encoder = CommitEncoder(self._client._database_string)
        #: Built at the first commit: the channel belongs to the running event loop.
        self._commit_rpc: Any = None
        self._commit_metadata: tuple[tuple[str, str], ...] = ()
        self._batch_get: BatchGet | None = None

    @property
    def client(self) -> Any:
        """The async client, for the durable streams (gateway.storage.firestore_streams)."""
        return self._client

    async def commit(self, writes: Sequence[Write]) -> None:
        # The Commit RPC is sent as wire bytes encoded here (gateway.storage.firestore_wire) on the
        # client's own gRPC channel, instead of through the public batch.set(merge=True) +
        # batch.commit() (commit_with_batch: the same single atomic RPC). The library walks
        # every value in Python on the way in and wraps every write result on the way out, on
        # the event loop, where each batch holds up every socket of the instance: about ten
        # times the loop CPU per write (measured: docs/benchmarks.md#commit-paths).
        # Worth the private API (the client's database name and metadata), fenced by the
        # start-up check above and by tests/integration/test_firestore_store.py, which holds this
        # path to what commit_with_batch stores. BulkWriter is no candidate: it is not atomic
        # (Store.commit must be) and burns the most process CPU. No library retry: the
        # write-behind buffer owns retries and backoff, so an outage shows up here at once
        # instead of stalling a flush for a minute.
        if self._commit_rpc is None:
            self._commit_rpc, self._commit_metadata = self._commit_call()
        try:
            request = self._encoder.request(writes, self._serialized_write)
        except (ValueError, TypeError, OverflowError) as exc:
            # A value Firestore cannot hold (an integer beyond 64 bits, a naive timestamp):
            # the same batch would fail the same way forever.
            raise WriteRejected(f"cannot encode the commit: {exc!r}") from exc
        try:
            await self._commit_rpc(request, metadata=self._commit_metadata, timeout=COMMIT_TIMEOUT)
        except Exception as exc:
            if _refused_as_invalid(exc):
                raise WriteRejected(f"Firestore refused the commit: {exc!r}") from exc
            raise

    def _commit_call(self) -> tuple[Any, tuple[tuple[str, str], ...]]:
        """The Commit method on the client's channel, bytes in and bytes out (the response is
        not read: a failure raises), with the metadata the library's own call sends."""
        channel = self._client._firestore_api.transport.grpc_channel
        metadata = call_metadata(self._client, ("database", self._client._database_string))
        return channel.unary_unary(COMMIT_METHOD), metadata

    def _serialized_write(self, write: Write) -> bytes:
        serialized: bytes = merge_write(self._client._database_string, write).SerializeToString()
        return serialized

    async def commit_with_batch(self, writes: Sequence[Write]) -> None:
        """What ``commit`` does, through the library's public WriteBatch: the reference the raw
        path is tested against, and the fallback should the private API go away."""
        from google.cloud import firestore

        batch = self._client.batch()
        for write in writes:
            ref = self._client.collection(write.collection).document(write.doc_id)
            batch.set(ref, _public_fields(write.fields, firestore.DELETE_FIELD), merge=True)
        await batch.commit(retry=None, timeout=COMMIT_TIMEOUT)

    async def get_member(self, user_id: str, timeout: float) -> dict[str, Any] | None:
        ref = self._client.collection(MEMBERS).document(user_id)
        snapshot = await read_document(self._client, ref, timeout=timeout)
        return snapshot.to_dict() if snapshot.exists else None

    async def get_members(
        self, user_ids: Sequence[str], timeout: float
    ) -> dict[str, dict[str, Any]]:
        # One BatchGetDocuments for all of them (what admission's BatchReader coalesces into).
        # The call streams one message per document, and an async read needs an event-loop
        # iteration for each: in a reconnect storm, when an iteration takes tens of
        # milliseconds (thousands of handshakes), a batch of 100 took seconds and most
        # connects missed the 2 s read deadline (make bench --only storm). So a large batch is
        # consumed in a worker thread with the blocking client, where the stream is read as it
        # arrives; a small one (the sends of the moment, a quiet connect) on the loop, where
        # it costs a fraction of the thread hand-offs (docs/benchmarks.md, fan-out).
        if not user_ids:
            return {}
        if len(user_ids) <= LOOP_READ_MAX:
            return await self._reader().read(MEMBERS, user_ids, timeout)
        return await asyncio.to_thread(self._get_members_blocking, list(user_ids), timeout)

    def _reader(self) -> BatchGet:
        if self._batch_get is None:
            self._batch_get = BatchGet(self._client)
        return self._batch_get

    def _get_members_blocking(
        self, user_ids: list[str], timeout: float
    ) -> dict[str, dict[str, Any]]:
        client = self._blocking_client
        refs = [client.collection(MEMBERS).document(u) for u in user_ids]
        return {
            snapshot.id: snapshot.to_dict() or {}
            for snapshot in client.get_all(refs, retry=None, timeout=timeout)
            if snapshot.exists
        }

    async def get_instances(self, ids: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        return await self._reader().read(INSTANCES, ids, timeout)

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
            # The two fields the poll needs: it runs every SWEEP_INTERVAL over ten minutes of
            # sign-outs, and whole documents crowded a slow link after a mass sign-out.
            .select([USER_ID, SIGNED_OUT_AT])
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
        self._blocking_client.close()  # type: ignore[no-untyped-call]


def _refused_as_invalid(exc: BaseException) -> bool:
    """Whether Firestore answered that the request itself is wrong (INVALID_ARGUMENT: a
    document over 1 MiB, a field it cannot store), which no retry can cure. Every other
    status (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, PERMISSION_DENIED...) may pass
    and is retried."""
    import grpc

    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.INVALID_ARGUMENT


def _public_fields(fields: Mapping[str, Any], delete: Any) -> dict[str, Any]:
    """``fields`` for the library: our DELETE_FIELD sentinel becomes its ``delete``."""
    return {
        key: delete
        if value is DELETE_FIELD
        else _public_fields(value, delete)
        if isinstance(value, Mapping)
        else value
        for key, value in fields.items()
    }


def _library_version() -> str:
    from importlib.metadata import version

    return version("google-cloud-firestore")


@dataclass(frozen=True, slots=True)
class _RawTypes:
    Write: Any
    Document: Any
    DocumentMask: Any
    Value: Any
    MapValue: Any
    Timestamp: Any
    CommitRequest: Any


@functools.cache
def _raw_types() -> _RawTypes:
    # The raw (upb, C-implemented) protobuf classes under google-cloud-firestore's proto-plus
    # wrappers: building through proto-plus costs an order of magnitude more per write
    # (measured: docs/benchmarks.md#commit-paths).
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
    )


# The writes gateway.storage.firestore_wire leaves to the library's types (maps, deletions, numbers)
# are filled in place (``target.timestamp_value.seconds = ...``) rather than built from keyword
# arguments and copied into their parent, which costs nearly three times as much (measured:
# docs/benchmarks.md#commit-paths).


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
    stamp = target.timestamp_value
    stamp.seconds, stamp.nanos = timestamp_parts(value)


def merge_write(database: str, write: Write) -> Any:
    """A merge-set of ``write.fields`` as a raw protobuf Write (nested maps merge,
    DELETE_FIELD removes): the writes the wire encoder leaves to the library's types."""
    out = _raw_types().Write()
    update = out.update
    update.name = f"{database}/documents/{write.collection}/{write.doc_id}"
    _encode_merge(write.fields, (), update.fields, out.update_mask.field_paths)
    return out


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
            mask.append(field_path(path))
        elif value.__class__ not in _LEAVES and isinstance(value, Mapping) and value:
            nested = _raw_types().MapValue()
            _encode_merge(value, path, nested.fields, mask)
            if nested.fields:  # a map of deletions only leaves no value behind
                values[key].map_value.CopyFrom(nested)
        else:
            mask.append(field_path(path))
            _set_value(values[key], value)
