"""The soak's report: faults injected by kind, checks made and violations per invariant, then
each violation with what it takes to reproduce it (the seed, the fault schedule as it ran,
the user's timeline). Pure: text from data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tests.soak.schedule import FAULT_KINDS, Fault, format_schedule
from tests.soak.timeline import Outcome, Timeline

INVARIANTS = {
    1: "answering clients never signed out",
    2: "silent clients signed out in time, once",
    3: "durable messages exactly once, or told lost",
    4: "room sends reach exactly the members",
    5: "stores agree with open sockets",
    6: "memory back within 10 %",
}
#: Timelines printed with the violations at most (the rest are in the run's log directory).
MAX_TIMELINES = 8
#: Notes printed at most.
MAX_NOTES = 10


@dataclass(frozen=True, slots=True)
class RunInfo:
    seed: int
    seconds: float
    clients: int
    wall: float
    log_dir: str


def table(faults: Sequence[Fault], outcomes: Mapping[int, Outcome]) -> str:
    lines = ["Faults injected", f"  {'kind':<20}{'count':>6}{'seconds':>10}"]
    for kind in FAULT_KINDS:
        mine = [f for f in faults if f.kind == kind]
        lines.append(f"  {kind:<20}{len(mine):>6}{sum(f.duration for f in mine):>10.1f}")
    lines.append(f"  {'total':<20}{len(faults):>6}{sum(f.duration for f in faults):>10.1f}")
    lines += ["", "Invariants", f"  {'#':<3}{'invariant':<42}{'checks':>8}{'violations':>12}"]
    for number, name in INVARIANTS.items():
        out = outcomes.get(number)
        checks = "-" if out is None else str(out.checks)
        bad = "-" if out is None else str(len(out.violations))
        lines.append(f"  {number:<3}{name:<42}{checks:>8}{bad:>12}")
    return "\n".join(lines)


def render(
    info: RunInfo,
    faults: Sequence[Fault],
    outcomes: Mapping[int, Outcome],
    timelines: Mapping[str, Timeline],
) -> str:
    violations = [v for out in outcomes.values() for v in out.violations]
    head = (
        f"Soak: seed {info.seed}, {info.seconds:g} s of faults, {info.clients} clients, "
        f"{info.wall:.0f} s wall; logs in {info.log_dir}"
    )
    parts = [head, "", table(faults, outcomes), ""]
    notes = [n for out in outcomes.values() for n in out.notes]
    if notes:
        parts.append(f"{len(notes)} notes (allowed by the documented design, not violations):")
        parts += [f"  {n}" for n in notes[:MAX_NOTES]]
        if len(notes) > MAX_NOTES:
            parts.append(f"  ({len(notes) - MAX_NOTES} more)")
        parts.append("")
    if not violations:
        parts.append("No violations.")
        return "\n".join(parts)
    parts.append(f"{len(violations)} violations:")
    parts += [f"  {v.describe()}" for v in violations]
    parts += [
        "",
        f"Reproduce: make soak SOAK_SEED={info.seed} SOAK_SECONDS={info.seconds:g} "
        f"SOAK_CLIENTS={info.clients}",
        "",
        "Fault schedule as it ran (times from the start of the population):",
        format_schedule(faults),
    ]
    users = list(dict.fromkeys(v.user for v in violations if v.user in timelines))
    for user in users[:MAX_TIMELINES]:
        parts += ["", timelines[user].describe()]
    if len(users) > MAX_TIMELINES:
        parts.append(f"\n({len(users) - MAX_TIMELINES} more users' timelines in timelines.txt)")
    return "\n".join(parts)
