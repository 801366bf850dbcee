"""An emulator variable never turns a production project's checks off: ``python -m gateway``
refuses to start with one unless the project is an emulator-only (``demo-``) one or
ALLOW_EMULATOR_FOR_PROJECT names it, and then it warns at start."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from emulator import procs
from gateway.settings import ALLOW_EMULATOR, EMULATOR_HOSTS
from tests.support import UNIT, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]


def production_env(**emulators: str) -> dict[str, str]:
    """The test runner's environment without any emulator setting of the session's (fixtures
    export them), for a production project, plus the given variables."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in EMULATOR_HOSTS and name not in (ALLOW_EMULATOR, "PUBSUB_PROJECT")
    }
    return {
        **inherited,
        "GOOGLE_CLOUD_PROJECT": "prod-proj",
        "GATEWAY_ADMIN_TOKEN": secrets.token_urlsafe(24),
        "GATEWAY_PORT": str(procs.free_port()),
        **emulators,
    }


@pytest.mark.parametrize(
    ("emulators", "name"),
    [
        ({"FIREBASE_AUTH_EMULATOR_HOST": "203.0.113.1:9099"}, "FIREBASE_AUTH_EMULATOR_HOST"),
        ({"FIRESTORE_EMULATOR_HOST": "203.0.113.1:8080"}, "FIRESTORE_EMULATOR_HOST"),
        (
            {"PUBSUB_EMULATOR_HOST": "203.0.113.1:8085", "PUBSUB_TOPIC": "gateway-fanout"},
            "PUBSUB_EMULATOR_HOST",
        ),
    ],
)
def test_the_gateway_refuses_to_start_with_an_emulator_for_a_production_project(
    emulators: dict[str, str], name: str
) -> None:
    """python -m gateway with GOOGLE_CLOUD_PROJECT=prod-proj and an emulator host exits
    non-zero before it listens, with a message naming the variable and the override."""
    env = production_env(**emulators)
    result = subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=procs.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    assert result.returncode != 0, result.stderr
    assert f"gateway: configuration error: {name}: is set" in result.stderr
    assert f"{ALLOW_EMULATOR}=prod-proj" in result.stderr
    assert not procs.probe(f"tcp://127.0.0.1:{env['GATEWAY_PORT']}")


def test_the_override_naming_the_project_starts_the_gateway_with_a_warning(
    firestore_host: str,
) -> None:
    """With ALLOW_EMULATOR_FOR_PROJECT=prod-proj the gateway starts against the emulators and
    its log carries a WARNING for each emulator, naming its variable and host."""
    gateway = start_gateway(
        firestore_host,
        "prod-proj",
        None,
        FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9",
        **{ALLOW_EMULATOR: "prod-proj"},
    )
    try:
        warnings = [line for line in gateway.log().splitlines() if "EMULATOR IN USE" in line]
    finally:
        gateway.stop()
    for variable, host in (
        ("FIRESTORE_EMULATOR_HOST", firestore_host),
        ("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9"),
    ):
        [line] = [line for line in warnings if f"{variable}={host}" in line]
        assert " WARNING gateway EMULATOR IN USE for project prod-proj" in line
