"""One socket's protocol, as plain code: a received frame and a clock in, what to do out.

The socket edge (``gateway.web.sockets``) decides nothing. It feeds each frame to
:meth:`Session.receive` and carries out the returned :class:`Step`: send the replies, in order;
hand the step's ``work`` on (a pong to the write-behind buffer, a message to the application, a
fresh token to Firebase Auth, a join or leave to the rooms); then close the socket if asked.
Where the work has an answer (a token accepted or refused, a room joined or refused), the edge
asks the session for the reply: :meth:`Session.refreshed`, :meth:`Session.refresh_refused`,
:meth:`Session.room_answer`.

The session holds what the decisions need between frames: the message-rate token bucket and
the ID token's expiry. Error codes are ``gateway.protocol.frames``'s and
``gateway.protocol.rooms``'; close codes are ``gateway.protocol.closes``'.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from gateway.exceptions import ProtocolError
from gateway.protocol import messages
from gateway.protocol.closes import CloseCode
from gateway.protocol.frames import (
    ClientEvent,
    JoinRoom,
    LeaveRoom,
    MessageReceived,
    PingReceived,
    decode_frame,
)
from gateway.protocol.limits import take_token
from gateway.protocol.messages import Ack, AuthOk, ErrorMessage, ServerPong, iso
from gateway.protocol.rooms import RoomRefused

#: The pong exactly as the JavaScript and Python clients send it: taken without parsing.
CANONICAL_PONG = '{"type":"pong"}'


class Close(NamedTuple):
    code: CloseCode
    reason: str
    #: The refusal counter it adds to (``/metrics``' refusals by reason).
    counted_as: str


@dataclass(frozen=True, slots=True)
class Step:
    """What the edge does for one frame, in this order: send ``replies``, hand ``work`` on,
    close with ``close``."""

    replies: tuple[Any, ...] = ()
    work: ClientEvent | None = None
    close: Close | None = None


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The settings every session of an instance shares (one object, not one per socket)."""

    #: Frames per second a socket may send (bursts of twice that); 0: no limit.
    max_messages_per_second: float = 20.0
    max_message_bytes: int = 64 * 1024
    #: Seconds a socket may outlive its ID token before it is closed.
    token_grace: float = 300.0


_FLOOD = Step(close=Close(CloseCode.RATE_LIMITED, "too many messages", "too many messages"))


class Session:
    """The protocol state of one socket. Kept small: there may be tens of thousands."""

    __slots__ = ("limits", "bucket", "bucket_at", "token_expires_at")

    def __init__(self, limits: SessionLimits, token_expires_at: float = 0.0) -> None:
        self.limits = limits
        #: Message-rate token bucket (``gateway.protocol.limits``): tokens left, and when counted.
        self.bucket = float("inf")
        self.bucket_at = 0.0
        #: Epoch seconds at which the socket's ID token expires; 0 when auth is off.
        self.token_expires_at = token_expires_at

    def within_rate(self, now: float) -> bool:
        """Count one frame against the bucket at monotonic time ``now``; False when it is
        empty (the socket is flooding)."""
        rate = self.limits.max_messages_per_second
        if not rate:
            return True
        allowed, self.bucket = take_token(self.bucket, self.bucket_at, now, rate, 2 * rate)
        self.bucket_at = now
        return allowed

    def take_pong(self, text: str, now: float) -> bool:
        """The heartbeat's fast path: True when ``text`` is the clients' exact pong and within
        the rate, so the edge records it without a ``receive``. Anything else is False and goes
        through ``receive`` (a flood is then closed there)."""
        return text == CANONICAL_PONG and self.within_rate(now)

    def receive(self, text: str | None, data: bytes | None, now: float, at: datetime) -> Step:
        """Decide one received frame: ``now`` is monotonic seconds (the rate limit), ``at``
        the wall-clock time stamped on replies."""
        if not self.within_rate(now):
            return _FLOOD
        try:
            event = decode_frame(text, data, self.limits.max_message_bytes)
        except ProtocolError as exc:
            if exc.close_code is not None:
                return Step(close=Close(CloseCode(exc.close_code), exc.message, exc.code))
            return Step(replies=(ErrorMessage("error", exc.code, exc.message, iso(at)),))
        if isinstance(event, PingReceived):
            return Step(replies=(ServerPong("pong", iso(at)),))
        if isinstance(event, MessageReceived):
            return Step(replies=(Ack("ack", iso(at), event.id),), work=event)
        # A pong, a token, a room request, a stream acknowledgement or an unknown type: the
        # edge hands it on (an unknown type is logged and ignored).
        return Step(work=event)

    def refreshed(self, expires_at: float, at: datetime) -> Step:
        """A fresh ID token was accepted: the socket lives until ``expires_at`` + grace."""
        self.token_expires_at = expires_at
        expires = datetime.fromtimestamp(expires_at, at.tzinfo)
        return Step(replies=(AuthOk("auth_ok", iso(expires), iso(at)),))

    def refresh_refused(self, reason: str, at: datetime) -> Step:
        """A fresh ID token was refused: the socket keeps its current token (and expiry)."""
        return Step(replies=(ErrorMessage("error", "invalid_token", reason, iso(at)),))

    def room_answer(
        self, request: JoinRoom | LeaveRoom, refused: RoomRefused | None, at: datetime
    ) -> Step:
        """The reply to a join or leave: ``joined``/``left``, or the refusal naming the room."""
        reply: messages.Joined | messages.Left | messages.RoomErrorMessage
        if refused is not None:
            reply = messages.RoomErrorMessage(
                "error", refused.code, refused.message, iso(at), refused.room, request.id
            )
        elif isinstance(request, JoinRoom):
            reply = messages.Joined("joined", request.room, iso(at), request.id)
        else:
            reply = messages.Left("left", request.room, iso(at), request.id)
        return Step(replies=(reply,))

    def token_expired(self, now: float) -> bool:
        """Whether the ID token expired more than the grace ago (epoch seconds ``now``)."""
        expires = self.token_expires_at
        return bool(expires) and expires < now - self.limits.token_grace
