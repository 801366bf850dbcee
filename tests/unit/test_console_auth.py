"""The console's settings and its admin-claim sign-in: CONSOLE_ENABLED read as a switch and
checked at start, the verdicts on Firebase tokens remembered for a while and bounded, and the
heartbeat's record of when each ping round was sent (a socket's last pong)."""

from __future__ import annotations

import pytest

from gateway.exceptions import ConfigError
from gateway.instance.heartbeat import REMEMBERED_ROUNDS, Heartbeat
from gateway.instance.registry import Registry
from gateway.settings import Settings
from gateway.web import console_auth
from gateway.web.console_auth import AdminTokens
from gateway.web.console_routes import config_of, origin_allowed

BASE = {"GATEWAY_ADMIN_TOKEN": "t" * 20, "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080"}


def test_console_off_by_default_and_read_as_a_switch() -> None:
    """Off unless CONSOLE_ENABLED says on (1, true, yes, on, any case); CONSOLE_DIR read."""
    assert not Settings.from_env(BASE).console.enabled
    for value in ("1", "true", "YES", "on"):
        assert Settings.from_env({**BASE, "CONSOLE_ENABLED": value}).console.enabled
    for value in ("0", "false", "off", ""):
        assert not Settings.from_env({**BASE, "CONSOLE_ENABLED": value}).console.enabled
    settings = Settings.from_env({**BASE, "CONSOLE_ENABLED": "1", "CONSOLE_DIR": "/srv/c"})
    assert settings.console.dir == "/srv/c"


def test_a_bad_switch_stops_the_start_naming_the_variable() -> None:
    """CONSOLE_ENABLED=maybe is a ConfigError naming CONSOLE_ENABLED."""
    with pytest.raises(ConfigError, match="CONSOLE_ENABLED"):
        Settings.from_env({**BASE, "CONSOLE_ENABLED": "maybe"})


def test_config_names_the_project_and_the_emulator() -> None:
    """config.json: the Firebase web config from the project, and the Auth emulator's URL
    when the gateway uses one (null otherwise)."""
    settings = Settings.from_env(
        {**BASE, "CONSOLE_ENABLED": "1", "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}
    )
    config = config_of(settings)
    assert config["firebase"]["projectId"] == "demo-presence"
    assert config["firebase"]["authDomain"] == "demo-presence.firebaseapp.com"
    assert config["auth_emulator"] == "http://127.0.0.1:9099"
    assert config_of(Settings.from_env(BASE))["auth_emulator"] is None


async def test_verdicts_remembered_then_checked_again() -> None:
    """A token is checked once per REMEMBER_SECONDS, its refusal too; after that it is
    checked again (a claim removed takes effect)."""
    now = [0.0]
    answers = {"good": "admin-uid", "bad": None}

    async def check(token: str) -> str | None:
        return answers[token]

    tokens = AdminTokens(check, clock=lambda: now[0])
    assert await tokens.admin("good") == "admin-uid"
    assert await tokens.admin("bad") is None
    assert await tokens.admin("good") == "admin-uid"
    assert await tokens.admin("bad") is None
    assert tokens.checks == 2
    answers["good"] = None
    now[0] = console_auth.REMEMBER_SECONDS + 0.1
    assert await tokens.admin("good") is None
    assert tokens.checks == 3


async def test_remembered_verdicts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_REMEMBERED distinct tokens the memory starts over instead of growing."""
    monkeypatch.setattr(console_auth, "MAX_REMEMBERED", 4)

    async def check(token: str) -> str | None:
        return None

    tokens = AdminTokens(check)
    for n in range(10):
        await tokens.admin(f"t{n}")
    assert len(tokens._verdicts) <= 4


def test_heartbeat_remembers_when_each_round_was_sent() -> None:
    """Each new ping generation's time is kept (the last REMEMBERED_ROUNDS): a socket's last
    pong is its answered round's time; an unknown round is None."""
    heartbeat = Heartbeat(Registry(), 30.0)
    heartbeat._current_ping(fresh=True)
    assert heartbeat.answered_at(heartbeat.generation) is not None
    assert heartbeat.answered_at(heartbeat.generation + 1) is None
    for _ in range(REMEMBERED_ROUNDS + 5):
        heartbeat._current_ping(fresh=True)
    assert heartbeat.answered_at(1) is None
    assert heartbeat.answered_at(heartbeat.generation) is not None


def test_origin_rule() -> None:
    """Listed origins and the gateway's own (the request's Host) pass; any other origin, a
    look-alike host, "null" or another scheme does not."""
    listed = ("https://ops.example.com",)
    assert origin_allowed("https://ops.example.com/", "gw.example.com", listed)
    assert origin_allowed("https://gw.example.com", "gw.example.com", listed)
    assert origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000", ())
    assert not origin_allowed("http://127.0.0.1:8001", "127.0.0.1:8000", ())
    assert not origin_allowed("https://gw.example.com.evil.test", "gw.example.com", listed)
    assert not origin_allowed("null", "gw.example.com", listed)
    assert not origin_allowed("file://gw.example.com", "gw.example.com", listed)
    assert not origin_allowed("https://gw.example.com", "", ())
