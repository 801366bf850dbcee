"""The rules ``firestore.indexes.json`` is held to, and a recorder of what the code sends.

Firestore enforces both rules in production; the emulator enforces neither, so no other test
would notice a break. ``tests/contract/test_index_layout.py`` applies them to the gateway's write
builders, ``tests/integration/test_index_layout.py`` to the writes and queries the code sends
to the emulator.

**Hot timestamps** (Google's "Sharded timestamps"): a collection takes about 500 writes a second
while one of its indexes holds a field that only grows, such as a timestamp set to now, unless
that index leads with a shard field. So each timestamp written on a hot path (per pong, per
connect or close, per sign-out, per durable message or acknowledgement) must be

1. exempt from single-field indexing: a ``fieldOverrides`` entry for its collection group and
   path with ``"indexes": []``; and
2. in composite indexes only behind the collection's partition field (``PARTITIONS``).

**Queries** (Firestore's index documentation, reduced to the shapes a query can take here):

- no filter and no order other than the document name: the built-in document-name index;
- one field alone (one equality, or one range and/or order): that field's single-field index in
  the query's scope and direction. Automatic ones exist with collection scope in both
  directions unless a field override names the field; then the override must list it;
- several equalities and nothing else: each field's single-field index (Firestore merges them);
- otherwise: a composite index in the query's scope whose fields are the equality fields, in
  any order, then the range and order fields in the query's order and directions (a range field
  the query does not order by comes first, ascending: Firestore orders by it implicitly).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.storage.schema import INSTANCE_ID, MEMBERS, SESSIONS, SHARD

ROOT = Path(__file__).resolve().parent.parent
INDEXES = ROOT / "firestore.indexes.json"

#: The field a composite index of each collection may lead with to hold a hot timestamp.
#: members: the shard (100 values). sessions: the instance, which the gateway's reconcile query
#: (``signed_out_sessions``) needs first anyway. It partitions signed_out_at's range by instance;
#: one instance holds at most 1,000 sockets (Cloud Run's concurrency), so a burst of sign-outs
#: writes at most that many entries into one range, and the sweep's 410 sign-outs a second
#: (docs/capacity.md) spread over every instance of a deployment that large.
PARTITIONS: Mapping[str, str] = {MEMBERS: SHARD, SESSIONS: INSTANCE_ID}

_EQUALITIES = {"EQUAL", "IN", "ARRAY_CONTAINS", "ARRAY_CONTAINS_ANY", "IS_NULL", "IS_NAN"}
_RANGES = {
    "LESS_THAN",
    "LESS_THAN_OR_EQUAL",
    "GREATER_THAN",
    "GREATER_THAN_OR_EQUAL",
    "NOT_EQUAL",
    "NOT_IN",
    "IS_NOT_NULL",
    "IS_NOT_NAN",
}
_DOCUMENT_NAME = "__name__"


def load(path: Path = INDEXES) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(path.read_text())
    return spec


def timestamps(
    collection: str, fields: Mapping[str, Any], prefix: str = ""
) -> set[tuple[str, str]]:
    """(collection, field path) for each timestamp among a write's fields, nested ones too."""
    found: set[tuple[str, str]] = set()
    for name, value in fields.items():
        if isinstance(value, datetime):
            found.add((collection, prefix + name))
        elif isinstance(value, Mapping):
            found |= timestamps(collection, value, f"{prefix}{name}.")
    return found


def _override(spec: Mapping[str, Any], collection: str, path: str) -> Mapping[str, Any] | None:
    return next(
        (
            o
            for o in spec.get("fieldOverrides", [])
            if o["collectionGroup"] == collection and o["fieldPath"] == path
        ),
        None,
    )


def without_override(spec: Mapping[str, Any], collection: str, path: str) -> dict[str, Any]:
    """A copy of ``spec`` without the field override of ``collection.path``."""
    bad = copy.deepcopy(dict(spec))
    bad["fieldOverrides"] = [
        o
        for o in bad["fieldOverrides"]
        if (o["collectionGroup"], o["fieldPath"]) != (collection, path)
    ]
    return bad


def old_layout() -> dict[str, Any]:
    """firestore.indexes.json as it was before the shard: the sweep's index without it, and
    no exemption but the TTL field's. The checks must fail on it."""
    spec = copy.deepcopy(load())
    (members,) = [i for i in spec["indexes"] if i["collectionGroup"] == MEMBERS]
    members["fields"] = members["fields"][1:]
    spec["fieldOverrides"] = [o for o in spec["fieldOverrides"] if o.get("ttl")]
    return spec


def layout_violations(
    spec: Mapping[str, Any],
    hot: Iterable[tuple[str, str]],
    partitions: Mapping[str, str] = PARTITIONS,
) -> list[str]:
    """What breaks the hot-timestamp rules, one sentence each (empty: nothing)."""
    problems = []
    for collection, path in sorted(set(hot)):
        override = _override(spec, collection, path)
        if override is None or override.get("indexes") != []:
            problems.append(f"{collection}.{path} is indexed alone (no override with no indexes)")
        for index in spec.get("indexes", []):
            names = [f["fieldPath"] for f in index["fields"]]
            if index["collectionGroup"] == collection and path in names:
                if names[0] != partitions.get(collection):
                    problems.append(
                        f"{collection}.{path} is in the index {tuple(names)}, which does not lead "
                        f"with {partitions.get(collection, 'a partition field')}"
                    )
    return problems


