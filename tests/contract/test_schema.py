"""The Firestore schema: declared once per deployable, the two declarations held equal, and both
held to the files deployed with them.

The gateway declares every collection and field name in ``gateway/storage/schema.py``; the sweep
function, which deploys alone and may not import the gateway, declares them in
``functions/presence_sweep/schema.py``. These tests check that:

1. both modules declare the same upper-case names with the same values, including the
   per-collection field sets (``FIELDS``), the fields of an ``active_sessions`` entry (and
   those an older gateway also wrote there) and the values of a presence ``state``;
2. each declaration is whole: every field constant belongs to some collection's ``FIELDS`` (or to
   an ``active_sessions`` entry), every collection constant has a ``FIELDS`` entry, and the
   only other string constants are the values of ``state`` (``PRESENCE_STATES``);
3. ``firestore.indexes.json`` names only collections of the schema, and in each index or field
   override only fields of that collection;
4. ``firestore.rules`` matches only collections of the schema, and every field it reads through
   ``resource.data`` or ``request.resource.data`` is a field of the collection matched around it;
5. outside the schema modules neither package spells a Firestore-only name as a bare string, so
   a rename in the schema reaches every reader and writer;
6. no collection ``firestore.rules`` lets a client read declares an internal URL, nor does a
   member's ``active_sessions`` entry.
"""

from __future__ import annotations

import ast
import json
import re
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gateway.storage import schema as gateway_schema
from presence_sweep import schema as sweep_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = [gateway_schema, sweep_schema]


def declared(module: ModuleType) -> dict[str, Any]:
    return {name: value for name, value in vars(module).items() if name.isupper()}


def string_constants(module: ModuleType) -> dict[str, str]:
    return {name: value for name, value in declared(module).items() if isinstance(value, str)}


def all_names(module: ModuleType) -> set[str]:
    """Every collection and field name the module declares."""
    fields: set[str] = set().union(*module.FIELDS.values())
    return set(module.FIELDS) | fields | set(module.ACTIVE_SESSION_FIELDS)


def test_gateway_and_function_declare_the_same_schema() -> None:
    """Same constant names, same values, same field sets per collection on both sides."""
    gateway, sweep = declared(gateway_schema), declared(sweep_schema)
    assert gateway.keys() == sweep.keys()
    assert string_constants(gateway_schema) == string_constants(sweep_schema)
    assert dict(gateway_schema.FIELDS) == dict(sweep_schema.FIELDS)
    assert gateway_schema.ACTIVE_SESSION_FIELDS == sweep_schema.ACTIVE_SESSION_FIELDS
    assert gateway_schema.LEGACY_ACTIVE_SESSION_FIELDS == sweep_schema.LEGACY_ACTIVE_SESSION_FIELDS
    assert gateway_schema.PRESENCE_STATES == sweep_schema.PRESENCE_STATES


def test_both_sides_name_the_presence_documents_alike() -> None:
    """presence/{uid} and presence_holders/{uid}, which the gateway and the sweep both write in
    one transaction per transition, have the same names, fields and state values on each side."""
    for module in SCHEMAS:
        assert (module.PRESENCE, module.PRESENCE_HOLDERS) == ("presence", "presence_holders")
        assert module.FIELDS[module.PRESENCE] == {"state", "devices", "last_seen_at"}
        assert module.FIELDS[module.PRESENCE_HOLDERS] == {
            "instances",
            "state",
            "seq",
            "last_seen_at",
            "updated_at",
        }
        assert module.HOLDERS == "instances"
        assert module.PRESENCE_STATES == {module.ONLINE, module.OFFLINE} == {"online", "offline"}


def test_both_sides_give_a_member_the_same_shard() -> None:
    """Same count, same function: CRC-32 of the UTF-8 id modulo MEMBER_SHARDS, in range."""
    assert gateway_schema.MEMBER_SHARDS == sweep_schema.MEMBER_SHARDS == 100
    for user_id in ["u", "user123", "a" * 128, "x@example.com", "é", *map(str, range(500))]:
        shard = gateway_schema.member_shard(user_id)
        assert shard == sweep_schema.member_shard(user_id) == zlib.crc32(user_id.encode()) % 100
    spread = {gateway_schema.member_shard(str(n)) for n in range(2000)}
    assert spread == set(range(gateway_schema.MEMBER_SHARDS))


