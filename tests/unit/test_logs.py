"""The budget on log lines clients cause (gateway.logs), and its use by the room analytics
entries (gateway.instance.analytics). The same over a real gateway process:
tests/e2e/test_log_budget.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.instance.analytics import ROOM_EVENTS_PER_SOCKET, ConnectionEvents
from gateway.instance.registry import Connection
from gateway.logs import LogBudget
from gateway.protocol.messages import utc_now
from tests.loopback import Recorder


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def budget(clock: Clock, **kwargs: object) -> tuple[LogBudget[str], list[tuple[str, int, float]]]:
    """A budget of 3 lines per 10 s whose summaries are recorded."""
    summaries: list[tuple[str, int, float]] = []
    made: LogBudget[str] = LogBudget(
        logging.getLogger("test.logs"),
        burst=3,
        window=10.0,
        summary=lambda key, held, seconds: summaries.append((key, held, seconds)),
        clock=clock,
    )
    return made, summaries


def test_the_first_lines_of_a_window_are_written_and_the_rest_counted() -> None:
    """Three lines pass, the next seven are held back and counted; nothing is reported while
    the window lasts."""
    clock = Clock()
    lines, summaries = budget(clock)
    assert [lines.allow("k") for _ in range(10)] == [True] * 3 + [False] * 7
    assert lines.held("k") == 7
    clock.now += 9.9
    assert not lines.allow("k")
    assert summaries == []


def test_the_next_line_after_the_window_reports_what_was_held_back_and_starts_anew() -> None:
    """Without an event loop the summary comes with the key's next line: the count held back
    and the seconds it spans; that line starts a fresh window with a full burst."""
    clock = Clock()
    lines, summaries = budget(clock)
    for _ in range(8):
        lines.allow("k")
    clock.now += 12.0
    assert lines.allow("k")
    assert summaries == [("k", 5, 10.0)]
    assert [lines.allow("k") for _ in range(3)] == [True, True, False]


def test_a_window_with_nothing_held_back_reports_nothing() -> None:
    """A key under its budget never gets a summary line."""
    clock = Clock()
    lines, summaries = budget(clock)
    for _ in range(5):
        assert lines.allow("k") and lines.allow("k")
        clock.now += 10.0
    lines.forget("k")
    assert summaries == []


def test_keys_have_budgets_of_their_own() -> None:
    """One key's flood does not silence another key."""
    clock = Clock()
    lines, _ = budget(clock)
    for _ in range(10):
        lines.allow("flood")
    assert lines.allow("quiet")


def test_forgetting_a_key_reports_what_it_held_back_at_once() -> None:
    """A socket's end reports its held-back lines without waiting for the window, with the
    seconds elapsed, and frees the key."""
    clock = Clock()
    lines, summaries = budget(clock)
    for _ in range(5):
        lines.allow("s1")
    clock.now += 2.5
    lines.forget("s1")
    lines.forget("never-seen")
    assert summaries == [("s1", 2, 2.5)]
    assert lines.held("s1") == 0 and lines.allow("s1")


def test_the_default_summary_is_one_info_line_naming_the_key_and_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without a summary callable the budget writes its lines and the summary on its logger;
    ``info`` logs only within the budget."""
    clock = Clock()
    lines: LogBudget[str] = LogBudget(
        logging.getLogger("test.logs"), burst=2, window=5.0, clock=clock
    )
    caplog.set_level(logging.INFO, logger="test.logs")
    for n in range(6):
        lines.info("unknown types", "line %d", n)
    clock.now += 5.0
    lines.info("unknown types", "line %d", 6)
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "line 1",
        "unknown types: 4 more lines suppressed in 5s (at most 2 per 5s are logged)",
        "line 6",
    ]


async def test_with_an_event_loop_the_summary_comes_when_the_window_ends() -> None:
    """A flood that stops still gets its summary, on a timer at the window's end, once."""
    summaries: list[tuple[str, int, float]] = []
    lines: LogBudget[str] = LogBudget(
        logging.getLogger("test.logs"),
        burst=1,
        window=0.05,
        summary=lambda key, held, seconds: summaries.append((key, held, seconds)),
    )
    for _ in range(4):
        lines.allow("k")
    await asyncio.sleep(0.2)
    assert [(key, held) for key, held, _ in summaries] == [("k", 3)]
    assert lines.held("k") == 0 and lines.allow("k")
    await asyncio.sleep(0.1)
    assert len(summaries) == 1


def test_a_sockets_room_entries_are_budgeted_and_their_counters_stay_exact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Joins and leaves beyond the socket's budget are counted but not logged; its close logs
    one ``room_events_suppressed`` entry with the count; another socket's entries, and
    connects and disconnects, are never held back."""
    events = ConnectionEvents("i1")
    caplog.set_level(logging.INFO, logger="gateway.events")
    flood = Connection("u1", "s1", utc_now(), Recorder())
    other = Connection("u2", "s2", utc_now(), Recorder())
    for n in range(ROOM_EVENTS_PER_SOCKET + 30):
        if n % 2:
            events.room_leave(flood, "r", "leave", 0)
        else:
            events.room_join(flood, "r", 1)
    events.room_join(other, "r", 1)
    events.disconnect(flood, 1000, 0, 1)
    logged = [r.event for r in caplog.records]  # type: ignore[attr-defined]
    kinds = [(e["kind"], e["session_id"]) for e in logged]
    assert kinds.count(("room_join", "s1")) + kinds.count(("room_leave", "s1")) == (
        ROOM_EVENTS_PER_SOCKET
    )
    assert ("room_join", "s2") in kinds and ("disconnect", "s1") in kinds
    [summary] = [e for e in logged if e["kind"] == "room_events_suppressed"]
    assert (summary["user_id"], summary["session_id"], summary["suppressed"]) == ("u1", "s1", 30)
    assert events.counts["room_join"] + events.counts["room_leave"] == ROOM_EVENTS_PER_SOCKET + 31
    assert events.room_lines.held(("u1", "s1")) == 0
