"""What the gateway and the sweep function must agree on, written once per side, pinned here.

The function deploys alone and imports nothing from the gateway, so these tests are the only
place both sides meet.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from gateway.protocol.messages import TimeoutCallback
from gateway.storage import schema as gateway_schema
from gateway.storage import store as gateway_store
from presence_sweep import adapters
from presence_sweep import schema as sweep_schema
from presence_sweep.adapters import callback_body
from presence_sweep.decision import SessionRef

ROOT = Path(__file__).resolve().parents[2]


def test_callback_body_from_the_function_decodes_on_the_gateway() -> None:
    """The function's callback body is exactly what the gateway's endpoint decodes."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    body = callback_body([SessionRef("u1", "s1", "i")], now)
    decoded = msgspec.json.decode(json.dumps(body), type=TimeoutCallback)
    assert [(s.user_id, s.session_id) for s in decoded.sessions] == [("u1", "s1")]
    assert decoded.signed_out_at == now.isoformat()


def test_callback_path_matches_the_gateway_route() -> None:
    """The function posts to the path the gateway serves."""
    from gateway.web.routes import internal_timeout

    assert adapters.CALLBACK_PATH in internal_timeout.paths


def test_collection_and_field_names_agree() -> None:
    """Both sides name the same collections and fields."""
    assert (sweep_schema.MEMBERS, sweep_schema.SESSIONS, sweep_schema.INSTANCES) == (
        gateway_schema.MEMBERS,
        gateway_schema.SESSIONS,
        gateway_schema.INSTANCES,
    )
    member, session = gateway_store.connect_writes("u", "s", "i", datetime.now(UTC))
    assert {sweep_schema.IS_SIGNED_IN, sweep_schema.LAST_PONG_AT} <= set(member.fields)
    assert sweep_schema.ACTIVE_SESSIONS == gateway_schema.ACTIVE_SESSIONS
    # The function finds a user's sockets in the member's active_sessions map.
    assert adapters.active_sessions("u", dict(member.fields)) == [SessionRef("u", "s", "i")]
    assert sweep_schema.IS_ACTIVE in session.fields


def test_the_sweep_finds_an_instances_url_where_the_gateway_registers_it() -> None:
    """The gateway writes its internal URL to its registry entry, at start and with every
    heartbeat, and the function reads it from there; a member's session entry holds exactly
    the declared fields, so no URL."""
    now = datetime.now(UTC)
    registered = gateway_store.instance_write("i", "http://g:8000", now)
    assert registered.collection == sweep_schema.INSTANCES
    # As stored: the write's deletes (a restart clears stopped_at) leave no field behind.
    stored = {k: v for k, v in registered.fields.items() if v is not gateway_store.DELETE_FIELD}
    entry = adapters.instance_entry(stored)
    assert (entry.heartbeat, entry.internal_url) == (now, "http://g:8000")
    member, _ = gateway_store.connect_writes("u", "s", "i", now)
    (where,) = member.fields[gateway_schema.ACTIVE_SESSIONS].values()
    assert set(where) == sweep_schema.ACTIVE_SESSION_FIELDS


def test_the_sweep_still_reads_the_url_an_older_gateway_recorded_on_the_member() -> None:
    """A member written before the URL moved to the registry is still called back there."""
    old_entry = {sweep_schema.INSTANCE_ID: "i", sweep_schema.INTERNAL_URL: "http://old"}
    assert set(old_entry) == (
        sweep_schema.ACTIVE_SESSION_FIELDS | sweep_schema.LEGACY_ACTIVE_SESSION_FIELDS
    )
    member = {sweep_schema.ACTIVE_SESSIONS: {"s": old_entry}}
    assert adapters.active_sessions("u", member) == [SessionRef("u", "s", "i", "http://old")]


def _declared_indexes() -> set[tuple[str, tuple[str, ...]]]:
    spec = json.loads((ROOT / "firestore.indexes.json").read_text())
    return {
        (index["collectionGroup"], tuple(f["fieldPath"] for f in index["fields"]))
        for index in spec["indexes"]
    }


def _queries_in(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Each `.collection(X)` query chain and the fields its filters and orderings use."""
    found = []
    source = path.read_text()
    for chain in re.finditer(
        r"\.collection\((\w+)\)((?:\s*\.(?:where|order_by)\([^\n]*\))+)", source
    ):
        # Sources name collections and fields by their schema constants (both schemas are
        # equal, tests/contract/test_schema.py): resolve them to the names Firestore sees.
        collection = getattr(gateway_schema, chain.group(1))
        fields = re.findall(r'FieldFilter\(\s*"?(\w+)"?|order_by\((\w+)', chain.group(2))
        names = []
        for filtered, ordered in fields:
            name = filtered or ordered
            name = getattr(gateway_schema, name) if name.isupper() else name
            if name not in names:
                names.append(name)
        if len(names) > 1:
            found.append((collection, tuple(names)))
    return found


def test_every_composite_query_has_its_index_declared() -> None:
    """The emulator ignores indexes, production does not: each multi-field query is declared."""
    # The queries the code actually sends are recorded and checked by Firestore's rules in
    # tests/integration/test_index_layout.py; this reads the sources, without an emulator.
    sources = [
        *sorted((ROOT / "functions" / "presence_sweep").glob("*.py")),
        *sorted((ROOT / "gateway").rglob("*.py")),
    ]
    queries = [q for path in sources for q in _queries_in(path)]
    declared = _declared_indexes()
    sweep_query = (gateway_schema.SHARD, gateway_schema.IS_SIGNED_IN, gateway_schema.LAST_PONG_AT)
    assert {
        (gateway_schema.MEMBERS, sweep_query),
        (gateway_schema.SESSIONS, (gateway_schema.INSTANCE_ID, gateway_schema.SIGNED_OUT_AT)),
    } <= set(queries), queries
    for query in queries:
        assert query in declared, f"no index declared for {query}"


def test_firebase_json_points_at_the_function_source() -> None:
    """`firebase deploy --only functions` deploys functions/ with its own requirements."""
    config: dict[str, Any] = json.loads((ROOT / "firebase.json").read_text())
    assert config["functions"][0]["source"] == "functions"
    assert (ROOT / "functions" / "main.py").exists()
    requirements = (ROOT / "functions" / "requirements.txt").read_text()
    assert "firebase-functions" in requirements and "firebase-admin" in requirements
    for path in (ROOT / "functions").rglob("*.py"):
        imported = re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), re.MULTILINE)
        assert "gateway" not in imported, f"{path} imports the gateway"