@pytest.mark.parametrize("module", SCHEMAS, ids=lambda m: m.__name__)
def test_every_declared_name_belongs_to_a_collection(module: ModuleType) -> None:
    """No stray constant: each string constant is a collection, one of a collection's fields or
    a value of state, and every collection has its field set."""
    constants = set(string_constants(module).values())
    assert constants == all_names(module) | module.PRESENCE_STATES
    assert not all_names(module) & module.PRESENCE_STATES
    assert {
        module.MEMBERS,
        module.SESSIONS,
        module.INSTANCES,
        module.STREAMS,
        module.STREAM_ENTRIES,
        module.STREAM_ACKS,
        module.PRESENCE,
        module.PRESENCE_HOLDERS,
    } == set(module.FIELDS)
    # The fields the issue names as shared must be declared on the right collection.
    assert {module.LAST_PONG_AT, module.LAST_SIGN_OUT_AT, module.IS_SIGNED_IN} <= module.FIELDS[
        module.MEMBERS
    ]
    assert {module.IS_ACTIVE, module.SIGNED_OUT_AT} <= module.FIELDS[module.SESSIONS]
    assert {module.HEARTBEAT_AT, module.STOPPED_AT} <= module.FIELDS[module.INSTANCES]


def indexed_fields() -> list[tuple[str, str]]:
    """(collection, field) for each field named in firestore.indexes.json."""
    spec = json.loads((ROOT / "firestore.indexes.json").read_text())
    named = [
        (index["collectionGroup"], field["fieldPath"])
        for index in spec["indexes"]
        for field in index["fields"]
    ]
    named += [(o["collectionGroup"], o["fieldPath"]) for o in spec.get("fieldOverrides", [])]
    return named


@pytest.mark.parametrize("module", SCHEMAS, ids=lambda m: m.__name__)
def test_indexes_name_only_schema_collections_and_fields(module: ModuleType) -> None:
    """Each index's collection is in the schema and each of its fields is that collection's."""
    named = indexed_fields()
    # The sweep's member query and the gateway's signed-out-sessions query need these two.
    assert {(module.MEMBERS, module.IS_SIGNED_IN), (module.SESSIONS, module.SIGNED_OUT_AT)} <= set(
        named
    )
    for collection, field in named:
        assert collection in module.FIELDS, f"index on unknown collection {collection!r}"
        assert field in module.FIELDS[collection], f"index on unknown field {collection}.{field}"


_RULE_TOKENS = re.compile(
    r"match\s+(?P<path>\S+)\s*\{"
    r"|(?P<open>\{)|(?P<close>\})"
    r"|resource\.data(?:\.(?P<dotted>\w+)|\[\s*['\"](?P<indexed>\w+)['\"]\s*\])"
)
_COLLECTION_SEGMENT = re.compile(r"^/(\w+)/\{\w+\}$")


RULES = ROOT / "firestore.rules"


def rules_names(source: str) -> tuple[set[str], list[tuple[str | None, str]]]:
    """The collections a rules file matches, and (collection, field) for each field it reads
    from ``resource.data`` (the collection being the innermost one matched around the read)."""
    text = re.sub(r"//[^\n]*", "", source)
    collections: set[str] = set()
    fields: list[tuple[str | None, str]] = []
    stack: list[str | None] = []
    for token in _RULE_TOKENS.finditer(text):
        if token["path"] is not None:
            segment = _COLLECTION_SEGMENT.match(token["path"])
            collection = segment[1] if segment and segment[1] != "databases" else None
            if collection is not None:
                collections.add(collection)
            stack.append(collection)
        elif token["open"]:
            stack.append(None)
        elif token["close"]:
            stack.pop()
        else:
            inside = next((c for c in reversed(stack) if c is not None), None)
            fields.append((inside, token["dotted"] or token["indexed"]))
    assert not stack, "unbalanced braces in firestore.rules"
    return collections, fields


@pytest.mark.parametrize("module", SCHEMAS, ids=lambda m: m.__name__)
def test_rules_name_only_schema_collections_and_fields(module: ModuleType) -> None:
    """The rules match schema collections (members and presence at least, the ones clients may
    read) and read only fields the schema declares on the matched collection."""
    collections, fields = rules_names(RULES.read_text())
    assert {module.MEMBERS, module.PRESENCE} <= collections
    assert collections <= set(module.FIELDS), collections - set(module.FIELDS)
    for collection, field in fields:
        assert collection in module.FIELDS, f"rules read {field!r} outside a schema collection"
        assert field in module.FIELDS[collection], f"rules read unknown {collection}.{field}"


