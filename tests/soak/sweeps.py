"""The sweep runs of a soak, read from the sweep function's log: how many, how long, and where
the slowest one's time went (its report's ``phase_seconds``). A silent client signed out late
with no fault active points at a slow sweep; this says which phase made it slow. Pure: text
from the log's lines."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: The slowest runs described, each with its phases.
SLOWEST = 3


@dataclass(frozen=True, slots=True)
class SweepRun:
    seconds: float
    examined: int
    signed_out: int
    sessions_reaped: int
    reap_failures: int
    phases: dict[str, float]

    def describe(self) -> str:
        phases = ", ".join(
            f"{name} {seconds:.1f}"
            for name, seconds in sorted(self.phases.items(), key=lambda kv: -kv[1])
            if seconds >= 0.05
        )
        return (
            f"{self.seconds:.1f} s: examined {self.examined}, signed out {self.signed_out}, "
            f"reaped {self.sessions_reaped} sessions, {self.reap_failures} reap failures; "
            f"phases (s): {phases or 'none over 0.05'}"
        )


def runs(lines: Iterable[str]) -> list[SweepRun]:
    """Every "sweep report" line of the function's log, in order (other lines skipped)."""
    found = []
    for line in lines:
        if '"sweep report"' not in line:
            continue
        try:
            entry: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        found.append(
            SweepRun(
                float(entry.get("duration_seconds", 0.0)),
                int(entry.get("examined", 0)),
                int(entry.get("signed_out", 0)),
                int(entry.get("sessions_reaped", 0)),
                int(entry.get("reap_failures", 0)),
                {str(k): float(v) for k, v in entry.get("phase_seconds", {}).items()},
            )
        )
    return found


def summary(found: list[SweepRun]) -> str:
    """A few lines: count, median and slowest durations, the slowest runs' phases."""
    if not found:
        return "Sweep runs: none reported in the function's log"
    durations = [r.seconds for r in found]
    lines = [
        f"Sweep runs: {len(found)}, median {statistics.median(durations):.1f} s, "
        f"slowest {max(durations):.1f} s"
    ]
    for run in sorted(found, key=lambda r: -r.seconds)[:SLOWEST]:
        lines.append(f"  {run.describe()}")
    return "\n".join(lines)
