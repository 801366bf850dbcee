"""Litestar application factory: the app, its lifespan (service, broker, deployment) and the
raw socket path in front of it (the REST handlers: ``gateway.web.routes``).

Nothing is built at import time: ``create_app(settings)`` builds the Firestore client and the
service inside the app's lifespan, on the running event loop.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import REGISTRY

from gateway.cluster.broker import PubSubBroker
from gateway.cluster.console_merge import LostSockets
from gateway.cluster.deployment import Deployment
from gateway.cluster.handle import Gateway, bind
from gateway.cluster.presence_events import EventsTopic
from gateway.instance.auth import FirebaseVerifier
from gateway.instance.service import MessageHandler, PresenceService, log_message
from gateway.protocol.closes import CloseCode
from gateway.settings import Settings
from gateway.storage.firestore_store import FirestoreStore
from gateway.storage.presence_records import FirestorePresenceRecords
from gateway.storage.store import MemoryStore, Store
from gateway.storage.streams import MemoryStreamStore, StreamStore
from gateway.web import console_routes, presence_routes, routes, static
from gateway.web.callback_auth import OidcVerifier
from gateway.web.fast_send import FastSend
from gateway.web.http_metrics import HttpMetrics, HttpMetricsMiddleware
from gateway.web.metrics import GatewayCollector
from gateway.web.sockets import serve_socket

logger = logging.getLogger("gateway.web.app")

StoreFactory = Callable[[Settings], Store]


def _streams_for(store: Store, settings: Settings) -> StreamStore:
    """The durable streams beside the store: in Firestore through the same client, or in
    memory beside a MemoryStore (unit tests)."""
    if isinstance(store, FirestoreStore):
        from gateway.storage.firestore_streams import FirestoreStreamStore

        return FirestoreStreamStore(store.client, settings.streams.history_ttl)
    docs = store.docs if isinstance(store, MemoryStore) else {}
    return MemoryStreamStore(docs, settings.streams.history_ttl)


def create_app(
    settings: Settings,
    *,
    store_factory: StoreFactory | None = None,
    message_handler: MessageHandler = log_message,
) -> Litestar:
    """Build the gateway. ``store_factory`` defaults to Firestore; ``message_handler`` is the
    application's hook for client ``message`` frames (the default logs them)."""

    make_store: StoreFactory = store_factory or (lambda s: FirestoreStore(s.project_id))
    # HTTP request metrics for the REST API; sockets are counted by GatewayCollector.
    http_metrics = HttpMetrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        verifier = FirebaseVerifier(settings.project_id) if settings.auth.required else None
        store = make_store(settings)
        service = PresenceService(
            settings,
            store,
            message_handler=message_handler,
            verifier=verifier,
            streams=_streams_for(store, settings),
            presence_records=(
                FirestorePresenceRecords(store.client)
                if isinstance(store, FirestoreStore)
                else None
            ),
        )
        events = (
            EventsTopic(
                settings.fanout.pubsub_project or settings.project_id,
                settings.presence.events_topic,
            )
            if settings.presence.events_topic
            else None
        )
        if events is not None and service.presence_writer is not None:
            service.presence_writer.on_events = events.enqueue
        broker = (
            PubSubBroker(
                settings.fanout.pubsub_project, settings.fanout.pubsub_topic, settings.instance_id
            )
            if settings.fanout.pubsub_topic
            else None
        )
        deployment = Deployment(service, broker)
        # A handler that asks for ``gateway`` gets the deployment's sends (its own replies).
        service.message_handler = bind(message_handler, Gateway(deployment))
        app.state.service = service
        app.state.deployment = deployment
        collector = GatewayCollector(service, deployment)
        REGISTRY.register(collector)
        REGISTRY.register(http_metrics)
        if events is not None:
            await events.start()
        await service.start()
        await deployment.start()
        try:
            yield
        finally:
            # The subscription goes first: messages for this instance's (closed) sockets are
            # of no use, and Pub/Sub stops counting it at once.
            await deployment.stop()
            await service.stop()
            if events is not None:
                await events.stop()
            REGISTRY.unregister(collector)
            REGISTRY.unregister(http_metrics)

    app = Litestar(
        route_handlers=[
            *routes.ROUTES,
            *presence_routes.ROUTES,
            GatewayMetrics,
            *static.ROUTES,
            *console_routes.ROUTES,
        ],
        middleware=[lambda app: HttpMetricsMiddleware(app, http_metrics)],
        lifespan=[lifespan, console_routes.lifespan],
        exception_handlers={Exception: routes.error_body},
        openapi_config=OpenAPIConfig(title="Presence gateway", version="0.1.0"),
        request_max_body_size=settings.sockets.max_message_bytes,
        # Logging is configured by the process (python -m gateway honours LOG_LEVEL); Litestar's
        # default config would reset the root logger to INFO.
        logging_config=None,
        cors_config=CORSConfig(
            allow_origins=list(settings.sockets.allowed_origins) or ["*"],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        ),
    )
    app.state.settings = settings
    app.state.http_metrics = http_metrics
    app.state.console_files = console_routes.load_files(settings)
    app.state.console_lost = LostSockets()
    app.state.console_admins = console_routes.admin_tokens(app, settings)
    app.state.static = static.load(
        settings.client_dir,
        settings.demo_dir,
        {
            "projectId": settings.project_id,
            "authEmulatorHost": settings.demo_auth_emulator_host,
            "firestoreEmulatorHost": settings.demo_firestore_emulator_host,
        },
    )
    app.state.oidc = (
        OidcVerifier(
            settings.callback.oidc_audience,
            settings.callback.oidc_service_accounts,
            settings.callback.oidc_certs_url,
        )
        if settings.callback.oidc_audience
        else None
    )
    return app


