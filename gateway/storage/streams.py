"""Durable delivery: each user's message stream, and recovery on reconnect.

A durable send (``POST /ws/send/{user_id}?durable=true``) appends the message to the user's
stream before delivering it: the stream's head allocates the next offset in a transaction, and
the message is kept for ``STREAM_HISTORY_TTL`` seconds (a Firestore TTL field), of which
recovery serves at most the last ``STREAM_HISTORY_SIZE``. The live frame carries the epoch and
offset; the client acknowledges with ``stream_ack`` and, on reconnect to any instance, presents
its position (``?recover=true&epoch=E&offset=N``). The gateway replays what the client missed,
in order, then answers ``recovery`` with ``recovered`` true, or false when the window was
exceeded or the epoch changed (the stream was lost and created again): the app refetches.

The decision (:func:`plan_recovery`, :func:`check_entries`) is plain code here; the edge
(``gateway.web.sockets``) and the backends (:class:`MemoryStreamStore` here,
``gateway.storage.firestore_streams.FirestoreStreamStore``) move the data.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple, Protocol
from urllib.parse import parse_qs

import msgspec

from gateway.protocol.frames import MAX_EPOCH_LENGTH, MAX_SAFE_INTEGER
from gateway.storage.schema import (
    ACKED_EPOCH,
    ACKED_OFFSET,
    STREAM_ACKS,
    STREAM_EPOCH,
    STREAMS,
    TOP_OFFSET,
)

#: Why a recovery did not recover (the ``reason`` of a ``recovery`` frame).
Reason = Literal["epoch_changed", "window_exceeded", "no_position", "unavailable"]


def new_epoch() -> str:
    """A stream's epoch: random, so a stream created again never reuses one."""
    return secrets.token_hex(8)


def entry_id(offset: int) -> str:
    """An entry's document id: zero-padded, so ids sort like offsets."""
    return f"{offset:020d}"


class Head(NamedTuple):
    """A stream's head: its epoch and last offset, and the user's acknowledged position."""

    epoch: str
    top: int
    acked_epoch: str | None = None
    acked_offset: int | None = None


class Entry(NamedTuple):
    offset: int
    payload: str
    created_at: datetime


def head_from(doc: Mapping[str, Any] | None, ack: Mapping[str, Any] | None = None) -> Head | None:
    """The head in a streams/{user_id} document, with the stream_acks/{user_id} document's
    acknowledged position; None when there is no stream."""
    if not doc or not isinstance(doc.get(STREAM_EPOCH), str):
        return None
    acked_epoch = (ack or {}).get(ACKED_EPOCH)
    acked_offset = (ack or {}).get(ACKED_OFFSET)
    return Head(
        doc[STREAM_EPOCH],
        int(doc.get(TOP_OFFSET, 0)),
        acked_epoch if isinstance(acked_epoch, str) else None,
        acked_offset if isinstance(acked_offset, int) else None,
    )


@dataclass(frozen=True, slots=True)
class Position:
    """What a reconnecting client presents: ``epoch`` "" means it has seen no stream yet."""

    epoch: str
    offset: int


def recovery_request(query_string: bytes) -> tuple[bool, Position | None]:
    """(recovery asked, the position presented) from a socket URL's query string.

    Raises ValueError for a position that is not one (an offset that is not a non-negative
    integer, an epoch without an offset)."""
    params = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    wanted = params.get("recover", ["false"])[-1].lower() in ("1", "true", "yes")
    if not wanted:
        return False, None
    epoch, offset = params.get("epoch", [None])[-1], params.get("offset", [None])[-1]
    if offset is None:
        if epoch:
            raise ValueError("an epoch needs an offset")
        return True, None
    if (
        not (offset.isascii() and offset.isdigit())
        or len(offset) > 16
        or int(offset) > MAX_SAFE_INTEGER
        or len(epoch or "") > MAX_EPOCH_LENGTH
    ):
        raise ValueError(f"the offset must be an integer from 0 to {MAX_SAFE_INTEGER}")
    return True, Position(epoch or "", int(offset))


class Plan(NamedTuple):
    """Replay entries ``after`` < offset <= ``top`` of ``epoch``."""

    epoch: str
    after: int
    top: int


class Refusal(NamedTuple):
    """Recovery impossible: tell the client the stream's current position and why."""

    epoch: str
    top: int
    reason: Reason


