"""Run the gateway: :func:`serve` for an application that embeds it, ``python -m gateway`` (its
:func:`main`, settings from the environment) otherwise. Both run the same server: the lean
wsproto edge, bounded handshakes, token redaction in the logs, the collector's threshold, and
the library version check, which a hand-written ``uvicorn.run(create_asgi(...))`` would lose.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import uvicorn

from gateway.edge.inline_send import inline_http
from gateway.edge.versions import ALLOW_UNTESTED, Problem, check_versions, refusal, refused
from gateway.edge.wsproto_lean import LeanWSProtocol
from gateway.exceptions import ConfigError
from gateway.instance.service import MessageHandler, log_message
from gateway.settings import ALLOW_EMULATOR, Settings
from gateway.web.app import SocketFastPath, StoreFactory, create_asgi

#: Tracked objects allocated, net of those freed, between young-generation collections.
#: CPython's default, 700, is crossed several times a second by the write-behind buffer's pending
#: pong writes, and each collection promotes them towards the full collections that stall every
#: socket; at 20,000 they are committed and freed by reference counting before one runs.
#: Measured: docs/benchmarks.md, "Against Node's ws", item 3 (make bench --only load).
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Raise the young generation's threshold (the other two stay CPython's)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


class RedactTokens(logging.Filter):
    """ID tokens must not reach logs, however a client spells them.

    uvicorn logs each socket's request target with its raw query string, in which a parameter
    name may be percent-encoded (``tok%65n=`` is the ``token`` the gateway decodes and reads),
    and the ``websockets`` implementation at DEBUG logs the request line, every header and the
    start and end of every frame (a fresh token comes in ``{"type": "auth", "token": ...}``).
    So the whole query of a socket path is replaced (its other parameters are not worth the
    risk of a spelling missed), elsewhere the value of any parameter whose decoded name holds
    "token" is, and so are the credential of an ``Authorization`` header and the string value
    of a JSON key holding "token".
    """

    #: A socket path's query, up to the end of the target: a closing quote (uvicorn quotes the
    #: target) followed by a space or the end. A quote inside the query does not end it.
    _socket_query = re.compile(
        "(" + re.escape(SocketFastPath.PREFIX) + r"[^\s?]*)\?\S*?(?=\"?(?:\s|$))"
    )
    #: One name=value pair of any other query string (or a bare name=value in a message).
    _parameter = re.compile(r"(^|[?&;\s])([^=&;\s\"?]+)=([^&;\s\"]*)")
    _authorization = re.compile(r"(?i)(authorization:\s*)(?:[\w-]+\s+)?\S+")
    _json_token = re.compile(r'(?i)("[^"]*token[^"]*"\s*:\s*")[^"]*')

    @classmethod
    def redact(cls, message: str) -> str:
        message = cls._socket_query.sub(r"\1?[redacted]", message)
        message = cls._parameter.sub(cls._redact_parameter, message)
        message = cls._authorization.sub(r"\1[redacted]", message)
        return cls._json_token.sub(r"\1[redacted]", message)

    @staticmethod
    def _redact_parameter(match: re.Match[str]) -> str:
        separator, name, value = match.groups()
        if value and "token" in unquote_plus(name).lower():
            return f"{separator}{name}=[redacted]"
        return match.group(0)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


class CloudLoggingJson(logging.Formatter):
    """One JSON object per line in Cloud Logging's structured format (severity, message, time,
    logger; the traceback folded into message), which Cloud Run parses from stderr."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            # Connection events (gateway.instance.analytics): jsonPayload.event in Cloud Logging.
            entry["event"] = event
        if record.exc_info:
            entry["message"] += "\n" + self.formatException(record.exc_info)
        return json.dumps(entry)


def warn_of_emulators(settings: Settings) -> None:
    """At every start, one WARNING per emulator that ALLOW_EMULATOR_FOR_PROJECT let through for
    a project that is not a demo- one: such an instance trusts whoever runs the emulator, and
    it must not be mistaken for a production one in its log."""
    log = logging.getLogger("gateway")
    for emulator in settings.emulators_allowed:
        log.warning(
            "EMULATOR IN USE for project %s, allowed by %s: %s=%s, so %s. "
            "Never run this way in production",
            emulator.project,
            ALLOW_EMULATOR,
            emulator.variable,
            emulator.host,
            emulator.consequence,
        )


