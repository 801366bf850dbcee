"""The soak's invariants 3 (durable streams) and 4 (rooms) as pure functions of what the
drivers sent and what the clients recorded."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tests.soak.timeline import (
    CLOSED,
    DISCONNECTED,
    JOINED,
    RECOVERY,
    ROOM_MESSAGE,
    SIGNED_OUT,
    STREAM,
    Outcome,
    Timeline,
    Violation,
)

#: Durable send answers that mean the message is in the user's stream.
ACCEPTED = frozenset({"sent", "stored"})
#: Seconds either side of a room send within which a membership that starts or ends makes the
#: member's delivery uncertain (the client learns of a join or a close a moment after the
#: gateway acted on it).
ROOM_MARGIN = 2.0


@dataclass(frozen=True, slots=True)
class DurableSend:
    """One ``POST /ws/send/{user}?durable=true``: sent at ``t0``, answered at ``t1``."""

    t0: float
    t1: float
    user: str
    seq: int
    status: str
    epoch: str | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class RoomSend:
    """One ``POST /ws/rooms/{room}/send``; ``complete`` when every live instance answered
    (200, deployment scope, none unreachable)."""

    t0: float
    t1: float
    room: str
    seq: int
    complete: bool


def check_durable(timeline: Timeline, sends: Sequence[DurableSend]) -> Outcome:
    """Invariant 3: every message stored in the user's stream reaches the client exactly once
    after its de-duplication, in offset order within an epoch, or the client was told
    ``recovered: false`` for it."""
    out = Outcome()
    user = timeline.user
    received = timeline.of(STREAM)
    for seq, count in Counter(e.detail.get("seq") for e in received).items():
        out.check(count == 1, Violation(3, f"message seq={seq} delivered {count} times", user))
    last: dict[str, int] = {}
    for event in received:
        epoch, offset = str(event.detail.get("epoch")), int(event.detail.get("offset") or 0)
        if offset < last.get(epoch, 0):
            # docs/protocol.md allows it: a gap (a message stored while no socket took it, a
            # recovery Firestore could not serve) is filled by a later recovery's replay.
            out.notes.append(
                f"{user}: offset {offset} after offset {last[epoch]} at t={event.t:.2f}s"
            )
        last[epoch] = max(offset, last.get(epoch, 0))
    got = {(e.detail.get("epoch"), e.detail.get("offset")): e.detail.get("seq") for e in received}
    lost = [e for e in timeline.of(RECOVERY) if not e.detail.get("recovered")]
    for send in sends:
        if send.user != user or send.status not in ACCEPTED or send.offset is None:
            continue
        key = (send.epoch, send.offset)
        if key in got:
            out.check(
                got[key] == send.seq,
                Violation(3, f"offset {send.offset} carried seq={got[key]}, not {send.seq}", user),
            )
            continue
        told = any(
            e.t >= send.t0
            and (
                e.detail.get("epoch") != send.epoch
                or int(e.detail.get("offset") or 0) >= send.offset
            )
            for e in lost
        )
        out.check(
            told,
            Violation(
                3,
                f"message seq={send.seq} (offset {send.offset}, {send.status}) never arrived "
                "and no recovered: false covers it",
                user,
                send.t1,
            ),
        )
    return out


def memberships(timeline: Timeline) -> list[tuple[str, float, float]]:
    """The client's time in each room: (room, from its ``joined``, to the close that ended
    the socket), the last one open-ended."""
    spans: list[tuple[str, float, float]] = []
    open_rooms: dict[str, float] = {}
    for event in timeline.events:
        if event.kind == JOINED:
            open_rooms.setdefault(str(event.detail.get("room")), event.t)
        elif event.kind in (DISCONNECTED, CLOSED, SIGNED_OUT):
            spans += [(room, start, event.t) for room, start in open_rooms.items()]
            open_rooms.clear()
    spans += [(room, start, math.inf) for room, start in open_rooms.items()]
    return spans


def check_rooms(sends: Sequence[RoomSend], timelines: Mapping[str, Timeline]) -> Outcome:
    """Invariant 4: a room send reaches each member of that moment once and nobody else.

    A member whose membership covers the send with ``ROOM_MARGIN`` to spare must get it when
    the send was complete; a client that was not a member anywhere near the send must not;
    nobody gets a send twice."""
    out = Outcome()
    by_seq = {s.seq: s for s in sends}
    for user, timeline in timelines.items():
        spans = memberships(timeline)
        messages = timeline.of(ROOM_MESSAGE)
        counts = Counter(e.detail.get("seq") for e in messages)
        for seq, count in counts.items():
            out.check(count == 1, Violation(4, f"room send seq={seq} got {count} times", user))
        for event in messages:
            send = by_seq.get(event.detail.get("seq"))  # type: ignore[arg-type]
            if send is None:
                continue
            near = any(
                room == send.room
                and start <= send.t1 + ROOM_MARGIN
                and send.t0 - ROOM_MARGIN <= end
                for room, start, end in spans
            )
            out.check(
                near,
                Violation(
                    4, f"got room send seq={send.seq} to {send.room}, not a member", user, event.t
                ),
            )
        for send in sends:
            if not send.complete:
                continue
            covered = any(
                room == send.room
                and start <= send.t0 - ROOM_MARGIN
                and send.t1 + ROOM_MARGIN <= end
                for room, start, end in spans
            )
            if covered:
                out.check(
                    send.seq in counts,
                    Violation(
                        4, f"member of {send.room} missed room send seq={send.seq}", user, send.t1
                    ),
                )
    return out
