"""The REST API's handlers (docs/api.md), and the one error body every failure gets.

Each handler reads the instance's ``PresenceService`` and ``Deployment`` from the app's state,
where ``gateway.web.app``'s lifespan put them. ``ROUTES`` is what the app serves.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from litestar import MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    HTTPException,
    ValidationException,
)
from litestar.params import QueryParameter
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from gateway.cluster import signout
from gateway.cluster.batch import MAX_BATCH_BYTES, MAX_BATCH_ENTRIES
from gateway.cluster.deployment import Deployment
from gateway.cluster.fanout import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from gateway.cluster.stats import instance_stats
from gateway.exceptions import DeploymentUnavailable, UserNotConnectedError
from gateway.instance.service import PresenceService
from gateway.protocol.messages import (
    BatchEntry,
    BatchEntryResponse,
    BatchRequest,
    BatchSendResponse,
    BroadcastResponse,
    ErrorResponse,
    HealthResponse,
    RoomResponse,
    RoomSendResponse,
    SendResponse,
    SignOutResponse,
    StatsResponse,
    StatusResponse,
    TimeoutCallback,
    TimeoutCallbackResponse,
    encode,
)
from gateway.protocol.rooms import RoomRefused, check_room_name
from gateway.web.fast_send import send_response
from gateway.web.guards import require_admin, require_callback
from gateway.web.sockets import valid_user_id

logger = logging.getLogger("gateway.web.routes")


#: ``?scope=deployment|instance``: "scope" is Litestar's reserved name for the ASGI scope, so
#: the query parameter is mapped onto another name.
ScopeQuery = Annotated[Literal["deployment", "instance"], QueryParameter(name="scope")]
#: ``?limit=``: at most this many users (and room members) listed; socket counts stay exact.
#: Bounded so that every instance's receipt stays far under Pub/Sub's message limit.
LimitQuery = Annotated[
    int,
    QueryParameter(
        ge=0,
        le=MAX_LIST_LIMIT,
        description=f"Most users (and members) listed, 0 to {MAX_LIST_LIMIT:,}",
    ),
]


def _service(request: ASGIConnection[Any, Any, Any, Any]) -> PresenceService:
    service: PresenceService = request.app.state.service
    return service


def _deployment(request: ASGIConnection[Any, Any, Any, Any]) -> Deployment:
    deployment: Deployment = request.app.state.deployment
    return deployment


@get("/ws/status/{user_id:str}", guards=[require_admin])
async def ws_status(
    request: Request[Any, Any, Any],
    user_id: str,
    view: ScopeQuery = "deployment",
) -> StatusResponse:
    """Whether the user holds a socket anywhere in the deployment (default), or on this
    instance (``?scope=instance``). If Firestore cannot answer, the instance's view is given
    and says so in ``scope``."""
    service = _service(request)
    counts: dict[str, int] | None = None
    if view == "deployment":
        try:
            counts = await _deployment(request).user_instances(user_id)
        except Exception as exc:
            logger.warning("deployment status unavailable, answering for this instance: %r", exc)
    answered: Literal["deployment", "instance"] = "deployment" if counts is not None else "instance"
    if counts is None:
        local = service.registry.count_of(user_id)
        counts = {service.settings.instance_id: local} if local else {}
    total = sum(counts.values())
    return StatusResponse(
        user_id=user_id,
        is_connected=total > 0,
        status="connected" if total else "disconnected",
        connections=total,
        scope=answered,
        instances=sorted(counts),
    )


@get("/ws/stats", guards=[require_admin])
async def ws_stats(
    request: Request[Any, Any, Any],
    view: ScopeQuery = "deployment",
    limit: LimitQuery = DEFAULT_LIST_LIMIT,
) -> StatsResponse:
    """Connections across every live instance (default), or on this one (``?scope=instance``),
    with the heartbeat settings and each counted instance's pong writer; the first ``limit``
    users by id. Without a broker, or when it cannot be reached, this instance answers alone
    and says so in ``scope``."""
    if view == "instance":
        return instance_stats(_service(request), limit)
    return await _deployment(request).stats(limit)


@post("/ws/send/{user_id:str}", guards=[require_admin], status_code=200)
async def ws_send(
    request: Request[Any, Any, Any],
    user_id: str,
    data: dict[str, Any],
    durable: Annotated[bool, QueryParameter(name="durable")] = False,
) -> SendResponse:
    """Send the JSON object body, as is, to every socket of the user on every live instance
    (404 when none holds one). ``?durable=true``: store it in the user's stream first, deliver
    it wrapped in a ``stream`` frame, and answer 200 even when no socket took it (the client
    recovers it on reconnect); 503 when it could not be stored."""
    if durable:
        if not valid_user_id(user_id):
            raise ValidationException(f"invalid user id {user_id[:130]!r}")
        stored = await _deployment(request).send_durable(user_id, data)
        sent = stored.delivery
        return SendResponse(
            "success",
            "Message stored and sent" if sent.connections else "Message stored",
            sent.connections,
            sent.scope,
            sent.instances,
            sent.unreachable,
            stored.epoch,
            stored.offset,
        )
    return send_response(await _deployment(request).send(user_id, data))


@post(
    "/ws/send",
    guards=[require_admin],
    status_code=200,
    request_max_body_size=MAX_BATCH_BYTES,
)
async def ws_send_batch(
    request: Request[Any, Any, Any],
    data: BatchRequest,
    durable: Annotated[bool, QueryParameter(name="durable")] = False,
) -> BatchSendResponse:
    """Up to MAX_BATCH_ENTRIES ``{"user_id", "message"}`` entries, each sent like ``POST
    /ws/send/{user_id}`` (``?durable=true``: each stored first), answered one by one in the
    batch's order. An invalid entry is answered ``invalid`` and the others still go."""
    if not 1 <= len(data.messages) <= MAX_BATCH_ENTRIES:
        raise ValidationException(
            f"a batch carries 1 to {MAX_BATCH_ENTRIES} messages, got {len(data.messages)}"
        )
    limit = _service(request).settings.sockets.max_message_bytes
    valid: list[tuple[int, str, str]] = []
    refused: dict[int, BatchEntryResponse] = {}
    for index, entry in enumerate(data.messages):
        text, problem = _entry_text(entry, limit)
        if text is None:
            user = entry.user_id if isinstance(entry.user_id, str) else ""
            refused[index] = BatchEntryResponse(user[:130], "invalid", error=problem)
        else:
            valid.append((index, entry.user_id, text))
    outcomes, sent = await _deployment(request).send_batch(valid, durable=durable)
    answers = {
        o.position: BatchEntryResponse(
            o.user_id, o.status, o.connections, o.error, o.epoch, o.offset
        )
        for o in outcomes
    }
    answers.update(refused)
    results = [answers[i] for i in range(len(data.messages))]
    return BatchSendResponse(
        "success",
        "Batch processed",
        sum(1 for r in results if r.connections),
        sum(r.connections for r in results),
        sent.scope,
        sent.instances,
        sent.unreachable,
        results,
    )


