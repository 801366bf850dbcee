"""The soak's fault schedule (tests/soak/schedule.py): seeded, bounded, never two instances
down at once."""

from __future__ import annotations

import pytest

from tests.soak import schedule as s
from tests.soak.schedule import Fault, build_schedule, deadline_with_faults, overlapping


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    """A run is reproduced from its seed and length alone."""
    assert build_schedule(42, 120) == build_schedule(42, 120)
    assert build_schedule(42, 120) != build_schedule(43, 120)


@pytest.mark.parametrize("seed", range(30))
def test_faults_stay_inside_the_run_and_kinds_never_overlap_themselves(seed: int) -> None:
    """Every fault starts after the warm-up and ends by the run's end; two faults of one kind
    never overlap, and instance faults are 3 s apart from each other."""
    faults = build_schedule(seed, 120)
    assert faults == sorted(faults, key=lambda f: f.at)
    for n, fault in enumerate(faults):
        assert 5.0 <= fault.at and fault.end <= 120
        low, high = s.DURATIONS[fault.kind]
        assert low <= fault.duration <= high
        for other in faults[n + 1 :]:
            if other.kind == fault.kind:
                assert other.at >= fault.end
            if {fault.kind, other.kind} <= s.INSTANCE_FAULTS:
                assert other.at >= fault.end + 3.0


def test_a_long_run_meets_every_kind_and_overlaps_some() -> None:
    """Ten minutes bring every kind of fault, some of them overlapping another."""
    faults = build_schedule(1, 600)
    assert {f.kind for f in faults} == set(s.FAULT_KINDS)
    assert any(len(overlapping(faults, f.at, f.end)) > 1 for f in faults if f.duration)


def test_targets_fit_their_kind() -> None:
    """Instance faults name one of the instances, duplicate triggers 2 to 4 extra sweeps."""
    for fault in build_schedule(5, 600, instances=3):
        if fault.kind in s.INSTANCE_FAULTS:
            assert 0 <= fault.target < 3
        if fault.kind == s.DUPLICATE_TRIGGERS:
            assert 2 <= fault.target <= 4


def test_unknown_kinds_and_a_single_instance_are_refused() -> None:
    """A typo in a kind, or instance faults with one instance, fail at once."""
    with pytest.raises(ValueError, match="unknown"):
        build_schedule(1, 60, kinds=("kill_everything",))
    with pytest.raises(ValueError, match="two instances"):
        build_schedule(1, 60, instances=1)


def test_a_deadline_stretches_by_every_fault_inside_it_transitively() -> None:
    """The allowance grows by each overlapping fault's length, including faults that only
    fall inside once the window has grown."""
    assert deadline_with_faults([], 10.0, 26.0) == 36.0
    first = Fault(20.0, s.STOP_FIRESTORE, 8.0)
    late = Fault(40.0, s.RESTART_PUBSUB, 5.0)
    assert deadline_with_faults([first], 10.0, 26.0) == 44.0
    assert deadline_with_faults([first, late], 10.0, 26.0) == 49.0
    assert deadline_with_faults([Fault(0.0, s.KILL_SWEEP, 2.0)], 10.0, 26.0) == 36.0


def test_a_killed_sweeps_claims_stretch_the_deadlines_they_overlap() -> None:
    """A sweep killed mid-sweep counts for its downtime plus SWEEP_CLAIM_TTL (its claims hold
    that long); other faults keep their length."""
    killed = Fault(5.0, s.KILL_SWEEP, 2.0)
    stalled = Fault(50.0, s.STOP_FIRESTORE, 3.0)
    judged = s.with_aftermath([killed, stalled], 10.0)
    assert judged == [Fault(5.0, s.KILL_SWEEP, 12.0), stalled]
    assert deadline_with_faults(judged, 10.0, 26.0) == 48.0
    assert deadline_with_faults(judged, 20.0, 26.0) == 46.0
