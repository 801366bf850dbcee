"""Route guards: the admin bearer token for the REST API (and, with ``CONSOLE_ENABLED``, a
Firebase ID token carrying the ``admin`` claim: ``gateway.web.console_auth``), the callback
credential for the sweep's callback. Tokens are compared in constant time; neither guard
accepts the other's."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, ServiceUnavailableException
from litestar.handlers import BaseRouteHandler

from gateway.settings import Settings
from gateway.web.callback_auth import OidcVerifier
from gateway.web.console_auth import AdminTokens


def _check_bearer(
    connection: ASGIConnection[Any, Any, Any, Any], accepted: tuple[str, ...]
) -> None:
    header = connection.headers.get("authorization", "")
    scheme, _sep, token = header.partition(" ")
    presented = token.strip().encode()
    # Compare against every accepted token (no early exit), each in constant time.
    matched = False
    for candidate in accepted:
        matched |= hmac.compare_digest(presented, candidate.encode())
    if scheme.lower() != "bearer" or not matched:
        raise NotAuthorizedException("Missing or invalid bearer token")


async def require_admin(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard: ``Authorization: Bearer $GATEWAY_ADMIN_TOKEN``, compared in constant time.
    A coroutine on purpose: Litestar runs a plain-function guard in a worker thread, a thread
    hop per REST call that cost a tenth of a send's CPU (docs/benchmarks.md). With the console
    enabled, a Firebase ID token whose claims carry ``admin: true`` is accepted too."""
    settings: Settings = connection.app.state.settings
    try:
        _check_bearer(connection, settings.admin_tokens)
    except NotAuthorizedException:
        admins: AdminTokens | None = connection.app.state.console_admins
        if admins is None:
            raise
        scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or await admins.admin(token.strip()) is None:
            raise


async def require_callback(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard for the sweep's callback (never the admin token): the shared
    ``GATEWAY_CALLBACK_TOKEN``, or a Google-signed OIDC token for a configured service account."""
    settings: Settings = connection.app.state.settings
    oidc: OidcVerifier | None = connection.app.state.oidc
    if not settings.callback.tokens and oidc is None:
        raise ServiceUnavailableException(
            "Callback disabled: set GATEWAY_CALLBACK_TOKEN or CALLBACK_OIDC_AUDIENCE"
        )
    if settings.callback.tokens:
        try:
            _check_bearer(connection, settings.callback.tokens)
            return
        except NotAuthorizedException:
            if oidc is None:
                raise
    assert oidc is not None
    scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or await oidc.verify(token.strip()) is None:
        raise NotAuthorizedException("Missing or invalid bearer token")
