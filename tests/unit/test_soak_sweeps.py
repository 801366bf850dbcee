"""The soak's summary of sweep runs, read from the sweep function's log lines."""

from __future__ import annotations

import json

from tests.soak.sweeps import runs, summary


def _line(seconds: float, **phases: float) -> str:
    report = {"message": "sweep report", "duration_seconds": seconds, "phase_seconds": phases}
    return json.dumps({"severity": "INFO", **report, "examined": 2, "sessions_reaped": 9})


def test_the_slowest_runs_are_described_with_their_largest_phase_first() -> None:
    """Only report lines count; the slowest run leads and names its slowest phase first."""
    log = [
        "INFO:functions_framework: serving",
        _line(1.0, query=0.5, claim=0.2),
        'not json but mentions "sweep report"',
        _line(16.3, reap=15.9, query=0.3, claim=0.01),
        _line(2.0, query=1.5),
    ]
    found = runs(log)
    text = summary(found)
    assert len(found) == 3
    assert text.splitlines()[0] == "Sweep runs: 3, median 2.0 s, slowest 16.3 s"
    assert text.splitlines()[1] == (
        "  16.3 s: examined 2, signed out 0, reaped 9 sessions, 0 reap failures; "
        "phases (s): reap 15.9, query 0.3"
    )


def test_a_log_without_reports_says_so() -> None:
    """No sweep report in the log (the function never ran a sweep) is stated, not hidden."""
    assert summary(runs(["starting"])) == "Sweep runs: none reported in the function's log"
