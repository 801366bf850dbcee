"""The sans-I/O core of the presence client: every decision, none of the sockets.

What the client does on each close code, on each server frame, how long it waits before a
reconnect, when it refreshes its token, how it buffers and paces outgoing messages: pure
functions and small state holders here, so that they are tested without a socket, a clock or
an event loop (``tests/unit/test_presence_client.py``). :mod:`presence_client.client` is the
asyncio shell that feeds them what happened and does what they say.

Times are in seconds (the JavaScript client's are in milliseconds; the rules are the same).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random as _random
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

W = TypeVar("W")

Random = Callable[[], float]
#: A server frame: a decoded JSON object.
Frame = dict[str, Any]


class CloseCode(IntEnum):
    """Close codes the gateway uses (docs/protocol.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    NO_STATUS = 1005
    ABNORMAL = 1006
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    INVALID_USER_ID = 4400
    UNAUTHENTICATED = 4401
    WRONG_USER = 4403
    SESSION_EXPIRED = 4408
    SIGNED_OUT = 4410
    RATE_LIMITED = 4429


class State(StrEnum):
    """The client's states; ``signed_out``, ``auth_error`` and ``closed`` are terminal: nothing
    reconnects until the application calls ``start()`` again."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    SIGNED_OUT = "signed_out"
    AUTH_ERROR = "auth_error"
    CLOSED = "closed"


TERMINAL_STATES = frozenset({State.SIGNED_OUT, State.AUTH_ERROR, State.CLOSED})
ACTIVE_STATES = frozenset({State.CONNECTING, State.CONNECTED, State.RECONNECTING})
SIGNED_OUT_REASON = "signed out for inactivity"
#: The reason when the service signed the user out (``signed_out`` message, close 4410).
SIGNED_OUT_BY_SERVICE_REASON = "signed out by the service"

# A clean close with one of these codes means the gateway read none of the frames it did not
# acknowledge: it acks a message before handing it to the application, and an ack is sent
# before the close frame on the same ordered stream. Unacknowledged messages are resent.
RESEND_AFTER = frozenset({1000, 1001, 1005, 1012, 4401, 4429})

# 0.5 s * 2**64 is far beyond any sensible maximum; capping the exponent keeps the float finite
# after an outage of thousands of attempts (2.0 ** 1100 raises OverflowError).
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class Backoff:
    """The reconnect schedule, in seconds (the JavaScript client's ``backoff`` option)."""

    #: The first reconnect's delay cap; doubles with each failed attempt.
    minimum: float = 0.5
    #: The largest delay cap.
    maximum: float = 20.0
    #: Floor added to the delay after a 4429 (the gateway said: too many).
    rate_limited: float = 5.0
    #: After a 1012 (an instance draining), reconnect within ``random() * restart_jitter``.
    restart_jitter: float = 2.0
    #: A connection up this long (or that got a ping) resets the backoff.
    reset_after: float = 10.0


def backoff_delay(
    attempt: int, minimum: float = 0.5, maximum: float = 20.0, random: Random = _random.random
) -> float:
    """Full-jitter exponential backoff: ``random() * min(maximum, minimum * 2**attempt)``."""
    cap = min(maximum, minimum * 2.0 ** min(max(0, attempt), _MAX_EXPONENT))
    return random() * cap


# --- close codes ---------------------------------------------------------------------------


class Action(StrEnum):
    """What the client does after a socket closed."""

    RECONNECT = "reconnect"
    SIGN_OUT = "sign_out"
    AUTH_ERROR = "auth_error"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class CloseDecision:
    """The reaction to one close (:func:`decide_close`)."""

    action: Action
    #: Seconds before the next connection attempt (``RECONNECT`` only).
    delay: float | None = None
    #: The next connection asks ``get_token(True)`` (after a first 4401).
    force_refresh: bool = False
    #: The backoff counter to carry into the next attempt.
    attempt: int = 0
    #: A forced token refresh has been spent on a 4401 (a second 4401 is final).
    auth_retried: bool = False
    #: Unacknowledged messages go back to the buffer (the gateway did not handle them);
    #: otherwise they fail with ``maybe_delivered``.
    resend_unacked: bool = False
    #: An ``error`` event to emit (``invalid_user_id`` after 4400).
    error_code: str | None = None


def decide_close(
    code: int,
    *,
    attempt: int,
    auth_retried: bool,
    stable: bool = False,
    reconnect: bool = True,
    closed_by_app: bool = False,
    backoff: Backoff = Backoff(),  # frozen: one shared default is safe
    random: Random = _random.random,
) -> CloseDecision:
    """The reaction to a socket closed with ``code``: the close-code table of the JavaScript
    client (clients/js/README.md, "Close codes").

    ``attempt`` counts consecutive failed connections, ``auth_retried`` says whether a forced
    token refresh was already spent on a 4401, ``stable`` whether the connection that closed
    worked (got a ping or stayed up ``backoff.reset_after``): it earns a fresh start.
    """
    if stable:
        attempt, auth_retried = 0, False
    resend = code in RESEND_AFTER
    if closed_by_app:
        return CloseDecision(Action.STOP, attempt=attempt, auth_retried=auth_retried)
    if code in (CloseCode.SESSION_EXPIRED, CloseCode.SIGNED_OUT):
        return CloseDecision(Action.SIGN_OUT, attempt=attempt, auth_retried=auth_retried)
    if code == CloseCode.WRONG_USER:
        return CloseDecision(Action.AUTH_ERROR, attempt=attempt, auth_retried=auth_retried)
    if code == CloseCode.INVALID_USER_ID:
        return CloseDecision(
            Action.STOP, attempt=attempt, auth_retried=auth_retried, error_code="invalid_user_id"
        )
    if code == CloseCode.UNAUTHENTICATED and auth_retried:
        # The forced refresh did not help: only signing in again will.
        return CloseDecision(Action.AUTH_ERROR, attempt=attempt, auth_retried=True)
    if not reconnect:
        return CloseDecision(
            Action.STOP, attempt=attempt, auth_retried=auth_retried, resend_unacked=resend
        )
    if code == CloseCode.UNAUTHENTICATED:
        # Probably an expired or revoked token: one immediate try with a forced refresh.
        return CloseDecision(
            Action.RECONNECT,
            delay=0.0,
            force_refresh=True,
            attempt=attempt,
            auth_retried=True,
            resend_unacked=resend,
        )
    if code == CloseCode.RATE_LIMITED:
        delay = backoff.rate_limited + backoff_delay(
            attempt, backoff.minimum, backoff.maximum, random
        )
        return CloseDecision(
            Action.RECONNECT,
            delay=delay,
            attempt=attempt + 1,
            auth_retried=auth_retried,
            resend_unacked=resend,
        )
    if code == CloseCode.SERVICE_RESTART:
        # A draining instance closes all its sockets at once: spread their return, and do not
        # count it as a failure (the backoff does not grow).
        return CloseDecision(
            Action.RECONNECT,
            delay=random() * backoff.restart_jitter,
            attempt=attempt,
            auth_retried=auth_retried,
            resend_unacked=resend,
        )
    return CloseDecision(
        Action.RECONNECT,
        delay=backoff_delay(attempt, backoff.minimum, backoff.maximum, random),
        attempt=attempt + 1,
        auth_retried=auth_retried,
        resend_unacked=resend,
    )


def is_stable(got_ping: bool, uptime: float | None, reset_after: float) -> bool:
    """Whether a connection proved itself: a ping means the gateway accepted the token; a
    socket refused at once (opened, then 4401) must keep backing off."""
    return got_ping or (uptime is not None and uptime >= reset_after)


# --- server frames -------------------------------------------------------------------------


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


#: The gateway's refusals of a join (docs/protocol.md, Rooms): final for this token.
ROOM_ERRORS = frozenset({"invalid_room", "room_forbidden", "too_many_rooms", "room_full"})


def room_frame(kind: str, room: str) -> str:
    """A ``join`` or ``leave`` frame."""
    return json.dumps({"type": kind, "room": room}, separators=(",", ":"))


def room_refused(frame: Frame) -> str | None:
    """The room an ``error`` frame refuses a join of, or None when it is about something else."""
    room = frame.get("room")
    return room if isinstance(room, str) and frame.get("code") in ROOM_ERRORS else None


def on_invalid_token(pending_forced: bool) -> str:
    """After an ``invalid_token`` answer to our ``auth`` frame: ``"force"`` (ask
    ``get_token(True)`` at once) unless that was already a forced token, then ``"later"``
    (retry after ``token_retry_delay``; no tight loop: the gateway closes with 4401 after
    ``TOKEN_GRACE``, which takes the reconnect path)."""
    return "later" if pending_forced else "force"


# --- tokens --------------------------------------------------------------------------------


def token_expiry(token: str | None) -> float | None:
    """The ``exp`` claim of a JWT in epoch seconds, or None. Not verified: the gateway verifies."""
    if not isinstance(token, str):
        return None
    parts = token.split(".")
    if len(parts) < 2:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    # bool is an int in Python; a JWT's exp is never a boolean.
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


def refresh_delay(expires_at: float, now: float, lead: float = 300.0) -> float:
    """Seconds to wait before refreshing a token that expires at ``expires_at``: ``lead``
    before expiry, or halfway through what is left when less than twice ``lead`` is left."""
    left = expires_at - now
    if left <= 0:
        return 0.0
    return left - lead if left > 2 * lead else left / 2


def token_is_stale(token: str | None, current: str | None, current_expiry: float | None) -> bool:
    """Whether ``get_token`` handed back nothing newer than the socket's token (Firebase returns
    its cached token until shortly before expiry): then the refresh asks again, forced."""
    if token == current:
        return True
    expiry = token_expiry(token)
    return expiry is not None and current_expiry is not None and expiry <= current_expiry


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


class StreamPosition:
    """A client's place in its durable stream: the epoch, the offset up to which every message
    was processed, and the offsets above it already seen (live messages may come out of order
    when several instances send, and during a recovery). Sans-I/O."""

    #: Offsets seen above the contiguous one; past this, the gap is given up (the message is
    #: beyond any recovery window by then).
    MAX_SEEN = 1000

    def __init__(self) -> None:
        #: None until the gateway has told the client where its stream stands.
        self.epoch: str | None = None
        self.offset = 0
        self.seen: set[int] = set()
        #: The offset last acknowledged to the gateway.
        self.acked = 0

    def params(self) -> dict[str, str]:
        """The recovery query parameters for the next socket."""
        if self.epoch is None:
            return {"recover": "true"}
        return {"recover": "true", "epoch": self.epoch, "offset": str(self.offset)}

    def accept(self, epoch: str, offset: int) -> bool:
        """Whether a stream frame is new (deliver it) or a duplicate (drop it)."""
        if self.epoch != epoch:
            if self.epoch:
                # Another epoch: the stream was started again; the recovery says so.
                return False
            self.epoch, self.offset, self.seen = epoch, 0, set()
        if offset <= self.offset or offset in self.seen:
            return False
        self.seen.add(offset)
        while self.offset + 1 in self.seen:
            self.offset += 1
            self.seen.discard(self.offset)
        if len(self.seen) > self.MAX_SEEN:
            self.offset = min(self.seen)
            self.seen = {o for o in self.seen if o > self.offset}
        return True

    def recovered(self, epoch: str, offset: int, recovered: bool) -> None:
        """After a recovery frame: its position is the client's (a not-recovered stream starts
        over there; the app refetches its state)."""
        if not recovered or self.epoch != epoch or offset > self.offset:
            self.epoch, self.offset = epoch, offset
            self.seen = {o for o in self.seen if o > offset} if recovered else set()

    def ack_frame(self) -> str | None:
        """The ``stream_ack`` frame to send, or None when nothing new was processed."""
        if self.epoch is None or self.offset == self.acked:
            return None
        self.acked = self.offset
        return json.dumps(
            {"type": "stream_ack", "epoch": self.epoch, "offset": self.offset},
            separators=(",", ":"),
        )


# --- outgoing messages ---------------------------------------------------------------------


def encode_message(data: Any, message_id: int) -> str:
    """The ``message`` frame for ``data``. Raises ``ValueError``/``TypeError`` for data that is
    not JSON: ``NaN`` and infinities are refused here because the gateway refuses them."""
    return json.dumps(
        {"type": "message", "data": data, "id": message_id},
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
    )


@dataclass(slots=True)
class Outgoing(Generic[W]):
    """One ``send()``: its id, its data, the encoded frame and whatever the shell waits on."""

    id: int
    data: Any
    frame: str
    waiter: W


@dataclass(slots=True)
class Settled(Generic[W]):
    """What became of the unacknowledged messages when a socket closed."""

    resent: list[Outgoing[W]] = field(default_factory=list)
    failed: list[Outgoing[W]] = field(default_factory=list)
    dropped: list[Outgoing[W]] = field(default_factory=list)


class SendBuffer(Generic[W]):
    """Messages waiting to go out (oldest first, at most ``size``) and messages sent on the
    current socket whose ack has not arrived."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("buffer_size must be 1 or more")
        self.size = size
        self._queue: deque[Outgoing[W]] = deque()
        self._inflight: dict[int, Outgoing[W]] = {}

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def unacked(self) -> int:
        return len(self._inflight)

    def push(self, item: Outgoing[W]) -> list[Outgoing[W]]:
        """Queue ``item``; return the oldest messages dropped to stay within ``size``."""
        self._queue.append(item)
        return self._trim()

    def peek(self) -> Outgoing[W] | None:
        return self._queue[0] if self._queue else None

    def take(self) -> Outgoing[W] | None:
        """The next message to send, now counted as in flight until its ack."""
        if not self._queue:
            return None
        item = self._queue.popleft()
        self._inflight[item.id] = item
        return item

    def ack(self, message_id: Any) -> Outgoing[W] | None:
        """The in-flight message the gateway acknowledged, or None (unknown or repeated id)."""
        if isinstance(message_id, bool) or not isinstance(message_id, int):
            return None
        return self._inflight.pop(message_id, None)

    def withdraw(self, message_id: int) -> bool:
        """Remove a message that has not gone out yet (its send was cancelled)."""
        for item in self._queue:
            if item.id == message_id:
                self._queue.remove(item)
                return True
        return False

    def settle(self, resend: bool) -> Settled[W]:
        """After a close: the unacknowledged messages go back to the front of the buffer in id
        order (``resend``), or fail (the gateway may have handled them; it has no id to remove
        duplicates with, so they are not sent twice)."""
        pending = sorted(self._inflight.values(), key=lambda item: item.id)
        self._inflight.clear()
        if not resend:
            return Settled(failed=pending)
        self._queue.extendleft(reversed(pending))
        return Settled(resent=pending, dropped=self._trim())

    def clear(self) -> list[Outgoing[W]]:
        """Everything still waiting or unacknowledged, in id order (the client stopped)."""
        items = sorted([*self._inflight.values(), *self._queue], key=lambda item: item.id)
        self._inflight.clear()
        self._queue.clear()
        return items

    def __iter__(self) -> Iterator[Outgoing[W]]:
        return iter(self._queue)

    def _trim(self) -> list[Outgoing[W]]:
        dropped: list[Outgoing[W]] = []
        while len(self._queue) > self.size:
            dropped.append(self._queue.popleft())
        return dropped


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Pacing of ``send()`` frames. The gateway closes a socket with 4429 beyond
    ``WS_MAX_MESSAGES_PER_SECOND`` (20/s, bursts of 40) and counts pongs and auth frames too,
    so the default stays at half of that."""

    per_second: float = 10.0
    burst: int = 20


class TokenBucket:
    """A token bucket over an injected clock: ``take(now)`` spends one token, or says how long
    to wait for one."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        if limit.per_second <= 0 or limit.burst < 1:
            raise ValueError("rate_limit needs per_second > 0 and burst >= 1")
        self.limit = limit
        self.tokens = float(limit.burst)
        self.at = now

    def take(self, now: float) -> float:
        """0.0 when a token was spent; otherwise the seconds until one is available."""
        elapsed = max(0.0, now - self.at)
        self.tokens = min(float(self.limit.burst), self.tokens + elapsed * self.limit.per_second)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.limit.per_second
