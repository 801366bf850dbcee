"""The socket protocol as plain code: a client frame in, a decision out. No I/O here.

The socket edge (``gateway.web.sockets``) feeds each received frame to :func:`decode_frame` and
acts on the returned event: record a pong, answer a ping, hand a message to the application,
log an unknown type. A frame that breaks the protocol raises :class:`ProtocolError`, which the
edge turns into an ``{"type": "error"}`` reply or, for an oversized frame, a close.

Error codes (documented in docs/protocol.md):

=====================  =========================================================  ==========
code                   when                                                       effect
=====================  =========================================================  ==========
``invalid_json``       the text frame is not JSON (or not UTF-8)                  reply
``not_an_object``      the JSON value is not an object                            reply
``missing_type``       the object has no ``type``                                 reply
``invalid_type``       ``type`` is not a non-empty string                         reply
``invalid_field``      a known type with a field of the wrong type                reply
``invalid_token``      an ``auth`` frame whose token was refused (edge)           reply
``binary_frame``       a binary frame (the protocol is JSON text)                 reply
``message_too_large``  the frame exceeds ``WS_MAX_MESSAGE_BYTES``                 close 1009
=====================  =========================================================  ==========

A ``join`` the rooms' rules refuse is answered by the edge with the codes of
``gateway.protocol.rooms`` (``invalid_room``, ``room_forbidden``, ``too_many_rooms``,
``room_full``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

import msgspec

from gateway.exceptions import ProtocolError
from gateway.protocol.closes import CloseCode

MAX_TYPE_LENGTH = 64
#: The largest integer a client may send (``id``, ``offset``): JavaScript's
#: ``Number.MAX_SAFE_INTEGER``, the largest every JSON client represents exactly, and far
#: inside the signed 64 bits Firestore stores. A value beyond it would fail every commit of
#: the write-behind batch it lands in, so it is refused here, at the edge.
MAX_SAFE_INTEGER = 2**53 - 1
#: Longest ``id`` string (echoed in replies), ``epoch`` and ping ``timestamp``, in characters.
MAX_ID_LENGTH = 128
MAX_EPOCH_LENGTH = 64
MAX_TIMESTAMP_LENGTH = 64

_decoder = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The client answered a heartbeat."""


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The client pinged us; answer with a server ``pong``."""

    timestamp: str | None


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A regular application message; ``data`` is any JSON value."""

    data: Any
    id: str | int | None


@dataclass(frozen=True, slots=True)
class UnknownType:
    """A well-formed frame whose ``type`` we do not know: logged and ignored."""

    type: str


@dataclass(frozen=True, slots=True)
class AuthRefresh:
    """The client presents a fresh ID token for an open socket."""

    token: str


@dataclass(frozen=True, slots=True)
class JoinRoom:
    """The socket asks to join a room; whether it may is ``gateway.protocol.rooms``' decision."""

    room: str
    id: str | int | None
    #: A presence room's member info (a JSON object; its size is checked by the service).
    info: Any = None


@dataclass(frozen=True, slots=True)
class PublishRoom:
    """The socket relays ``data`` to the room's other members (``gateway.protocol.presence``)."""

    room: str
    data: Any
    id: str | int | None


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    """The socket leaves a room."""

    room: str
    id: str | int | None


@dataclass(frozen=True, slots=True)
class StreamAck:
    """The client has processed its durable stream up to ``offset`` of ``epoch``."""

    epoch: str
    offset: int


ClientEvent = (
    PongReceived
    | PingReceived
    | MessageReceived
    | AuthRefresh
    | JoinRoom
    | LeaveRoom
    | PublishRoom
    | StreamAck
    | UnknownType
)

_PONG = PongReceived()


