"""An asyncio client for the presence gateway's socket protocol, for backend scripts and devices.

The Python twin of the JavaScript client in ``clients/js`` (its README is the specification:
same reactions, same close-code table, same buffer and ack rules), built on the ``websockets``
package (``websockets.asyncio.client``). It keeps a user connected to
``/ws/connect/{user_id}``:

- answers every server ``ping`` with ``{"type": "pong"}`` at once, before any listener runs;
- asks ``get_token(force_refresh)`` for a Firebase ID token on every connect (sent as
  ``Authorization: Bearer``; ``token_in_url=True`` puts it in ``?token=`` like a browser), and
  sends ``{"type": "auth", "token": ...}`` on the live socket 5 minutes before the JWT's ``exp``
  (halfway for tokens living under 10 minutes); ``auth_ok`` → ``token_refreshed`` event;
- reconnects with full-jitter exponential backoff, ``random() * min(20 s, 0.5 s * 2**attempt)``,
  reset once a connection got a ping or stayed up 10 s;
- buffers ``send()`` while offline (``buffer_size``, oldest dropped with an ``overflow`` event
  and its send raising), flushes in order on reconnect paced at 10/s with bursts of 20 (the
  gateway closes with 4429 above 20/s, bursts of 40), and resolves each send with the gateway's
  ``ack``.

Usage::

    from presence_client import PresenceClient, State

    async def get_token(force_refresh: bool) -> str:
        return await my_id_token(force_refresh)  # e.g. a Firebase Auth REST refresh

    async with PresenceClient("wss://gateway.example.com", "user123", get_token) as client:
        client.on("signed_out", lambda event: print("signed out:", event.message))
        client.on_message("notification", lambda frame: print(frame["data"]))
        await client.wait_for_state(State.CONNECTED, timeout=30)
        ack = await client.send({"action": "typing"})  # returns when the gateway acks
        async for frame in client.messages("notification"):  # ends on a terminal state
            ...

``PresenceClient(url, user_id, get_token, *, buffer_size=100, backoff_min=0.5, backoff_max=20.0,
backoff_rate_limited=5.0, restart_jitter=2.0, reset_after=10.0, reconnect=True,
answer_pings=True, token_refresh_lead=300.0, token_retry_delay=30.0, rate_limit=RateLimit(10,
20), max_message_bytes=65536, connect_timeout=15.0, token_in_url=False, random=random.random,
connect_options=None, report_error=<log>)``. ``get_token`` may be None (``AUTH_MODE=off``).
``connect_options`` go to ``websockets.asyncio.client.connect`` (``ssl``, ``proxy``,
``ping_interval``, ...). All times are in seconds.

Members: ``await start()`` (returns at once; a no-op while active; from a terminal state it
starts over), ``await close(code=1000, reason="client closed")``, ``send(data)`` (a future of
:class:`Ack`; never raises itself, the future fails with :class:`PresenceSendError`),
``await refresh_token()``, ``join(room, info=None)`` (a future of :class:`Joined`; fails with
:class:`PresenceRoomError` when the gateway refuses: ``room_forbidden``, ``invalid_room``,
``too_many_rooms``, ``room_full``, ``invalid_info``), ``leave(room)`` (a future of the room,
never fails), ``rooms`` (joined again on every new socket, with the same ``info``, ahead of
buffered messages and paced with them), ``members(room)`` (a presence room's :class:`Member`
list: the snapshot after each join, then its diffs; empty after a leave and while
disconnected), ``publish(room, data)`` (relayed to the room's other sockets; not buffered:
False when offline or not in the room),
``await wait_for_state(*states, timeout=None)``,
``messages(*types)``, ``on(event, callback)`` and ``on_message(type, callback)`` (both return
an unsubscribe function; a callback may be ``async``), ``state``, ``buffered``, ``unacked``,
``answer_pings`` (read/write; a testing aid: off, the sweep signs the user out after
``PONG_TIMEOUT``).

States (:class:`State`): ``idle`` → ``connecting`` → ``connected`` ⇄ ``reconnecting``; terminal
until ``start()``: ``signed_out``, ``auth_error``, ``closed``.

Events (payload types in :mod:`presence_client.events`): ``state`` (StateChanged),
``connecting`` (Connecting), ``connected`` (Connected), ``disconnected`` (Disconnected: code,
reason, will_reconnect, delay), ``signed_out`` (SignedOut: reason ``"signed out for
inactivity"``, the server's message), ``auth_error`` (AuthError), ``message`` and ``ping`` (the
frame dict), ``pong`` (Pong), ``overflow`` (Overflow), ``token_refreshed`` (TokenRefreshed),
``joined`` (Joined), ``left`` (Left: reason ``leave`` or ``not_allowed``),
``stream`` (StreamMessage: a durable message, once), ``recovery`` and ``not_recovered``
(Recovery), ``presence`` (PresenceSnapshot), ``presence_diff`` (PresenceDiff),
``presence_change`` (PresenceChange: the room's whole list after each snapshot or diff, empty
when dropped), ``publish`` (Published: ``sender`` is the frame's ``from``),
``error`` (ErrorEvent: source ``server``, ``get_token``, ``protocol``, ``socket`` or ``client``).

Close codes (:func:`~presence_client.closing.decide_close`, the JavaScript client's table):

======================  ==================================================================
4401                    one forced ``get_token(True)`` and an immediate reconnect; a second
                        4401 (or the forced refresh raising) → ``auth_error``. A connection
                        that worked earns a new forced retry.
4403                    stop: ``auth_error``
4408 or ``timeout``     stop: ``signed_out`` ("signed out for inactivity"); never reconnects
4410 or ``signed_out``  stop: ``signed_out`` ("signed out by the service"); never reconnects
4429                    back off longer: ``5 s + random() * min(20 s, 0.5 s * 2**attempt)``
1012                    reconnect after ``random() * 2 s``; the backoff does not grow
4400                    stop: ``closed``, ``error`` event ``invalid_user_id``
anything else           the normal backoff, unless the application closed the client
======================  ==================================================================

Unacknowledged messages are resent after a clean close with 1000, 1001, 1005, 1012, 4401 or
4429 (the gateway acks before handling, and its acks precede its close frame); after any other
close they fail with code ``disconnected`` and ``maybe_delivered=True``. ``close()``, a
sign-out and an auth error fail everything still waiting (``closed``, ``signed_out``,
``auth_error``).

Durable delivery (``recover=True``; docs/protocol.md, Durable delivery): the client holds its
stream position (``stream_position``: epoch and offset) across reconnects and presents it in
the socket URL (``?recover=true&epoch=...&offset=...``), drops stream frames whose offset it
has already seen, hands each new one to ``stream`` listeners and to ``on_message`` handlers of
the inner message's type, and acknowledges what it processed with ``stream_ack`` at most every
``ack_interval`` seconds. Each reconnect ends with a ``recovery`` event; ``not_recovered``
means messages were lost to the window or a new epoch: refetch the application's state.

The decisions live in sans-I/O modules (pure functions and small state holders):
:mod:`~presence_client.closing` (close codes, states, backoff), :mod:`~presence_client.frames`
(frames, socket URL), :mod:`~presence_client.tokens`, :mod:`~presence_client.streams` (the
stream position) and :mod:`~presence_client.buffer` (the send buffer, pacing). The asyncio
shell is :class:`PresenceClient` (:mod:`~presence_client.client`) and the parts it owns:
:mod:`~presence_client.connection` (the connect loop, closes),
:mod:`~presence_client.dispatch` (each frame to its part), :mod:`~presence_client.outbox`
(sends), :mod:`~presence_client.rooms`, :mod:`~presence_client.presence` (member lists),
:mod:`~presence_client.durable` (durable delivery), :mod:`~presence_client.refresh` (token
refresh), :mod:`~presence_client.listeners` (events, ``messages()``) and
:mod:`~presence_client.link` (the state and socket they share).
"""