class GatewayMetrics(PrometheusController):
    """``GET /metrics``: Prometheus text format (unauthenticated, like /healthz: expose it
    only on the internal network or behind the platform's auth)."""

    path = "/metrics"


class SocketFastPath:
    """The ASGI app uvicorn runs: ``/ws/connect/{user_id}`` straight to the socket handler, the
    plain ``POST /ws/send/{user_id}`` straight to the deployment (``gateway.web.fast_send``),
    everything else (REST, OpenAPI, lifespan) to Litestar.

    The socket path is the one held open by every client; skipping Litestar's routing and
    middleware frames for it saves memory per idle socket and raises the connect rate
    (measured: docs/benchmarks.md, *Memory*).
    """

    PREFIX = "/ws/connect/"

    def __init__(self, app: Litestar) -> None:
        self.app = app
        settings: Settings = app.state.settings
        self._origins = frozenset(settings.sockets.allowed_origins)
        self.fast_send = FastSend(
            app,
            lambda: app.state.deployment,
            settings.admin_tokens,
            settings.sockets.max_message_bytes,
            app.state.http_metrics,
        )

    def _origin_allowed(self, scope: Any) -> bool:
        """Browsers send Origin on every socket; other clients usually send none."""
        if not self._origins:
            return True
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                return value.decode("latin-1").rstrip("/") in self._origins
        return True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and not self._origin_allowed(scope):
            # A page from a foreign origin: refuse the handshake (HTTP 403) before anything.
            await receive()
            await send({"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)})
        elif scope["type"] == "websocket" and scope["path"].startswith(self.PREFIX):
            user_id = scope["path"][len(self.PREFIX) :]
            await serve_socket(self.app.state.service, user_id, scope, receive, send)
        elif scope["type"] == "websocket":
            # Litestar has no other socket routes; refuse the handshake (HTTP 403).
            await receive()
            await send({"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)})
        elif scope["type"] == "http" and self.fast_send.takes(scope):
            await self.fast_send(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_asgi(
    settings: Settings,
    *,
    store_factory: StoreFactory | None = None,
    message_handler: MessageHandler = log_message,
) -> SocketFastPath:
    """The complete gateway as an ASGI app (what ``python -m gateway`` serves)."""
    return SocketFastPath(
        create_app(settings, store_factory=store_factory, message_handler=message_handler)
    )
