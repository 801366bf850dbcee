"""The soak's fault schedule: a pure function of the seed and the run's length.

The same ``SOAK_SEED`` and ``SOAK_SECONDS`` give the same faults at the same offsets, so a run
that found a violation can be repeated. Faults of different kinds may overlap; two faults of
one kind never do, and at most one gateway instance is down at a time (a kill or a drain), so
two instances always carry the population.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

#: Every kind of fault the harness knows how to inject.
KILL_INSTANCE = "kill_instance"
DRAIN_INSTANCE = "drain_instance"
STOP_FIRESTORE = "stop_firestore"
THROTTLE_FIRESTORE = "throttle_firestore"
RESTART_PUBSUB = "restart_pubsub"
CUT_CLIENTS = "cut_clients"
KILL_SWEEP = "kill_sweep"
DUPLICATE_TRIGGERS = "duplicate_triggers"
BAD_INPUT = "bad_input"

FAULT_KINDS: tuple[str, ...] = (
    KILL_INSTANCE,
    DRAIN_INSTANCE,
    STOP_FIRESTORE,
    THROTTLE_FIRESTORE,
    RESTART_PUBSUB,
    CUT_CLIENTS,
    KILL_SWEEP,
    DUPLICATE_TRIGGERS,
    BAD_INPUT,
)
#: Faults that take a gateway instance down (never two at once).
INSTANCE_FAULTS = frozenset({KILL_INSTANCE, DRAIN_INSTANCE})

#: Each kind's duration range in seconds: how long the fault lasts (a killed process stays down,
#: Firestore stays stopped or throttled) before the harness undoes it. A SIGSTOP lasts at most
#: 10 s, as the issue asks; 0 is an instantaneous fault (a cut, a burst of triggers).
DURATIONS: dict[str, tuple[float, float]] = {
    KILL_INSTANCE: (1.0, 6.0),
    DRAIN_INSTANCE: (1.0, 6.0),
    STOP_FIRESTORE: (1.0, 10.0),
    THROTTLE_FIRESTORE: (3.0, 12.0),
    RESTART_PUBSUB: (1.0, 5.0),
    CUT_CLIENTS: (0.0, 0.0),
    KILL_SWEEP: (0.5, 3.0),
    DUPLICATE_TRIGGERS: (0.0, 0.0),
    BAD_INPUT: (0.0, 2.0),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: ``at`` seconds after the population is up, lasting ``duration`` seconds;
    ``target`` is the instance index for instance faults, the number of extra triggers for
    duplicate triggers, the throttle's bytes per second for a throttle, else 0."""

    at: float
    kind: str
    duration: float
    target: int = 0

    @property
    def end(self) -> float:
        return self.at + self.duration

    def describe(self) -> str:
        extra = f" target={self.target}" if self.target else ""
        return f"t={self.at:7.2f}s {self.kind:<19} {self.duration:5.2f}s{extra}"


def build_schedule(
    seed: int,
    seconds: float,
    *,
    instances: int = 3,
    kinds: Sequence[str] = FAULT_KINDS,
    mean_gap: float = 5.0,
    warmup: float = 5.0,
) -> list[Fault]:
    """The faults of a run of ``seconds`` (every fault ends by then), ordered by start.

    Starts come ``warmup`` seconds in and then at exponentially distributed gaps (mean
    ``mean_gap``); each start draws a kind uniformly from ``kinds`` and a duration from its
    range. A draw that would overlap a fault of the same kind, or take a second instance down,
    moves to the next kind that fits; when none fits, that start is skipped.
    """
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
    if instances < 2 and INSTANCE_FAULTS & set(kinds):
        raise ValueError("instance faults need at least two instances")
    rng = random.Random(seed)
    faults: list[Fault] = []
    at = warmup
    while True:
        at += rng.expovariate(1.0 / mean_gap)
        if at >= seconds:
            break
        first = rng.randrange(len(kinds))
        for step in range(len(kinds)):
            kind = kinds[(first + step) % len(kinds)]
            low, high = DURATIONS[kind]
            duration = round(rng.uniform(low, high), 2)
            if at + duration > seconds or not _fits(faults, kind, at, at + duration):
                continue
            faults.append(Fault(round(at, 2), kind, duration, _target(rng, kind, instances)))
            break
    return faults


def _target(rng: random.Random, kind: str, instances: int) -> int:
    if kind in INSTANCE_FAULTS:
        return rng.randrange(instances)
    if kind == DUPLICATE_TRIGGERS:
        return rng.randint(2, 4)
    if kind == THROTTLE_FIRESTORE:
        # Bytes per second through the gateways' Firestore link: from crawling to tight.
        return rng.choice((4_000, 16_000, 64_000))
    return 0


def _fits(faults: Iterable[Fault], kind: str, start: float, end: float) -> bool:
    for other in faults:
        # A restarted instance needs a moment to come up: keep instance faults 3 s apart.
        margin = 3.0 if kind in INSTANCE_FAULTS else 0.0
        overlaps = other.at < end + margin and start < other.end + margin
        if not overlaps:
            continue
        if other.kind == kind or (kind in INSTANCE_FAULTS and other.kind in INSTANCE_FAULTS):
            return False
    return True


def overlapping(faults: Iterable[Fault], start: float, end: float) -> list[Fault]:
    """The faults whose time overlaps ``[start, end]`` (an instantaneous one counts when it
    falls inside)."""
    return [f for f in faults if f.at <= end and start <= f.end]


def with_aftermath(faults: Iterable[Fault], claim_ttl: float) -> list[Fault]:
    """The faults as a silent client's deadline sees them: a sweep killed mid-sweep leaves its
    claims on the users it was signing out, and no other sweep takes them for SWEEP_CLAIM_TTL,
    so its effect lasts that much longer than the function's downtime."""
    return [
        replace(f, duration=f.duration + claim_ttl) if f.kind == KILL_SWEEP else f for f in faults
    ]


def deadline_with_faults(faults: Sequence[Fault], start: float, allowed: float) -> float:
    """``start + allowed``, stretched by the length of every fault that overlaps the window,
    which grows as it stretches (until no further fault falls inside)."""
    end = start + allowed
    while True:
        stretched = start + allowed + sum(f.duration for f in overlapping(faults, start, end))
        if stretched <= end:
            return end
        end = stretched


def format_schedule(faults: Sequence[Fault]) -> str:
    return "\n".join(f.describe() for f in faults) or "(no faults)"