from __future__ import annotations

from presence_client.buffer import RateLimit
from presence_client.client import PresenceClient
from presence_client.closing import (
    SIGNED_OUT_BY_SERVICE_REASON,
    SIGNED_OUT_REASON,
    Backoff,
    CloseCode,
    State,
    backoff_delay,
    decide_close,
)
from presence_client.events import (
    EVENTS,
    Ack,
    AuthError,
    Connected,
    Connecting,
    Disconnected,
    ErrorEvent,
    Joined,
    Left,
    Member,
    Overflow,
    Pong,
    PresenceChange,
    PresenceDiff,
    PresenceRoomError,
    PresenceSendError,
    PresenceSnapshot,
    Published,
    Recovery,
    SignedOut,
    StateChanged,
    StreamMessage,
    TokenRefreshed,
)
from presence_client.frames import PUBLISH_ERRORS, ROOM_ERRORS, socket_url
from presence_client.listeners import MessageStream
from presence_client.refresh import GetToken
from presence_client.streams import StreamPosition
from presence_client.tokens import refresh_delay, token_expiry

__version__ = "0.9.0"

__all__ = [
    "EVENTS",
    "PUBLISH_ERRORS",
    "ROOM_ERRORS",
    "SIGNED_OUT_BY_SERVICE_REASON",
    "SIGNED_OUT_REASON",
    "Ack",
    "AuthError",
    "Backoff",
    "CloseCode",
    "Connected",
    "Connecting",
    "Disconnected",
    "ErrorEvent",
    "GetToken",
    "Joined",
    "Left",
    "Member",
    "MessageStream",
    "Overflow",
    "Pong",
    "Recovery",
    "StreamMessage",
    "StreamPosition",
    "PresenceChange",
    "PresenceClient",
    "PresenceDiff",
    "PresenceRoomError",
    "PresenceSendError",
    "PresenceSnapshot",
    "Published",
    "RateLimit",
    "SignedOut",
    "State",
    "StateChanged",
    "TokenRefreshed",
    "__version__",
    "backoff_delay",
    "decide_close",
    "refresh_delay",
    "socket_url",
    "token_expiry",
]