@dataclass(frozen=True)
class Query:
    """What decides which index serves a query: its collection group and scope, the fields of
    its equality filters, of its range filters, and its orders (the document name's left out)."""

    collection: str
    group: bool = False
    equalities: frozenset[str] = frozenset()
    ranges: frozenset[str] = frozenset()
    orders: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_protobuf(cls, query: Any) -> Query:
        """From a google-cloud-firestore ``StructuredQuery`` (proto-plus or raw)."""
        pb = getattr(query, "_pb", query)
        (source,) = pb.from_
        equalities: set[str] = set()
        ranges: set[str] = set()
        pending = [pb.where] if pb.HasField("where") else []
        while pending:
            where = pending.pop()
            kind = where.WhichOneof("filter_type")
            if kind == "composite_filter":
                composite = where.composite_filter
                if _enum_name(composite, "op") != "AND":
                    raise ValueError("OR queries are not covered by these rules")
                pending.extend(composite.filters)
                continue
            one = getattr(where, kind)
            op = _enum_name(one, "op")
            if op not in _EQUALITIES | _RANGES:
                raise ValueError(f"unknown filter operator {op}")
            (equalities if op in _EQUALITIES else ranges).add(one.field.field_path)
        orders = tuple(
            (o.field.field_path, _enum_name(o, "direction"))
            for o in pb.order_by
            if o.field.field_path != _DOCUMENT_NAME
        )
        return cls(
            source.collection_id,
            source.all_descendants,
            frozenset(equalities),
            frozenset(ranges),
            orders,
        )

    def sorted_fields(self) -> tuple[tuple[str, str], ...]:
        """The fields after the equalities in a serving index, with their directions."""
        ordered = {name for name, _ in self.orders}
        implicit = tuple((name, "ASCENDING") for name in sorted(self.ranges - ordered))
        return implicit + self.orders


def _enum_name(message: Any, name: str) -> str:
    """The name of an enum field's value, from the message's descriptor."""
    enum = message.DESCRIPTOR.fields_by_name[name].enum_type
    return str(enum.values_by_number[getattr(message, name)].name)


def _single_field(spec: Mapping[str, Any], query: Query, path: str, direction: str) -> bool:
    """Whether the field's single-field index in ``direction`` serves the query's scope."""
    scope = "COLLECTION_GROUP" if query.group else "COLLECTION"
    override = _override(spec, query.collection, path)
    if override is None:
        return scope == "COLLECTION"  # Firestore's automatic indexes
    return any(
        i.get("order") == direction and i.get("queryScope", "COLLECTION") == scope
        for i in override.get("indexes", [])
    )


def unserved(spec: Mapping[str, Any], query: Query) -> str | None:
    """Why no declared index serves ``query``, or None when one does."""
    after = query.sorted_fields()
    scope = "COLLECTION_GROUP" if query.group else "COLLECTION"
    if not query.equalities and not after:
        return None
    if len(query.equalities) + len(after) == 1:
        path, direction = after[0] if after else (next(iter(query.equalities)), "ASCENDING")
        if _single_field(spec, query, path, direction):
            return None
        return f"{query}: no single-field index of {path} ({direction}, {scope} scope)"
    if not after and all(_single_field(spec, query, f, "ASCENDING") for f in query.equalities):
        return None
    for index in spec.get("indexes", []):
        if index["collectionGroup"] != query.collection or index["queryScope"] != scope:
            continue
        fields = [(f["fieldPath"], f.get("order")) for f in index["fields"]]
        head, tail = fields[: len(query.equalities)], fields[len(query.equalities) :]
        if {name for name, _ in head} == query.equalities and tuple(tail) == after:
            return None
    wanted = (*sorted(query.equalities), *(name for name, _ in after))
    return f"{query}: no composite index {wanted} in {query.collection}"


@dataclass
class Recording:
    queries: set[Query] = field(default_factory=set)
    #: (collection, field path) of every timestamp written.
    timestamps: set[tuple[str, str]] = field(default_factory=set)


@contextmanager
def recording() -> Iterator[Recording]:
    """Record the structured queries google-cloud-firestore builds (sync and async clients) and
    the timestamps of every write it batches (batches, transactions, single writes)."""
    from google.cloud.firestore_v1 import base_batch, base_query

    seen = Recording()
    build, add = base_query.BaseQuery._to_protobuf, base_batch.BaseBatch._add_write_pbs

    def to_protobuf(self: Any) -> Any:
        pb = build(self)
        seen.queries.add(Query.from_protobuf(pb))
        return pb

    def add_write_pbs(self: Any, write_pbs: list[Any]) -> None:
        for write in write_pbs:
            seen.timestamps |= _written_timestamps(getattr(write, "_pb", write))
        add(self, write_pbs)

    base_query.BaseQuery._to_protobuf = to_protobuf  # type: ignore[method-assign]
    base_batch.BaseBatch._add_write_pbs = add_write_pbs  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        base_query.BaseQuery._to_protobuf = build  # type: ignore[method-assign]
        base_batch.BaseBatch._add_write_pbs = add  # type: ignore[method-assign]


def _written_timestamps(write: Any) -> set[tuple[str, str]]:
    if write.WhichOneof("operation") != "update":
        return set()
    collection = write.update.name.split("/")[-2]
    found: set[tuple[str, str]] = set()
    pending = [("", write.update.fields)]
    while pending:
        prefix, fields = pending.pop()
        for name, value in fields.items():
            kind = value.WhichOneof("value_type")
            if kind == "timestamp_value":
                found.add((collection, prefix + name))
            elif kind == "map_value":
                pending.append((f"{prefix}{name}.", value.map_value.fields))
    # A server timestamp (firestore.SERVER_TIMESTAMP) is a transform, not a value.
    found |= {(collection, t.field_path) for t in write.update_transforms}
    return found
