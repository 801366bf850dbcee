"""Wire formats: every message the gateway sends and every REST body, as msgspec Structs.

The field names and order are the protocol's (docs/protocol.md, docs/api.md); encoding with
msgspec keeps the per-message cost low (a ping goes to every socket every ``PING_INTERVAL``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

PING_TEXT = "Server heartbeat - please respond with pong"


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """ISO-8601 with microseconds and an explicit UTC offset."""
    return moment.isoformat(timespec="microseconds")


# --- server -> client -----------------------------------------------------------------------


class ServerPong(msgspec.Struct):
    type: Literal["pong"]
    timestamp: str


class Timeout(msgspec.Struct):
    type: Literal["timeout"]
    message: str
    timestamp: str


class SignedOut(msgspec.Struct):
    """Sent before closing with 4410 when the service signs the user out
    (``POST /ws/signout/{user_id}``)."""

    type: Literal["signed_out"]
    reason: str
    message: str
    timestamp: str


class Ack(msgspec.Struct, omit_defaults=True):
    """Acknowledges a client ``message``; echoes the client's ``id`` when it sent one."""

    type: Literal["ack"]
    timestamp: str
    id: str | int | None = None


class AuthOk(msgspec.Struct):
    """Reply to ``{"type": "auth"}``: the socket now lives until the new token's expiry."""

    type: Literal["auth_ok"]
    expires_at: str
    timestamp: str


class ErrorMessage(msgspec.Struct):
    """Reply to a frame the gateway could not accept; the socket stays open."""

    type: Literal["error"]
    code: str
    message: str
    timestamp: str


class Joined(msgspec.Struct, omit_defaults=True):
    """Reply to ``{"type": "join"}``: the socket is a member of ``room`` (also when it already
    was); echoes the client's ``id``."""

    type: Literal["joined"]
    room: str
    timestamp: str
    id: str | int | None = None


class Left(msgspec.Struct, omit_defaults=True):
    """Reply to ``{"type": "leave"}`` (also when the socket was not a member), or sent unasked
    with ``reason: "not_allowed"`` when a refreshed token no longer grants the room."""

    type: Literal["left"]
    room: str
    timestamp: str
    id: str | int | None = None
    reason: str | None = None


class RoomErrorMessage(msgspec.Struct, omit_defaults=True):
    """An ``error`` refusing a join or leave: the usual fields plus the room and the client's
    ``id``, so a client can tell which of its requests failed."""

    type: Literal["error"]
    code: str
    message: str
    timestamp: str
    room: str
    id: str | int | None = None


_encoder = msgspec.json.Encoder()


def encode_ping(moment: datetime) -> str:
    # Built by hand to keep the guide's key order (type, timestamp, message).
    body = {"type": "ping", "timestamp": iso(moment), "message": PING_TEXT}
    return _encoder.encode(body).decode()


def encode(message: msgspec.Struct | dict[str, Any]) -> str:
    return _encoder.encode(message).decode()


# --- REST bodies ----------------------------------------------------------------------------


class StatusResponse(msgspec.Struct):
    user_id: str
    is_connected: bool
    status: Literal["connected", "disconnected"]
    connections: int
    #: "deployment" (every live instance, from the member record) or "instance" (this one).
    scope: Literal["deployment", "instance"]
    #: Instances holding the user's sockets.
    instances: list[str]


class PongWriterStats(msgspec.Struct):
    buffered_docs: int
    pongs_received: int
    pongs_persisted: int
    writes_committed: int
    commits: int
    failed_commits: int
    dropped_writes: int
    #: Writes Firestore refused as invalid, isolated from their batch and dropped.
    rejected_writes: int
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    #: Cumulative count of persisted pongs by lag, keyed by the bucket's upper bound in ms
    #: ("+Inf" last): subtract two snapshots for the lag of the pongs in between.
    lag_histogram_ms: dict[str, int]


class StatsResponse(msgspec.Struct, kw_only=True):
    """Also an instance's stats receipt on the fan-out topic: the fields added since the first
    version have defaults, so that a receipt from an instance that predates them decodes."""

    total_connections: int
    #: The first ``limit`` connected users by id (``?limit=``, 1,000 unless asked).
    connected_users: list[str]
    #: True when ``connected_users`` leaves users out.
    truncated: bool = False
    ping_interval_seconds: float
    pong_timeout_seconds: float
    total_users: int
    #: False when ``total_users`` is a lower bound: instances send at most ``limit`` users
    #: each, so users on several instances cannot always be told apart.
    total_users_exact: bool = True
    #: The instance that answered.
    instance_id: str
    #: "instance": this instance's sockets; "deployment": every live instance's (the users of
    #: a user with sockets on several instances count once).
    scope: Literal["deployment", "instance"]
    #: Instances counted.
    instances: list[str]
    #: Live instances that did not answer (their sockets are not counted).
    unreachable_instances: list[str]
    #: Each counted instance's pong writer, by instance id.
    pong_writers: dict[str, PongWriterStats]