def _entry_text(entry: BatchEntry, limit: int) -> tuple[str | None, str | None]:
    """A batch entry's message encoded, or why it cannot be sent."""
    if not isinstance(entry.user_id, str) or not valid_user_id(entry.user_id):
        return None, "user_id must be a valid user id (a string of up to 128 allowed characters)"
    if not isinstance(entry.message, dict):
        return None, "message must be a JSON object"
    text = encode(entry.message)
    if len(text) > limit:
        return None, f"message is over WS_MAX_MESSAGE_BYTES ({limit:,} bytes)"
    return text, None


@post("/ws/broadcast", guards=[require_admin], status_code=200)
async def ws_broadcast(
    request: Request[Any, Any, Any], data: dict[str, Any], exclude_user: str | None = None
) -> BroadcastResponse:
    """Send the JSON object body to every connected user of the deployment except
    ``exclude_user``; ``recipients`` counts users, once each, across instances."""
    sent = await _deployment(request).broadcast(data, exclude_user)
    return BroadcastResponse(
        "success",
        "Message broadcasted successfully",
        sent.recipients,
        sent.connections,
        sent.scope,
        sent.instances,
        sent.unreachable,
    )


@post("/ws/rooms/{room:str}/send", guards=[require_admin], status_code=200)
async def ws_room_send(
    request: Request[Any, Any, Any], room: str, data: dict[str, Any]
) -> RoomSendResponse:
    """Send the JSON object body, as is, to every member socket of the room on every live
    instance (400 for an invalid room name; a room without members answers 200 with 0)."""
    check_room_name(room)
    sent = await _deployment(request).room_send(room, data)
    return RoomSendResponse(
        "success",
        "Message sent to room",
        room,
        sent.recipients,
        sent.connections,
        sent.scope,
        sent.instances,
        sent.unreachable,
    )


