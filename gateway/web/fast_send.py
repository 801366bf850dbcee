"""``POST /ws/send/{user_id}`` straight to the deployment, for the requests that need nothing
else: no ``Origin`` (no CORS), no query, a valid admin token and a JSON object body.

A targeted send is the REST call a backend makes most. Litestar's routing, its middleware
frames, the handler's signature model and its response object cost most of that call's CPU,
about five times what the delivery costs (docs/benchmarks.md, REST delivery). Anything this
path does not take whole (another header or query, a body that is not a JSON object, a bad
token) is handed to Litestar, with the body already read replayed, so every answer other than
the plain one is still Litestar's (``routes.ws_send``, ``routes.error_body``), byte for byte.
The answers this path gives itself are the same structs encoded the same way, which
tests/e2e/test_fast_send.py holds against the Litestar route. When the send needs no await
(``answer_now``), the HTTP protocol gives the answer itself, without an ASGI task
(``gateway.edge.inline_send``); ``__call__`` is the path of every other send it takes.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from gateway.cluster.deployment import Deployment
from gateway.cluster.local_send import send_now
from gateway.cluster.operation import Delivery
from gateway.exceptions import DeploymentUnavailable, UserNotConnectedError
from gateway.protocol.messages import ErrorResponse, SendResponse
from gateway.web.http_metrics import HttpMetrics

#: The route template Litestar reports for ``routes.ws_send`` (its metrics' ``path`` label).
PATH_TEMPLATE = "/ws/send/{user_id}"
PREFIX = "/ws/send/"

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

Asgi = Callable[[Any, Any, Any], Awaitable[None]]


class FastSend:
    """Takes the plain targeted sends; hands every other request to ``fallback``."""

    def __init__(
        self,
        fallback: Asgi,
        deployment: Callable[[], Deployment],
        admin_tokens: tuple[str, ...],
        max_body: int,
        metrics: HttpMetrics,
    ) -> None:
        self.fallback = fallback
        #: The deployment, made by the app's lifespan after this object.
        self.deployment = deployment
        #: The deployment once made (the app's state is slower to ask every request).
        self._deployment: Deployment | None = None
        self._tokens = tuple(f"Bearer {t}".encode() for t in admin_tokens)
        self.max_body = max_body
        self.metrics = metrics

    def takes(self, scope: Any) -> bool:
        """Whether the request is one this path answers (decided on its head alone)."""
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith(PREFIX) or scope["query_string"]:
            return False
        if "/" in path[len(PREFIX) :] or len(path) == len(PREFIX):
            return False
        authorized = False
        for name, value in scope["headers"]:
            if name == b"origin":
                return False
            if name == b"authorization":
                # Every accepted token compared (no early exit), each in constant time.
                for token in self._tokens:
                    authorized |= hmac.compare_digest(value, token)
            elif name == b"content-length" and int(value or b"0") > self.max_body:
                return False
        return authorized

    def _payload(self, body: bytes) -> dict[str, Any] | None:
        """The body as a JSON object, or None (then Litestar answers)."""
        if len(body) > self.max_body:
            return None
        try:
            payload = _decode(body)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return None
        return payload if isinstance(payload, dict) else None

    def answer_now(self, scope: Any, body: bytes) -> tuple[int, bytes] | None:
        """For a request ``takes`` took, with its whole ``body``: the answer's status and JSON
        when the send can be decided and delivered without an await
        (``gateway.cluster.local_send``), delivered; else None, and nothing was done (then the
        request goes to ``__call__``). The HTTP protocol asks this (``gateway.edge.inline_send``).
        """
        start = time.perf_counter()
        payload = self._payload(body)
        if payload is None:
            return None
        deployment = self._deployment
        if deployment is None:
            try:
                deployment = self._deployment = self.deployment()
            except AttributeError:
                return None  # the lifespan has not made it yet
        try:
            sent = send_now(deployment, scope["path"][len(PREFIX) :], payload)
        except UserNotConnectedError as exc:
            status, answer = 404, _encode(ErrorResponse("error", str(exc), 404))
        else:
            if sent is None:
                return None
            status, answer = 200, _sent(sent)
        self.metrics.started("POST", PATH_TEMPLATE)
        self.metrics.finished("POST", PATH_TEMPLATE, status, time.perf_counter() - start)
        return status, answer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        start = time.perf_counter()
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body or not message.get("more_body", False):
                break
        body = b"".join(chunks)
        payload = self._payload(body)
        if payload is None:
            await self.fallback(scope, _replay(body), send)
            return
        user_id = scope["path"][len(PREFIX) :]
        status, answer = 500, b""  # until an answer is made (else uvicorn answers 500)
        self.metrics.started("POST", PATH_TEMPLATE)
        try:
            status, answer = 200, _sent(await self.deployment().send(user_id, payload))
        except (UserNotConnectedError, DeploymentUnavailable) as exc:
            status = 404 if isinstance(exc, UserNotConnectedError) else 503
            answer = _encode(ErrorResponse("error", str(exc), status))
        finally:
            self.metrics.finished("POST", PATH_TEMPLATE, status, time.perf_counter() - start)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def send_response(sent: Delivery) -> SendResponse:
    """A plain send's answer, as this path and ``routes.ws_send`` both give it."""
    return SendResponse(
        "success",
        "Message sent successfully",
        sent.connections,
        sent.scope,
        sent.instances,
        sent.unreachable,
    )


def _sent(sent: Delivery) -> bytes:
    return _encode(send_response(sent))


def _replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A ``receive`` that gives the body already read, then waits like a quiet client."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
