"""The soak's invariant checkers (tests/soak/invariants.py, delivery.py) and its report, on
hand-made timelines: each catches its violation and passes the behaviour it allows."""

from __future__ import annotations

import math

from tests.soak.delivery import DurableSend, RoomSend, check_durable, check_rooms, memberships
from tests.soak.invariants import (
    Account,
    StoreSnapshot,
    check_answering,
    check_memory,
    check_silent,
    check_stores,
)
from tests.soak.report import RunInfo, render
from tests.soak.schedule import STOP_FIRESTORE, Fault
from tests.soak.timeline import (
    CONNECTED,
    DISCONNECTED,
    DURABLE,
    JOINED,
    RECOVERY,
    ROOM,
    ROOM_MESSAGE,
    SIGNED_OUT,
    SILENT,
    STEADY,
    STREAM,
    WENT_SILENT,
    Outcome,
    Timeline,
)

FINE = Account(revoked=False, signed_in=True)
SIGNED_OFF = Account(revoked=True, signed_in=False)


def silent_user(
    signed_at: float | None, code: int = 4408, reconnect: float | None = None
) -> Timeline:
    timeline = Timeline("s1", SILENT)
    timeline.add(1.0, CONNECTED)
    timeline.add(10.0, WENT_SILENT)
    if reconnect is not None:
        timeline.add(reconnect - 0.5, DISCONNECTED, code=1012)
        timeline.add(reconnect, CONNECTED)
    if signed_at is not None:
        timeline.add(signed_at, SIGNED_OUT, code=code, message="expired" if code == 4408 else None)
    return timeline


def test_an_answering_client_signed_out_or_revoked_is_a_violation() -> None:
    """Invariant 1: any sign-out, revocation or signed-out member of a steady client counts."""
    steady = Timeline("u1", STEADY)
    steady.add(1.0, CONNECTED)
    assert not check_answering(steady, FINE).violations
    assert len(check_answering(steady, Account(True, False)).violations) == 2
    steady.add(5.0, SIGNED_OUT, code=4408, message="expired")
    assert check_answering(steady, FINE).violations[0].t == 5.0


def test_a_silent_client_signed_out_in_time_passes() -> None:
    """Invariant 2: signed out after PONG_TIMEOUT and before PONG_TIMEOUT + 3 sweeps, 4408."""
    out = check_silent(silent_user(32.0), SIGNED_OFF, [], 20.0, 2.0, socket_open=False)
    assert out.checks and not out.violations


def test_a_silent_client_signed_out_late_early_or_wrongly_is_a_violation() -> None:
    """Too late, too early, with the wrong close, or left signed in: each is named."""
    late = check_silent(silent_user(37.0), SIGNED_OFF, [], 20.0, 2.0, socket_open=False)
    assert "after its deadline" in late.violations[0].message
    early = check_silent(silent_user(20.0), SIGNED_OFF, [], 20.0, 2.0, socket_open=False)
    assert "after its last sign of life" in early.violations[0].message
    wrong = check_silent(silent_user(32.0, code=1000), SIGNED_OFF, [], 20.0, 2.0, socket_open=False)
    assert "not the timeout and 4408" in wrong.violations[0].message
    never = check_silent(silent_user(None), FINE, [], 20.0, 2.0, socket_open=True)
    assert len(never.violations) == 4


def test_overlapping_faults_and_a_reconnect_move_the_silent_deadline() -> None:
    """A Firestore stop inside the window stretches it; a socket opened after going silent
    restarts the clock."""
    stop = [Fault(15.0, STOP_FIRESTORE, 6.0)]
    stretched = check_silent(silent_user(40.0), SIGNED_OFF, stop, 20.0, 2.0, socket_open=False)
    assert not stretched.violations
    moved = check_silent(
        silent_user(45.0, reconnect=20.0), SIGNED_OFF, [], 20.0, 2.0, socket_open=False
    )
    assert not moved.violations