def plan_recovery(
    position: Position | None, head: Head | None, history_size: int
) -> Plan | Refusal:
    """Decide what a reconnecting client gets. Without a position presented, the user's
    acknowledged one (stored from ``stream_ack``) stands in."""
    if position is None and head is not None and head.acked_epoch is not None:
        position = Position(head.acked_epoch, head.acked_offset or 0)
    if head is None:
        # No stream (yet, or any more): a client that saw none missed nothing.
        if position is None or position.epoch == "":
            return Plan("", 0, 0)
        return Refusal("", 0, "epoch_changed")
    if position is None:
        return Refusal(head.epoch, head.top, "no_position")
    if position.epoch == "" and position.offset == 0:
        # The client has seen nothing: everything since the stream began is what it missed.
        position = Position(head.epoch, 0)
    if position.epoch != head.epoch or position.offset > head.top:
        return Refusal(head.epoch, head.top, "epoch_changed")
    if head.top - position.offset > history_size:
        return Refusal(head.epoch, head.top, "window_exceeded")
    return Plan(head.epoch, position.offset, head.top)


def check_entries(entries: Sequence[Entry], plan: Plan, now: datetime, ttl: float) -> bool:
    """Whether ``entries`` are every message of the plan, none older than the window (TTL
    deletion lags expiry by up to a day, so expired entries may still be read)."""
    oldest = now - timedelta(seconds=ttl)
    return len(entries) == plan.top - plan.after and all(
        e.offset == plan.after + i + 1 and e.created_at >= oldest for i, e in enumerate(entries)
    )


# --- frames -------------------------------------------------------------------------------


class StreamFrame(msgspec.Struct):
    """A durable message as the socket gets it, live or replayed."""

    type: Literal["stream"]
    epoch: str
    offset: int
    data: msgspec.Raw


class RecoveryFrame(msgspec.Struct, omit_defaults=True):
    """The end of a recovery: ``recovered`` false tells the app to refetch its state.
    ``epoch``/``offset`` is the stream's position the client holds from then on."""

    type: Literal["recovery"]
    recovered: bool
    epoch: str
    offset: int
    missed: int
    timestamp: str
    reason: str | None = None


_encoder = msgspec.json.Encoder()


def stream_frame(epoch: str, offset: int, payload: str) -> str:
    """The frame for a stored payload (JSON text, inserted without decoding it)."""
    return _encoder.encode(StreamFrame("stream", epoch, offset, msgspec.Raw(payload))).decode()


# --- backends -----------------------------------------------------------------------------


class StreamStore(Protocol):
    async def append(self, user_id: str, payload: str, now: datetime) -> tuple[str, int]:
        """Allocate the next offset and store the payload, atomically; (epoch, offset)."""

    async def head(self, user_id: str, timeout: float, *, with_ack: bool = False) -> Head | None:
        """The stream's head, or None when the user has no stream; ``with_ack``: with the
        user's acknowledged position (one more read)."""

    async def entries(self, user_id: str, after: int, top: int, timeout: float) -> list[Entry]:
        """The stored entries ``after`` < offset <= ``top``, in offset order."""

    async def close(self) -> None: ...


class MemoryStreamStore:
    """Streams in memory, for unit tests; heads live in the MemoryStore's documents (where
    the write-behind buffer puts the acknowledgements), entries here."""

    def __init__(self, docs: dict[tuple[str, str], dict[str, Any]], ttl: float) -> None:
        self.docs = docs
        self.ttl = ttl
        self.stored: dict[str, dict[int, Entry]] = {}
        self.fail_next = 0

    async def append(self, user_id: str, payload: str, now: datetime) -> tuple[str, int]:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("injected append failure")
        doc = self.docs.setdefault((STREAMS, user_id), {})
        head = head_from(doc)
        epoch = head.epoch if head is not None else new_epoch()
        offset = head.top + 1 if head is not None else 1
        doc.update({STREAM_EPOCH: epoch, TOP_OFFSET: offset})
        if head is None:
            self.stored[user_id] = {}
        self.stored.setdefault(user_id, {})[offset] = Entry(offset, payload, now)
        return epoch, offset

    async def head(self, user_id: str, timeout: float, *, with_ack: bool = False) -> Head | None:
        ack = self.docs.get((STREAM_ACKS, user_id)) if with_ack else None
        return head_from(self.docs.get((STREAMS, user_id)), ack)

    async def entries(self, user_id: str, after: int, top: int, timeout: float) -> list[Entry]:
        kept = self.stored.get(user_id, {})
        return [kept[o] for o in sorted(kept) if after < o <= top]

    async def close(self) -> None:
        return None