@get("/ws/rooms/{room:str}", guards=[require_admin])
async def ws_room(
    request: Request[Any, Any, Any],
    room: str,
    view: ScopeQuery = "deployment",
    limit: LimitQuery = DEFAULT_LIST_LIMIT,
) -> RoomResponse:
    """The room's member sockets (user, session, instance) on every live instance (default),
    or on this one (``?scope=instance``), the first ``limit`` of them; gathered over the broker
    like ``/ws/stats``."""
    check_room_name(room)
    deployment = _deployment(request)
    return await deployment.room_members(room, limit, everywhere=view == "deployment")


@post("/internal/timeout", guards=[require_callback], status_code=200)
async def internal_timeout(
    request: Request[Any, Any, Any], data: TimeoutCallback
) -> TimeoutCallbackResponse:
    """Called by the sweep (at the service URL: any instance): send the timeout message to
    these sessions' sockets on every instance and close them with 4408. Sessions no instance
    holds open are counted in ``not_found``; 503 when the broker cannot carry them to the
    other instances (their own poll then closes them within SWEEP_INTERVAL)."""
    _service(request).callbacks_received += 1
    closed, not_found = await _deployment(request).expire(
        (s.user_id, s.session_id) for s in data.sessions
    )
    return TimeoutCallbackResponse("success", closed, not_found)


@post("/ws/signout/{user_id:str}", guards=[require_admin], status_code=200)
async def ws_signout(request: Request[Any, Any, Any], user_id: str) -> SignOutResponse:
    """Sign the user out now, everywhere: revoke their Firebase tokens, record the sign-out in
    Firestore, and close every socket of theirs on every instance with the ``signed_out``
    message and 4410. Idempotent; 503 when Firebase Auth or Firestore cannot be reached."""
    service = _service(request)
    return await signout.sign_out(_deployment(request), service.store, service.verifier, user_id)


@get("/healthz", sync_to_thread=False)
def healthz(request: Request[Any, Any, Any]) -> HealthResponse:
    """Liveness: answers while the process serves requests (no Firestore round trip)."""
    service = _service(request)
    return HealthResponse("ok", service.settings.instance_id, service.registry.total_connections)


def error_body(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    if isinstance(exc, UserNotConnectedError):
        status, message = HTTP_404_NOT_FOUND, str(exc)
    elif isinstance(exc, RoomRefused):
        status, message = HTTP_400_BAD_REQUEST, exc.message
    elif isinstance(exc, DeploymentUnavailable):
        status, message = HTTP_503_SERVICE_UNAVAILABLE, str(exc)
    elif isinstance(exc, RecursionError | UnicodeDecodeError):
        # Raised by body decoding for a deeply nested or non-UTF-8 body: the client's fault.
        status, message = HTTP_400_BAD_REQUEST, "Request body is not valid JSON"
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        message = exc.detail
        extra = getattr(exc, "extra", None)
        if status == 400 and extra:
            message = f"{exc.detail}: {extra}"
    else:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        status, message = HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error"
    return Response(
        ErrorResponse("error", message, status), status_code=status, media_type=MediaType.JSON
    )


ROUTES = [
    ws_status,
    ws_stats,
    ws_send,
    ws_send_batch,
    ws_broadcast,
    internal_timeout,
    ws_signout,
    ws_room_send,
    ws_room,
    healthz,
]
