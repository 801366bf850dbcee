"""firestore.indexes.json holds no timestamp the gateway writes on a hot path in an index that
caps the collection at 500 writes a second, and serves the shapes of the code's queries.

The rules are in ``tests/index_layout.py``. The timestamps here come from the gateway's own
write builders (connect, pong, close, sign-out, stream acknowledgement) and, for the user presence
documents written on every connect and close transition, from their declaration
(``PRESENCE_TRANSITION_FIELDS``); the sweep's writes and
the durable appends are recorded from what the code sends to the emulator, with every query, in
``tests/integration/test_index_layout.py``. Each rule is also shown to fail on a layout that
breaks it.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from gateway.instance.stream_delivery import _ack_fields
from gateway.storage import schema
from gateway.storage.store import (
    Write,
    connect_writes,
    disconnect_writes,
    pong_write,
    sign_out_writes,
)
from presence_sweep import schema as sweep_schema
from tests.index_layout import (
    Query,
    layout_violations,
    load,
    old_layout,
    timestamps,
    unserved,
    without_override,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def gateway_hot_writes() -> list[Write]:
    """What the gateway writes per connect, pong, close, sign-out on demand and stream ack."""
    return [
        *connect_writes("u", "s", "i", NOW),
        pong_write("u", NOW),
        *disconnect_writes("u", "s", 1000, NOW),
        *sign_out_writes("u", ["s"], NOW),
        Write(schema.STREAM_ACKS, "u", _ack_fields("epoch", 1)),
    ]


def gateway_hot_timestamps() -> set[tuple[str, str]]:
    return set().union(*(timestamps(w.collection, w.fields) for w in gateway_hot_writes()))


#: What a user presence transition writes (docs/presence.md) that must not be indexed alone: the
#: timestamps of presence/{uid} and presence_holders/{uid}, which the gateway and the sweep set
#: to now on every connect and close transition, and the holders' map of instance ids (one
#: index entry per instance otherwise, each an id no query filters on).
PRESENCE_TRANSITION_FIELDS = frozenset(
    {
        (schema.PRESENCE, schema.LAST_SEEN_AT),
        (schema.PRESENCE_HOLDERS, schema.LAST_SEEN_AT),
        (schema.PRESENCE_HOLDERS, schema.UPDATED_AT),
        (schema.PRESENCE_HOLDERS, schema.HOLDERS),
    }
)


def hot_fields() -> set[tuple[str, str]]:
    return gateway_hot_timestamps() | PRESENCE_TRANSITION_FIELDS


def test_the_gateways_hot_timestamps_are_found() -> None:
    """The builders yield the timestamps of every hot write (so the next test checks them)."""
    assert {
        (schema.MEMBERS, schema.LAST_PONG_AT),
        (schema.MEMBERS, schema.UPDATED_AT),
        (schema.MEMBERS, schema.LAST_CONNECTED_AT),
        (schema.MEMBERS, schema.LAST_SIGN_OUT_AT),
        (schema.SESSIONS, schema.CONNECTED_AT),
        (schema.SESSIONS, schema.DISCONNECTED_AT),
        (schema.SESSIONS, schema.SIGNED_OUT_AT),
        (schema.STREAM_ACKS, schema.ACKED_AT),
    } <= gateway_hot_timestamps()


def test_no_hot_timestamp_of_the_gateway_caps_its_collection() -> None:
    """Each is exempt from single-field indexing and held only by indexes that lead with its
    collection's partition field."""
    assert layout_violations(load(), gateway_hot_timestamps()) == []


def test_no_field_a_presence_transition_writes_is_indexed() -> None:
    """presence.last_seen_at and presence_holders' last_seen_at, updated_at and instances map are
    exempt from single-field indexing, and no composite index holds them."""
    assert layout_violations(load(), PRESENCE_TRANSITION_FIELDS) == []
    assert PRESENCE_TRANSITION_FIELDS <= {
        (collection, path) for collection, fields in schema.FIELDS.items() for path in fields
    }


def test_the_sweeps_index_leads_with_the_shard() -> None:
    """The one members index is (shard, is_signed_in, last_pong_at), and the sweep's shard is
    the field the gateway writes (both schemas declare it alike, tests/contract/test_schema.py)."""
    members = [i for i in load()["indexes"] if i["collectionGroup"] == schema.MEMBERS]
    assert [[f["fieldPath"] for f in i["fields"]] for i in members] == [
        [schema.SHARD, schema.IS_SIGNED_IN, schema.LAST_PONG_AT]
    ]
    (member, _) = connect_writes("u", "s", "i", NOW)
    assert member.fields[sweep_schema.SHARD] == sweep_schema.member_shard("u")


def test_the_ttl_field_is_not_indexed() -> None:
    """stream_entries.expires_at, the TTL policy's field, is exempt (Google's advice for TTL
    fields: a timestamp that only grows)."""
    (ttl,) = [o for o in load()["fieldOverrides"] if o.get("ttl")]
    assert (ttl["collectionGroup"], ttl["fieldPath"], ttl["indexes"]) == (
        schema.STREAM_ENTRIES,
        schema.EXPIRES_AT,
        [],
    )


# --- the checks bite -------------------------------------------------------------------------


@pytest.mark.parametrize("hot", sorted(hot_fields()), ids=".".join)
def test_removing_an_exemption_fails(hot: tuple[str, str]) -> None:
    """Without its override a hot field has its automatic single-field index: caught."""
    bad = without_override(load(), *hot)
    assert layout_violations(bad, hot_fields()) == [
        f"{hot[0]}.{hot[1]} is indexed alone (no override with no indexes)"
    ]


