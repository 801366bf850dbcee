"""Gateway settings, read from the environment once at start-up and validated.

Every setting has an environment variable (docs/configuration.md lists them all). Each
component's settings are declared in ``gateway.component_settings``; what is read and checked
across them, and the emulator guard, is here.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.component_settings import (
    AuthSettings,
    CallbackSettings,
    ConsoleSettings,
    FanoutSettings,
    PresenceSettings,
    SocketSettings,
    StreamSettings,
    WriterSettings,
)
from gateway.env import EnvReader, boolean, default_of, env
from gateway.exceptions import ConfigError
from gateway.protocol.rooms import ROOM_CHARS, SEPARATOR, valid_prefix

DEMO_PROJECT = "demo-presence"
#: Firebase's convention: a project whose id starts with this exists only in the emulators.
EMULATOR_PROJECT_PREFIX = "demo-"
#: The one way to run against an emulator with another project: this variable naming that
#: exact project id (comma-separated when PUBSUB_PROJECT is another one).
ALLOW_EMULATOR = "ALLOW_EMULATOR_FOR_PROJECT"
#: Each emulator's variable and what its client library stops doing once it is set: the reason
#: one of them must never reach a production instance unnoticed.
EMULATOR_HOSTS = {
    "FIREBASE_AUTH_EMULATOR_HOST": "firebase-admin accepts ID tokens without checking their "
    "signature: anyone may connect as any user",
    "FIRESTORE_EMULATOR_HOST": "presence records are read from and written to that host, "
    "without credentials",
    "PUBSUB_EMULATOR_HOST": "the fan-out (sends, broadcasts, timeouts) goes through that host, "
    "without credentials",
}
WS_IMPLEMENTATIONS = ("wsproto", "websockets", "websockets-sansio")
#: Pub/Sub's rule for topic and subscription ids.
_PUBSUB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")


@dataclass(frozen=True, slots=True)
class AllowedEmulator:
    """An emulator variable set for a project that is not a demo- one, which
    ALLOW_EMULATOR_FOR_PROJECT allowed by naming the project."""

    variable: str
    host: str
    project: str

    @property
    def consequence(self) -> str:
        return EMULATOR_HOSTS[self.variable]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway needs, one frozen object per component (built by from_env)."""

    admin_tokens: tuple[str, ...]
    project_id: str
    host: str = "127.0.0.1"
    port: int = 8000
    instance_id: str = "local"
    internal_url: str = "http://127.0.0.1:8000"
    log_level: str = "INFO"
    log_format: str = "text"
    #: Folder of the JavaScript client served at /client.js; empty: the repository's clients/js.
    client_dir: str = env("CLIENT_DIR", "")
    #: Built demo page served at /demo (make up builds and sets it); empty: no demo.
    demo_dir: str = env("DEMO_DIR", "")
    #: The Auth emulator's host:port as the demo page's browser reaches it.
    demo_auth_emulator_host: str = ""
    #: The Firestore emulator's host:port as the demo page's browser reaches it (Contacts).
    demo_firestore_emulator_host: str = ""
    #: Emulators let through for a project that is not a demo- one because
    #: ALLOW_EMULATOR_FOR_PROJECT names it; python -m gateway warns of each at every start.
    emulators_allowed: tuple[AllowedEmulator, ...] = ()
    sockets: SocketSettings = field(default_factory=SocketSettings)
    writer: WriterSettings = field(default_factory=WriterSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    fanout: FanoutSettings = field(default_factory=FanoutSettings)
    callback: CallbackSettings = field(default_factory=CallbackSettings)
    streams: StreamSettings = field(default_factory=StreamSettings)
    presence: PresenceSettings = field(default_factory=PresenceSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)

    @property
    def timeout_text(self) -> str:
        """The guide's timeout sentence, with the duration following ``PONG_TIMEOUT``."""
        return (
            "Your session has expired due to inactivity "
            f"({describe_duration(self.sockets.pong_timeout)}). Please sign in again."
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raise :class:`ConfigError` naming the variable."""
        variables = os.environ if environ is None else environ
        reader = EnvReader(variables)
        admin_tokens = reader.tokens("GATEWAY_ADMIN_TOKEN")
        if not admin_tokens:
            raise ConfigError(
                "GATEWAY_ADMIN_TOKEN",
                "is required (the REST API's bearer token); `make up` generates one",
            )
        emulated = bool(variables.get("FIRESTORE_EMULATOR_HOST"))
        on_cloud_run = bool(variables.get("K_SERVICE"))
        project_id = reader.get("GOOGLE_CLOUD_PROJECT", str, DEMO_PROJECT if emulated else None)
        if not project_id:
            raise ConfigError(
                "GOOGLE_CLOUD_PROJECT",
                "is required when FIRESTORE_EMULATOR_HOST is not set",
            )
        pubsub_project = reader.get("PUBSUB_PROJECT", str, project_id)
        emulators_allowed = check_emulators(variables, project_id, pubsub_project)
        host = reader.get("GATEWAY_HOST", str, "127.0.0.1")
        # Cloud Run tells a container its port through PORT; GATEWAY_PORT wins when both are set.
        port = reader.get("GATEWAY_PORT", int, reader.get("PORT", int, 8000))
        if not 0 <= port <= 65535:
            raise ConfigError("GATEWAY_PORT", f"must be a TCP port, got {port}")
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        settings = cls(
            admin_tokens=admin_tokens,
            project_id=project_id,
            host=host,
            port=port,
            instance_id=reader.get(
                "GATEWAY_INSTANCE_ID", str, f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
            ),
            internal_url=reader.get(
                "GATEWAY_INTERNAL_URL", str, f"http://{connect_host}:{port}"
            ).rstrip("/"),
            log_level=reader.get("LOG_LEVEL", str, "INFO").upper(),
            # Cloud Run sets K_SERVICE: log structured JSON there unless told otherwise.
            log_format=reader.get("LOG_FORMAT", str, "json" if on_cloud_run else "text"),
            demo_auth_emulator_host=reader.get(
                "DEMO_AUTH_EMULATOR_HOST", str, variables.get("FIREBASE_AUTH_EMULATOR_HOST", "")
            ),
            demo_firestore_emulator_host=reader.get(
                "DEMO_FIRESTORE_EMULATOR_HOST", str, variables.get("FIRESTORE_EMULATOR_HOST", "")
            ),
            emulators_allowed=emulators_allowed,
            sockets=_socket_settings(reader, on_cloud_run),
            writer=reader.declared(WriterSettings),
            auth=_auth_settings(reader, emulated),
            fanout=reader.declared(
                FanoutSettings,
                pubsub_topic=_pubsub_topic(reader),
                pubsub_project=pubsub_project,
            ),
            callback=_callback_settings(reader, admin_tokens),
            streams=reader.declared(StreamSettings),
            presence=_presence_settings(reader),
            console=reader.declared(
                ConsoleSettings, enabled=reader.get("CONSOLE_ENABLED", boolean, False)
            ),
            **reader.plain(cls),
        )
        _check(settings, emulated)
        return settings


def check_emulators(
    variables: Mapping[str, str], project_id: str, pubsub_project: str
) -> tuple[AllowedEmulator, ...]:
    """Refuse an emulator for a project that is not an emulator-only (``demo-``) one, unless
    ALLOW_EMULATOR_FOR_PROJECT names that project; return what the override let through.

    One stray variable would otherwise turn a production instance's checks off (an Auth
    emulator host makes firebase-admin take unsigned tokens for any uid), and the project id
    is what tells production from the emulators. A variable counts as set even when empty:
    google-cloud-firestore switches to anonymous credentials as soon as it exists.
    """
    allowed = {p.strip() for p in variables.get(ALLOW_EMULATOR, "").split(",") if p.strip()}
    let_through: list[AllowedEmulator] = []
    for name, consequence in EMULATOR_HOSTS.items():
        if name not in variables:
            continue
        pubsub = name == "PUBSUB_EMULATOR_HOST"
        project = pubsub_project if pubsub else project_id
        if project.startswith(EMULATOR_PROJECT_PREFIX):
            continue
        if project in allowed:
            let_through.append(AllowedEmulator(name, variables[name], project))
            continue
        project_variable = "PUBSUB_PROJECT" if pubsub else "GOOGLE_CLOUD_PROJECT"
        raise ConfigError(
            name,
            f"is set ({variables[name]!r}) but {project_variable} is {project!r}, not an "
            f"emulator-only {EMULATOR_PROJECT_PREFIX}* project; with it {consequence}. Unset "
            f"it in production; against the emulators use a {EMULATOR_PROJECT_PREFIX}* "
            f"project, or set {ALLOW_EMULATOR}={project} if you mean it",
        )
    return tuple(let_through)


def _socket_settings(reader: EnvReader, on_cloud_run: bool) -> SocketSettings:
    public_prefixes = reader.items("WS_PUBLIC_ROOM_PREFIXES")
    for prefix in public_prefixes:
        if not valid_prefix(prefix):
            raise ConfigError(
                "WS_PUBLIC_ROOM_PREFIXES",
                # Ending at the separator: "public" would also open "publicity".
                f"{prefix!r} is not a room name prefix (characters of {ROOM_CHARS}, "
                f"ending with {SEPARATOR!r})",
            )
    origins = tuple(o.rstrip("/") for o in reader.items("ALLOWED_ORIGINS"))
    forwarded = reader.get(
        "FORWARDED_ALLOW_IPS",
        str,
        # On Cloud Run the container is reached only through Google's front end, which puts
        # the client's address last in X-Forwarded-For: believe it from any peer (the connect
        # limiter reads that last entry, see gateway.protocol.limits.connect_address).
        "*" if on_cloud_run else default_of(SocketSettings, "forwarded_allow_ips"),
    )
    check_forwarded_allow_ips(forwarded)
    sockets = reader.declared(
        SocketSettings,
        public_room_prefixes=public_prefixes,
        allowed_origins=tuple(o for o in origins if o),
        forwarded_allow_ips=forwarded,
    )
    if sockets.ws_implementation not in WS_IMPLEMENTATIONS:
        raise ConfigError("WS_IMPLEMENTATION", f"must be one of {', '.join(WS_IMPLEMENTATIONS)}")
    return sockets


def _auth_settings(reader: EnvReader, emulated: bool) -> AuthSettings:
    auth_mode = reader.get("AUTH_MODE", str, "firebase").lower()
    if auth_mode not in ("firebase", "off"):
        raise ConfigError("AUTH_MODE", "must be firebase or off")
    if auth_mode == "off" and not emulated:
        # Never in production: without tokens anyone may open a socket as anyone.
        raise ConfigError("AUTH_MODE", "off is only allowed against the emulators")
    grace = reader.get("TOKEN_GRACE", float, default_of(AuthSettings, "token_grace"))
    if not 0 <= grace < float("inf"):
        raise ConfigError("TOKEN_GRACE", "must be a number of seconds, 0 or more")
    return AuthSettings(required=auth_mode == "firebase", token_grace=grace)


def _presence_settings(reader: EnvReader) -> PresenceSettings:
    prefixes = reader.items("PRESENCE_ROOM_PREFIXES")
    for prefix in prefixes:
        if not valid_prefix(prefix):
            raise ConfigError(
                "PRESENCE_ROOM_PREFIXES",
                f"{prefix!r} is not a room name prefix (characters of {ROOM_CHARS}, "
                f"ending with {SEPARATOR!r})",
            )
    topic = _pubsub_topic(reader, "PRESENCE_EVENTS_TOPIC")
    presence = reader.declared(PresenceSettings, room_prefixes=prefixes, events_topic=topic)
    if presence.user_presence not in ("on", "off"):
        raise ConfigError("USER_PRESENCE", "must be on or off")
    if presence.grace > 300:  # a user would show online for that long after leaving
        raise ConfigError("PRESENCE_GRACE", "must be at most 300 seconds")
    return presence


def _pubsub_topic(reader: EnvReader, variable: str = "PUBSUB_TOPIC") -> str:
    topic = reader.get(variable, str, "")
    if topic and not _PUBSUB_NAME.fullmatch(topic):
        raise ConfigError(
            variable,
            "must be a Pub/Sub topic id: 3-255 letters, digits or - _ . ~ + %, "
            "starting with a letter",
        )
    return topic


def _callback_settings(reader: EnvReader, admin_tokens: tuple[str, ...]) -> CallbackSettings:
    tokens = reader.tokens("GATEWAY_CALLBACK_TOKEN")
    if set(tokens) & set(admin_tokens):
        raise ConfigError("GATEWAY_CALLBACK_TOKEN", "must differ from GATEWAY_ADMIN_TOKEN")
    audience = reader.get("CALLBACK_OIDC_AUDIENCE", str, "")
    accounts = reader.items("CALLBACK_OIDC_SERVICE_ACCOUNTS")
    if bool(audience) != bool(accounts):
        raise ConfigError(
            "CALLBACK_OIDC_SERVICE_ACCOUNTS" if audience else "CALLBACK_OIDC_AUDIENCE",
            "CALLBACK_OIDC_AUDIENCE and CALLBACK_OIDC_SERVICE_ACCOUNTS go together",
        )
    return reader.declared(
        CallbackSettings, tokens=tokens, oidc_audience=audience, oidc_service_accounts=accounts
    )


def _check(settings: Settings, emulated: bool) -> None:
    """The rules between settings, once every value has been read."""
    writer = settings.writer
    if writer.flush_interval > 1.0:
        # The contract: the pong buffer is flushed at least once a second.
        raise ConfigError("PONG_FLUSH_INTERVAL", "must be at most 1 second")
    if writer.pong_write_interval >= settings.sockets.pong_timeout / 2:
        # A user could be signed out that much early: keep it a small share of the timeout.
        raise ConfigError("PONG_WRITE_INTERVAL", "must be under half of PONG_TIMEOUT")
    if writer.batch_size > 500:
        raise ConfigError("PONG_BATCH_SIZE", "Firestore commits hold at most 500 writes")
    if settings.streams.history_size > 10_000:
        # A recovery reads every missed entry while the client waits: keep it bounded.
        raise ConfigError("STREAM_HISTORY_SIZE", "must be at most 10000 messages")
    if settings.streams.history_ttl > 7 * 86_400:
        raise ConfigError("STREAM_HISTORY_TTL", "must be at most 604800 seconds (7 days)")
    if settings.log_format not in ("json", "text"):
        raise ConfigError("LOG_FORMAT", "must be json or text")
    if settings.demo_dir and not emulated:
        # The demo signs users in at the Auth emulator: it has no place in production.
        raise ConfigError("DEMO_DIR", "the demo page is only served against the emulators")
    if settings.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("LOG_LEVEL", "must be DEBUG, INFO, WARNING or ERROR")


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
