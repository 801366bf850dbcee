"""The wire format: parsing and classifying server frames, the frames the client writes for
rooms, and the socket URL with its connect options.

Pure functions over decoded JSON objects (:data:`Frame`), so that the shell in
:mod:`presence_client.connection` only reads and writes text and asks here what a frame means.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode

#: A server frame: a decoded JSON object.
Frame = dict[str, Any]


class FrameKind(StrEnum):
    """What a server frame asks of the client (:func:`classify_frame`)."""

    PING = "ping"  # answer with a pong at once (unless answer_pings is off)
    ACK = "ack"  # resolve the send with this id
    AUTH_OK = "auth_ok"  # the refreshed token was accepted: schedule the next refresh
    ERROR = "error"  # an error frame; invalid_token answers a pending auth
    TIMEOUT = "timeout"  # signed out for inactivity: stop, never reconnect
    SIGNED_OUT = "signed_out"  # signed out by the service: stop, never reconnect
    JOINED = "joined"  # a join was accepted: resolve its waiters
    LEFT = "left"  # a leave was done, or a refreshed token lost the room (reason)
    STREAM = "stream"  # a durable message: de-duplicate by offset, deliver, acknowledge
    RECOVERY = "recovery"  # the end of a recovery: hold its position; not recovered: refetch
    PRESENCE = "presence"  # a presence room's snapshot: it replaces the room's member list
    PRESENCE_DIFF = "presence_diff"  # joins (upserts by user) and leaves after the snapshot
    PUBLISH = "publish"  # another member's signal relayed to the room
    OTHER = "other"  # application frames (notification, broadcast, ...), server pongs


PONG_FRAME = '{"type":"pong"}'


def parse_frame(raw: str | bytes) -> Frame | None:
    """The frame as a JSON object, or None for anything else (the protocol is JSON text)."""
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_KINDS = {kind.value: kind for kind in FrameKind if kind is not FrameKind.OTHER}


def classify_frame(frame: Frame) -> FrameKind:
    """Which reaction a server frame calls for."""
    kind = frame.get("type")
    return _KINDS.get(kind, FrameKind.OTHER) if isinstance(kind, str) else FrameKind.OTHER


#: The gateway's error codes whose frame names a room (docs/protocol.md, Errors): the refusals
#: of a join, final for this token, and those of a publish (PUBLISH_ERRORS).
ROOM_ERRORS = frozenset(
    {
        "invalid_room",
        "room_forbidden",
        "too_many_rooms",
        "room_full",
        "invalid_info",
        "not_in_room",
        "publish_forbidden",
    }
)
#: A refused publish leaves the socket in the room: the room is kept.
PUBLISH_ERRORS = frozenset({"not_in_room", "publish_forbidden"})


def room_frame(kind: str, room: str, *, info: Mapping[str, Any] | None = None) -> str:
    """A ``join`` or ``leave`` frame; a join may carry a presence room's member ``info``."""
    fields: dict[str, Any] = {"type": kind, "room": room}
    if info is not None:
        fields["info"] = info
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


def room_refused(frame: Frame) -> str | None:
    """The room an ``error`` frame refuses a join of, or None when it is about something else."""
    room, code = frame.get("room"), frame.get("code")
    refuses_join = code in ROOM_ERRORS and code not in PUBLISH_ERRORS
    return room if isinstance(room, str) and refuses_join else None


def socket_url(
    base: str, user_id: str, token: str | None = None, params: Mapping[str, str] | None = None
) -> str:
    """The socket URL for a gateway base URL (``ws://host:8000``; ``http(s)://`` becomes
    ``ws(s)://``, trailing slashes are dropped), with the token as ``?token=`` when given and
    ``params`` (a recovery's position) after it."""
    root = base.strip()
    lowered = root.lower()
    if lowered.startswith("http://"):
        root = "ws://" + root[len("http://") :]
    elif lowered.startswith("https://"):
        root = "wss://" + root[len("https://") :]
    root = root.rstrip("/")
    path = f"{root}/ws/connect/{quote(user_id, safe='')}"
    query = {"token": token} if token else {}
    query.update(params or {})
    return f"{path}?{urlencode(query, quote_via=quote)}" if query else path


def connect_args(
    base: str,
    user_id: str,
    token: str | None,
    *,
    token_in_url: bool,
    params: Mapping[str, str] | None,
    timeout: float,
    options: Mapping[str, Any],
) -> tuple[str, dict[str, Any]]:
    """The URL and the ``websockets`` connect options of the next socket: the token in an
    ``Authorization`` header (or ``?token=`` with ``token_in_url``), the application's
    ``connect_options`` and their headers kept."""
    # The header keeps the token out of URLs, which proxies and servers log; browsers
    # cannot set it, which is why the JavaScript client uses ?token=.
    in_url = token_in_url and token is not None
    url = socket_url(base, user_id, token if in_url else None, params)
    merged: dict[str, Any] = {"open_timeout": timeout or None}
    merged.update(options)
    headers = dict(merged.pop("additional_headers", None) or {})
    if token is not None and not in_url:
        headers["Authorization"] = f"Bearer {token}"
    if headers:
        merged["additional_headers"] = headers
    return url, merged
