"""gateway.instance.idle_trim: memory is given back once per idle spell, never while sockets
are open."""

from __future__ import annotations

import asyncio

import pytest

from gateway.instance import idle_trim
from gateway.instance.idle_trim import IdleSpell


def test_an_instance_that_never_held_a_socket_does_not_trim() -> None:
    """A fresh instance with no sockets has nothing to give back."""
    spell = IdleSpell(settle=2.0)
    assert not any(spell.observe(0, t) for t in range(10))


def test_trims_once_after_the_last_socket_has_been_gone_for_the_settle_time() -> None:
    """Sockets, then none: one trim, ``settle`` seconds into the idle spell, and no more."""
    spell = IdleSpell(settle=2.0)
    assert not spell.observe(5, 0.0)
    assert [spell.observe(0, t) for t in (1.0, 2.0, 2.9, 3.0, 4.0, 10.0)] == [
        False,
        False,
        False,
        True,
        False,
        False,
    ]


def test_a_socket_arriving_within_the_settle_time_puts_the_trim_off() -> None:
    """A reconnect wave right after a disconnect is not an idle spell."""
    spell = IdleSpell(settle=2.0)
    spell.observe(3, 0.0)
    assert not spell.observe(0, 1.0)
    assert not spell.observe(1, 2.0)
    assert not spell.observe(0, 3.5)
    assert not spell.observe(0, 5.0)
    assert spell.observe(0, 5.5)


def test_each_idle_spell_trims_once() -> None:
    """Busy, idle, busy, idle: two trims."""
    spell = IdleSpell(settle=1.0)
    trims = [spell.observe(n, float(t)) for t, n in enumerate([1, 0, 0, 0, 2, 0, 0, 0])]
    assert trims.count(True) == 2


def test_release_memory_collects_and_trims(monkeypatch: pytest.MonkeyPatch) -> None:
    """The release runs a full collection and glibc's trim with pad 0."""
    calls: list[object] = []
    monkeypatch.setattr(idle_trim.gc, "collect", lambda: calls.append("collect") or 0)
    monkeypatch.setattr(idle_trim, "_malloc_trim", lambda: lambda pad: calls.append(pad) or 1)
    asyncio.run(idle_trim.release_memory())
    assert calls == ["collect", 0]


def test_release_memory_without_malloc_trim_still_collects(monkeypatch: pytest.MonkeyPatch) -> None:
    """A C library without malloc_trim (musl) costs the trim, not the collection."""
    calls: list[str] = []
    monkeypatch.setattr(idle_trim.gc, "collect", lambda: calls.append("collect") or 0)
    monkeypatch.setattr(idle_trim, "_malloc_trim", lambda: None)
    asyncio.run(idle_trim.release_memory())
    assert calls == ["collect"]


def test_glibc_trim_is_found_on_this_machine() -> None:
    """The gateway's images and this machine run glibc, where the trim exists and answers."""
    trim = idle_trim._malloc_trim()
    assert trim is not None and trim(0) in (0, 1)
