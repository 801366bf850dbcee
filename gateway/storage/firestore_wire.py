"""Firestore ``CommitRequest``s written straight to protobuf wire bytes, for the write-behind
buffer's commits (``FirestoreStore.commit``).

Why bytes: at 5,000 pongs/s the commit path was the gateway's largest cost after the socket
writes themselves. Writing the bytes here costs less than building each pong's ``Write`` as a
(C-implemented) protobuf message and serializing the request, and the gRPC call then neither
serializes a request nor parses a response (measured with ``python -m tests.bench.commit_bench``,
``wire`` against ``protobufs``: docs/benchmarks.md#commit-paths).

What is encoded here is the common write only: a merge-set of top-level strings and
timestamps (every pong's ``last_pong_at`` and ``updated_at``). Any other write
(nested maps, deletions, numbers) is passed to a fallback that returns its ``Write`` already
serialized: a message is the concatenation of its fields, so both kinds mix in one request.

Field numbers come from the library's descriptors (``wire_tags``), not from this file; the
bytes are held to the library's own serialization by tests/unit/test_firestore_wire.py.
Nothing here does I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.storage.store import Write

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LENGTH_DELIMITED = 2
_VARINT = 0
#: One-byte varints: every length under 128 (most names, keys and values here).
_SMALL = tuple(bytes((n,)) for n in range(128))


def call_metadata(client: Any, route: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """The metadata the library's generated client sends with a raw call on its channel: the
    client's own (``_rpc_metadata``) and the routing header, ``route`` being the request field
    the method routes by and its value (``database`` for Commit and BatchGetDocuments, the
    document's ``name`` for GetDocument)."""
    from google.api_core import gapic_v1

    header = gapic_v1.routing_header.to_grpc_metadata((route,))  # type: ignore[no-untyped-call]
    return (*client._rpc_metadata, header)


def timestamp_parts(value: datetime) -> tuple[int, int]:
    """A ``google.protobuf.Timestamp``'s (seconds, nanos) for an aware datetime."""
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    delta = value - EPOCH
    return delta.days * 86_400 + delta.seconds, delta.microseconds * 1000


_SIMPLE_SEGMENT = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")


@functools.lru_cache(maxsize=4096)
def field_path(path: tuple[str, ...]) -> str:
    """Firestore's field path syntax: segments joined by dots, backquoted unless simple."""
    return ".".join(
        part
        if _SIMPLE_SEGMENT.fullmatch(part)
        else "`" + part.replace("\\", "\\\\").replace("`", "\\`") + "`"
        for part in path
    )


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint; a negative int64 as its 64-bit two's complement. Unrolled
    to four bytes (lengths, nanos), the loop beyond (seconds take five)."""
    if 0 <= n < 0x80:
        return _SMALL[n]
    if 0 < n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if 0 < n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if 0 < n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def is_flat(fields: Mapping[str, Any]) -> bool:
    """Whether ``CommitEncoder`` writes these fields itself: strings and datetimes only (an
    empty merge-set, which only creates the document, is left to the library)."""
    if not fields:
        return False
    for value in fields.values():
        if value.__class__ is not datetime and value.__class__ is not str:
            return False
    return True


@dataclass(frozen=True, slots=True)
class WireTags:
    """The tag bytes (field number and wire type) of the fields the encoder writes."""

    request_database: bytes
    request_writes: bytes
    write_update: bytes
    write_mask: bytes
    document_name: bytes
    document_fields: bytes
    entry_key: bytes
    entry_value: bytes
    value_timestamp: bytes
    value_string: bytes
    timestamp_seconds: bytes
    timestamp_nanos: bytes
    mask_paths: bytes


@functools.cache
def wire_tags() -> WireTags:
    """The tags, read from google-cloud-firestore's descriptors (imported here, not at module
    import, like every client-side library in the gateway)."""
    from google.cloud.firestore_v1.types import common, document, firestore
    from google.cloud.firestore_v1.types import write as write_types
    from google.protobuf.timestamp_pb2 import Timestamp

    def tag(message: Any, name: str, wire_type: int = _LENGTH_DELIMITED) -> bytes:
        return varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | wire_type)

    doc = document.Document.pb()
    entry = doc.DESCRIPTOR.fields_by_name["fields"].message_type
    return WireTags(
        request_database=tag(firestore.CommitRequest.pb(), "database"),
        request_writes=tag(firestore.CommitRequest.pb(), "writes"),
        write_update=tag(write_types.Write.pb(), "update"),
        write_mask=tag(write_types.Write.pb(), "update_mask"),
        document_name=tag(doc, "name"),
        document_fields=tag(doc, "fields"),
        entry_key=varint(entry.fields_by_name["key"].number << 3 | _LENGTH_DELIMITED),
        entry_value=varint(entry.fields_by_name["value"].number << 3 | _LENGTH_DELIMITED),
        value_timestamp=tag(document.Value.pb(), "timestamp_value"),
        value_string=tag(document.Value.pb(), "string_value"),
        timestamp_seconds=tag(Timestamp, "seconds", _VARINT),
        timestamp_nanos=tag(Timestamp, "nanos", _VARINT),
        mask_paths=tag(common.DocumentMask.pb(), "field_paths"),
    )


class CommitEncoder:
    """Encodes the write-behind buffer's batches as one database's ``CommitRequest`` bytes.

    Keeps two small caches across requests: the bytes before each (field, value length) map
    entry and each field set's update mask. Pong writes share one field set, so both stay a
    handful of entries.
    """

    def __init__(self, database: str, tags: WireTags | None = None) -> None:
        self._tags = tags or wire_tags()
        name = database.encode()
        self._head = self._tags.request_database + varint(len(name)) + name
        self._names = f"{database}/documents/"
        self._entry_heads: dict[tuple[str, int], bytes] = {}
        self._masks: dict[tuple[str, ...], bytes] = {}
        #: The last timestamp's seconds and their encoding: pongs in one batch share a few.
        self._seconds = (0, b"")

    def request(self, writes: Sequence[Write], serialize: Callable[[Write], bytes]) -> bytes:
        """The request committing ``writes``; ``serialize`` gives a serialized protobuf
        ``Write`` for any write that is not flat (``is_flat``)."""
        tag = self._tags.request_writes
        parts = [self._head]
        for write in writes:
            body = self._write(write) if is_flat(write.fields) else serialize(write)
            parts += (tag, varint(len(body)), body)
        return b"".join(parts)

    def _write(self, write: Write) -> bytes:
        tags = self._tags
        name = f"{self._names}{write.collection}/{write.doc_id}".encode()
        parts = [tags.document_name, varint(len(name)), name]
        last: datetime | None = None
        stamp = b""
        for key, value in write.fields.items():
            if value.__class__ is str:
                text = value.encode()
                encoded = tags.value_string + varint(len(text)) + text
            else:
                if value is not last:  # a pong's two fields share one datetime
                    stamp = self._timestamp(value)
                    last = value
                encoded = stamp
            head = self._entry_heads.get((key, len(encoded)))
            if head is None:
                head = self._entry_head(key, len(encoded))
            parts += (head, encoded)
        document = b"".join(parts)
        keys = tuple(write.fields)
        mask = self._masks.get(keys)
        if mask is None:
            mask = self._mask(keys)
        return b"".join((tags.write_update, varint(len(document)), document, mask))

    def _timestamp(self, value: datetime) -> bytes:
        tags = self._tags
        seconds, nanos = timestamp_parts(value)
        # proto3 leaves zero fields out, as the library's serializer does.
        if seconds != self._seconds[0]:
            self._seconds = (seconds, tags.timestamp_seconds + varint(seconds) if seconds else b"")
        body = self._seconds[1] + (tags.timestamp_nanos + varint(nanos) if nanos else b"")
        return tags.value_timestamp + _SMALL[len(body)] + body  # at most 22 bytes

    def _entry_head(self, key: str, value_length: int) -> bytes:
        tags = self._tags
        name = key.encode()
        inner = tags.entry_key + varint(len(name)) + name + tags.entry_value + varint(value_length)
        head = tags.document_fields + varint(len(inner) + value_length) + inner
        if len(self._entry_heads) < 1024:  # a bound, should writes ever carry arbitrary keys
            self._entry_heads[(key, value_length)] = head
        return head

    def _mask(self, keys: tuple[str, ...]) -> bytes:
        tags = self._tags
        paths = b"".join(
            tags.mask_paths + varint(len(path)) + path
            for path in (field_path((key,)).encode() for key in keys)
        )
        mask = tags.write_mask + varint(len(paths)) + paths
        if len(self._masks) < 256:
            self._masks[keys] = mask
        return mask