def check_libraries(settings: Settings) -> list[Problem]:
    """Refuse to start on a library release whose internals the gateway was not tested with
    (gateway.edge.versions: uvicorn, httptools, wsproto, google-cloud-firestore), unless the
    release is merely untested and ALLOW_UNTESTED_LIBRARIES names it; return those so allowed."""
    problems = check_versions(settings.sockets.ws_implementation)
    refuse = refused(problems, os.environ)
    if refuse:
        raise ConfigError(*refusal(refuse))
    return problems


def warn_of_untested(allowed: list[Problem]) -> None:
    """At every start, one WARNING per untested library release the override let through."""
    for problem in allowed:
        logging.getLogger("gateway").warning(
            "UNTESTED LIBRARY allowed by %s: %s; the gateway uses its internals for %s",
            ALLOW_UNTESTED,
            problem,
            problem.library.uses,
        )


def websocket_protocol(settings: Settings) -> type[asyncio.Protocol] | str:
    """What uvicorn runs sockets with: for the default, wsproto, its protocol trimmed for idle
    sockets (less than half the memory per socket, see gateway.edge.wsproto_lean); the other
    implementations as uvicorn ships them."""
    if settings.sockets.ws_implementation == "wsproto":
        return LeanWSProtocol
    return settings.sockets.ws_implementation


def configure_logging(settings: Settings) -> None:
    """The gateway's log format and level, unless the application configured logging already,
    and in any case the token redaction on every root handler (a token must not reach a log,
    whoever formats it)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
        if settings.log_format == "json":
            for handler in root.handlers:
                handler.setFormatter(CloudLoggingJson())
    for handler in root.handlers:
        if not any(isinstance(f, RedactTokens) for f in handler.filters):
            handler.addFilter(RedactTokens())


def serve(
    settings: Settings | None = None,
    *,
    message_handler: MessageHandler = log_message,
    store_factory: StoreFactory | None = None,
) -> None:
    """Run the gateway until it is stopped (SIGINT, SIGTERM), as ``python -m gateway`` does.

    ``settings``: None reads them from the environment (``Settings.from_env``).
    ``message_handler``: the application's hook for client ``message`` frames, an
    ``async def handler(user_id, session_id, data)``; one that also takes a keyword-only
    ``gateway`` gets the :class:`gateway.cluster.handle.Gateway` to send with.
    Raises :class:`ConfigError` (naming the variable) before anything starts."""
    settings = settings or Settings.from_env()
    untested = check_libraries(settings)
    ws_protocol = websocket_protocol(settings)
    configure_logging(settings)
    warn_of_emulators(settings)
    warn_of_untested(untested)
    if os.environ.get("K_SERVICE") and not settings.fanout.pubsub_topic:
        logging.getLogger("gateway").warning(
            "on Cloud Run with no PUBSUB_TOPIC: instances cannot reach each other; send, "
            "broadcast, stats and the sweep's timeouts reach the instance a request lands on, "
            "and other instances close timed-out sockets only through their poll"
        )
    app = create_asgi(settings, message_handler=message_handler, store_factory=store_factory)
    tune_gc()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        ws=ws_protocol,
        # asyncio's own loop, even where uvloop is installed: uvloop made the reconnect storm
        # erratic (docs/benchmarks.md, "uvloop, tried and left out").
        loop="asyncio",
        # A deadline and a cap on connections that have not sent their request yet; the plain
        # targeted send answered inside the protocol when it can be (no ASGI task).
        http=inline_http(
            settings.sockets.handshake_timeout,
            settings.sockets.max_pending_handshakes,
            app.fast_send,
        ),
        # Small JSON frames gain nothing from compression, and its per-socket state costs
        # memory (docs/benchmarks.md, Memory).
        ws_per_message_deflate=False,
        # The application's JSON ping is the heartbeat; protocol pings would double it.
        ws_ping_interval=None,
        ws_max_size=settings.sockets.max_message_bytes,
        # TLS ends at the front end (Cloud Run's, or a local proxy); the socket's client address
        # (the connect limiter's key) and scheme come from its X-Forwarded-For and
        # X-Forwarded-Proto, believed only from these peers (docs/deployment.md#encryption).
        proxy_headers=True,
        forwarded_allow_ips=settings.sockets.forwarded_allow_ips,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def main() -> int:
    """``python -m gateway``: serve with the environment's settings; 2 on a bad setting."""
    try:
        serve()
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0
