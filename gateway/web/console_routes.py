"""The operator console (docs/console.md): its page, its config and its three data routes.

Everything here answers 404 unless ``CONSOLE_ENABLED`` is on, and 403 to a request whose
``Origin`` is neither in ``ALLOWED_ORIGINS`` nor the gateway's own (``console_gate``): the page
is same-origin, so any other origin can only be another site's page. The data routes take
the REST API's bearer (``require_admin``: the admin token, or a Firebase ID token with the
``admin`` claim); the page itself and its config are public files, like the demo's. Actions
go through the REST API as it is: the console adds no route that changes anything.

The page's files are read once, when the app is built, from ``CONSOLE_DIR`` (default: the
repository's ``clients/js/dist/console``, built by ``node clients/js/console/build.mjs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from litestar import Litestar, Request, Response, get
from litestar.connection import ASGIConnection
from litestar.exceptions import NotFoundException, PermissionDeniedException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.params import QueryParameter

from gateway.cluster import console, console_sampler
from gateway.cluster.deployment import Deployment
from gateway.instance.auth import FirebaseVerifier
from gateway.protocol.console import (
    EVENT_KINDS,
    MAX_EVENTS,
    EventsResponse,
    OverviewResponse,
    UserResponse,
)
from gateway.settings import Settings
from gateway.web.console_auth import AdminTokens
from gateway.web.guards import require_admin
from gateway.web.sockets import valid_user_id

logger = logging.getLogger("gateway.web.console_routes")

REPOSITORY_CONSOLE_DIR = Path(__file__).resolve().parents[2] / "clients" / "js" / "dist" / "console"
CONSOLE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "THIRD_PARTY_LICENSES.txt": "text/plain; charset=utf-8",
}
#: ``?limit=`` of the events route, by default.
DEFAULT_EVENTS = 200


def load_files(settings: Settings) -> dict[str, tuple[bytes, str]]:
    """The built page's files (body, media type); none when the console is off. A missing
    build is logged and /console answers 404."""
    if not settings.console.enabled:
        return {}
    folder = Path(settings.console.dir) if settings.console.dir else REPOSITORY_CONSOLE_DIR
    files: dict[str, tuple[bytes, str]] = {}
    for name, media_type in CONSOLE_FILES.items():
        try:
            files[name] = ((folder / name).read_bytes(), media_type)
        except OSError:
            continue
    if "index.html" not in files:
        logger.warning(
            "CONSOLE_ENABLED but %s has no index.html (node clients/js/console/build.mjs): "
            "/console answers 404; the data routes are served",
            folder,
        )
    return files


def config_of(settings: Settings) -> dict[str, Any]:
    """``/console/config.json``: the Firebase web config the page signs in with, and the
    Auth emulator's address when the gateway uses one (as the demo's config names it)."""
    emulator = settings.demo_auth_emulator_host
    return {
        "firebase": {
            "apiKey": settings.console.firebase_api_key,
            "authDomain": settings.console.firebase_auth_domain
            or f"{settings.project_id}.firebaseapp.com",
            "projectId": settings.project_id,
        },
        "auth_emulator": f"http://{emulator}" if emulator else None,
    }


def admin_tokens(app: Litestar, settings: Settings) -> AdminTokens | None:
    """The admin-claim check, when the console is on and sockets take Firebase tokens."""
    if not (settings.console.enabled and settings.auth.required):
        return None

    async def check(token: str) -> str | None:
        verifier = app.state.service.verifier
        return await verifier.admin_uid(token) if isinstance(verifier, FirebaseVerifier) else None

    return AdminTokens(check)


@contextlib.asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """The sampler, while the console is enabled (after the app's own lifespan built the
    deployment, and stopped before it stops)."""
    settings: Settings = app.state.settings
    if not settings.console.enabled:
        yield
        return
    task = asyncio.create_task(console_sampler.run(app.state.deployment), name="console-sampler")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def console_gate(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """404 while the console is off; 403 for an Origin not in ALLOWED_ORIGINS."""
    settings: Settings = connection.app.state.settings
    if not settings.console.enabled:
        raise NotFoundException("The console is not enabled on this gateway (CONSOLE_ENABLED)")
    origin = connection.headers.get("origin")
    if origin is not None and not origin_allowed(
        origin, connection.headers.get("host", ""), settings.sockets.allowed_origins
    ):
        raise PermissionDeniedException(f"Origin {origin[:200]!r} is not in ALLOWED_ORIGINS")


def origin_allowed(origin: str, host: str, allowed: tuple[str, ...]) -> bool:
    """An origin in ALLOWED_ORIGINS, or the gateway's own (the page's, same-origin: its
    host:port is the request's Host). A foreign page cannot choose either header, so its
    requests are refused whatever token they carry; an empty list allows no other origin."""
    origin = origin.rstrip("/")
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()


def _serve(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    files: dict[str, tuple[bytes, str]] = request.app.state.console_files
    if name not in files:
        raise NotFoundException(f"No such console file: {name[:100]}")
    body, media_type = files[name]
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(body, headers={**headers, "Content-Type": media_type})


def _deployment(request: Request[Any, Any, Any]) -> Deployment:
    deployment: Deployment = request.app.state.deployment
    return deployment


@get("/console", guards=[console_gate], sync_to_thread=False, include_in_schema=False)
def console_page(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _serve(request, "index.html")


@get("/console/config.json", guards=[console_gate], sync_to_thread=False, include_in_schema=False)
def console_config(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return config_of(request.app.state.settings)


@get("/console/{name:str}", guards=[console_gate], sync_to_thread=False, include_in_schema=False)
def console_file(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    if name == "index.html":
        raise NotFoundException("No such console file: index.html (the page is /console)")
    return _serve(request, name)


@get("/ws/console/overview", guards=[console_gate, require_admin])
async def console_overview(request: Request[Any, Any, Any]) -> OverviewResponse:
    """Every instance's figures and state, the deployment's totals, its series over the last
    10 minutes and its busiest rooms (docs/console.md)."""
    return await console.overview(_deployment(request), request.app.state.console_lost)


@get("/ws/console/users/{user_id:str}", guards=[console_gate, require_admin])
async def console_user(request: Request[Any, Any, Any], user_id: str) -> UserResponse:
    """The user's sockets on every instance, their presence and stream position (400 for an
    invalid user id)."""
    if not valid_user_id(user_id):
        raise ValidationException(f"invalid user id {user_id[:130]!r}")
    return await console.user(_deployment(request), user_id)


@get("/ws/console/events", guards=[console_gate, require_admin])
async def console_events(
    request: Request[Any, Any, Any],
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_EVENTS)] = DEFAULT_EVENTS,
    kind: str | None = None,
    user: str | None = None,
) -> EventsResponse:
    """The newest events of every instance, newest first; ``kind`` and ``user`` filter them."""
    if kind is not None and kind not in EVENT_KINDS:
        raise ValidationException(f"kind must be one of {', '.join(EVENT_KINDS)}")
    if user is not None and not valid_user_id(user):
        raise ValidationException(f"invalid user id {user[:130]!r}")
    return await console.events(_deployment(request), limit, kind, user)


ROUTES = [
    console_page,
    console_config,
    console_file,
    console_overview,
    console_user,
    console_events,
]
