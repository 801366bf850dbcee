"""The Firestore schema the sweep function and the gateway share: every collection and field name.

This package deploys alone and imports nothing from ``gateway/``, so the gateway declares the same
names in ``gateway/storage/schema.py``; ``tests/contract/test_schema.py`` holds the two
declarations equal and both to ``firestore.indexes.json`` and ``firestore.rules``. A name that
drifted on one side would fail silently at run time (a ``last_sign_out_at`` the gateway does not
read admits a revoked token), hence one declaration per side and a test.

``members/{user_id}``
    written by the gateway on connect (``is_signed_in``, ``last_pong_at``, ``updated_at``,
    ``last_connected_at``, ``instance_id``, ``active_sessions``, ``shard``) and on every pong
    (``last_pong_at``, ``updated_at``); by the sweep on sign-out (``is_signed_in: false``,
    ``last_sign_out_at``, ``updated_at``) and, between its claim and its sign-out,
    ``sign_out_claim`` and ``sign_out_claimed_at``. ``shard`` (``member_shard``) leads the sweep's
    index: see ``MEMBER_SHARDS``.
``members/{user_id}.active_sessions.{session_id}``
    ``instance_id``: where the socket lives, so the sweep finds a user's sockets in the member it
    already reads, without a query. The instance's address is not here: ``firestore.rules`` lets
    a user read their own member, and no client may learn an internal URL. The sweep looks it up
    in ``gateway_instances``. Entries written by an older gateway also hold ``internal_url``
    (``LEGACY_ACTIVE_SESSION_FIELDS``), which the sweep still reads when the registry has none.
``sessions/{session_id}`` (one per socket)
    ``user_id``, ``is_active``, ``connected_at``, ``instance_id``; on close ``disconnected_at``,
    ``close_code``; on sign-out ``signed_out_at``.
``gateway_instances/{instance_id}`` (closed to clients)
    ``internal_url``, ``started_at``, ``heartbeat_at`` (every ``SWEEP_INTERVAL``, with
    ``internal_url`` again), ``stopped_at`` (on a clean shutdown).
``streams/{user_id}`` (the head of a user's durable message stream; gateway only)
    ``stream_epoch`` (random, fixed when the head is created), ``top_offset`` (the last offset
    allocated), ``updated_at``.
``stream_acks/{user_id}``
    the acknowledged position ``acked_epoch``, ``acked_offset``, ``acked_at`` (written behind,
    from the clients' ``stream_ack`` frames). A document of its own: the write-behind batches
    must not wait on the locks of the heads' transactions.
``streams/{user_id}/stream_entries/{offset:020d}`` (one per durable message)
    ``entry_offset``, ``stream_epoch``, ``payload`` (the message, JSON text), ``created_at``,
    ``expires_at`` (the TTL policy's field: Firestore deletes the entry after it).
``presence/{user_id}`` (readable by signed-in clients, ``firestore.rules``)
    what other users may see of a user's presence: ``state`` (``ONLINE`` or ``OFFLINE``),
    ``devices`` (sockets open across the deployment), ``last_seen_at`` (when ``state`` last
    changed). Written only on a transition (first socket, another socket, last socket gone), by
    the gateway and, for the users of a lost instance, by the sweep; both merge, so a field the
    app's backend adds (``org`` for a narrower rule) stays.
``presence_holders/{user_id}`` (closed to clients)
    the companion the transition's transaction reads and writes with ``presence/{user_id}``:
    ``instances`` (a map of instance id to the sockets that instance holds for the user),
    ``state``, ``seq`` (the user's transitions counted: the Pub/Sub events' ``seq``),
    ``last_seen_at``, ``updated_at``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Final

# Collections.
MEMBERS: Final = "members"
SESSIONS: Final = "sessions"
INSTANCES: Final = "gateway_instances"
STREAMS: Final = "streams"
#: A subcollection of each streams/{user_id} document (its TTL policy is on this group).
STREAM_ENTRIES: Final = "stream_entries"
STREAM_ACKS: Final = "stream_acks"
PRESENCE: Final = "presence"
PRESENCE_HOLDERS: Final = "presence_holders"

# Fields of members/{user_id}.
IS_SIGNED_IN: Final = "is_signed_in"
LAST_PONG_AT: Final = "last_pong_at"
LAST_CONNECTED_AT: Final = "last_connected_at"
LAST_SIGN_OUT_AT: Final = "last_sign_out_at"
UPDATED_AT: Final = "updated_at"
ACTIVE_SESSIONS: Final = "active_sessions"
SIGN_OUT_CLAIM: Final = "sign_out_claim"
SIGN_OUT_CLAIMED_AT: Final = "sign_out_claimed_at"
#: The member's shard, ``member_shard(user_id)``, written with every connect.
SHARD: Final = "shard"
#: Firestore takes about 500 writes a second into a collection while one of its indexes holds a
#: field that only grows (a timestamp set to now), unless that index leads with a shard field:
#: each shard value then takes its own 500 (Google's "sharded timestamps"). Every pong sets
#: last_pong_at, which the sweep's index (shard, is_signed_in, last_pong_at) holds, so members
#: take 100 x 500 writes a second; the sweep queries each shard. The sweep finds only members
#: whose stored shard is below this: after changing it, rewrite every member's shard
#: (``python -m presence_sweep.backfill``) before the sweep runs.
MEMBER_SHARDS: Final = 100

# Fields of sessions/{session_id} (and, for instance_id, of members; internal_url is the
# instance registry's).
USER_ID: Final = "user_id"
IS_ACTIVE: Final = "is_active"
CONNECTED_AT: Final = "connected_at"
DISCONNECTED_AT: Final = "disconnected_at"
CLOSE_CODE: Final = "close_code"
SIGNED_OUT_AT: Final = "signed_out_at"
INSTANCE_ID: Final = "instance_id"
INTERNAL_URL: Final = "internal_url"

# Fields of gateway_instances/{instance_id}.
STARTED_AT: Final = "started_at"
HEARTBEAT_AT: Final = "heartbeat_at"
STOPPED_AT: Final = "stopped_at"
#: With each heartbeat: how long the instance's oldest unwritten pong has waited (seconds).
#: While it is large, its users' stored last_pong_at lag their real pongs by about as much,
#: and the sweep gives them that much longer before signing them out.
PONG_BACKLOG_SECONDS: Final = "pong_backlog_seconds"

# Fields of streams/{user_id} (and, for stream_epoch, of its entries).
STREAM_EPOCH: Final = "stream_epoch"
TOP_OFFSET: Final = "top_offset"

# Fields of stream_acks/{user_id}.
ACKED_EPOCH: Final = "acked_epoch"
ACKED_OFFSET: Final = "acked_offset"
ACKED_AT: Final = "acked_at"

# Fields of streams/{user_id}/stream_entries/{offset}.
ENTRY_OFFSET: Final = "entry_offset"
PAYLOAD: Final = "payload"
CREATED_AT: Final = "created_at"
EXPIRES_AT: Final = "expires_at"

# Fields of presence/{user_id} (and, all but devices, of presence_holders/{user_id}).
STATE: Final = "state"
DEVICES: Final = "devices"
LAST_SEEN_AT: Final = "last_seen_at"
# Fields of presence_holders/{user_id} (besides state, last_seen_at and updated_at).
#: A map: instance id -> how many of the user's sockets that instance holds.
HOLDERS: Final = "instances"
#: An integer: the user's transitions counted, one more with each.
SEQ: Final = "seq"

# Values of state.
ONLINE: Final = "online"
OFFLINE: Final = "offline"
#: Every value ``state`` takes.
PRESENCE_STATES: Final = frozenset({ONLINE, OFFLINE})

#: Each collection's top-level fields.
FIELDS: Final[Mapping[str, frozenset[str]]] = {
    MEMBERS: frozenset(
        {
            IS_SIGNED_IN,
            LAST_PONG_AT,
            LAST_CONNECTED_AT,
            LAST_SIGN_OUT_AT,
            UPDATED_AT,
            INSTANCE_ID,
            ACTIVE_SESSIONS,
            SIGN_OUT_CLAIM,
            SIGN_OUT_CLAIMED_AT,
            SHARD,
        }
    ),
    SESSIONS: frozenset(
        {
            USER_ID,
            IS_ACTIVE,
            CONNECTED_AT,
            INSTANCE_ID,
            DISCONNECTED_AT,
            CLOSE_CODE,
            SIGNED_OUT_AT,
        }
    ),
    INSTANCES: frozenset(
        {INTERNAL_URL, STARTED_AT, HEARTBEAT_AT, STOPPED_AT, PONG_BACKLOG_SECONDS}
    ),
    STREAMS: frozenset({STREAM_EPOCH, TOP_OFFSET, UPDATED_AT}),
    STREAM_ACKS: frozenset({ACKED_EPOCH, ACKED_OFFSET, ACKED_AT}),
    STREAM_ENTRIES: frozenset({ENTRY_OFFSET, STREAM_EPOCH, PAYLOAD, CREATED_AT, EXPIRES_AT}),
    PRESENCE: frozenset({STATE, DEVICES, LAST_SEEN_AT}),
    PRESENCE_HOLDERS: frozenset({HOLDERS, STATE, SEQ, LAST_SEEN_AT, UPDATED_AT}),
}
#: The fields of each entry of a member's ``active_sessions`` map.
ACTIVE_SESSION_FIELDS: Final = frozenset({INSTANCE_ID})
#: Fields an older gateway also wrote in an ``active_sessions`` entry: never written now, read by
#: the sweep only as a fallback until the sessions that carry them end.
LEGACY_ACTIVE_SESSION_FIELDS: Final = frozenset({INTERNAL_URL})


def member_shard(user_id: str) -> int:
    """The shard of ``members/{user_id}``: CRC-32 of the id, so it never changes for a user and
    spreads ids evenly (each shard takes about 1 % of the pongs)."""
    return zlib.crc32(user_id.encode("utf-8")) % MEMBER_SHARDS