class SendResponse(msgspec.Struct, omit_defaults=True):
    status: Literal["success"]
    message: str
    connections: int
    #: "deployment": every live instance holding the user's sockets was asked;
    #: "instance": only this one (no internal credential, or Firestore unavailable).
    scope: Literal["deployment", "instance"]
    instances: list[str]
    unreachable_instances: list[str]
    #: A durable send's place in the user's stream (absent for a plain send).
    epoch: str | None = None
    offset: int | None = None


class BroadcastResponse(msgspec.Struct):
    status: Literal["success"]
    message: str
    recipients: int
    connections: int
    scope: Literal["deployment", "instance"]
    instances: list[str]
    unreachable_instances: list[str]


class RoomSendResponse(msgspec.Struct):
    status: Literal["success"]
    message: str
    room: str
    #: Distinct users reached (a user with sockets on several instances counts once).
    recipients: int
    #: Member sockets that took the frame, on every instance.
    connections: int
    scope: Literal["deployment", "instance"]
    instances: list[str]
    unreachable_instances: list[str]


class RoomMember(msgspec.Struct):
    user_id: str
    session_id: str
    instance_id: str


class RoomResponse(msgspec.Struct):
    room: str
    #: Member sockets, on every counted instance.
    connections: int
    #: Distinct member users, sorted: the first ``limit``.
    users: list[str]
    total_users: int
    #: False when ``total_users`` is a lower bound (as in ``StatsResponse``).
    total_users_exact: bool
    #: One entry per member socket, sorted by user, then session, then instance: the first
    #: ``limit``.
    members: list[RoomMember]
    #: True when ``members`` (and so maybe ``users``) leaves some out.
    truncated: bool
    scope: Literal["deployment", "instance"]
    #: Instances counted.
    instances: list[str]
    #: Live instances that did not answer (their members are not listed).
    unreachable_instances: list[str]


class ErrorResponse(msgspec.Struct):
    status: Literal["error"]
    message: str
    status_code: int


class HealthResponse(msgspec.Struct):
    status: Literal["ok"]
    instance_id: str
    connections: int


# --- internal callback (from the sweep function; pinned by tests/contract) -------------------


class CallbackSession(msgspec.Struct, forbid_unknown_fields=False):
    user_id: str
    session_id: str


class TimeoutCallback(msgspec.Struct, forbid_unknown_fields=False):
    sessions: list[CallbackSession]
    reason: str = "inactivity"
    signed_out_at: str | None = None


class SignOutResponse(msgspec.Struct):
    status: Literal["success"]
    message: str
    user_id: str
    #: Firebase refresh tokens revoked (False: no such user in Firebase Auth, or AUTH_MODE=off).
    revoked: bool
    #: Session records marked signed out in Firestore.
    sessions_signed_out: int
    #: Sockets sent the signed_out message and closed with 4410, on every instance.
    connections_closed: int
    scope: Literal["deployment", "instance"]
    instances: list[str]
    unreachable_instances: list[str]


class TimeoutCallbackResponse(msgspec.Struct):
    status: Literal["success"]
    closed: int
    not_found: int


class BatchEntry(msgspec.Struct, forbid_unknown_fields=False):
    """One entry of ``POST /ws/send``: a JSON object for one user."""

    user_id: Any = None
    message: Any = None


class BatchRequest(msgspec.Struct, forbid_unknown_fields=False):
    messages: list[BatchEntry]


class BatchEntryResponse(msgspec.Struct, omit_defaults=True):
    """One entry's answer, in the batch's order. ``status``: ``sent`` (``connections`` sockets
    took it), ``not_connected`` (no socket anywhere), ``unreachable`` (no socket answered here
    and an instance that may hold one did not answer), ``stored`` (durable: in the stream, no
    socket took it live), ``invalid`` or ``failed`` (durable: not stored), with ``error``."""

    user_id: str
    status: Literal["sent", "not_connected", "unreachable", "stored", "invalid", "failed"]
    connections: int = 0
    error: str | None = None
    epoch: str | None = None
    offset: int | None = None


class BatchSendResponse(msgspec.Struct):
    status: Literal["success"]
    message: str
    #: Entries some socket took, and sockets reached over all entries.
    sent: int
    connections: int
    scope: Literal["deployment", "instance"]
    instances: list[str]
    unreachable_instances: list[str]
    results: list[BatchEntryResponse]
