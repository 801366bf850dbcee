"""Calls from one gateway instance to another over their internal URLs.

A user's sockets may sit on any instance, while a REST call reaches just one. The instance that
takes the call finds the others in Firestore (``gateway_instances``, ``members.active_sessions``)
and forwards over HTTP to their internal routes (``/internal/send``, ``/internal/broadcast``,
``/internal/stats``), authenticated like the sweep's callback: the first
``GATEWAY_CALLBACK_TOKEN``, or a Google-signed ID token for ``CALLBACK_OIDC_AUDIENCE`` from the
metadata server. No broker is involved; README, "Several instances", says how far this carries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from gateway.exceptions import PeerError
from gateway.settings import Settings

T = TypeVar("T")

#: An async provider of the bearer token sent to other instances.
Bearer = Callable[[], Awaitable[str]]

#: A dead instance refuses or drops the connection; failing fast keeps it from holding up a
#: fan-out for the full request timeout.
CONNECT_TIMEOUT = 1.0
ID_TOKEN_REUSE_SECONDS = 3000.0


@dataclass(frozen=True, slots=True)
class Instance:
    """A live gateway instance other than this one."""

    instance_id: str
    internal_url: str


def bearer_for(settings: Settings) -> Bearer | None:
    """How this instance authenticates to the others, or None when nothing is configured
    (then send and broadcast reach this instance's sockets only)."""
    if settings.callback_tokens:
        token = settings.callback_tokens[0]

        async def shared() -> str:
            return token

        return shared
    if settings.callback_oidc_audience:
        return _google_id_token(settings.callback_oidc_audience)
    return None


def _google_id_token(audience: str) -> Bearer:
    """ID tokens from the runtime's service account (metadata server), reused for 50 minutes;
    receivers accept them when that account is in CALLBACK_OIDC_SERVICE_ACCOUNTS."""
    cached: list[tuple[float, str]] = []
    lock = asyncio.Lock()

    def fetch() -> str:
        import google.auth.transport.requests
        from google.oauth2 import id_token

        request = google.auth.transport.requests.Request()
        return str(id_token.fetch_id_token(request, audience))  # type: ignore[no-untyped-call]

    async def provide() -> str:
        async with lock:
            if not cached or time.monotonic() - cached[0][0] > ID_TOKEN_REUSE_SECONDS:
                token = await asyncio.to_thread(fetch)
                cached[:] = [(time.monotonic(), token)]
            return cached[0][1]

    return provide


class Peers:
    """An HTTP client for the other instances' internal routes (one pooled client, kept-alive
    connections, so a forwarded send costs one round trip)."""

    def __init__(self, bearer: Bearer, timeout: float) -> None:
        self._bearer = bearer
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, peer: Instance, user_id: str, body: bytes) -> int:
        """Deliver an encoded JSON object to the user's sockets on ``peer``; sockets reached."""
        answer = await self._call(
            peer, "POST", f"/internal/send/{quote(user_id, safe='')}", body=body
        )
        return int(answer.get("connections", 0))

    async def broadcast(
        self, peer: Instance, body: bytes, exclude_user: str | None
    ) -> tuple[int, list[str]]:
        """Broadcast on ``peer``; return (sockets reached, users reached there)."""
        params = {"exclude_user": exclude_user} if exclude_user is not None else None
        answer = await self._call(peer, "POST", "/internal/broadcast", body=body, params=params)
        users = answer.get("users")
        return int(answer.get("connections", 0)), list(users) if isinstance(users, list) else []

    async def stats(self, peer: Instance) -> dict[str, Any]:
        return await self._call(peer, "GET", "/internal/stats")

    async def _call(
        self,
        peer: Instance,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {await self._bearer()}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self._client.request(
                method, peer.internal_url + path, content=body, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise PeerError(peer.instance_id, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise PeerError(peer.instance_id, f"answered {response.status_code}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise PeerError(peer.instance_id, "answered a body that is not JSON") from exc
        if not isinstance(answer, dict):
            raise PeerError(peer.instance_id, "answered a body that is not a JSON object")
        return answer


async def gather_peers(
    peers: Sequence[Instance], call: Callable[[Instance], Awaitable[T]]
) -> tuple[dict[str, T], dict[str, PeerError]]:
    """Run ``call`` against every peer at once; split the answers from the failures."""
    outcomes = await asyncio.gather(*(call(p) for p in peers), return_exceptions=True)
    answers: dict[str, T] = {}
    failures: dict[str, PeerError] = {}
    for peer, outcome in zip(peers, outcomes, strict=True):
        if isinstance(outcome, PeerError):
            failures[peer.instance_id] = outcome
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            answers[peer.instance_id] = outcome
    return answers, failures