def test_a_sign_out_owed_before_a_reconnect_landing_just_after_it_is_a_note() -> None:
    """Silent past PONG_TIMEOUT, then a reconnect the sweep run in flight did not see: a sign-out
    within a sweep interval of the reconnect is allowed (noted); a reconnect before the
    sign-out was owed, or a sign-out long after the reconnect, still restarts the clock."""
    owed = check_silent(
        silent_user(35.5, reconnect=35.0), SIGNED_OFF, [], 20.0, 2.0, socket_open=False
    )
    assert not owed.violations and "after reconnecting" in owed.notes[0]
    not_owed = check_silent(
        silent_user(25.5, reconnect=25.0), SIGNED_OFF, [], 20.0, 2.0, socket_open=False
    )
    assert "after its last sign of life" in not_owed.violations[0].message
    long_after = check_silent(
        silent_user(40.0, reconnect=35.0), SIGNED_OFF, [], 20.0, 2.0, socket_open=False
    )
    assert "after its last sign of life" in long_after.violations[0].message


def test_a_second_cut_after_an_owed_reconnect_does_not_restart_the_clock() -> None:
    """Two cuts a few seconds apart while the sign-out was owed: the sweep's claim on the record
    from before the first reconnect is a note; the same two reconnects before it was owed
    are a violation."""
    owed = silent_user(38.0, reconnect=35.0)
    owed.add(36.5, DISCONNECTED, code=1006)
    owed.add(37.2, CONNECTED)
    owed.events.sort(key=lambda e: e.t)
    out = check_silent(owed, SIGNED_OFF, [], 20.0, 2.0, socket_open=False)
    assert not out.violations and "(again at t=37.20s)" in out.notes[0]
    early = silent_user(28.0, reconnect=25.0)
    early.add(26.5, DISCONNECTED, code=1006)
    early.add(27.2, CONNECTED)
    early.events.sort(key=lambda e: e.t)
    out = check_silent(early, SIGNED_OFF, [], 20.0, 2.0, socket_open=False)
    assert "after its last sign of life" in out.violations[0].message


def test_stores_that_disagree_with_the_sockets_are_violations() -> None:
    """Invariant 5: sessions, members and gauges against the open sockets; subscriptions of
    drained instances must be gone and those of killed ones expire."""
    snap = StoreSnapshot(
        open_by_user={"a": 1, "b": 1},
        active_by_user={"a": 1, "b": 1},
        active_by_instance={"i1": 2},
        member_sessions={"a": 1, "b": 1},
        gauges={"i1": 2},
        subscriptions={"p/subscriptions/t-i1": 86400.0, "p/subscriptions/t-k1": 86400.0},
        topic="t",
        live={"i1"},
        killed={"k1"},
    )
    assert not check_stores(snap).violations
    snap.active_by_user["c"] = 1
    snap.gauges["i1"] = 3
    snap.subscriptions["p/subscriptions/t-d1"] = 86400.0
    snap.drained = {"d1"}
    messages = [v.message for v in check_stores(snap).violations]
    assert any("1 sessions marked active, 0 sockets open" in m for m in messages)
    assert any("gauge 3" in m for m in messages)
    assert any("left by drained d1" in m for m in messages)


def test_a_store_violation_carries_the_users_records() -> None:
    """A member disagreeing with the sockets is reported with its entries' session records."""
    snap = StoreSnapshot(
        open_by_user={"a": 1},
        active_by_user={"a": 1},
        active_by_instance={"i1": 1},
        member_sessions={"a": 2},
        gauges={"i1": 1},
        subscriptions={"p/subscriptions/t-i1": 86400.0},
        topic="t",
        live={"i1"},
        records={"a": "s2 listed on k1 (killed): is_active=False"},
    )
    (violation,) = check_stores(snap).violations
    assert violation.user == "a"
    assert violation.message.endswith("; s2 listed on k1 (killed): is_active=False")


def test_memory_within_the_tolerance_passes_and_beyond_fails() -> None:
    """Invariant 6: 10 % over the baseline at most, per surviving instance."""
    assert not check_memory({"i": 100_000_000}, {"i": 109_000_000}, 0.10).violations
    assert check_memory({"i": 100_000_000}, {"i": 111_000_000}, 0.10).violations
    assert check_memory({"i": 100}, {}, 0.10).checks == 0


