"""The sweep function's settings: read from the environment on first use, failing with the
variable's name; an emulator is refused for a project that is not an emulator-only one."""

from __future__ import annotations

import json

import pytest

from presence_sweep.exceptions import SweepConfigError
from presence_sweep.settings import SweepSettings

PRODUCTION = {"GOOGLE_CLOUD_PROJECT": "prod-proj"}


def test_the_emulators_default_to_the_demo_project() -> None:
    """With the Firestore emulator and no project, the sweep runs for demo-presence."""
    settings = SweepSettings.from_env({"FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080"})
    assert (settings.project_id, settings.emulators_allowed) == ("demo-presence", ())


def test_cloud_functions_project_variable_is_read() -> None:
    """GCLOUD_PROJECT (what the Functions runtime may set) names the project too."""
    assert SweepSettings.from_env({"GCLOUD_PROJECT": "prod-proj"}).project_id == "prod-proj"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"FIREBASE_AUTH_EMULATOR_HOST": "203.0.113.1:9099"}, "FIREBASE_AUTH_EMULATOR_HOST"),
        ({"FIRESTORE_EMULATOR_HOST": "203.0.113.1:8080"}, "FIRESTORE_EMULATOR_HOST"),
        ({"FIRESTORE_EMULATOR_HOST": ""}, "FIRESTORE_EMULATOR_HOST"),
        (
            {"FIRESTORE_EMULATOR_HOST": "h:1", "ALLOW_EMULATOR_FOR_PROJECT": "demo-prod-proj"},
            "FIRESTORE_EMULATOR_HOST",
        ),
        (
            {
                "GOOGLE_CLOUD_PROJECT": "",
                "GCLOUD_PROJECT": "prod-proj",
                "FIRESTORE_EMULATOR_HOST": "h:1",
            },
            "FIRESTORE_EMULATOR_HOST",
        ),
    ],
)
def test_an_emulator_for_a_production_project_is_refused(env: dict[str, str], name: str) -> None:
    """An emulator variable with a project that is not a demo- one raises SweepConfigError
    naming the variable and the override that would allow it."""
    with pytest.raises(SweepConfigError) as caught:
        SweepSettings.from_env({**PRODUCTION, **env})
    assert caught.value.name == name
    assert str(caught.value).startswith(f"{name}: ")
    assert "ALLOW_EMULATOR_FOR_PROJECT=prod-proj" in str(caught.value)


def test_emulators_with_a_demo_project_need_no_override() -> None:
    """Both emulators the sweep follows are accepted for a demo- project."""
    settings = SweepSettings.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": "demo-presence",
            "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080",
            "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
        }
    )
    assert settings.emulators_allowed == ()


def test_the_override_naming_the_project_lets_the_emulators_through() -> None:
    """ALLOW_EMULATOR_FOR_PROJECT with the exact project id allows the emulators, listed for
    the start-up warning."""
    settings = SweepSettings.from_env(
        {
            **PRODUCTION,
            "FIRESTORE_EMULATOR_HOST": "10.0.0.1:8080",
            "FIREBASE_AUTH_EMULATOR_HOST": "10.0.0.1:9099",
            "ALLOW_EMULATOR_FOR_PROJECT": "prod-proj",
        }
    )
    assert sorted((e.variable, e.host, e.project) for e in settings.emulators_allowed) == [
        ("FIREBASE_AUTH_EMULATOR_HOST", "10.0.0.1:9099", "prod-proj"),
        ("FIRESTORE_EMULATOR_HOST", "10.0.0.1:8080", "prod-proj"),
    ]


def test_the_function_warns_of_each_allowed_emulator_when_it_builds_its_clients(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main.py prints one WARNING line (Cloud Logging's JSON) per emulator the override let
    through, naming its variable and host, before it builds its clients."""
    import main

    for name, value in {
        **PRODUCTION,
        "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9",
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",
        "ALLOW_EMULATOR_FOR_PROJECT": "prod-proj",
    }.items():
        monkeypatch.setenv(name, value)
    import firebase_admin

    main._clients.cache_clear()
    try:
        # Builds the clients only: nothing is sent to the (unreachable) emulator addresses.
        settings, db, app = main._clients()
        db.close()
        firebase_admin.delete_app(app)
    finally:
        main._clients.cache_clear()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["severity"] for line in lines] == ["WARNING", "WARNING"]
    assert all("EMULATOR IN USE for project prod-proj" in line["message"] for line in lines)
    assert any("FIREBASE_AUTH_EMULATOR_HOST=127.0.0.1:9" in line["message"] for line in lines)
    assert settings.project_id == "prod-proj"


def test_the_sweep_and_the_gateway_read_the_same_override_and_prefix() -> None:
    """One variable and one project prefix for both deployables (the function imports
    nothing from the gateway, so they are written twice)."""
    from gateway import settings as gateway_settings
    from presence_sweep import settings as sweep_settings

    assert sweep_settings.ALLOW_EMULATOR == gateway_settings.ALLOW_EMULATOR
    assert sweep_settings.EMULATOR_PROJECT_PREFIX == gateway_settings.EMULATOR_PROJECT_PREFIX
    assert set(sweep_settings.EMULATOR_HOSTS) <= set(gateway_settings.EMULATOR_HOSTS)
