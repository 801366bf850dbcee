"""The registry counts users and sockets right when users hold several sockets."""

from __future__ import annotations

from typing import Any

from gateway.instance.registry import Connection, Registry
from gateway.protocol.messages import utc_now


async def _noop(_: dict[str, Any]) -> None:
    return None


def conn(user: str, session: str) -> Connection:
    return Connection(user, session, utc_now(), _noop)


def test_several_sockets_per_user_are_counted_per_user_and_in_total() -> None:
    """Two tabs of one user are one user and two connections."""
    registry = Registry()
    a1, a2, b1 = conn("a", "1"), conn("a", "2"), conn("b", "3")
    assert [registry.add(c) for c in (a1, a2, b1)] == [1, 2, 1]
    assert registry.total_connections == 3
    assert registry.total_users == 2
    assert registry.count_of("a") == 2
    assert sorted(registry.users()) == ["a", "b"]
    assert registry.remove(a1) == 1
    assert registry.remove(a1) == 1  # removing twice is harmless
    assert registry.remove(a2) == 0
    assert registry.users() == ["b"]
    assert registry.total_connections == 1


async def test_send_after_close_reports_failure_without_raising() -> None:
    """A closed connection refuses sends instead of writing to a dead socket."""
    c = conn("a", "1")
    assert await c.send_text("x", timeout=1)
    await c.close(1000)
    assert not await c.send_text("x", timeout=1)


async def test_send_timeout_reports_failure() -> None:
    """A socket that cannot take a frame in time is reported, not waited on forever."""
    import asyncio

    async def stuck(_: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    c = Connection("a", "1", utc_now(), stuck)
    assert not await c.send_text("x", timeout=0.05)