def test_an_override_that_keeps_an_index_fails() -> None:
    """An override listing an ascending index for last_pong_at still indexes it alone."""
    bad = copy.deepcopy(load())
    for override in bad["fieldOverrides"]:
        if (override["collectionGroup"], override["fieldPath"]) == (
            schema.MEMBERS,
            schema.LAST_PONG_AT,
        ):
            override["indexes"] = [{"order": "ASCENDING", "queryScope": "COLLECTION"}]
    assert layout_violations(bad, gateway_hot_timestamps()) == [
        "members.last_pong_at is indexed alone (no override with no indexes)"
    ]


def test_the_old_unsharded_layout_fails() -> None:
    """The (is_signed_in, last_pong_at) index and the automatic single-field indexes are caught,
    and the sweep's query is then served by no index."""
    problems = layout_violations(old_layout(), gateway_hot_timestamps())
    assert "members.last_pong_at is indexed alone (no override with no indexes)" in problems
    assert (
        "members.last_pong_at is in the index ('is_signed_in', 'last_pong_at'), which does not "
        "lead with shard"
    ) in problems
    assert len(problems) == len(gateway_hot_timestamps()) + 1
    assert unserved(old_layout(), SWEEP_QUERY) is not None


def test_a_composite_that_puts_the_shard_second_fails() -> None:
    """A shard behind is_signed_in does not lead the index: caught (and the sweep's query, its
    equalities in any order, would be served by it, so only this rule stops it)."""
    bad = copy.deepcopy(load())
    (members,) = [i for i in bad["indexes"] if i["collectionGroup"] == schema.MEMBERS]
    members["fields"][:2] = members["fields"][1::-1]
    assert layout_violations(bad, gateway_hot_timestamps()) == [
        "members.last_pong_at is in the index ('is_signed_in', 'shard', 'last_pong_at'), which "
        "does not lead with shard"
    ]
    assert unserved(bad, SWEEP_QUERY) is None


# --- the query rules, on the shapes the code sends (the recorded ones are checked against the
# --- emulator in tests/integration/test_index_layout.py)

SWEEP_QUERY = Query(
    schema.MEMBERS,
    equalities=frozenset({schema.SHARD, schema.IS_SIGNED_IN}),
    ranges=frozenset({schema.LAST_PONG_AT}),
    orders=((schema.LAST_PONG_AT, "ASCENDING"),),
)
RECONCILE_QUERY = Query(
    schema.SESSIONS,
    equalities=frozenset({schema.INSTANCE_ID}),
    ranges=frozenset({schema.SIGNED_OUT_AT}),
)
HEARTBEAT_QUERY = Query(schema.INSTANCES, ranges=frozenset({schema.HEARTBEAT_AT}))
#: The sweep's query of a lost instance's sockets, whose users' presence it takes them out of.
LOST_INSTANCE_QUERY = Query(
    schema.SESSIONS, equalities=frozenset({schema.INSTANCE_ID, schema.IS_ACTIVE})
)


@pytest.mark.parametrize(
    "query",
    [
        SWEEP_QUERY,
        RECONCILE_QUERY,
        HEARTBEAT_QUERY,
        LOST_INSTANCE_QUERY,
        Query(schema.STREAM_ENTRIES, ranges=frozenset({schema.ENTRY_OFFSET})),
        Query(schema.MEMBERS),  # the backfill: every member by document name
    ],
)
def test_the_query_shapes_are_served(query: Query) -> None:
    """Each shape the code sends has its index."""
    assert unserved(load(), query) is None


def test_the_lost_instance_query_has_a_composite_index() -> None:
    """sessions where instance_id == X and is_active == true is served by a composite index of
    its own, not by merging the two single-field indexes (is_active alone splits sessions in
    two): (instance_id, is_active), in the order the sweep's source names the filters."""
    sessions = [
        [(f["fieldPath"], f["order"]) for f in i["fields"]]
        for i in load()["indexes"]
        if i["collectionGroup"] == schema.SESSIONS and i["queryScope"] == "COLLECTION"
    ]
    assert [(schema.INSTANCE_ID, "ASCENDING"), (schema.IS_ACTIVE, "ASCENDING")] in sessions


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (HEARTBEAT_QUERY, "no single-field index of heartbeat_at (ASCENDING, COLLECTION scope)"),
        (
            Query(schema.MEMBERS, ranges=frozenset({schema.LAST_PONG_AT})),
            "no single-field index of last_pong_at (ASCENDING, COLLECTION scope)",
        ),
        (
            Query(
                schema.SESSIONS,
                equalities=frozenset({schema.USER_ID}),
                ranges=frozenset({schema.SIGNED_OUT_AT}),
            ),
            "no composite index ('user_id', 'signed_out_at') in sessions",
        ),
        (
            Query(
                schema.SESSIONS,
                equalities=frozenset({schema.INSTANCE_ID}),
                orders=((schema.SIGNED_OUT_AT, "DESCENDING"),),
            ),
            "no composite index ('instance_id', 'signed_out_at') in sessions",
        ),
        (
            Query(schema.STREAM_ENTRIES, group=True, ranges=frozenset({schema.ENTRY_OFFSET})),
            "no single-field index of entry_offset (ASCENDING, COLLECTION_GROUP scope)",
        ),
    ],
)
def test_an_unserved_query_is_named(query: Query, reason: str) -> None:
    """A range on an exempted field, a composite in another order or direction, a collection
    group query without its index: each is reported with what is missing."""
    spec = without_override(load(), schema.INSTANCES, schema.HEARTBEAT_AT)
    spec["fieldOverrides"].append(
        {"collectionGroup": schema.INSTANCES, "fieldPath": schema.HEARTBEAT_AT, "indexes": []}
    )
    problem = unserved(spec, query)
    assert problem is not None and problem.endswith(reason), problem
