"""The soak's invariants 1, 2, 5 and 6 as pure functions of what was recorded (the users'
timelines, the fault schedule, the stores read at the end). Invariants 3 and 4 (durable
streams, rooms) are in :mod:`tests.soak.delivery`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tests.soak.schedule import Fault, deadline_with_faults
from tests.soak.timeline import (
    ANSWERING,
    AUTH_ERROR,
    CONNECTED,
    SIGNED_OUT,
    SILENT,
    WENT_SILENT,
    Outcome,
    Timeline,
    Violation,
)

#: The close code of a sign-out for inactivity.
TIMEOUT_CODE = 4408
#: Clock slack between the sweep's judgement and the population's record (seconds): the
#: population notes a pong a moment after the gateway saw it.
SLACK = 1.0


@dataclass(frozen=True, slots=True)
class Account:
    """A user's state in the stores at the end: Firebase Auth's revocation and the member."""

    revoked: bool
    signed_in: bool | None  # None: no member document


def check_answering(timeline: Timeline, account: Account | None) -> Outcome:
    """Invariant 1: a client that answered every ping is never signed out, timed out or
    revoked."""
    out = Outcome()
    if timeline.role not in ANSWERING:
        return out
    for event in timeline.of(SIGNED_OUT, AUTH_ERROR):
        out.check(
            False,
            Violation(1, f"answered every ping but got {event.describe()}", timeline.user, event.t),
        )
    out.checks += 1
    if account is not None:
        out.check(
            not account.revoked,
            Violation(1, "answered every ping but its tokens were revoked", timeline.user),
        )
        out.check(
            account.signed_in is not False,
            Violation(1, "answered every ping but its member is signed out", timeline.user),
        )
    return out


def silent_deadline(
    timeline: Timeline, faults: Sequence[Fault], pong_timeout: float, sweep_interval: float
) -> tuple[float, float] | None:
    """(when the silence counts from, by when the sign-out is due) for a client that went
    silent, else None. A socket opened after going silent counts as a sign of life (the
    gateway records a pong at every connect), so the clock starts at the last one before the
    sign-out."""
    silent = timeline.of(WENT_SILENT)
    if not silent:
        return None
    signed = timeline.of(SIGNED_OUT)
    until = signed[0].t if signed else float("inf")
    start = max([silent[0].t] + [e.t for e in timeline.of(CONNECTED) if silent[0].t < e.t < until])
    return start, deadline_with_faults(faults, start, pong_timeout + 3 * sweep_interval)


def _owed_reconnect(timeline: Timeline, until: float, pong_timeout: float) -> float | None:
    """The last socket a silent client opened before ``until`` while its sign-out was already
    due (silent for PONG_TIMEOUT since its previous sign of life), else None. The gateway
    records a connect through its write buffer, so a sweep run already under way can claim on
    the record from before it: the sign-out then lands just after the reconnect, and was owed
    (docs/operations.md). Sockets opened after that one, a cut or two later, are still in the
    same write buffer (or behind the same Firestore fault) and do not restart the clock."""
    silent = timeline.of(WENT_SILENT)
    if not silent:
        return None
    lives = [silent[0].t] + [e.t for e in timeline.of(CONNECTED) if silent[0].t < e.t < until]
    owed = [b for a, b in zip(lives, lives[1:], strict=False) if b - a >= pong_timeout]
    return owed[-1] if owed else None


def check_silent(
    timeline: Timeline,
    account: Account | None,
    faults: Sequence[Fault],
    pong_timeout: float,
    sweep_interval: float,
    *,
    socket_open: bool,
) -> Outcome:
    """Invariant 2: a client that went silent is signed out once, with the timeout message
    and 4408, no earlier than PONG_TIMEOUT after its last sign of life and no later than
    PONG_TIMEOUT + 3 x SWEEP_INTERVAL plus every fault that overlapped; its tokens are revoked,
    its member signed out and its socket closed."""
    out = Outcome()
    if timeline.role != SILENT:
        return out
    window = silent_deadline(timeline, faults, pong_timeout, sweep_interval)
    user = timeline.user
    if window is None:
        out.check(False, Violation(2, "never went silent (harness fault)", user))
        return out
    start, due = window
    signed = timeline.of(SIGNED_OUT)
    out.check(
        bool(signed),
        Violation(2, f"went silent at t={start:.2f}s, not signed out (due by {due:.2f}s)", user),
    )
    if signed:
        out.check(
            len(signed) == 1, Violation(2, f"signed out {len(signed)} times", user, signed[-1].t)
        )
        first = signed[0]
        code, message = first.detail.get("code"), first.detail.get("message")
        out.check(
            first.t <= due,
            Violation(
                2, f"signed out {first.t - due:.2f}s after its deadline {due:.2f}s", user, first.t
            ),
        )
        early = first.t < start + pong_timeout - SLACK
        owed = _owed_reconnect(timeline, first.t, pong_timeout) if early else None
        if owed is not None and first.t <= deadline_with_faults(
            faults, owed, sweep_interval + SLACK
        ):
            out.checks += 1
            out.notes.append(
                f"{user}: signed out {first.t - owed:.2f}s after reconnecting at t={owed:.2f}s"
                + (f" (again at t={start:.2f}s)" if start != owed else "")
                + ", with its sign-out owed before it (a sweep run claims on the stored record, "
                "and the reconnect's write was still in the gateway's write buffer)"
            )
        else:
            out.check(
                not early,
                Violation(
                    2,
                    f"signed out {first.t - start:.2f}s after its last sign of life",
                    user,
                    first.t,
                ),
            )
        out.check(
            code == TIMEOUT_CODE and message is not None,
            Violation(
                2,
                f"closed with {code} and message {message!r}, not the timeout and 4408",
                user,
                first.t,
            ),
        )
    out.check(not socket_open, Violation(2, "signed out but a socket is still open", user))
    if account is not None:
        out.check(account.revoked, Violation(2, "signed out but tokens not revoked", user))
        out.check(
            account.signed_in is False,
            Violation(2, "member still signed in after its timeout", user),
        )
    else:
        out.check(False, Violation(2, "no account read at the end (harness fault)", user))
    return out


@dataclass(slots=True)
class StoreSnapshot:
    """The stores and the sockets at the end, once faults stopped."""

    #: Sockets the population actually holds open, per user.
    open_by_user: dict[str, int]
    #: Firestore ``sessions`` marked active, per user and per instance.
    active_by_user: dict[str, int]
    active_by_instance: dict[str, int]
    #: The size of each member's ``active_sessions`` map (members with none left out).
    member_sessions: dict[str, int]
    #: Each live instance's ``gateway_connections`` gauge.
    gauges: dict[str, int]
    #: Pub/Sub subscriptions on the fan-out topic: name -> expiration TTL in seconds (None:
    #: never expires).
    subscriptions: dict[str, float | None]
    topic: str
    live: set[str] = field(default_factory=set)
    killed: set[str] = field(default_factory=set)
    drained: set[str] = field(default_factory=set)
    #: For users whose records disagree with their sockets: the member's entries and the
    #: session records behind them, as text (``observe.records_of``), printed with the
    #: violation.
    records: dict[str, str] = field(default_factory=dict)


#: Pub/Sub's expiration policy for an instance's subscription: a day (its minimum).
MAX_SUBSCRIPTION_TTL = 86_400.0


def check_stores(snap: StoreSnapshot) -> Outcome:
    """Invariant 5: sessions marked active equal the sockets actually open (per user and per
    instance), members' session counts match, each instance's gauge equals its sockets, and no
    subscription outlives a dead instance beyond its expiry."""
    out = Outcome()
    users = set(snap.open_by_user) | set(snap.active_by_user) | set(snap.member_sessions)
    for user in sorted(users):
        real = snap.open_by_user.get(user, 0)
        active = snap.active_by_user.get(user, 0)
        member = snap.member_sessions.get(user, 0)
        records = f"; {snap.records[user]}" if user in snap.records else ""
        out.check(
            active == real,
            Violation(5, f"{active} sessions marked active, {real} sockets open{records}", user),
        )
        out.check(
            member == real,
            Violation(
                5, f"member lists {member} active sessions, {real} sockets open{records}", user
            ),
        )
    for instance in sorted(snap.live):
        gauge = snap.gauges.get(instance)
        active = snap.active_by_instance.get(instance, 0)
        out.check(
            gauge == active,
            Violation(5, f"instance {instance}: gauge {gauge}, {active} sessions active there"),
        )
    for instance in sorted(set(snap.active_by_instance) - snap.live):
        out.check(
            False,
            Violation(5, f"{snap.active_by_instance[instance]} sessions active on dead {instance}"),
        )
    out.check(
        sum(snap.gauges.values()) == sum(snap.open_by_user.values()),
        Violation(
            5,
            f"gauges sum to {sum(snap.gauges.values())}, "
            f"{sum(snap.open_by_user.values())} sockets open",
        ),
    )
    prefix = f"{snap.topic}-"
    for name, ttl in sorted(snap.subscriptions.items()):
        instance = name.rsplit("/", 1)[-1].removeprefix(prefix)
        if instance in snap.live:
            out.checks += 1
            continue
        if instance in snap.drained:
            out.check(False, Violation(5, f"subscription {name} left by drained {instance}"))
            continue
        out.check(
            ttl is not None and ttl <= MAX_SUBSCRIPTION_TTL,
            Violation(5, f"subscription {name} of dead {instance} expires after {ttl}"),
        )
    for instance in sorted(snap.live):
        out.check(
            any(n.endswith(f"/{prefix}{instance}") for n in snap.subscriptions),
            Violation(5, f"live instance {instance} has no subscription"),
        )
    return out


def check_memory(before: Mapping[str, int], after: Mapping[str, int], tolerance: float) -> Outcome:
    """Invariant 6: each surviving instance's resident memory, after the population left,
    is within ``tolerance`` (a fraction) of what it was before the population connected."""
    out = Outcome()
    for instance, base in sorted(before.items()):
        if instance not in after:
            continue
        now = after[instance]
        out.check(
            now <= base * (1 + tolerance),
            Violation(
                6,
                f"instance {instance}: {now / 2**20:.1f} MiB after, {base / 2**20:.1f} MiB "
                f"before (+{(now - base) / base:.1%})",
            ),
        )
    return out
