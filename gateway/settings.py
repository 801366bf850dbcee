"""Gateway settings, read from the environment once at start-up and validated.

Every setting has an environment variable; the names in ARCHITECTURE.md (``PING_INTERVAL``,
``PONG_TIMEOUT``, ``SWEEP_INTERVAL``, ``GATEWAY_PORT``, ``GATEWAY_ADMIN_TOKEN``,
``GOOGLE_CLOUD_PROJECT``) are fixed; the rest are ours and documented in the README.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from gateway.exceptions import ConfigError
from gateway.rooms import ROOM_CHARS, valid_prefix

T = TypeVar("T")

DEMO_PROJECT = "demo-presence"
WS_IMPLEMENTATIONS = ("wsproto", "websockets", "websockets-sansio")
#: Pub/Sub's rule for topic and subscription ids.
_PUBSUB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway needs to run; built by :meth:`from_env` and never mutated."""

    admin_tokens: tuple[str, ...]
    project_id: str
    callback_tokens: tuple[str, ...] = ()
    ping_interval: float = 30.0
    pong_timeout: float = 10_800.0
    sweep_interval: float = 60.0
    host: str = "127.0.0.1"
    port: int = 8000
    instance_id: str = "local"
    internal_url: str = "http://127.0.0.1:8000"
    max_message_bytes: int = 64 * 1024
    send_timeout: float = 5.0
    #: Pub/Sub topic carrying cross-instance work; empty: no broker, this instance is alone.
    pubsub_topic: str = ""
    #: Project of the topic and of this instance's subscription.
    pubsub_project: str = ""
    #: How long a cross-instance send, broadcast, stats or timeout waits for the instances'
    #: receipts before answering with those that replied.
    fanout_timeout: float = 2.0
    flush_interval: float = 0.2
    #: At most one last_pong_at write per user per this many seconds; 0: every pong written.
    pong_write_interval: float = 0.0
    batch_size: int = 500
    flush_concurrency: int = 4
    buffer_max_docs: int = 200_000
    ws_implementation: str = "wsproto"
    log_level: str = "INFO"
    log_format: str = "text"
    auth_required: bool = True
    token_grace: float = 300.0
    max_messages_per_second: float = 20.0
    max_sockets_per_user: int = 10
    max_connects_per_minute: int = 300
    #: Seconds a new connection has to deliver its HTTP request (the upgrade) before it is
    #: closed, and how many may be waiting at once (0: no cap); see gateway.handshake.
    handshake_timeout: float = 10.0
    max_pending_handshakes: int = 4096
    #: Rooms one socket may be in at once; 0: no limit.
    max_rooms_per_socket: int = 50
    #: Sockets one room may hold on one instance; 0: no limit.
    max_room_members: int = 10_000
    #: Room name prefixes any signed-in user may join, whatever the token's rooms claim.
    public_room_prefixes: tuple[str, ...] = ()
    #: Durable streams: how many of a user's latest messages, and for how long (seconds),
    #: a reconnecting client can recover (Centrifugo's history defaults).
    stream_history_size: int = 300
    stream_history_ttl: float = 300.0
    #: Peers whose X-Forwarded-For / X-Forwarded-Proto uvicorn believes ("*": every peer).
    forwarded_allow_ips: str = "127.0.0.1,::1"
    #: Browser origins allowed to open sockets and call the REST API; empty: any origin.
    allowed_origins: tuple[str, ...] = ()
    callback_oidc_audience: str = ""
    callback_oidc_service_accounts: tuple[str, ...] = ()
    callback_oidc_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    #: Folder of the JavaScript client served at /client.js; empty: the repository's clients/js.
    client_dir: str = ""
    #: Built demo page served at /demo (make up builds and sets it); empty: no demo.
    demo_dir: str = ""
    #: The Auth emulator's host:port as the demo page's browser reaches it.
    demo_auth_emulator_host: str = ""

    @property
    def timeout_text(self) -> str:
        """The guide's timeout sentence, with the duration following ``PONG_TIMEOUT``."""
        return (
            "Your session has expired due to inactivity "
            f"({describe_duration(self.pong_timeout)}). Please sign in again."
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raise :class:`ConfigError` naming the variable."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        admin_tokens = reader.tokens("GATEWAY_ADMIN_TOKEN")
        if not admin_tokens:
            raise ConfigError(
                "GATEWAY_ADMIN_TOKEN",
                "is required (the REST API's bearer token); `make up` generates one",
            )
        callback_tokens = reader.tokens("GATEWAY_CALLBACK_TOKEN")
        if set(callback_tokens) & set(admin_tokens):
            raise ConfigError("GATEWAY_CALLBACK_TOKEN", "must differ from GATEWAY_ADMIN_TOKEN")
        oidc_audience = reader.get("CALLBACK_OIDC_AUDIENCE", str, "")
        oidc_accounts = tuple(
            a.strip()
            for a in reader.get("CALLBACK_OIDC_SERVICE_ACCOUNTS", str, "").split(",")
            if a.strip()
        )
        if bool(oidc_audience) != bool(oidc_accounts):
            raise ConfigError(
                "CALLBACK_OIDC_SERVICE_ACCOUNTS" if oidc_audience else "CALLBACK_OIDC_AUDIENCE",
                "CALLBACK_OIDC_AUDIENCE and CALLBACK_OIDC_SERVICE_ACCOUNTS go together",
            )
        origins = tuple(
            o.strip().rstrip("/") for o in reader.get("ALLOWED_ORIGINS", str, "").split(",")
        )
        public_prefixes = tuple(
            p.strip() for p in reader.get("WS_PUBLIC_ROOM_PREFIXES", str, "").split(",")
        )
        for prefix in public_prefixes:
            if prefix and not valid_prefix(prefix):
                raise ConfigError(
                    "WS_PUBLIC_ROOM_PREFIXES",
                    f"{prefix!r} is not a room name prefix (characters of {ROOM_CHARS})",
                )
        forwarded = reader.get(
            "FORWARDED_ALLOW_IPS",
            str,
            # On Cloud Run the container is reached only through Google's front end, which
            # overwrites X-Forwarded-For with the client's address: believe it from any peer.
            "*" if env.get("K_SERVICE") else "127.0.0.1,::1",
        )
        check_forwarded_allow_ips(forwarded)
        emulated = bool(env.get("FIRESTORE_EMULATOR_HOST"))
        project_id = reader.get("GOOGLE_CLOUD_PROJECT", str, DEMO_PROJECT if emulated else None)
        if not project_id:
            raise ConfigError(
                "GOOGLE_CLOUD_PROJECT",
                "is required when FIRESTORE_EMULATOR_HOST is not set",
            )
        host = reader.get("GATEWAY_HOST", str, "127.0.0.1")
        # Cloud Run tells a container its port through PORT; GATEWAY_PORT wins when both are set.
        port = reader.get("GATEWAY_PORT", int, reader.get("PORT", int, 8000))
        if not 0 <= port <= 65535:
            raise ConfigError("GATEWAY_PORT", f"must be a TCP port, got {port}")
        instance_id = reader.get(
            "GATEWAY_INSTANCE_ID", str, f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        )
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        internal_url = reader.get("GATEWAY_INTERNAL_URL", str, f"http://{connect_host}:{port}")
        pubsub_topic = reader.get("PUBSUB_TOPIC", str, "")
        if pubsub_topic and not _PUBSUB_NAME.fullmatch(pubsub_topic):
            raise ConfigError(
                "PUBSUB_TOPIC",
                "must be a Pub/Sub topic id: 3-255 letters, digits or - _ . ~ + %, "
                "starting with a letter",
            )
        ws_impl = reader.get("WS_IMPLEMENTATION", str, "wsproto")
        if ws_impl not in WS_IMPLEMENTATIONS:
            raise ConfigError(
                "WS_IMPLEMENTATION", f"must be one of {', '.join(WS_IMPLEMENTATIONS)}"
            )
        auth_mode = reader.get("AUTH_MODE", str, "firebase").lower()
        if auth_mode not in ("firebase", "off"):
            raise ConfigError("AUTH_MODE", "must be firebase or off")
        if auth_mode == "off" and not emulated:
            # Never in production: without tokens anyone may open a socket as anyone.
            raise ConfigError("AUTH_MODE", "off is only allowed against the emulators")
        settings = cls(
            admin_tokens=admin_tokens,
            project_id=project_id,
            callback_tokens=callback_tokens,
            allowed_origins=tuple(o for o in origins if o),
            callback_oidc_audience=oidc_audience,
            callback_oidc_service_accounts=oidc_accounts,
            callback_oidc_certs_url=reader.get(
                "CALLBACK_OIDC_CERTS_URL", str, "https://www.googleapis.com/oauth2/v1/certs"
            ),
            ping_interval=reader.positive("PING_INTERVAL", 30.0),
            pong_timeout=reader.positive("PONG_TIMEOUT", 10_800.0),
            sweep_interval=reader.positive("SWEEP_INTERVAL", 60.0),
            host=host,
            port=port,
            instance_id=instance_id,
            internal_url=internal_url.rstrip("/"),
            max_message_bytes=int(reader.positive("WS_MAX_MESSAGE_BYTES", 64 * 1024)),
            send_timeout=reader.positive("WS_SEND_TIMEOUT", 5.0),
            pubsub_topic=pubsub_topic,
            pubsub_project=reader.get("PUBSUB_PROJECT", str, project_id),
            fanout_timeout=reader.positive("FANOUT_TIMEOUT", 2.0),
            flush_interval=reader.positive("PONG_FLUSH_INTERVAL", 0.2),
            pong_write_interval=reader.limit("PONG_WRITE_INTERVAL", 0),
            batch_size=int(reader.positive("PONG_BATCH_SIZE", 500)),
            flush_concurrency=int(reader.positive("PONG_FLUSH_CONCURRENCY", 4)),
            buffer_max_docs=int(reader.positive("PONG_BUFFER_MAX_DOCS", 200_000)),
            ws_implementation=ws_impl,
            log_level=reader.get("LOG_LEVEL", str, "INFO").upper(),
            # Cloud Run sets K_SERVICE: log structured JSON there unless told otherwise.
            log_format=reader.get("LOG_FORMAT", str, "json" if env.get("K_SERVICE") else "text"),
            auth_required=auth_mode == "firebase",
            token_grace=reader.get("TOKEN_GRACE", float, 300.0),
            max_messages_per_second=reader.limit("WS_MAX_MESSAGES_PER_SECOND", 20),
            max_sockets_per_user=int(reader.limit("WS_MAX_SOCKETS_PER_USER", 10)),
            max_connects_per_minute=int(reader.limit("WS_MAX_CONNECTS_PER_MINUTE", 300)),
            handshake_timeout=reader.positive("WS_HANDSHAKE_TIMEOUT", 10.0),
            max_pending_handshakes=int(reader.limit("WS_MAX_PENDING_HANDSHAKES", 4096)),
            max_rooms_per_socket=int(reader.limit("WS_MAX_ROOMS_PER_SOCKET", 50)),
            max_room_members=int(reader.limit("WS_MAX_ROOM_MEMBERS", 10_000)),
            public_room_prefixes=tuple(p for p in public_prefixes if p),
            stream_history_size=int(reader.positive("STREAM_HISTORY_SIZE", 300)),
            stream_history_ttl=reader.positive("STREAM_HISTORY_TTL", 300.0),
            forwarded_allow_ips=forwarded,
            client_dir=reader.get("CLIENT_DIR", str, ""),
            demo_dir=reader.get("DEMO_DIR", str, ""),
            demo_auth_emulator_host=reader.get(
                "DEMO_AUTH_EMULATOR_HOST", str, env.get("FIREBASE_AUTH_EMULATOR_HOST", "")
            ),
        )
        if not 0 <= settings.token_grace < float("inf"):
            raise ConfigError("TOKEN_GRACE", "must be a number of seconds, 0 or more")
        if settings.flush_interval > 1.0:
            # The contract: the pong buffer is flushed at least once a second.
            raise ConfigError("PONG_FLUSH_INTERVAL", "must be at most 1 second")
        if settings.pong_write_interval >= settings.pong_timeout / 2:
            # A user could be signed out that much early: keep it a small share of the timeout.
            raise ConfigError("PONG_WRITE_INTERVAL", "must be under half of PONG_TIMEOUT")
        if settings.batch_size > 500:
            raise ConfigError("PONG_BATCH_SIZE", "Firestore commits hold at most 500 writes")
        if settings.stream_history_size > 10_000:
            # A recovery reads every missed entry while the client waits: keep it bounded.
            raise ConfigError("STREAM_HISTORY_SIZE", "must be at most 10000 messages")
        if settings.stream_history_ttl > 7 * 86_400:
            raise ConfigError("STREAM_HISTORY_TTL", "must be at most 604800 seconds (7 days)")
        if settings.log_format not in ("json", "text"):
            raise ConfigError("LOG_FORMAT", "must be json or text")
        if settings.demo_dir and not emulated:
            # The demo signs users in at the Auth emulator: it has no place in production.
            raise ConfigError("DEMO_DIR", "the demo page is only served against the emulators")
        if settings.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("LOG_LEVEL", "must be DEBUG, INFO, WARNING or ERROR")
        return settings


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._env.get(name, "").strip()
        if raw == "":
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(name, f"cannot parse {raw!r} as {parse.__name__}") from None

    def tokens(self, name: str) -> tuple[str, ...]:
        """Comma-separated secrets: several are accepted at once, for rotation."""
        values = tuple(t.strip() for t in self.get(name, str, "").split(",") if t.strip())
        if any(len(t) < 16 for t in values):
            raise ConfigError(name, "each token must be at least 16 characters")
        return values

    def limit(self, name: str, default: float) -> float:
        """A rate or count limit: 0 disables it."""
        value = self.get(name, float, default)
        if not 0 <= value < float("inf"):
            raise ConfigError(name, f"must be 0 (no limit) or a positive number, got {value!r}")
        return value

    def positive(self, name: str, default: float) -> float:
        value = self.get(name, float, default)
        if not value > 0 or value == float("inf"):
            raise ConfigError(name, f"must be a positive number, got {value!r}")
        return value


def check_forwarded_allow_ips(value: str) -> None:
    """``*``, or comma-separated IP addresses and networks: what uvicorn's proxy-headers
    middleware understands. uvicorn would take a typo for a literal host name and silently
    trust nobody (or the wrong peer), so a bad entry stops the start instead."""
    if value.strip() == "*":
        return
    entries = [e.strip() for e in value.split(",")]
    for entry in entries:
        try:
            if "/" in entry:
                ipaddress.ip_network(entry)
            else:
                ipaddress.ip_address(entry)
        except ValueError:
            raise ConfigError(
                "FORWARDED_ALLOW_IPS",
                f"{entry!r} is not an IP address or network; use addresses, CIDR networks or *",
            ) from None


def describe_duration(seconds: float) -> str:
    """Render a timeout for people: 10800 -> '3 hours', 90 -> '90 seconds'."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    shown = f"{seconds:g}"
    return f"{shown} second{'s' if shown != '1' else ''}"