def durable_user(*offsets: int, lost_at: float | None = None) -> Timeline:
    timeline = Timeline("d1", DURABLE)
    for n, offset in enumerate(offsets):
        timeline.add(5.0 + n, STREAM, epoch="e", offset=offset, seq=offset * 10)
    if lost_at is not None:
        timeline.add(lost_at, RECOVERY, recovered=False, epoch="e", offset=9)
    return timeline


def sends(*offsets: int) -> list[DurableSend]:
    return [DurableSend(1.0, 2.0, "d1", o * 10, "stored", "e", o) for o in offsets]


def test_durable_messages_once_in_order_or_told_lost() -> None:
    """Invariant 3: missing and repeated deliveries are violations; a recovered: false after
    the send excuses the gap; a gap filled later (out of offset order) is noted."""
    assert not check_durable(durable_user(1, 2, 3), sends(1, 2, 3)).violations
    missing = check_durable(durable_user(1, 3), sends(1, 2, 3)).violations
    assert "seq=20" in missing[0].message
    assert not check_durable(durable_user(1, 3, lost_at=4.0), sends(1, 2, 3)).violations
    late = check_durable(durable_user(2, 1), sends(1, 2))
    assert not late.violations and "offset 1 after offset 2" in late.notes[0]
    twice = Timeline("d1", DURABLE)
    twice.add(1.0, STREAM, epoch="e", offset=1, seq=10)
    twice.add(2.0, STREAM, epoch="f", offset=1, seq=10)
    assert "2 times" in check_durable(twice, []).violations[0].message


def room_user(joined: float, left: float | None, *got: int) -> Timeline:
    timeline = Timeline("r1", ROOM)
    timeline.add(joined, JOINED, room="public:soak-0")
    for seq in got:
        timeline.add(joined + 10.0, ROOM_MESSAGE, room="public:soak-0", seq=seq)
    if left is not None:
        timeline.add(left, DISCONNECTED, code=1006)
    return timeline


def test_room_sends_reach_members_once_and_nobody_else() -> None:
    """Invariant 4: a member for the whole send must get it once; a non-member must not; a
    membership starting or ending near the send is left undecided."""
    send = [RoomSend(20.0, 20.5, "public:soak-0", 1, True)]
    assert not check_rooms(send, {"r1": room_user(1.0, None, 1)}).violations
    assert "missed" in check_rooms(send, {"r1": room_user(1.0, None)}).violations[0].message
    assert not check_rooms(send, {"r1": room_user(19.0, None)}).violations
    late = check_rooms(send, {"r1": room_user(40.0, None, 1)}).violations
    assert "not a member" in late[0].message
    assert "2 times" in check_rooms(send, {"r1": room_user(1.0, None, 1, 1)}).violations[0].message
    assert memberships(room_user(1.0, 5.0)) == [("public:soak-0", 1.0, 5.0)]
    assert memberships(room_user(1.0, None)) == [("public:soak-0", 1.0, math.inf)]


def test_the_report_shows_the_table_and_what_reproduces_a_violation() -> None:
    """The table counts faults by kind and checks per invariant; a violation brings the
    seed, the schedule and the user's timeline."""
    info = RunInfo(seed=9, seconds=120, clients=50, wall=180, log_dir=".run/soak/seed-9")
    faults = [Fault(15.0, STOP_FIRESTORE, 6.0)]
    clean = render(info, faults, {1: Outcome(checks=5)}, {})
    assert "stop_firestore" in clean and "No violations." in clean
    bad = check_silent(silent_user(None), FINE, faults, 20.0, 2.0, socket_open=True)
    text = render(info, faults, {2: bad}, {"s1": silent_user(None)})
    assert "make soak SOAK_SEED=9 SOAK_SECONDS=120" in text
    assert "user s1 (silent):" in text and "went_silent" in text
