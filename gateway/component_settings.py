"""The settings of each component (sockets, the write-behind buffer, auth, the fan-out, the
internal callback, durable streams): one frozen dataclass each, whose plain fields declare their
variable and default once with ``env()``. ``gateway.settings`` reads and checks them as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.env import LIMIT, LIMIT_INT, POSITIVE, POSITIVE_INT, env

#: Where Google publishes the keys that sign its ID tokens (the callback's OIDC credential).
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"


@dataclass(frozen=True, slots=True)
class SocketSettings:
    """The sockets: heartbeat, sizes, limits, rooms, origins and the WebSocket implementation."""

    ping_interval: float = env("PING_INTERVAL", 30.0, POSITIVE)
    pong_timeout: float = env("PONG_TIMEOUT", 10_800.0, POSITIVE)
    max_message_bytes: int = env("WS_MAX_MESSAGE_BYTES", 64 * 1024, POSITIVE_INT)
    send_timeout: float = env("WS_SEND_TIMEOUT", 5.0, POSITIVE)
    max_messages_per_second: float = env("WS_MAX_MESSAGES_PER_SECOND", 20.0, LIMIT)
    max_sockets_per_user: int = env("WS_MAX_SOCKETS_PER_USER", 10, LIMIT_INT)
    max_connects_per_minute: int = env("WS_MAX_CONNECTS_PER_MINUTE", 300, LIMIT_INT)
    #: Seconds a new connection has to deliver its HTTP request (the upgrade) before it is
    #: closed, and how many may be waiting at once (0: no cap); see gateway.edge.handshake.
    handshake_timeout: float = env("WS_HANDSHAKE_TIMEOUT", 10.0, POSITIVE)
    max_pending_handshakes: int = env("WS_MAX_PENDING_HANDSHAKES", 4096, LIMIT_INT)
    #: Rooms one socket may be in at once; 0: no limit.
    max_rooms_per_socket: int = env("WS_MAX_ROOMS_PER_SOCKET", 50, LIMIT_INT)
    #: Sockets one room may hold on one instance; 0: no limit.
    max_room_members: int = env("WS_MAX_ROOM_MEMBERS", 10_000, LIMIT_INT)
    #: Room name prefixes any signed-in user may join, whatever the token's rooms claim.
    public_room_prefixes: tuple[str, ...] = ()
    #: Browser origins allowed to open sockets and call the REST API; empty: any origin.
    allowed_origins: tuple[str, ...] = ()
    #: Peers whose X-Forwarded-For / X-Forwarded-Proto uvicorn believes ("*": every peer).
    forwarded_allow_ips: str = "127.0.0.1,::1"
    ws_implementation: str = env("WS_IMPLEMENTATION", "wsproto")


@dataclass(frozen=True, slots=True)
class WriterSettings:
    """The write-behind buffer that carries pongs and session records to Firestore."""

    flush_interval: float = env("PONG_FLUSH_INTERVAL", 0.2, POSITIVE)
    #: At most one last_pong_at write per user per this many seconds; 0: every pong written.
    pong_write_interval: float = env("PONG_WRITE_INTERVAL", 0.0, LIMIT)
    batch_size: int = env("PONG_BATCH_SIZE", 500, POSITIVE_INT)
    flush_concurrency: int = env("PONG_FLUSH_CONCURRENCY", 4, POSITIVE_INT)
    buffer_max_docs: int = env("PONG_BUFFER_MAX_DOCS", 200_000, POSITIVE_INT)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Client ID tokens."""

    #: False only with AUTH_MODE=off, which the emulators alone allow.
    required: bool = True
    #: Seconds an open socket may outlive its ID token before it is closed.
    token_grace: float = 300.0


@dataclass(frozen=True, slots=True)
class FanoutSettings:
    """Reaching the other instances: the Pub/Sub topic and how long to wait for them, and the
    sweep's cadence, which paces the reconcile poll and the instance heartbeat."""

    #: Pub/Sub topic carrying cross-instance work; empty: no broker, this instance is alone.
    pubsub_topic: str = ""
    #: Project of the topic and of this instance's subscription; empty: GOOGLE_CLOUD_PROJECT.
    pubsub_project: str = ""
    #: How long a cross-instance send, broadcast, stats or timeout waits for the instances'
    #: receipts before answering with those that replied.
    fanout_timeout: float = env("FANOUT_TIMEOUT", 2.0, POSITIVE)
    sweep_interval: float = env("SWEEP_INTERVAL", 60.0, POSITIVE)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Durable streams: how many of a user's latest messages, and for how long (seconds), a
    reconnecting client can recover (Centrifugo's history defaults)."""

    history_size: int = env("STREAM_HISTORY_SIZE", 300, POSITIVE_INT)
    history_ttl: float = env("STREAM_HISTORY_TTL", 300.0, POSITIVE)


@dataclass(frozen=True, slots=True)
class PresenceSettings:
    """Presence (docs/presence.md): the users' documents in Firestore, presence rooms, and the
    events topic."""

    #: "on": write presence/{uid} on every user's transitions; "off": never.
    user_presence: str = env("USER_PRESENCE", "on")
    #: Seconds a closed socket still counts, so a reconnect within it shows no offline.
    grace: float = env("PRESENCE_GRACE", 5.0, LIMIT)
    #: Rooms under these prefixes are presence rooms (snapshot on join, diffs, publish).
    room_prefixes: tuple[str, ...] = ()
    #: Seconds between a presence room's diffs, at most one per room per interval.
    diff_interval: float = env("PRESENCE_DIFF_INTERVAL", 1.0, POSITIVE)
    #: Users per presence room across the deployment; 0: no cap.
    room_cap: int = env("PRESENCE_ROOM_CAP", 100, LIMIT_INT)
    #: Largest encoded ``info`` a join may carry, in bytes.
    info_bytes: int = env("PRESENCE_INFO_BYTES", 256, POSITIVE_INT)
    #: Pub/Sub topic each user transition is published to; empty: none.
    events_topic: str = ""

    @property
    def users_enabled(self) -> bool:
        return self.user_presence == "on"


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """The operator console (docs/console.md): off unless CONSOLE_ENABLED; when on, a
    Firebase ID token whose claims carry ``admin: true`` is accepted beside the admin token."""

    enabled: bool = False
    #: Built console page served at /console; empty: the repository's clients/js/dist/console.
    dir: str = env("CONSOLE_DIR", "")
    #: The Firebase web config the page signs in with (its API key is public by design);
    #: empty domain: {project}.firebaseapp.com.
    firebase_api_key: str = env("CONSOLE_FIREBASE_API_KEY", "")
    firebase_auth_domain: str = env("CONSOLE_FIREBASE_AUTH_DOMAIN", "")


@dataclass(frozen=True, slots=True)
class CallbackSettings:
    """Who may call the internal callback: shared tokens, or Google-signed OIDC tokens."""

    tokens: tuple[str, ...] = ()
    oidc_audience: str = ""
    oidc_service_accounts: tuple[str, ...] = ()
    oidc_certs_url: str = env("CALLBACK_OIDC_CERTS_URL", GOOGLE_CERTS_URL)