def decode_frame(text: str | None, data: bytes | None, max_bytes: int) -> ClientEvent:
    """Decode one client frame; raise :class:`ProtocolError` when it breaks the protocol."""
    if text is None:
        if data is not None and len(data) > max_bytes:
            raise _too_large(max_bytes)
        raise ProtocolError("binary_frame", "Binary frames are not supported; send JSON text")
    # A str's length in characters bounds its UTF-8 size from below; encode only when needed.
    # "surrogatepass": a lone surrogate must be measured, not crash the measurement; msgspec
    # then refuses it as invalid JSON below.
    if len(text) > max_bytes or (
        len(text) * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        raise _too_large(max_bytes)
    try:
        value = _decoder.decode(text)
    except (msgspec.DecodeError, UnicodeEncodeError, RecursionError):
        raise ProtocolError("invalid_json", "The frame is not valid JSON") from None
    return decode_value(value)


def decode_value(value: Any) -> ClientEvent:
    """Turn an already-decoded JSON value into a client event."""
    if not isinstance(value, dict):
        raise ProtocolError("not_an_object", "A message must be a JSON object")
    if "type" not in value:
        raise ProtocolError("missing_type", 'A message needs a "type" field')
    kind = value["type"]
    if not isinstance(kind, str) or not kind or len(kind) > MAX_TYPE_LENGTH:
        raise ProtocolError(
            "invalid_type", f'"type" must be a string of 1 to {MAX_TYPE_LENGTH} characters'
        )
    if kind == "pong":
        return _PONG
    if kind == "ping":
        stamp = value.get("timestamp")
        if stamp is not None and (not isinstance(stamp, str) or len(stamp) > MAX_TIMESTAMP_LENGTH):
            raise ProtocolError(
                "invalid_field",
                f'"timestamp" must be a string of at most {MAX_TIMESTAMP_LENGTH} characters',
            )
        return PingReceived(stamp)
    if kind == "message":
        if "data" not in value:
            raise ProtocolError("invalid_field", 'A "message" needs a "data" field')
        return MessageReceived(value["data"], _ident(value))
    if kind == "join" or kind == "leave":
        room = value.get("room")
        if not isinstance(room, str):
            raise ProtocolError("invalid_field", f'A "{kind}" needs a string "room"')
        # The name itself is checked by gateway.protocol.rooms, whose refusal echoes the room and
        # id.
        if kind == "leave":
            return LeaveRoom(room, _ident(value))
        info = value.get("info")
        if info is not None and not isinstance(info, dict):
            raise ProtocolError("invalid_field", '"info" must be a JSON object')
        return JoinRoom(room, _ident(value), info)
    if kind == "publish":
        room = value.get("room")
        if not isinstance(room, str):
            raise ProtocolError("invalid_field", 'A "publish" needs a string "room"')
        if "data" not in value:
            raise ProtocolError("invalid_field", 'A "publish" needs a "data" field')
        return PublishRoom(room, value["data"], _ident(value))
    if kind == "stream_ack":
        epoch, offset = value.get("epoch"), value.get("offset")
        if not isinstance(epoch, str) or len(epoch) > MAX_EPOCH_LENGTH:
            raise ProtocolError(
                "invalid_field",
                f'A "stream_ack" needs a string "epoch" of at most {MAX_EPOCH_LENGTH} characters',
            )
        if not _is_int(offset) or not 0 <= offset <= MAX_SAFE_INTEGER:
            raise ProtocolError(
                "invalid_field",
                f'A "stream_ack" needs an integer "offset" from 0 to {MAX_SAFE_INTEGER}',
            )
        return StreamAck(epoch, offset)
    if kind == "auth":
        token = value.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("invalid_field", '"token" must be a non-empty string')
        return AuthRefresh(token)
    return UnknownType(kind)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _ident(value: dict[str, Any]) -> str | int | None:
    ident = value.get("id")
    if ident is None:
        return None
    if isinstance(ident, str) and len(ident) <= MAX_ID_LENGTH:
        return ident
    if _is_int(ident) and -MAX_SAFE_INTEGER <= ident <= MAX_SAFE_INTEGER:
        return ident
    raise ProtocolError(
        "invalid_field",
        f'"id" must be a string of at most {MAX_ID_LENGTH} characters or an integer '
        f"of at most {MAX_SAFE_INTEGER} in magnitude",
    )


def _too_large(max_bytes: int) -> ProtocolError:
    return ProtocolError(
        "message_too_large",
        f"Frames are limited to {max_bytes} bytes",
        close_code=CloseCode.MESSAGE_TOO_BIG,
    )
