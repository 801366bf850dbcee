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


PRODUCTION = {"GATEWAY_ADMIN_TOKEN": "t" * 20, "GOOGLE_CLOUD_PROJECT": "prod-proj"}


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"FIREBASE_AUTH_EMULATOR_HOST": "203.0.113.1:9099"}, "FIREBASE_AUTH_EMULATOR_HOST"),
        ({"FIRESTORE_EMULATOR_HOST": "203.0.113.1:8080"}, "FIRESTORE_EMULATOR_HOST"),
        ({"PUBSUB_EMULATOR_HOST": "203.0.113.1:8085"}, "PUBSUB_EMULATOR_HOST"),
        # google-cloud-firestore takes an empty variable for an emulator too.
        ({"FIRESTORE_EMULATOR_HOST": ""}, "FIRESTORE_EMULATOR_HOST"),
        # The override must name the project itself, not a similar one.
        (
            {"FIREBASE_AUTH_EMULATOR_HOST": "h:1", "ALLOW_EMULATOR_FOR_PROJECT": "prod"},
            "FIREBASE_AUTH_EMULATOR_HOST",
        ),
        # Pub/Sub's project is PUBSUB_PROJECT when set: a demo- main project does not cover it.
        (
            {
                "GOOGLE_CLOUD_PROJECT": "demo-x",
                "PUBSUB_PROJECT": "prod-pubsub",
                "PUBSUB_EMULATOR_HOST": "h:1",
            },
            "PUBSUB_EMULATOR_HOST",
        ),
    ],
)
def test_an_emulator_for_a_production_project_stops_the_start(
    env: dict[str, str], name: str
) -> None:
    """An emulator variable with a project that is not a demo- one raises ConfigError naming
    the variable and the override that would allow it."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**PRODUCTION, **env})
    assert caught.value.name == name
    assert "ALLOW_EMULATOR_FOR_PROJECT=" in caught.value.problem


def test_emulators_with_demo_projects_need_no_override() -> None:
    """Every emulator variable is accepted for demo- projects, with nothing to warn of."""
    settings = Settings.from_env(
        {
            **PRODUCTION,
            "GOOGLE_CLOUD_PROJECT": "demo-presence",
            "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
            "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080",
            "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085",
        }
    )
    assert settings.emulators_allowed == ()


def test_a_production_project_without_emulators_starts_as_before() -> None:
    """No emulator variable: any project id, and no override needed."""
    assert Settings.from_env(PRODUCTION).emulators_allowed == ()


def test_the_override_naming_the_project_lets_each_emulator_through_for_the_warning() -> None:
    """ALLOW_EMULATOR_FOR_PROJECT with the exact project ids (the main one and Pub/Sub's)
    allows the emulators, and the settings list each one for the start-up warning."""
    settings = Settings.from_env(
        {
            **PRODUCTION,
            "PUBSUB_PROJECT": "prod-pubsub",
            "FIREBASE_AUTH_EMULATOR_HOST": "10.0.0.1:9099",
            "FIRESTORE_EMULATOR_HOST": "10.0.0.1:8080",
            "PUBSUB_EMULATOR_HOST": "10.0.0.1:8085",
            "ALLOW_EMULATOR_FOR_PROJECT": "prod-proj, prod-pubsub",
        }
    )
    assert [(e.variable, e.host, e.project) for e in settings.emulators_allowed] == [
        ("FIREBASE_AUTH_EMULATOR_HOST", "10.0.0.1:9099", "prod-proj"),
        ("FIRESTORE_EMULATOR_HOST", "10.0.0.1:8080", "prod-proj"),
        ("PUBSUB_EMULATOR_HOST", "10.0.0.1:8085", "prod-pubsub"),
    ]
    assert "signature" in settings.emulators_allowed[0].consequence


def test_the_start_warns_of_each_allowed_emulator(caplog: pytest.LogCaptureFixture) -> None:
    """python -m gateway's start-up logs one WARNING per emulator the override let through,
    naming its variable, its host and the project."""
    from gateway.serving import warn_of_emulators

    settings = Settings.from_env(
        {
            **PRODUCTION,
            "FIREBASE_AUTH_EMULATOR_HOST": "10.0.0.1:9099",
            "ALLOW_EMULATOR_FOR_PROJECT": "prod-proj",
        }
    )
    with caplog.at_level("WARNING", logger="gateway"):
        warn_of_emulators(settings)
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert "EMULATOR IN USE for project prod-proj" in record.getMessage()
    assert "FIREBASE_AUTH_EMULATOR_HOST=10.0.0.1:9099" in record.getMessage()
