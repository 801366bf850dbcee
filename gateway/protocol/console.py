"""The console's bodies (docs/console.md): what each instance puts in its receipt for the
console's three data routes, and the answers the routes give once the receipts are merged.

A receipt stays small whatever the instance holds: its series cover at most ``SAMPLES``
samples, its events at most the request's limit (``MAX_EVENTS``), its users and rooms at most
``LISTED_USERS`` and ``BUSIEST_ROOMS``. Measured at their largest (128-character ids): an
overview receipt 153 KB (131 KB of it the listed users, 19 KB the series), an events receipt
372 KB; tests/unit/test_console_ops.py holds both under 1 MB, a tenth of Pub/Sub's limit.
"""

from __future__ import annotations

from typing import Literal

import msgspec

#: Samples each instance keeps: 10 minutes at one sample every ``SAMPLE_INTERVAL`` seconds.
SAMPLE_INTERVAL = 2.0
SAMPLES = 300
#: Events each instance keeps in memory, and the most one request lists.
RECENT_EVENTS = 1_000
MAX_EVENTS = 1_000
#: Users an overview receipt lists (to count users on several instances once), and the rooms.
LISTED_USERS = 1_000
BUSIEST_ROOMS = 20

EventKind = Literal["connect", "disconnect", "timeout", "signout", "refused"]
EVENT_KINDS: tuple[str, ...] = ("connect", "disconnect", "timeout", "signout", "refused")
InstanceState = Literal["live", "unreachable", "lost", "stopped"]
Scope = Literal["deployment", "instance"]


# --- receipts (one instance's part) -----------------------------------------------------------


class Samples(msgspec.Struct, kw_only=True):
    """One instance's series, oldest first, all the same length; rates are over the interval
    before each sample. ``fanout_count``: fan-out requests the percentiles of a sample cover."""

    t: list[float] = []
    connections: list[int] = []
    pongs_received_per_s: list[float] = []
    pongs_persisted_per_s: list[float] = []
    timeouts_per_min: list[float] = []
    signouts_per_min: list[float] = []
    fanout_p50_ms: list[float | None] = []
    fanout_p99_ms: list[float | None] = []
    fanout_count: list[int] = []
    durable_sends_per_s: list[float] = []


class InstanceFigures(msgspec.Struct, kw_only=True):
    """One instance's live figures, as its overview receipt carries them."""

    version: str
    started_at: float
    sockets: int
    users: int
    #: The first LISTED_USERS of its users by id, to count users once across instances.
    listed_users: list[str] = []
    pong_backlog: int
    oldest_pong_age_seconds: float | None
    pubsub: Literal["ok", "down", "off"]
    rooms: list[tuple[str, int]] = []
    samples: Samples = msgspec.field(default_factory=Samples)


class ConsoleEvent(msgspec.Struct, kw_only=True):
    at: float
    instance_id: str
    kind: str
    user_id: str | None = None
    session_id: str | None = None
    code: int | None = None
    reason: str = ""


class SocketInfo(msgspec.Struct, kw_only=True):
    instance_id: str
    session_id: str
    connected_at: float
    last_pong_at: float | None
    rooms: list[str]
    stream_offset: int | None = None
    client: str | None = None


class ConsoleReceipt(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What a console request's receipt carries (one of the three, by request)."""

    figures: InstanceFigures | None = None
    sockets: list[SocketInfo] = []
    events: list[ConsoleEvent] = []


# --- answers --------------------------------------------------------------------------------


class InstanceRow(msgspec.Struct, kw_only=True):
    instance_id: str
    state: InstanceState
    version: str | None = None
    started_at: float | None = None
    last_heartbeat_at: float | None = None
    sockets: int | None = None
    users: int | None = None
    pong_backlog: int | None = None
    oldest_pong_age_seconds: float | None = None
    pubsub: Literal["ok", "down", "off"] | None = None


class Totals(msgspec.Struct):
    sockets: int
    users: int
    users_exact: bool


class SignoutSeries(msgspec.Struct):
    timeout: list[float]
    signout: list[float]
    instance_lost: list[float]


class LatencySeries(msgspec.Struct):
    p50: list[float | None]
    p99: list[float | None]


class Series(msgspec.Struct):
    t: list[float]
    connections: list[int]
    pongs_received_per_s: list[float]
    pongs_persisted_per_s: list[float]
    signouts_per_min: SignoutSeries
    fanout_latency_ms: LatencySeries
    durable_sends_per_s: list[float]


class RoomRow(msgspec.Struct):
    room: str
    connections: int


class OverviewResponse(msgspec.Struct):
    generated_at: float
    scope: Scope
    interval_seconds: float
    instances: list[InstanceRow]
    totals: Totals
    series: Series
    rooms: list[RoomRow]


class UserPresence(msgspec.Struct):
    state: Literal["online", "offline"]
    devices: int
    last_seen_at: float | None


class UserResponse(msgspec.Struct):
    user_id: str
    scope: Scope
    unreachable_instances: list[str]
    sockets: list[SocketInfo]
    presence: UserPresence | None


class EventsResponse(msgspec.Struct):
    scope: Scope
    unreachable_instances: list[str]
    events: list[ConsoleEvent]