def test_the_rules_parser_finds_fields_and_collections() -> None:
    """The parser behind the rules test sees nested matches and both spellings of a field read
    (without this the test above could pass by finding nothing)."""
    # The deployed rules read no field today: add two reads to them and parse that.
    text = RULES.read_text().replace(
        "allow write: if false;",
        "allow write: if request.resource.data.last_pong_at == resource.data['is_signed_in'];",
        1,
    )
    collections, fields = rules_names(text)
    assert collections == {gateway_schema.MEMBERS, gateway_schema.PRESENCE}
    assert fields == [
        (gateway_schema.MEMBERS, gateway_schema.LAST_PONG_AT),
        (gateway_schema.MEMBERS, gateway_schema.IS_SIGNED_IN),
    ]


# Names that also mean something outside Firestore (log fields, Pub/Sub attributes, the callback's
# JSON body, a __slots__ entry, the presence events' JSON and attributes, the socket's presence
# frames and the room presence endpoint's "instances") and so may appear as strings elsewhere.
_SHARED_WORDS = {
    gateway_schema.USER_ID,
    gateway_schema.INSTANCE_ID,
    gateway_schema.INTERNAL_URL,
    gateway_schema.CONNECTED_AT,
    gateway_schema.SESSIONS,
    gateway_schema.SIGNED_OUT_AT,
    gateway_schema.PRESENCE,
    gateway_schema.STATE,
    gateway_schema.DEVICES,
    gateway_schema.SEQ,
    gateway_schema.HOLDERS,
}


def _package_sources() -> list[Path]:
    return [
        path
        for path in [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]
        if path.name != "schema.py" and "venv" not in path.parts
    ]


def test_no_module_spells_a_firestore_name_as_a_bare_string() -> None:
    """Readers and writers use the schema's constants: no string literal outside the schema
    modules equals a Firestore-only collection or field name."""
    firestore_only = all_names(gateway_schema) - _SHARED_WORDS
    sources = _package_sources()
    assert len(sources) > 10
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for path in sources
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in firestore_only
    ]
    assert found == []


_READ_GRANT = re.compile(
    r"match\s+(?P<path>\S+)\s*\{|(?P<open>\{)|(?P<close>\})"
    r"|allow\s+(?P<methods>[\w\s,]+?)\s*:\s*if\s+(?P<condition>[^;]+);"
)


def client_readable(source: str, collections: set[str]) -> set[str]:
    """The collections (of ``collections``) whose documents some client may read: those matched
    around an ``allow`` of read, get or list on a condition other than ``false``; a grant under
    a wildcard match (``{document=**}``) opens every collection."""
    text = re.sub(r"//[^\n]*", "", source)
    readable: set[str] = set()
    stack: list[str | None] = []
    for token in _READ_GRANT.finditer(text):
        if token["path"] is not None:
            segment = _COLLECTION_SEGMENT.match(token["path"])
            stack.append(segment[1] if segment and segment[1] != "databases" else None)
            if "=**}" in token["path"]:
                stack[-1] = "*"
        elif token["open"]:
            stack.append(None)
        elif token["close"]:
            stack.pop()
        elif token["condition"].strip() != "false" and {"read", "get", "list"} & set(
            re.split(r"[\s,]+", token["methods"].strip())
        ):
            inside = next((c for c in reversed(stack) if c is not None), "*")
            readable |= collections if inside == "*" else {inside}
    return readable


def test_the_readability_parser_sees_grants_and_wildcards() -> None:
    """The parser behind the next test finds the deployed grant, and sees a wildcard grant as
    opening everything (without this the next test could pass by finding nothing)."""
    collections = set(gateway_schema.FIELDS)
    assert client_readable(RULES.read_text(), collections) == {
        gateway_schema.MEMBERS,
        gateway_schema.PRESENCE,
    }
    opened = RULES.read_text().replace(
        "allow read, write: if false;", "allow get, write: if request.auth != null;"
    )
    assert client_readable(opened, collections) == collections


@pytest.mark.parametrize("module", SCHEMAS, ids=lambda m: m.__name__)
def test_no_client_readable_document_declares_an_internal_url(module: ModuleType) -> None:
    """A user may read their own member document and anyone's presence: neither these, the
    active_sessions entries nor any other collection the rules open to clients carries a gateway
    instance's internal URL, which only the sweep needs (from gateway_instances, closed to
    clients); presence_holders, which names the instances holding a user's sockets, is closed."""
    readable = client_readable(RULES.read_text(), set(module.FIELDS))
    assert {module.MEMBERS, module.PRESENCE} <= readable
    assert not {module.INSTANCES, module.PRESENCE_HOLDERS} & readable
    for collection in readable:
        assert module.INTERNAL_URL not in module.FIELDS[collection], collection
    assert module.INTERNAL_URL not in module.ACTIVE_SESSION_FIELDS
