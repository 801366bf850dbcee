"""The user presence decision is written twice: the gateway's (``gateway.storage.user_presence``)
and the sweep function's copy (``functions/presence_sweep/presence.py``), which deploys alone and
cannot import the gateway. Both run over one table of cases here and must agree on everything
they decide (the holders record, the public presence, the event), so they cannot drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest

from gateway.storage import user_presence as gateway_presence
from presence_sweep import presence as sweep_presence

T0 = datetime(2026, 12, 7, 10, tzinfo=UTC)
AT = T0 + timedelta(minutes=5)


def online(held: dict[str, Any], seq: int = 1) -> dict[str, Any]:
    """A holders record as the decision writes it for a user online on ``held``."""
    return {"instances": held, "state": "online", "seq": seq, "last_seen_at": T0, "updated_at": T0}


OFFLINE = {"instances": {}, "state": "offline", "seq": 2, "last_seen_at": T0, "updated_at": T0}

# id, record, instance, count, reason, (state, devices, event reason) expected: None = no event.
CASES: list[tuple[str, dict[str, Any] | None, str, int, str, tuple[str, int, str | None]]] = [
    ("first connect", None, "i1", 1, "connect", ("online", 1, "connect")),
    ("connect after offline", OFFLINE, "i1", 1, "connect", ("online", 1, "connect")),
    ("second device elsewhere", online({"i1": 1}), "i2", 1, "connect", ("online", 2, None)),
    ("second device here", online({"i1": 1}), "i1", 2, "connect", ("online", 2, None)),
    ("one of two closes", online({"i1": 1, "i2": 1}), "i2", 0, "disconnect", ("online", 1, None)),
    *(
        (f"last closes: {reason}", online({"i1": 1}), "i1", 0, reason, ("offline", 0, reason))
        for reason in ("disconnect", "timeout", "signout", "token_expired", "instance_lost")
    ),
    ("repeated report", online({"i1": 2}), "i1", 2, "connect", ("online", 2, None)),
    ("repeated close", OFFLINE, "i1", 0, "disconnect", ("offline", 0, None)),
    ("first record is a close", None, "i1", 0, "disconnect", ("offline", 0, None)),
    (
        "malformed record",
        {"instances": "i1", "state": 5, "seq": "7", "last_seen_at": "yesterday"},
        "i1",
        1,
        "connect",
        ("online", 1, "connect"),
    ),
    (
        "malformed counts",
        {"instances": {"i1": True, "i2": -1, "i3": "2", "i4": 1}, "state": "online", "seq": True},
        "i4",
        0,
        "disconnect",
        ("offline", 0, "disconnect"),
    ),
    (
        "lost instance held the last socket",
        online({"i1": 2}, seq=5),
        "i1",
        0,
        "instance_lost",
        ("offline", 0, "instance_lost"),
    ),
    (
        "lost instance, others hold sockets",
        online({"i1": 1, "i2": 2}),
        "i1",
        0,
        "instance_lost",
        ("online", 2, None),
    ),
    (
        "lost instance not named",
        online({"i2": 1}),
        "i1",
        0,
        "instance_lost",
        ("online", 1, None),
    ),
]


def outcome_of(module: Any, record: Any, instance: str, count: int, reason: str) -> Any:
    out = module.decide("ana", record, instance, count, AT, reason)
    return (out.holders, out.presence, None if out.event is None else out.event.body())


@pytest.mark.parametrize(
    ("record", "instance", "count", "reason", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_gateway_and_the_sweep_decide_alike(
    record: dict[str, Any] | None,
    instance: str,
    count: int,
    reason: str,
    expected: tuple[str, int, str | None],
) -> None:
    """Both decisions give the same holders record, public presence and event body, and that
    outcome is the one the case expects."""
    gateway = outcome_of(gateway_presence, record, instance, count, reason)
    sweep = outcome_of(sweep_presence, record, instance, count, reason)
    assert sweep == gateway
    holders, presence, event = sweep
    state, devices, event_reason = expected
    assert holders["state"] == state
    assert sum(holders["instances"].values()) == devices
    if event_reason is None:
        assert event is None
    else:
        assert event is not None
        assert (event["state"], event["devices"], event["reason"]) == (state, devices, event_reason)
        assert presence == {"state": state, "devices": devices, "last_seen_at": AT}
        assert holders["last_seen_at"] == AT


def test_the_sweeps_reason_is_one_the_gateway_knows() -> None:
    """The sweep's offline reason is among the gateway's declared reasons."""
    assert sweep_presence.INSTANCE_LOST in get_args(gateway_presence.Reason)
