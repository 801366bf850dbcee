"""Settings come from the environment and fail at start with the variable's name."""

from __future__ import annotations

import pytest

from gateway.exceptions import ConfigError
from gateway.settings import Settings, describe_duration

BASE = {"GATEWAY_ADMIN_TOKEN": "t" * 20, "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080"}


def test_defaults_follow_the_guide() -> None:
    """Without overrides: 30 s pings, 3 h timeout, 60 s sweeps, port 8000, a demo project."""
    settings = Settings.from_env(BASE)
    assert settings.sockets.ping_interval == 30
    assert settings.sockets.pong_timeout == 10_800
    assert settings.fanout.sweep_interval == 60
    assert settings.port == 8000
    assert settings.project_id == "demo-presence"
    assert settings.timeout_text == (
        "Your session has expired due to inactivity (3 hours). Please sign in again."
    )


def test_overrides_are_parsed() -> None:
    """Fractional intervals are allowed (the tests use PING_INTERVAL=0.2)."""
    settings = Settings.from_env(
        {**BASE, "PING_INTERVAL": "0.2", "PONG_TIMEOUT": "2", "GATEWAY_PORT": "9000"}
    )
    sockets = settings.sockets
    assert (sockets.ping_interval, sockets.pong_timeout, settings.port) == (0.2, 2.0, 9000)
    assert settings.internal_url == "http://127.0.0.1:9000"


def test_cloud_run_port_is_used_when_gateway_port_is_unset() -> None:
    """Cloud Run's PORT applies unless GATEWAY_PORT says otherwise."""
    assert Settings.from_env({**BASE, "PORT": "8080"}).port == 8080
    assert Settings.from_env({**BASE, "PORT": "8080", "GATEWAY_PORT": "81"}).port == 81


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"FIRESTORE_EMULATOR_HOST": "x:1"}, "GATEWAY_ADMIN_TOKEN"),
        ({**BASE, "GATEWAY_ADMIN_TOKEN": "short"}, "GATEWAY_ADMIN_TOKEN"),
        ({"GATEWAY_ADMIN_TOKEN": "t" * 20}, "GOOGLE_CLOUD_PROJECT"),
        ({**BASE, "PING_INTERVAL": "soon"}, "PING_INTERVAL"),
        ({**BASE, "PING_INTERVAL": "0"}, "PING_INTERVAL"),
        ({**BASE, "PONG_TIMEOUT": "-5"}, "PONG_TIMEOUT"),
        ({**BASE, "SWEEP_INTERVAL": "nan"}, "SWEEP_INTERVAL"),
        ({**BASE, "GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
        ({**BASE, "GATEWAY_PORT": "80.5"}, "GATEWAY_PORT"),
        ({**BASE, "PONG_FLUSH_INTERVAL": "2"}, "PONG_FLUSH_INTERVAL"),
        ({**BASE, "PONG_BATCH_SIZE": "501"}, "PONG_BATCH_SIZE"),
        ({**BASE, "PONG_WRITE_INTERVAL": "-1"}, "PONG_WRITE_INTERVAL"),
        ({**BASE, "PONG_WRITE_INTERVAL": "5400"}, "PONG_WRITE_INTERVAL"),
        ({**BASE, "FANOUT_TIMEOUT": "0"}, "FANOUT_TIMEOUT"),
        ({**BASE, "PUBSUB_TOPIC": "9-starts-with-a-digit"}, "PUBSUB_TOPIC"),
        ({**BASE, "WS_IMPLEMENTATION": "h2"}, "WS_IMPLEMENTATION"),
        ({**BASE, "LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({**BASE, "LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({**BASE, "WS_MAX_SOCKETS_PER_USER": "-1"}, "WS_MAX_SOCKETS_PER_USER"),
        ({**BASE, "GATEWAY_CALLBACK_TOKEN": "t" * 20}, "GATEWAY_CALLBACK_TOKEN"),
        ({**BASE, "CALLBACK_OIDC_AUDIENCE": "https://gw"}, "CALLBACK_OIDC_SERVICE_ACCOUNTS"),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    """A bad or missing value raises ConfigError whose message starts with the variable."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.name == name
    assert str(caught.value).startswith(name)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (10_800, "3 hours"),
        (3600, "1 hour"),
        (120, "2 minutes"),
        (90, "90 seconds"),
        (2, "2 seconds"),
        (1, "1 second"),
        (0.5, "0.5 seconds"),
    ],
)
def test_timeout_duration_is_written_for_people(seconds: float, text: str) -> None:
    """The timeout message's duration follows PONG_TIMEOUT."""
    assert describe_duration(seconds) == text
