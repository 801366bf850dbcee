"""User presence as a pure decision: a user's holders record and one instance's new count in,
the records to write and the transition (if any) out. No I/O here.

Each instance that holds a user's sockets records how many in the user's private holders
record (``presence_holders/{uid}``: ``instances``, a map of instance id to count). The public
``presence/{uid}`` document is what the holders add up to: ``online`` with the total as
``devices`` while any instance holds one, ``offline`` once none does. Both are written in one
Firestore transaction per batch of users, so instances writing the same user in any order
always leave the sum of what each holds (``gateway.storage.presence_records``); the sweep
function applies the same decision, with count 0, for an instance that was lost
(``functions/presence_sweep/presence.py`` declares its copy; a contract test holds them equal).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gateway.storage.schema import (
    DEVICES,
    HOLDERS,
    LAST_SEEN_AT,
    OFFLINE,
    ONLINE,
    SEQ,
    STATE,
    UPDATED_AT,
)

#: Why a user went offline (the events' ``reason``); ``connect`` is every online's.
Reason = Literal["connect", "disconnect", "timeout", "signout", "token_expired", "instance_lost"]


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """One transition, as published on ``PRESENCE_EVENTS_TOPIC``."""

    user_id: str
    state: str
    reason: str
    at: datetime
    devices: int
    seq: int

    def body(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "state": self.state,
            "reason": self.reason,
            "at": self.at.isoformat(timespec="microseconds"),
            "devices": self.devices,
            "seq": self.seq,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to write for one user: the whole holders record, the public presence fields
    (None: unchanged, nothing to write), and the transition to publish (None: none)."""

    holders: dict[str, Any]
    presence: dict[str, Any] | None
    event: PresenceEvent | None


def _counts(record: Mapping[str, Any] | None) -> dict[str, int]:
    held = (record or {}).get(HOLDERS)
    if not isinstance(held, Mapping):
        return {}
    return {
        str(k): v
        for k, v in held.items()
        if isinstance(v, int) and not isinstance(v, bool) and v > 0
    }


def decide(
    user_id: str,
    record: Mapping[str, Any] | None,
    instance: str,
    count: int,
    at: datetime,
    reason: str,
) -> Outcome:
    """``instance`` now holds ``count`` of the user's sockets (0: none). ``record`` is the
    holders record as read in the transaction (None: none yet); ``reason`` says why a count
    of 0 came (``disconnect``, ``timeout``...), and is ``connect`` otherwise."""
    held = _counts(record)
    before = sum(held.values())
    if count > 0:
        held[instance] = count
    else:
        held.pop(instance, None)
    total = sum(held.values())
    old_state = (record or {}).get(STATE)
    state = ONLINE if total else OFFLINE
    seq = (record or {}).get(SEQ)
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else 0
    last_seen = (record or {}).get(LAST_SEEN_AT)
    event = None
    presence: dict[str, Any] | None = None
    if state != old_state and (state == ONLINE or old_state == ONLINE):
        seq += 1
        last_seen = at
        event = PresenceEvent(
            user_id, state, "connect" if state == ONLINE else reason, at, total, seq
        )
        presence = {STATE: state, DEVICES: total, LAST_SEEN_AT: at}
    elif total != before or old_state is None:
        # Another device on or off, or an offline user's first record: the count only.
        presence = {STATE: state, DEVICES: total}
        if old_state is None:
            last_seen = at
            presence[LAST_SEEN_AT] = at
    holders: dict[str, Any] = {
        HOLDERS: held,
        STATE: state,
        SEQ: seq,
        LAST_SEEN_AT: last_seen if isinstance(last_seen, datetime) else at,
        UPDATED_AT: at,
    }
    return Outcome(holders, presence, event)
