"""Connection events for analytics: one structured log entry per connect, disconnect (with its
close code and how long the socket lived), timeout, sign-out, room join and room leave, and
their counters in ``/metrics`` (``gateway_connection_events_total{event}``,
``gateway_disconnects_total{code}``).

With ``LOG_FORMAT=json`` (the default on Cloud Run) each entry carries an ``event`` object,
which Cloud Logging keeps as ``jsonPayload.event``: a log sink with the filter
``jsonPayload.event.kind:*`` routes them to BigQuery, one row per event, no code of ours on
that path. The text format keeps the same facts in the message.

Room joins and leaves follow a client's frames, so one socket joining and leaving in a loop
could write an entry per frame (up to ``WS_MAX_MESSAGES_PER_SECOND`` a second, each billed by
Cloud Logging). A socket's room entries are therefore held to ``ROOM_EVENTS_PER_SOCKET`` per
``ROOM_EVENTS_WINDOW`` (gateway.logs); beyond, they are counted, not written, and one
``room_events_suppressed`` entry (with ``suppressed``, the count, and ``seconds``) stands for
them when the window ends or the socket closes. The counters in ``/metrics`` stay exact.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from gateway.instance.events import EventRing
from gateway.logs import LogBudget
from gateway.protocol.messages import iso, utc_now

if TYPE_CHECKING:
    from gateway.instance.registry import Connection

logger = logging.getLogger("gateway.events")

#: Room entries one socket writes in full per window: enough to join and leave 60 rooms a
#: minute (WS_MAX_ROOMS_PER_SOCKET is 50 by default), far below a loop at the frame rate.
ROOM_EVENTS_PER_SOCKET = 120
ROOM_EVENTS_WINDOW = 60.0


class ConnectionEvents:
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        #: Events by kind: connect, disconnect, timeout, signout, token_expired, room_join,
        #: room_leave.
        self.counts: Counter[str] = Counter()
        #: Disconnects by close code ("none" when the socket dropped without one).
        self.close_codes: Counter[str] = Counter()
        #: The last events, for the console (gateway.instance.events).
        self.recent = EventRing()
        #: Room entries per socket, by (user id, session id); see the module's docstring.
        self.room_lines: LogBudget[tuple[str, str]] = LogBudget(
            logger,
            burst=ROOM_EVENTS_PER_SOCKET,
            window=ROOM_EVENTS_WINDOW,
            summary=self._rooms_suppressed,
        )

    def _emit(
        self, kind: str, conn: Connection, text: str, *, budgeted: bool = False, **fields: Any
    ) -> None:
        self.counts[kind] += 1
        if budgeted and not self.room_lines.allow((conn.user_id, conn.session_id)):
            return
        event = {
            "kind": kind,
            "user_id": conn.user_id,
            "session_id": conn.session_id,
            "instance_id": self.instance_id,
            "at": iso(utc_now()),
            **fields,
        }
        logger.info("%s", text, extra={"event": event})

    def connect(self, conn: Connection, held: int, total: int) -> None:
        self._emit(
            "connect",
            conn,
            f"connect user={conn.user_id} session={conn.session_id} "
            f"sockets_for_user={held} total={total}",
            sockets_for_user=held,
        )
        self.recent.add("connect", conn.user_id, conn.session_id)

    def disconnect(self, conn: Connection, code: int | None, left: int, total: int) -> None:
        self.close_codes["none" if code is None else str(code)] += 1
        lived = round((utc_now() - conn.connected_at).total_seconds(), 3)
        self._emit(
            "disconnect",
            conn,
            f"disconnect user={conn.user_id} session={conn.session_id} code={code} "
            f"sockets_for_user={left} total={total} duration={lived}s",
            code=code,
            duration_seconds=lived,
            sockets_for_user=left,
        )
        # The socket's room entries held back, if any, are reported now, and its budget freed.
        self.room_lines.forget((conn.user_id, conn.session_id))
        self.recent.add("disconnect", conn.user_id, conn.session_id, code)

    def closed_by_service(self, kind: str, conn: Connection, code: int, reason: str) -> None:
        """A socket the gateway closed on purpose: ``timeout`` (4408) or ``signout`` (4410)."""
        self._emit(
            kind,
            conn,
            f"{reason} user={conn.user_id} session={conn.session_id}",
            code=code,
            reason=reason,
        )
        # An expired token is a refusal to the console, as it is in gateway_refusals_total.
        recent_kind = kind if kind in ("timeout", "signout") else "refused"
        self.recent.add(recent_kind, conn.user_id, conn.session_id, code, reason)

    def refused(self, user_id: str, session_id: str | None, code: int, reason: str) -> None:
        """A socket refused at its handshake, or closed by policy (a flood, a bad frame):
        counted in ``gateway_refusals_total`` by the caller, kept here for the console."""
        self.recent.add("refused", user_id[:128], session_id, code, reason)

    def room_join(self, conn: Connection, room: str, rooms: int) -> None:
        """The socket joined ``room``; ``rooms_for_socket`` counts its rooms now."""
        self._emit(
            "room_join",
            conn,
            f"room join user={conn.user_id} session={conn.session_id} room={room}",
            budgeted=True,
            room=room,
            rooms_for_socket=rooms,
        )

    def room_leave(self, conn: Connection, room: str, reason: str, rooms: int) -> None:
        """The socket left ``room``: ``reason`` is ``leave`` (it asked), ``disconnect`` (it
        closed) or ``not_allowed`` (a refreshed token no longer grants the room)."""
        self._emit(
            "room_leave",
            conn,
            f"room leave user={conn.user_id} session={conn.session_id} room={room} reason={reason}",
            budgeted=True,
            room=room,
            reason=reason,
            rooms_for_socket=rooms,
        )

    def _rooms_suppressed(self, key: tuple[str, str], suppressed: int, seconds: float) -> None:
        """One entry for the room entries a socket's budget held back (not counted as an
        event: the room_join and room_leave counters already hold them)."""
        user_id, session_id = key
        event = {
            "kind": "room_events_suppressed",
            "user_id": user_id,
            "session_id": session_id,
            "instance_id": self.instance_id,
            "at": iso(utc_now()),
            "suppressed": suppressed,
            "seconds": seconds,
        }
        logger.info(
            "room events suppressed user=%s session=%s count=%d in %gs",
            user_id,
            session_id,
            suppressed,
            seconds,
            extra={"event": event},
        )
